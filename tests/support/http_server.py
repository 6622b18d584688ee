"""A loopback HTTP server for download tests: Range requests plus routes that fail in known ways.

``python -m http.server`` has no Range support, and yt-dlp's trimmed downloads (ffmpeg seeking over HTTP) need
it. This server binds to 127.0.0.1 on a free port, serves one directory with single-range ``206 Partial
Content`` answers, and adds fault routes:

=====================  ==========================================================================
``/files/NAME``        the file, with ``Accept-Ranges: bytes`` and ``Range`` support (206/416)
``/404/NAME``          always 404
``/500/NAME``          always 500
``/slow/NAME``         waits ``slow_seconds`` before answering (longer than the client's timeout)
``/text/NAME``         a plain-text body served as ``Content-Type: video/mp4``
``/html/NAME``         an HTML page (no video in it)
``/drop/NAME``         the file's headers with its full ``Content-Length``, then part of the body,
                       then the connection is closed (a dropped download)
``/wait404/NAME``      waits ``wait_seconds`` then answers 404; the most requests waiting at once is
                       ``max_in_flight()`` (checks how many downloads a client runs in parallel)
=====================  ==========================================================================

Every request is counted per path (``server.hits("/500/x.mp4")``), so a test can check that a transient
error was retried and a permanent one was not. Bounded: only loopback, a waiting ``slow`` request wakes up
when the server shuts down, and the context manager joins the serving thread.
"""
from __future__ import annotations

import collections
import contextlib
import mimetypes
import os
import re
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, unquote, urlsplit

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
TEXT_BODY = b"this is not a video, just some text that pretends to be one\n" * 20
HTML_BODY = (
    b"<!DOCTYPE html><html><head><title>Not a video</title></head>"
    b"<body><h1>Nothing to see</h1><p>This page has no video in it.</p></body></html>\n"
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, root: Path, slow_seconds: float, drop_fraction: float, wait_seconds: float):
        self.root = root.resolve()
        self.slow_seconds = slow_seconds
        self.drop_fraction = drop_fraction
        self.wait_seconds = wait_seconds
        self.in_flight = 0
        self.max_in_flight = 0
        self.stopping = threading.Event()
        self._hits: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request, client_address) -> None:
        """Clients hanging up (timeouts, dropped downloads) are expected here: no tracebacks on stderr."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, OSError)):
            super().handle_error(request, client_address)

    def count(self, path: str) -> None:
        with self._lock:
            self._hits[path] += 1


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle keep-alive connection is closed after this (bounded threads)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet tests
        pass

    # -- routing ---------------------------------------------------------------------------------------
    def do_HEAD(self) -> None:  # noqa: N802
        self._route(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._route(head=False)

    def _route(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.server.count(path)
        parts = path.lstrip("/").split("/", 1)
        kind, name = (parts[0], parts[1]) if len(parts) == 2 else (parts[0], "")
        if kind == "files":
            self._send_file(name, head)
        elif kind == "404":
            self._send_error(HTTPStatus.NOT_FOUND, head)
        elif kind == "500":
            self._send_error(HTTPStatus.INTERNAL_SERVER_ERROR, head)
        elif kind == "slow":
            # wait, but wake up at shutdown so the server never hangs a test run
            if self.server.stopping.wait(self.server.slow_seconds):
                self.close_connection = True
                return
            self._send_file(name, head)
        elif kind == "text":
            self._send_bytes(TEXT_BODY, "video/mp4", head)
        elif kind == "html":
            self._send_bytes(HTML_BODY, "text/html; charset=utf-8", head)
        elif kind == "drop":
            self._send_file(name, head, drop=True)
        elif kind == "wait404":
            with self.server._lock:
                self.server.in_flight += 1
                self.server.max_in_flight = max(self.server.max_in_flight, self.server.in_flight)
            try:
                self.server.stopping.wait(self.server.wait_seconds)
            finally:
                with self.server._lock:
                    self.server.in_flight -= 1
            self._send_error(HTTPStatus.NOT_FOUND, head)
        else:
            self._send_error(HTTPStatus.NOT_FOUND, head)

    # -- answers ---------------------------------------------------------------------------------------
    def _send_error(self, status: HTTPStatus, head: bool) -> None:
        body = f"{status.value} {status.phrase}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_bytes(self, body: bytes, ctype: str, head: bool) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _resolve(self, name: str) -> Path | None:
        target = (self.server.root / name).resolve()
        if self.server.root not in target.parents or not target.is_file():
            return None
        return target

    def _send_file(self, name: str, head: bool, drop: bool = False) -> None:
        target = self._resolve(name)
        if target is None:
            self._send_error(HTTPStatus.NOT_FOUND, head)
            return
        size = target.stat().st_size
        start, end = 0, size - 1
        status = HTTPStatus.OK
        rng = self.headers.get("Range")
        if rng:
            m = _RANGE_RE.match(rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                self._range_not_satisfiable(size)
                return
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start = max(size - int(m.group(2)), 0)
            if start >= size or start > end:
                self._range_not_satisfiable(size)
                return
            status = HTTPStatus.PARTIAL_CONTENT
        length = end - start + 1
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Last-Modified", self.date_time_string(int(target.stat().st_mtime)))
        self.end_headers()
        if head:
            return
        to_send = max(1, int(length * self.server.drop_fraction)) if drop else length
        with open(target, "rb") as f:
            f.seek(start)
            remaining = to_send
            try:
                while remaining > 0:
                    chunk = f.read(min(64 * 1024, remaining))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    remaining -= len(chunk)
                if drop:
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
                return
        if drop:
            # Abort the connection without sending the rest: an RST, like a dropped network link.
            self.close_connection = True
            with contextlib.suppress(OSError):
                import socket
                import struct

                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()

    def _range_not_satisfiable(self, size: int) -> None:
        self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
        self.send_header("Content-Range", f"bytes */{size}")
        self.send_header("Content-Length", "0")
        self.end_headers()


class LoopbackServer:
    """Handle returned by :func:`serve_directory`."""

    def __init__(self, server: _Server):
        self._server = server
        host, port = server.server_address[:2]
        self.base_url = f"http://{host}:{port}"

    def url(self, name: str, route: str = "files") -> str:
        return f"{self.base_url}/{route}/{quote(name)}"

    def template(self, route: str = "files", suffix: str = ".mp4") -> str:
        """A ``url_template`` for the pipeline config: ``http://127.0.0.1:PORT/files/{youtube_id}.mp4``."""
        return f"{self.base_url}/{route}/{{youtube_id}}{suffix}"

    def hits(self, path: str) -> int:
        """Requests seen for ``path`` (``/500/x.mp4``) or a full URL from :meth:`url`."""
        if path.startswith("http"):
            path = urlsplit(path).path
        with self._server._lock:
            return self._server._hits[unquote(path)]

    def reset_hits(self) -> None:
        with self._server._lock:
            self._server._hits.clear()
            self._server.max_in_flight = 0

    def max_in_flight(self) -> int:
        """The most ``/wait404/`` requests that were waiting at the same time since the last reset."""
        with self._server._lock:
            return self._server.max_in_flight


@contextlib.contextmanager
def serve_directory(
    root: str | os.PathLike, *, slow_seconds: float = 5.0, drop_fraction: float = 0.3, wait_seconds: float = 0.3
) -> Iterator[LoopbackServer]:
    """Serve ``root`` on ``http://127.0.0.1:<free port>`` in a background thread for the ``with`` block."""
    if max(slow_seconds, wait_seconds) > 60:
        raise ValueError("slow_seconds and wait_seconds are capped at 60 so a test can never hang long")
    server = _Server(Path(root), slow_seconds, drop_fraction, wait_seconds)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield LoopbackServer(server)
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        time.sleep(0)  # let daemon handler threads see the stop event
