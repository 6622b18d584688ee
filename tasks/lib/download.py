"""Download one Kinetics clip with yt-dlp: trimmed, validated, renamed into place only when complete.

Why it is built this way:

* **Trimming.** yt-dlp cuts ``[time_start, time_end]`` itself (``download_ranges`` + ``force_keyframes_at_cuts``,
  which re-encodes so the cut is frame-exact instead of snapping to the previous keyframe). Some sources cannot be
  cut that way: yt-dlp refuses sections for ``file://`` URLs and for formats its ffmpeg downloader cannot read
  ("This format cannot be partially downloaded"), and ffmpeg gives up on some servers. Then the clip is downloaded
  whole into a hidden temporary file and cut locally with ffmpeg (re-encoded: measured exact to the frame, where
  stream copy starts at the previous keyframe and relies on an edit list that not every reader honours), and the
  whole file is deleted.
* **No audio.** Training reads frames only, so the format selector prefers video-only formats (smaller, no merge
  step) and the local cut drops audio. ``download.format`` overrides the selector for users who want more.
* **Nothing half-written under a final name.** Every temporary file is a hidden ``.<stem>.part-<hex>...`` sibling
  of the final file (``tasks.lib.paths.is_partial`` recognises them), removed in ``finally``; the final
  ``<data_dir>/raw/<label_slug>/<clip_stem>.mp4`` appears by ``os.replace`` only after the result was probed
  and a frame decoded. A file yt-dlp accepts but that is not a playable video is ``failed``/``not_video``.
* **Failures are data.** :func:`classify_error` maps yt-dlp's messages to a small set of reasons for the report;
  only transient ones (:data:`TRANSIENT`) are retried, with exponential back-off, by :func:`download_clip`.
  yt-dlp's own retry loops are switched off so ``download.retries`` is the one number that counts.

No Prefect here: ``tasks/download.py`` wraps these functions as tasks.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

from .annotations import Clip
from .config import DownloadConfig
from .errors import is_disk_full
from .procs import die_with_parent_kwargs, patch_ytdlp_popen
from .media import ProbeError, ffmpeg_command, ffmpeg_exe, probe
from . import reports
from .paths import UnsafePathError, clip_stem, is_partial, label_slug, partial_owner_alive, partial_prefix, safe_join

# -- reasons -------------------------------------------------------------------------------------------------
REASONS: dict[str, str] = {
    "unavailable": "the video does not exist (any more) or is not available",
    "private": "private or members-only video",
    "removed": "removed by the uploader, account terminated, copyright or terms-of-service takedown",
    "age_restricted": "needs a signed-in adult account (download.cookies)",
    "geo_blocked": "not available from this country",
    "bot_check": "YouTube asks to sign in to confirm you're not a bot (download.cookies, sleep_interval)",
    "rate_limited": "HTTP 429 / rate limit (slow down: download.sleep_interval, rate_limit, fewer workers)",
    "http_error": "another HTTP 4xx answer (the code is in the message)",
    "server_error": "HTTP 5xx answer (transient, retried)",
    "timeout": "no answer within download.timeout (transient, retried)",
    "network": "connection reset, refused or dropped (transient, retried)",
    "not_video": "downloaded, but not a playable video",
    "out_of_range": "the annotated window starts after the end of the video",
    "unsupported_url": "yt-dlp found no video at the URL (e.g. an HTML page)",
    "file_urls_disabled": "file:// URL refused (set download.allow_file_urls: true)",
    "unsafe_path": "label or youtube_id would make an unsafe path; refused",
    "quarantined": "downloaded earlier but rejected by the filter stage (see quarantine/; delete it to retry)",
    "ffmpeg_error": "ffmpeg failed to cut or convert the clip",
    "disk_full": "no space left on the disk of data_dir (free some, then re-run)",
    "unknown": "anything else (see the message)",
}
TRANSIENT: frozenset[str] = frozenset({"server_error", "timeout", "network"})

REPORT_COLUMNS = [
    "youtube_id", "label", "split", "status", "reason", "path", "message", "time_start", "time_end", "clip_id",
]

# Video-only first (no audio needed), never taller than max_height when anything that small exists; unknown
# heights (direct file URLs) pass the filter. format_sort then picks the largest <= max_height, H.264 in MP4
# (decodes everywhere, cheap to re-encode at the cuts) over https (Range-seekable, what sections need).
FORMAT_TEMPLATE = "bv[height<=?{h}]/b[height<=?{h}]/bv/b"


def format_sort(max_height: int) -> list[str]:
    return [f"res:{max_height}", "vcodec:h264", "proto", "ext:mp4"]


class DownloadFailure(Exception):
    """One attempt failed for a known reason; ``reason`` is a key of :data:`REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.whole_file = False  # set when the failure happened on the whole-file fallback path


class _CannotSection(Exception):
    """yt-dlp cannot cut this source itself: download whole and cut locally."""


# -- error classification (pure) -----------------------------------------------------------------------------
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_URL_RE = re.compile(r"\b(?:https?|file|ftp)://\S+", re.I)
_IE_PREFIX_RE = re.compile(r"\[[\w:. -]+\]\s*[\w-]+:\s")  # "[youtube] <id>: ": ids must not decide a reason
_HTTP_CODE_RE = re.compile(r"HTTP Error (\d{3})|\bstatus(?: code)?[ =:]+(\d{3})\b|\b(\d{3}) (?:Client|Server) Error", re.I)

# Order matters: the first matching rule wins (e.g. a bot check is a "sign in" message, as is age restriction;
# "blocked it in your country on copyright grounds" is geo, not a takedown; a terminated account says "no
# longer available", which must not fall through to "unavailable").
_RULES: list[tuple[str, re.Pattern[str]]] = [
    (reason, re.compile(pattern, re.I))
    for reason, pattern in [
        ("file_urls_disabled", r"file:// URLs are disabled|file URLs are not allowed"),
        ("bot_check", r"confirm you(?:'|’|&#39;|\s)?re not a bot|not a robot|unusual traffic|captcha"),
        ("age_restricted", r"confirm your age|age[- ]restricted|inappropriate for some users|age verification"),
        ("geo_blocked", r"in your country|geo[- ]?restrict|from your location|not available in your region"),
        ("private", r"private video|video is private|members[- ]only|join this channel|premium members"),
        ("removed", r"account associated with this video has been terminated|account .* terminated|"
                    r"removed by the (?:uploader|user)|video has been removed|copyright|terms of service|"
                    r"violat(?:es|ing) YouTube|community guidelines"),
        ("rate_limited", r"HTTP Error 429|too many requests|rate[- ]?limit"),
        ("unavailable", r"video unavailable|is unavailable|(?:no longer|not) available|does not exist|"
                        r"has been deleted|live event will begin|premieres in|requested format is not available|"
                        r"no video formats found|drm protected"),
    ]
]
_TIMEOUT_RE = re.compile(r"timed? ?out|timeout", re.I)
_NETWORK_RE = re.compile(
    r"connection (?:reset|refused|aborted|broken|closed|error)|remote ?disconnected|remote end closed|"
    r"incomplete ?read|network is unreachable|no route to host|name or service not known|"
    r"temporary failure in name resolution|failed to resolve|nodename nor servname|getaddrinfo failed|"
    r"broken pipe|EOF occurred|unexpected eof|did not get any data blocks|content ?too ?short|"
    r"downloaded file is too short|unable to connect|connectionerror|errno 10[34]|errno 111",
    re.I,
)
_UNSUPPORTED_RE = re.compile(r"unsupported url|is not a valid url|incomplete youtube id", re.I)
_NOT_VIDEO_RE = re.compile(
    r"invalid data found when processing input|moov atom not found|not a (?:playable )?video|no video stream|"
    r"could not find codec parameters|no decodable video frame",
    re.I,
)
_FFMPEG_RE = re.compile(r"ffmpeg|ffprobe|postprocessing", re.I)
_CANNOT_SECTION_RE = re.compile(
    r"cannot be partially downloaded|requested downloading the video partially|ffmpeg exited with code", re.I
)


def clean_message(text: str, limit: int = 500) -> str:
    """One readable line: no ``ERROR:`` prefix, colour codes, carriage returns or runs of whitespace."""
    text = _ANSI_RE.sub("", str(text)).replace("\r", " ")
    text = re.sub(r"^\s*ERROR:\s*", "", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_text(err: BaseException | str) -> str:
    """The message of ``err`` plus its causes (yt-dlp keeps the real exception in ``exc_info``)."""
    if isinstance(err, str):
        return err
    parts, seen = [], set()
    stack: list[BaseException | None] = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        parts.append(f"{type(e).__name__}: {e}")
        exc_info = getattr(e, "exc_info", None)
        if isinstance(exc_info, tuple) and len(exc_info) > 1 and isinstance(exc_info[1], BaseException):
            stack.append(exc_info[1])
        stack += [getattr(e, "cause", None) if isinstance(getattr(e, "cause", None), BaseException) else None,
                  e.__cause__, e.__context__]
    return " | ".join(parts)


def http_status(err: BaseException | str) -> int | None:
    """The HTTP status code an error carries, from the exception chain or the message text."""
    if not isinstance(err, str):
        stack: list[Any] = [err]
        seen = set()
        while stack:
            e = stack.pop()
            if e is None or id(e) in seen:
                continue
            seen.add(id(e))
            status = getattr(e, "status", None)
            if type(e).__name__ == "HTTPError" and isinstance(status, int):
                return status
            exc_info = getattr(e, "exc_info", None)
            if isinstance(exc_info, tuple) and len(exc_info) > 1:
                stack.append(exc_info[1])
            stack += [e.__cause__, e.__context__] if isinstance(e, BaseException) else []
    m = _HTTP_CODE_RE.search(_URL_RE.sub("", _error_text(err)))
    if m:
        return int(next(g for g in m.groups() if g))
    return None


def classify_error(err: BaseException | str) -> str:
    """Map an exception or yt-dlp message to a reason of :data:`REASONS` (pure; URLs are ignored so that words
    in a URL such as ``/private/`` cannot decide the reason)."""
    if isinstance(err, BaseException) and is_disk_full(err):
        return "disk_full"
    text = _IE_PREFIX_RE.sub("", _URL_RE.sub("", _error_text(err)))
    if "no space left on device" in text.lower():
        return "disk_full"
    for reason, pattern in _RULES:
        if pattern.search(text):
            return reason
    code = http_status(err)
    if code is not None:
        if code == 429:
            return "rate_limited"
        if 500 <= code <= 599:
            return "server_error"
        if 400 <= code <= 499:
            return "http_error"
    if _TIMEOUT_RE.search(text) or (isinstance(err, BaseException) and isinstance(err, TimeoutError)):
        return "timeout"
    if _NETWORK_RE.search(text) or (isinstance(err, BaseException) and isinstance(err, ConnectionError)):
        return "network"
    if _UNSUPPORTED_RE.search(text):
        return "unsupported_url"
    if _NOT_VIDEO_RE.search(text):
        return "not_video"
    if _FFMPEG_RE.search(text):
        return "ffmpeg_error"
    return "unknown"


def is_transient(reason: str) -> bool:
    return reason in TRANSIENT


def backoff_delays(retries: int, backoff: float) -> list[float]:
    """Seconds to wait before retry 1..retries: ``backoff, 2*backoff, 4*backoff, ...``."""
    return [backoff * (2**i) for i in range(retries)]


# -- paths and URLs ------------------------------------------------------------------------------------------
def clip_path(data_dir: str | os.PathLike, clip: Clip) -> Path:
    """``<data_dir>/raw/<label_slug>/<clip_stem>.mp4``; raises UnsafePathError for labels/ids that would escape."""
    return safe_join(data_dir, "raw", label_slug(clip.label), clip_stem(clip.youtube_id, clip.time_start,
                                                                        clip.time_end) + ".mp4")


def clip_url(url_template: str, youtube_id: str) -> str:
    return url_template.replace("{youtube_id}", youtube_id)


def is_file_url(url: str) -> bool:
    return urlsplit(url).scheme.lower() == "file"


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
def _set_ffmpeg_for_sections(ffmpeg: str) -> None:
    """yt-dlp decides whether ffmpeg can cut sections with ``FFmpegFD.available()``, which ignores the
    ``ffmpeg_location`` parameter and reads a context variable that only its CLI sets; without this a machine
    whose ffmpeg is not on PATH (the imageio-ffmpeg binary) would never get a trimmed download. Context
    variables are per thread/task, so this is set in the worker itself."""
    try:
        from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor

        FFmpegPostProcessor._ffmpeg_location.set(ffmpeg)
    except (ImportError, AttributeError):  # pragma: no cover - a future yt-dlp; the fallback path still works
        pass


def run_ytdlp(url: str, outtmpl: str, cfg: DownloadConfig, *, section: tuple[float, float] | None) -> tuple[Path, dict]:
    """Download ``url`` to ``outtmpl``; returns the file written and yt-dlp's info dict.

    Raises :class:`_CannotSection` when a section was asked for and yt-dlp/ffmpeg cannot cut this source, and
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
        if section is not None and _CANNOT_SECTION_RE.search(msg):
            raise _CannotSection(msg) from e
        raise DownloadFailure(classify_error(e), msg) from e
    if not info:
        msg = logger.last_error() or "yt-dlp returned no information"
        raise DownloadFailure(classify_error(msg), msg)
    if info.get("_type") == "playlist":
        entries = [e for e in (info.get("entries") or []) if e]
        info = entries[0] if entries else {}
    downloads = info.get("requested_downloads") or []
    path = Path(downloads[-1]["filepath"]) if downloads and downloads[-1].get("filepath") else None
    if path is None or not path.is_file():
        msg = logger.last_error() or "yt-dlp reported success but wrote no file"
        raise DownloadFailure("unknown", msg)
    return path, info


# -- local cut and validation --------------------------------------------------------------------------------
def trim_command(src: Path, dst: Path, start: float, duration: float, exe: str | None = None) -> list[str]:
    """The ffmpeg argv of :func:`trim_video`: input seek, first video stream only, even size, H.264 MP4."""
    return ffmpeg_command(str(src), str(dst), input_options={"ss": f"{float(start):.3f}"}, exe=exe, output_options={
        "t": f"{duration:.3f}", "map": "0:V:0", "an": None, "sn": None, "dn": None,
        "vf": "scale=trunc(iw/2)*2:trunc(ih/2)*2",  # yuv420p needs even sizes
        "c:v": "libx264", "preset": "veryfast", "crf": 20, "pix_fmt": "yuv420p", "movflags": "+faststart", "f": "mp4",
    })


def trim_video(src: Path, dst: Path, start: float, end: float, *, timeout: float | None = None) -> Path:
    """Cut ``[start, end]`` out of ``src`` into an H.264 MP4 without audio, exact to the frame.

    Re-encoding with input seeking (``-ss`` before ``-i``, accurate by default) was measured to give exactly the
    frames of the window; ``-c copy`` starts at the previous keyframe (up to a GOP of extra frames hidden by an
    edit list) and ends a frame or two late. A 10 s cut costs ~0.8 s at 320x240 and ~2.5 s at 640x360 of
    pure-noise video on one core, small next to a download."""
    duration = max(float(end) - float(start), 0.001)
    cmd = trim_command(src, dst, start, duration)
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout or max(120.0, 20 * duration), check=False,
                              **die_with_parent_kwargs())
    except subprocess.TimeoutExpired as e:
        raise DownloadFailure("ffmpeg_error", f"ffmpeg timed out cutting {src.name}") from e
    if proc.returncode != 0:
        err = clean_message(proc.stderr.decode(errors="replace")) or f"exit code {proc.returncode}"
        raise DownloadFailure("not_video" if _NOT_VIDEO_RE.search(err) else "ffmpeg_error", f"ffmpeg: {err}")
    return dst


def video_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a playable video, or None: it must probe with a video stream and decode a frame."""
    import av

    try:
        info = probe(path)
    except ProbeError as e:  # its text names the (temporary) file: keep only the cause
        cause = re.sub(r":\s*'[^']*'\s*$", "", str(e).split(": ", 1)[-1])
        return f"cannot open as video: {cause}"
    if not info.has_video:
        return "no video stream"
    try:
        with av.open(str(path), metadata_errors="ignore") as c:
            for _ in c.decode(video=0):
                return None
    except (av.error.FFmpegError, OSError, ValueError) as e:
        return f"no decodable video frame: {e}"
    return "no decodable video frame"


def _require_video(path: Path, what: str) -> None:
    problem = video_problem(path)
    if problem is not None:
        raise DownloadFailure("not_video", f"{what} is not a playable video ({problem})")


def _cleanup(folder: Path, prefix: str) -> None:
    for p in folder.glob(prefix + "*"):
        try:
            p.unlink()
        except (IsADirectoryError, FileNotFoundError):
            pass


def _short_cut(path: Path, start: float, end: float, source_duration: Any) -> bool:
    """True when a cut is less than half as long as the window the source could give (ffmpeg gave up early)."""
    stop = min(end, source_duration) if isinstance(source_duration, (int, float)) and source_duration > 0 else end
    expected = stop - start
    try:
        got = probe(path).duration
    except ProbeError:
        return True
    return expected > 0 and 0 < got < 0.5 * expected


def fetch_clip(url: str, final: Path, start: float, end: float, cfg: DownloadConfig, *, sections: bool = True) -> Path:
    """One attempt: yt-dlp cuts the window (``sections``) or, when it cannot, downloads the whole video and
    ffmpeg cuts it here. Only a validated file is renamed onto ``final``; every temporary file is removed.
    A failure from the whole-file path has ``whole_file=True`` so a retry goes straight there."""
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = partial_prefix(final)
    folder = final.parent
    try:
        if sections:
            try:
                got, info = run_ytdlp(url, str(folder / f"{prefix}.%(ext)s"), cfg, section=(start, end))
            except _CannotSection:
                pass
            else:
                src_dur = info.get("duration")
                if isinstance(src_dur, (int, float)) and src_dur > 0 and start >= src_dur:
                    raise DownloadFailure("out_of_range", f"clip starts at {start:g} s but the video is {src_dur:g} s long")
                if video_problem(got) is None and not _short_cut(got, start, end, src_dur):
                    os.replace(got, final)
                    return final
                # An empty or short cut: the window may lie past the end of a source whose length yt-dlp did not
                # know, or a server that ignores Range requests made ffmpeg stop early. The whole file tells which.
        try:
            whole, _ = run_ytdlp(url, str(folder / f"{prefix}-whole.%(ext)s"), cfg, section=None)
            _require_video(whole, "the downloaded file")
            src_dur = probe(whole).duration
            if src_dur > 0 and start >= src_dur:
                raise DownloadFailure("out_of_range", f"clip starts at {start:g} s but the video is {src_dur:g} s long")
            cut = trim_video(whole, folder / f"{prefix}.mp4", start, end)
            _require_video(cut, "the cut clip")
            os.replace(cut, final)
            return final
        except DownloadFailure as f:
            f.whole_file = True
            raise
    finally:
        _cleanup(folder, prefix)


# -- one clip, with retries ----------------------------------------------------------------------------------
@dataclass
class ClipResult:
    """One row of ``reports/download.csv`` (plus how many attempts it took)."""

    youtube_id: str
    label: str
    split: str
    status: str  # downloaded | skipped | failed
    reason: str = ""
    path: str = ""  # relative to data_dir, POSIX separators; empty when no safe path exists
    message: str = ""
    time_start: float = 0.0
    time_end: float = 0.0
    clip_id: str = ""
    attempts: int = 0
    seconds: float = field(default=0.0, repr=False)

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: d[k] for k in REPORT_COLUMNS}


def _result(clip: Clip, status: str, **kw: Any) -> ClipResult:
    try:
        cid = clip.clip_id
    except (UnsafePathError, OverflowError, ValueError):
        cid = ""
    return ClipResult(clip.youtube_id, clip.label, clip.split, status, time_start=clip.time_start,
                      time_end=clip.time_end, clip_id=cid, **kw)


def download_clip(
    clip: Clip,
    data_dir: str | os.PathLike,
    url_template: str,
    cfg: DownloadConfig,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> ClipResult:
    """Download one clip unless a valid copy is already there; never raises for a clip-level problem.

    Transient failures (:data:`TRANSIENT`) are retried ``cfg.retries`` times after ``backoff_delays``; any other
    reason fails at once (a 404 or a private video will not change in a minute). Anything unexpected about one
    clip (an odd row, a disk that filled up, a bug) becomes that clip's report row, never a crashed stage."""
    try:
        return _download_clip(clip, data_dir, url_template, cfg, sleep=sleep)
    except Exception as e:  # noqa: BLE001 - row-level isolation: the reason and message go into the report
        reason = classify_error(e)
        msg = clean_message(f"{type(e).__name__}: {e}")
        if reason == "disk_full":
            msg = f"disk full at {Path(data_dir) / 'raw'}: {msg}"
        return _result(clip, "failed", reason=reason, message=msg)


def _download_clip(clip: Clip, data_dir: str | os.PathLike, url_template: str, cfg: DownloadConfig, *,
                   sleep: Callable[[float], None]) -> ClipResult:
    t0 = time.monotonic()
    try:
        final = clip_path(data_dir, clip)
    except (UnsafePathError, OverflowError, OSError) as e:
        return _result(clip, "failed", reason="unsafe_path", message=str(e))
    rel = final.relative_to(Path(data_dir).resolve()).as_posix()
    if final.is_file() and video_problem(final) is None:
        return _result(clip, "skipped", path=rel, message="already downloaded")
    # The filter moved an earlier copy to quarantine/: downloading it again on every run would only repeat the
    # same rejection, so it stays a recorded failure until the user deletes the quarantined file.
    quarantined = safe_join(data_dir, "quarantine", label_slug(clip.label), final.name)
    if not final.exists() and quarantined.is_file():
        return _result(clip, "failed", reason="quarantined",
                       message=f"rejected by the filter stage earlier: {quarantined.relative_to(Path(data_dir).resolve())}")
    url = clip_url(url_template, clip.youtube_id)
    if is_file_url(url) and not cfg.allow_file_urls:
        return _result(clip, "failed", reason="file_urls_disabled",
                       message=f"refused {url}: file:// URLs need download.allow_file_urls: true")
    delays = backoff_delays(cfg.retries, cfg.retry_backoff)
    # yt-dlp never cuts file:// sources ("cannot be partially downloaded"): go straight to the local cut
    sections, attempt = not is_file_url(url), 0
    while True:
        attempt += 1
        try:
            fetch_clip(url, final, clip.time_start, clip.time_end, cfg, sections=sections)
        except DownloadFailure as f:
            if f.whole_file:
                sections = False
            if is_transient(f.reason) and attempt <= len(delays):
                sleep(delays[attempt - 1])
                continue
            return _result(clip, "failed", reason=f.reason, message=f.message, attempts=attempt,
                           seconds=time.monotonic() - t0)
        return _result(clip, "downloaded", path=rel, attempts=attempt, seconds=time.monotonic() - t0)


# -- housekeeping and the report -----------------------------------------------------------------------------
def clean_partials(raw_dir: str | os.PathLike) -> list[Path]:
    """Remove temporary files an interrupted run left under ``raw/`` (never a finished clip), and only those of
    owners that are dead: a temporary name carries its writer's pid, so a run never deletes the files of another
    one still at work (before the owner was recorded, a second run deleted a first one's downloads in flight)."""
    root = Path(raw_dir)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for p in root.rglob("*"):
        if p.is_file() and is_partial(p) and not partial_owner_alive(p):
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


def report_csv(rows: Iterable[dict[str, Any]]) -> str:
    return reports.report_csv(rows, REPORT_COLUMNS)


def write_report(rows: Iterable[dict[str, Any]], path: str | os.PathLike) -> Path:
    """``reports/download.csv``, written under a temporary name and renamed (a crash leaves the old report)."""
    return reports.write_report(rows, REPORT_COLUMNS, path)


def summary_message(counts: dict[str, int]) -> str:
    """``12 of 14 clips ready (10 downloaded, 2 already there); 2 failed: 1 http_error, 1 not_video``."""
    ready = counts["downloaded"] + counts["skipped"]
    msg = (f"{ready} of {counts['requested']} clips ready ({counts['downloaded']} downloaded, "
           f"{counts['skipped']} already there)")
    if counts["failed"]:
        reasons = ", ".join(f"{v} {k.removeprefix('failed_')}" for k, v in counts.items() if k.startswith("failed_"))
        msg += f"; {counts['failed']} failed: {reasons}"
    return msg


def summarize(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """``requested, downloaded, skipped, failed`` then ``failed_<reason>`` counts, most frequent first."""
    rows = list(rows)
    status = Counter(r["status"] for r in rows)
    reasons = Counter(r["reason"] for r in rows if r["status"] == "failed")
    counts = {"requested": len(rows), "downloaded": status["downloaded"], "skipped": status["skipped"],
              "failed": status["failed"]}
    counts.update({f"failed_{k}": v for k, v in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))})
    return counts
