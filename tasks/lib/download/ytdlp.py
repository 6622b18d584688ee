"""yt-dlp: the options one download runs with (format, sections, cookies, JS runtime, timeouts), and the one
real ``YoutubeDL`` call users run against YouTube."""
from __future__ import annotations

import contextvars
import logging
import os
import re
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

from tasks.lib.config import DownloadConfig
from tasks.lib.procs import patch_ytdlp_popen
from tasks.lib.media import ffmpeg_exe
from tasks.lib.download.errors import (DownloadFailure, CANNOT_SECTION_RE, CannotSection, classify_error, clean_message,
                                       too_old_hint, ytdlp_version)

log = logging.getLogger(__name__)


# Video-only first (no audio needed), never taller than max_height when anything that small exists; unknown
# heights (direct file URLs) pass the filter. format_sort then picks the largest <= max_height, H.264 in MP4
# (decodes everywhere, cheap to re-encode at the cuts) over https (Range-seekable, what sections need).
FORMAT_TEMPLATE = "bv[height<=?{h}]/b[height<=?{h}]/bv/b"


def format_sort(max_height: int) -> list[str]:
    return [f"res:{max_height}", "vcodec:h264", "proto", "ext:mp4"]


# -- yt-dlp options --------------------------------------------------------------------------------------------
class CaptureLogger:
    """yt-dlp logger that keeps messages (bounded) instead of printing them from worker threads."""

    def __init__(self, limit: int = 200):
        self.messages: list[tuple[str, str]] = []
        self._limit = limit

    def _add(self, level: str, msg: str) -> None:
        if len(self.messages) < self._limit:
            self.messages.append((level, clean_message(msg)))

    def debug(self, msg: str) -> None:
        if not msg.startswith("[debug] "):
            self._add("info", msg)

    def info(self, msg: str) -> None:
        self._add("info", msg)

    def warning(self, msg: str) -> None:
        self._add("warning", msg)

    def error(self, msg: str) -> None:
        self._add("error", msg)

    def last_error(self) -> str:
        return next((m for lvl, m in reversed(self.messages) if lvl == "error"), "")


def parse_cookies_from_browser(spec: str) -> tuple[str, str | None, str | None, str | None]:
    """``BROWSER[+KEYRING][:PROFILE][::CONTAINER]`` as yt-dlp's ``--cookies-from-browser`` takes it."""
    m = re.fullmatch(
        r"(?P<name>[^+:]+)(?:\s*\+\s*(?P<keyring>[^:]+))?(?:\s*:\s*(?!:)(?P<profile>.+?))?(?:\s*::\s*(?P<container>.+))?",
        spec.strip(),
    )
    if not m:
        raise ValueError(f"download.cookies_from_browser: cannot parse {spec!r}; use e.g. 'firefox' or 'chrome:Profile 1'")
    from yt_dlp.cookies import SUPPORTED_BROWSERS, SUPPORTED_KEYRINGS

    name = m.group("name").strip().lower()
    if name not in SUPPORTED_BROWSERS:
        raise ValueError(f"download.cookies_from_browser: unsupported browser {name!r}; "
                         f"supported: {', '.join(sorted(SUPPORTED_BROWSERS))}")
    keyring = m.group("keyring").strip().upper() if m.group("keyring") else None
    if keyring is not None and keyring not in SUPPORTED_KEYRINGS:
        raise ValueError(f"download.cookies_from_browser: unsupported keyring {keyring!r}")
    return name, m.group("profile"), keyring, m.group("container")


def find_js_runtime() -> dict[str, dict[str, str]] | None:
    """YouTube needs a JavaScript runtime (deno) for its signature challenges. yt-dlp looks for ``deno`` on
    PATH, which misses the one the ``deno`` wheel installs next to this Python when the venv is not activated."""
    candidates = [shutil.which("deno"), os.path.join(sysconfig.get_path("scripts"), "deno"),
                  os.path.join(os.path.dirname(sys.executable), "deno")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return {"deno": {"path": c}}
    return None


def build_ydl_options(
    cfg: DownloadConfig,
    outtmpl: str,
    *,
    section: tuple[float, float] | None,
    logger: Any | None = None,
    ffmpeg: str | None = None,
) -> dict[str, Any]:
    """The yt-dlp parameters for one attempt. ``section=(start, end)`` asks yt-dlp to cut; ``None`` downloads
    the whole video (the fallback path)."""
    from yt_dlp.utils import download_range_func, parse_bytes

    opts: dict[str, Any] = {
        "outtmpl": outtmpl,
        "format": cfg.format or FORMAT_TEMPLATE.format(h=cfg.max_height),
        "format_sort": format_sort(cfg.max_height),
        "noplaylist": True,
        "playlist_items": "1",
        "quiet": True,
        "no_warnings": False,
        "noprogress": True,
        "no_color": True,
        "logger": logger or CaptureLogger(),
        "socket_timeout": cfg.timeout,
        # our own loop retries transient errors; yt-dlp's loops would multiply attempts and hide the count
        "retries": 0,
        "fragment_retries": 0,
        "extractor_retries": 0,
        "file_access_retries": 0,
        "overwrites": True,
        "continuedl": False,
        "ffmpeg_location": ffmpeg or ffmpeg_exe(),
        # ffmpeg reads the stream itself when cutting: without this a stalled server would hang it forever
        "external_downloader_args": {"ffmpeg_i": ["-rw_timeout", str(int(cfg.timeout * 1_000_000))]},
        "postprocessors": [{"key": "FFmpegVideoRemuxer", "preferedformat": "mp4"}],
    }
    if cfg.allow_file_urls:
        opts["enable_file_urls"] = True
    if cfg.cookies is not None:
        if not Path(cfg.cookies).is_file():
            raise ValueError(f"download.cookies: file not found: {cfg.cookies}")
        opts["cookiefile"] = str(cfg.cookies)
    if cfg.cookies_from_browser:
        opts["cookiesfrombrowser"] = parse_cookies_from_browser(cfg.cookies_from_browser)
    if cfg.rate_limit:
        opts["ratelimit"] = parse_bytes(cfg.rate_limit)
    if cfg.sleep_interval > 0:
        opts["sleep_interval"] = cfg.sleep_interval
    js = find_js_runtime()
    if js:
        opts["js_runtimes"] = js
    if section is not None:
        start, end = section
        opts["download_ranges"] = download_range_func(None, [(float(start), float(end))])
        opts["force_keyframes_at_cuts"] = True
    return opts


def check_options(cfg: DownloadConfig) -> None:
    """Fail once, before any download, on options that would fail every clip (missing cookies file, unknown
    browser, bad rate limit): raises ValueError with the key's name."""
    build_ydl_options(cfg, "check.%(ext)s", section=None, ffmpeg="ffmpeg")


# -- the one real yt-dlp call --------------------------------------------------------------------------------
def _set_ffmpeg_for_sections(ffmpeg: str) -> str | None:
    """yt-dlp decides whether ffmpeg can cut sections with ``FFmpegFD.available()``, which ignores the
    ``ffmpeg_location`` parameter and reads a context variable that only its CLI sets; without this a machine
    whose ffmpeg is not on PATH (the imageio-ffmpeg binary) would never get a trimmed download. Context
    variables are per thread/task, so this is set in the worker itself.

    The variable is yt-dlp's private attribute, so it is fenced: when ``ffmpeg`` is what PATH finds anyway,
    nothing is touched; when the attribute is gone or changed shape (a newer yt-dlp), a warning says so once and
    sections fall back to whole downloads cut afterwards. Returns why it could not be set, else None."""
    found = shutil.which("ffmpeg")
    if found and os.path.realpath(found) == os.path.realpath(ffmpeg):
        return None  # the public route: yt-dlp finds it on PATH
    try:
        from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor
    except ImportError as e:  # pragma: no cover - yt-dlp is a dependency
        problem = f"cannot import yt-dlp's ffmpeg postprocessor ({e})"
    else:
        var = getattr(FFmpegPostProcessor, _LOCATION_VAR, None)
        if isinstance(var, contextvars.ContextVar):
            var.set(ffmpeg)
            return None
        problem = f"yt-dlp {ytdlp_version()} has no FFmpegPostProcessor.{_LOCATION_VAR} context variable"
    if not _sections_warned:
        _sections_warned.append(problem)
        log.warning("%s: yt-dlp cannot cut sections with %s (not on PATH), so clips are downloaded whole and "
                    "trimmed afterwards (put ffmpeg on PATH, or pin the tested yt-dlp)", problem, ffmpeg)
    return problem


_LOCATION_VAR = "_ffmpeg_location"  # the private name the fence looks for (tests point it elsewhere)
_sections_warned: list[str] = []  # the one warning per process, and its reason


def _failure(reason: str, msg: str) -> DownloadFailure:
    if reason == "extractor_error":
        msg = f"{msg} ({too_old_hint()})"
    return DownloadFailure(reason, msg)


def run_ytdlp(url: str, outtmpl: str, cfg: DownloadConfig, *, section: tuple[float, float] | None) -> tuple[Path, dict]:
    """Download ``url`` to ``outtmpl``; returns the file written and yt-dlp's info dict.

    Raises :class:`CannotSection` when a section was asked for and yt-dlp/ffmpeg cannot cut this source, and
    :class:`DownloadFailure` (classified) for everything else.
    """
    import yt_dlp

    ffmpeg = ffmpeg_exe()
    _set_ffmpeg_for_sections(ffmpeg)
    patch_ytdlp_popen()  # yt-dlp's ffmpeg children die with this process
    logger = CaptureLogger()
    opts = build_ydl_options(cfg, outtmpl, section=section, logger=logger, ffmpeg=ffmpeg)
    try:
        with yt_dlp.YoutubeDL(opts) as ydl:
            info = ydl.extract_info(url, download=True)
    except Exception as e:  # noqa: BLE001 - yt-dlp raises DownloadError, RequestError and more; all are data
        msg = clean_message(str(e)) or clean_message(logger.last_error()) or type(e).__name__
        if section is not None and CANNOT_SECTION_RE.search(msg):
            raise CannotSection(msg) from e
        raise _failure(classify_error(e), msg) from e
    if not info:
        msg = logger.last_error() or "yt-dlp returned no information"
        raise _failure(classify_error(msg), msg)
    if info.get("_type") == "playlist":
        entries = [e for e in (info.get("entries") or []) if e]
        info = entries[0] if entries else {}
    downloads = info.get("requested_downloads") or []
    path = Path(downloads[-1]["filepath"]) if downloads and downloads[-1].get("filepath") else None
    if path is None or not path.is_file():
        msg = logger.last_error() or "yt-dlp reported success but wrote no file"
        raise DownloadFailure("unknown", msg)
    return path, info
