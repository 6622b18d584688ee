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

The package, by responsibility: :mod:`.errors` (reasons and the classification of messages, pure),
:mod:`.ytdlp` (options and the one real yt-dlp call), :mod:`.fetch` (one clip: fetch, cut, validate, retry) and
:mod:`.report` (the report and partial-file housekeeping). No Prefect here: ``tasks/download.py`` wraps these
functions as tasks.
"""

from __future__ import annotations

from tasks.lib.download.errors import (  # noqa: F401
    REASONS, TRANSIENT, DownloadFailure, CannotSection, clean_message, http_status, classify_error, is_transient, backoff_delays,
)
from tasks.lib.download.ytdlp import (  # noqa: F401
    FORMAT_TEMPLATE, format_sort, CaptureLogger, parse_cookies_from_browser, find_js_runtime, build_ydl_options, check_options, run_ytdlp,
)
from tasks.lib.download.fetch import (  # noqa: F401
    clip_path, clip_url, is_file_url, trim_command, trim_video, video_problem, fetch_clip, ClipResult, download_clip,
)
from tasks.lib.download.report import (  # noqa: F401
    REPORT_COLUMNS, clean_partials, report_csv, write_report, summary_message, summarize,
)

__all__ = [
    "REASONS",
    "TRANSIENT",
    "DownloadFailure",
    "CannotSection",
    "clean_message",
    "http_status",
    "classify_error",
    "is_transient",
    "backoff_delays",
    "FORMAT_TEMPLATE",
    "format_sort",
    "CaptureLogger",
    "parse_cookies_from_browser",
    "find_js_runtime",
    "build_ydl_options",
    "check_options",
    "run_ytdlp",
    "clip_path",
    "clip_url",
    "is_file_url",
    "trim_command",
    "trim_video",
    "video_problem",
    "fetch_clip",
    "ClipResult",
    "download_clip",
    "REPORT_COLUMNS",
    "clean_partials",
    "report_csv",
    "write_report",
    "summary_message",
    "summarize",
]
