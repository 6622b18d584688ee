"""Why a download failed: the report's reasons, and the classification of yt-dlp's and ffmpeg's messages into
them (pure functions). Only :data:`TRANSIENT` reasons are retried."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tasks.lib.errors import is_disk_full


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
    "extractor_error": "yt-dlp could not read the site's page or player: the site changed, yt-dlp may be too old",
    "file_urls_disabled": "file:// URL refused (set download.allow_file_urls: true)",
    "unsafe_path": "label or youtube_id would make an unsafe path; refused",
    "quarantined": "downloaded earlier but rejected by the filter stage (see quarantine/; delete it to retry)",
    "ffmpeg_error": "ffmpeg failed to cut or convert the clip",
    "disk_full": "no space left on the disk of data_dir (free some, then re-run)",
    "unknown": "anything else (see the message)",
}
TRANSIENT: frozenset[str] = frozenset({"server_error", "timeout", "network"})


class DownloadFailure(Exception):
    """One attempt failed for a known reason; ``reason`` is a key of :data:`REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.whole_file = False  # set when the failure happened on the whole-file fallback path


class CannotSection(Exception):
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
        # what yt-dlp says when the site changed under it (the usual fix is a newer yt-dlp)
        ("extractor_error", r"unable to extract|failed to extract|(?:signature|nsig) extraction failed|"
                            r"challenge solving failed|please report this issue on|"
                            r"confirm you are on the latest version"),
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
NOT_VIDEO_RE = re.compile(
    r"invalid data found when processing input|moov atom not found|not a (?:playable )?video|no video stream|"
    r"could not find codec parameters|no decodable video frame",
    re.I,
)
_FFMPEG_RE = re.compile(r"ffmpeg|ffprobe|postprocessing", re.I)
CANNOT_SECTION_RE = re.compile(
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
    if NOT_VIDEO_RE.search(text):
        return "not_video"
    if _FFMPEG_RE.search(text):
        return "ffmpeg_error"
    return "unknown"


def ytdlp_version() -> str:
    try:
        from yt_dlp.version import __version__
    except ImportError:  # pragma: no cover - yt-dlp is a dependency
        return "(not installed)"
    return __version__


def upgrade_command() -> str:
    """How to upgrade yt-dlp in the Python running this: ``.venv/bin/pip`` when that is it."""
    import sys

    exe = Path(sys.executable)
    try:
        shown = exe.relative_to(Path.cwd())
    except ValueError:
        shown = exe
    pip = shown.parent / "pip"
    return f"{pip} install -U yt-dlp" if (exe.parent / "pip").exists() else f"{shown} -m pip install -U yt-dlp"


def too_old_hint() -> str:
    """Said with every extractor error: sites change and yt-dlp follows within days."""
    return f"yt-dlp {ytdlp_version()} may be too old: upgrade it ({upgrade_command()})"


def is_transient(reason: str) -> bool:
    return reason in TRANSIENT


def backoff_delays(retries: int, backoff: float) -> list[float]:
    """Seconds to wait before retry 1..retries: ``backoff, 2*backoff, 4*backoff, ...``."""
    return [backoff * (2**i) for i in range(retries)]
