"""One clip: where it goes, how it is fetched (yt-dlp sections, else whole file + local ffmpeg cut), validated
and renamed into place, and retried on transient failures."""
from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from model.atomic import partial_prefix
from tasks.lib.annotations import Clip
from tasks.lib.config import DownloadConfig
from tasks.lib.procs import die_with_parent_kwargs
from tasks.lib.media import ProbeError, ffmpeg_command, probe
from tasks.lib.paths import UnsafePathError, clip_stem, label_slug, safe_join
from tasks.lib.download.errors import (
    DownloadFailure,
    CannotSection,
    NOT_VIDEO_RE,
    backoff_delays,
    classify_error,
    clean_message,
    is_transient,
)
from tasks.lib.download.report import REPORT_COLUMNS
from tasks.lib.download.ytdlp import run_ytdlp


# -- paths and URLs ------------------------------------------------------------------------------------------
def clip_path(data_dir: str | os.PathLike, clip: Clip) -> Path:
    """``<data_dir>/raw/<label_slug>/<clip_stem>.mp4``; raises UnsafePathError for labels/ids that would escape."""
    return safe_join(data_dir, "raw", label_slug(clip.label), clip_stem(clip.youtube_id, clip.time_start,
                                                                        clip.time_end) + ".mp4")


def clip_url(url_template: str, youtube_id: str) -> str:
    return url_template.replace("{youtube_id}", youtube_id)


def is_file_url(url: str) -> bool:
    return urlsplit(url).scheme.lower() == "file"


# -- local cut and validation --------------------------------------------------------------------------------
def trim_command(src: Path, dst: Path, start: float, duration: float, exe: str | None = None) -> list[str]:
    """The ffmpeg argv of :func:`trim_video`: input seek, first video stream only, even size, H.264 MP4.

    One decoder and one encoder thread: with ffmpeg's automatic threading the same cut came out as different bytes
    when several ran at once (5 of 16 clips, 3 concurrent repeats), so the raw clips, and the frames and dataset
    fingerprint after them, depended on the load and the engine. Pinned, they are identical on threads and Dask; the
    stage runs clips in parallel anyway."""
    output = {
        "t": f"{duration:.3f}", "threads": 1, "map": "0:V:0", "an": None, "sn": None, "dn": None,
        "vf": "scale=trunc(iw/2)*2:trunc(ih/2)*2",  # yuv420p needs even sizes
        "c:v": "libx264", "preset": "veryfast", "crf": 20, "pix_fmt": "yuv420p", "movflags": "+faststart", "f": "mp4",
    }
    return ffmpeg_command(str(src), str(dst), input_options={"ss": f"{float(start):.3f}", "threads": 1},
                          output_options=output, exe=exe)


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
        raise DownloadFailure("not_video" if NOT_VIDEO_RE.search(err) else "ffmpeg_error", f"ffmpeg: {err}")
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
            except CannotSection:
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
    force: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> ClipResult:
    """Download one clip unless a valid copy is already there (``force``: download it again, and keep the copy
    when that fails); never raises for a clip-level problem.

    Transient failures (:data:`TRANSIENT`) are retried ``cfg.retries`` times after ``backoff_delays``; any other
    reason fails at once (a 404 or a private video will not change in a minute). Anything unexpected about one
    clip (an odd row, a disk that filled up, a bug) becomes that clip's report row, never a crashed stage."""
    try:
        return _download_clip(clip, data_dir, url_template, cfg, force=force, sleep=sleep)
    except Exception as e:  # noqa: BLE001 - row-level isolation: the reason and message go into the report
        reason = classify_error(e)
        msg = clean_message(f"{type(e).__name__}: {e}")
        if reason == "disk_full":
            msg = f"disk full at {Path(data_dir) / 'raw'}: {msg}"
        return _result(clip, "failed", reason=reason, message=msg)


def _download_clip(clip: Clip, data_dir: str | os.PathLike, url_template: str, cfg: DownloadConfig, *,
                   force: bool, sleep: Callable[[float], None]) -> ClipResult:
    t0 = time.monotonic()
    try:
        final = clip_path(data_dir, clip)
    except (UnsafePathError, OverflowError, OSError) as e:
        return _result(clip, "failed", reason="unsafe_path", message=str(e))
    rel = final.relative_to(Path(data_dir).resolve()).as_posix()
    have_copy = final.is_file() and video_problem(final) is None
    if have_copy and not force:
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
            if have_copy:  # a forced download never costs the clip already here (only a valid file is renamed onto it)
                return _result(clip, "skipped", path=rel, attempts=attempt, seconds=time.monotonic() - t0,
                               message=f"kept the copy already here: downloading it again failed ({f.reason}: {f.message})")
            return _result(clip, "failed", reason=f.reason, message=f.message, attempts=attempt,
                           seconds=time.monotonic() - t0)
        return _result(clip, "downloaded", path=rel, attempts=attempt, seconds=time.monotonic() - t0)
