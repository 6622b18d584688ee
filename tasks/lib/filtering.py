"""The filter stage's logic: is a downloaded file a usable video, and the bookkeeping around the answer.

A file is checked by demuxing every video packet and decoding every frame once (single thread; no pixel
conversion). That is as expensive as the sampling itself, but it is the only check that sees a broken middle, and
it runs once per file: the result is remembered in ``reports/filter.csv`` against the file's size and mtime.

Decode-error policy (measured on ../shared/clips and on damaged files the tests make): real files often carry a
few bad packets that every player conceals. ``corrupted__decord_corrupted.mp4`` has one rejected H.264 packet of 50
("Invalid NAL unit size") and otherwise fine pictures; ``box__opencv_box.mp4`` logs H.264 errors at its start but
loses no frame. So a file is kept while at most ``MAX_BAD_FRACTION`` of its packets (or one packet, whichever is
larger) give no frame, and the first/last ``EDGE_TOLERANCE`` frames may be missing; the report's ``message`` says
how many were lost. Scrambling 10% of a file's bytes loses ~10% of its frames: quarantined as ``corrupt``.

Packets flagged "discard" (before an MP4 edit list's start, e.g. a stream-copied cut that began between keyframes,
or past its end) are decoded as references but are not frames of the clip, so they are neither counted nor missed.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from model.atomic import atomic_write_text
from .reports import read_csv_rows, write_report
from .paths import is_partial, label_slug, safe_join
from .sampling import (
    DECODER_FAILURES,
    DecodeStats,
    PacketScan,
    SamplingError,
    configure_decoder,
    decode_frames,
    frame_rotation,
    iter_packets,
    open_video,
)

# Bump when the check itself changes, so files checked by an older version are checked again.
CHECK_VERSION = 1
MAX_BAD_FRACTION = 0.05
EDGE_TOLERANCE = 2  # frames that may be missing at the start or end
MIN_FRAMES = 2  # one frame is a picture, not a video
TRUNCATION_TOLERANCE_S = 0.5
TRUNCATION_TOLERANCE_FRACTION = 0.05
VIDEO_SUFFIXES = {
    ".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".gif", ".3gp", ".ogv", ".wmv",
}

REASONS: dict[str, str] = {
    "empty_file": "the file has 0 bytes",
    "unreadable": "not a media container FFmpeg can open (an HTML page, text, random bytes)",
    "truncated": "the file ends early: an MP4 without its index, or packets stopping well before the declared "
                 "duration",
    "no_video_stream": "a media file without a video stream (audio only)",
    "zero_duration": f"fewer than {MIN_FRAMES} video frames: no time extent to sample",
    "undecodable_first_frame": f"no frame decodes, or more than {EDGE_TOLERANCE} frames are missing at the start",
    "undecodable_last_frame": f"more than {EDGE_TOLERANCE} frames are missing at the end",
    "corrupt": f"more than {MAX_BAD_FRACTION:.0%} of the packets give no frame",
    "too_large": "frames of more than MAX_SOURCE_PIXELS pixels (above 4096x2304): decoding them needs GBs of memory",
}
# Decoding is what costs memory (reference frames, one frame per decoder thread): one 2 s 8K clip took the frames
# stage to 1.51 GB RSS against 0.55 GB for 30 normal clips. Kinetics sources are 360p-1080p; 4K UHD (8.3 MP)
# still passes, larger is refused here, before any decoding, so neither this check nor the frames stage decodes it.
MAX_SOURCE_PIXELS = 4096 * 2304

FILTER_COLUMNS = [
    "path", "label", "status", "reason", "message", "split", "clip_id", "youtube_id", "time_start", "time_end",
    "original_path", "size", "mtime_ns", "frames", "duration", "fps", "width", "height", "rotation", "codec",
    "decode_errors", "check_version",
]


@dataclass
class CheckResult:
    """The verdict on one file, plus what the check learnt (true frame count, duration) for the report."""

    ok: bool
    reason: str = ""
    message: str = ""
    frames: int = 0
    packets: int = 0
    duration: float = 0.0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    rotation: int = 0
    codec: str = ""
    decode_errors: int = 0

    @classmethod
    def bad(cls, reason: str, message: str, **kw: Any) -> "CheckResult":
        assert reason in REASONS, reason
        return cls(ok=False, reason=reason, message=message, **kw)


def check_video(path: str | os.PathLike, *, threads: int = 1) -> CheckResult:
    """Open, demux and fully decode ``path``; never raises for a bad file (the verdict says why)."""
    try:
        with open_video(path) as (container, stream):
            w, h = stream.codec_context.width or 0, stream.codec_context.height or 0
            if w * h > MAX_SOURCE_PIXELS:
                return CheckResult.bad("too_large", f"{w}x{h} frames ({w * h / 1e6:.1f} MP) are above the "
                                       f"{MAX_SOURCE_PIXELS / 1e6:.1f} MP limit (4096x2304); downscale the source "
                                       "(ffmpeg -vf scale=-2:720) and put it back in raw/", width=w, height=h)
            tb = stream.time_base
            declared = float(stream.duration * tb) if stream.duration and tb else (
                container.duration / 1_000_000 if container.duration else 0.0)
            configure_decoder(stream, threads)
            scan, stats = PacketScan(), DecodeStats()
            first_pts = last_pts = None
            geometry = (0, 0, 0)
            # one streaming pass: demux (counting packets and their timestamps) and decode together
            for frame in decode_frames(stream, iter_packets(container, stream, scan, keep_pts=True), stats):
                if first_pts is None:
                    geometry = (frame.width, frame.height, frame_rotation(frame))
                    first_pts = frame.pts
                if frame.pts is not None:
                    last_pts = frame.pts
            codec = stream.codec_context.name or ""
    except SamplingError as e:
        return CheckResult.bad(e.reason if e.reason in REASONS else "unreadable", e.message)
    except DECODER_FAILURES as e:  # FFmpeg/PyAV failing on an odd file in a way not handled above
        return CheckResult.bad("unreadable", f"{type(e).__name__}: {e}")

    covered = float((scan.end_pts - scan.first_pts) * tb) if scan.first_pts is not None and tb else 0.0
    info: dict[str, Any] = {"packets": scan.count, "codec": codec}
    if scan.count == 0:
        return CheckResult.bad("zero_duration", "the video stream has no frames", **info)
    w, h, rot = geometry
    duration = covered if covered > 0 else declared
    info.update(frames=stats.decoded, duration=duration, decode_errors=stats.errors,
                width=h if rot in (90, 270) else w, height=w if rot in (90, 270) else h, rotation=rot,
                fps=stats.decoded / duration if duration > 0 else 0.0)
    return _verdict(scan, stats, declared, covered, first_pts, last_pts, info)


def _verdict(scan, stats: DecodeStats, declared: float, covered: float, first_pts, last_pts,
             info: dict[str, Any]) -> CheckResult:
    n_pk, n_dec = scan.count, stats.decoded
    if n_dec == 0:
        return CheckResult.bad("undecodable_first_frame", f"none of {n_pk} packets decoded to a frame "
                               f"({stats.errors} decode errors)", **info)
    if declared > 0 and declared - covered > max(TRUNCATION_TOLERANCE_S, TRUNCATION_TOLERANCE_FRACTION * declared):
        return CheckResult.bad("truncated", f"packets cover {covered:.2f} s of the declared {declared:.2f} s", **info)
    if scan.demux_error:
        return CheckResult.bad("truncated", f"the container breaks off after {n_pk} packets: {scan.demux_error}",
                               **info)
    missing_start = sum(1 for p in scan.pts if first_pts is not None and p < first_pts)
    missing_end = sum(1 for p in scan.pts if last_pts is not None and p > last_pts)
    if missing_start > EDGE_TOLERANCE:
        return CheckResult.bad("undecodable_first_frame", f"the first {missing_start} frames do not decode", **info)
    if missing_end > EDGE_TOLERANCE:
        return CheckResult.bad("undecodable_last_frame", f"the last {missing_end} frames do not decode", **info)
    bad = max(stats.errors, n_pk - n_dec)
    if bad > max(1, MAX_BAD_FRACTION * n_pk):
        return CheckResult.bad("corrupt", f"{bad} of {n_pk} packets gave no frame ({stats.errors} decode errors)",
                               **info)
    if n_dec < MIN_FRAMES:
        return CheckResult.bad("zero_duration", f"only {n_dec} frame: a still picture, not a video", **info)
    note = f"{bad} of {n_pk} packets gave no frame (tolerated)" if bad else ""
    return CheckResult(ok=True, message=note, **info)


# -- what to check: the download report, or raw/ when there is none --------------------------------------------
_STEM_RE = re.compile(r"^(?P<yid>[A-Za-z0-9_-]{1,64})_(?P<s>\d{6})_(?P<e>\d{6})$")


@dataclass
class FilterItem:
    """One file to judge. ``rel`` is its path relative to data_dir (POSIX), the key of the report rows."""

    path: Path
    rel: str
    label: str
    split: str = ""
    clip_id: str = ""
    youtube_id: str = ""
    time_start: str = ""
    time_end: str = ""

    def carried(self) -> dict[str, Any]:
        return {"label": self.label, "split": self.split, "clip_id": self.clip_id, "youtube_id": self.youtube_id,
                "time_start": self.time_start, "time_end": self.time_end}


@dataclass
class FilterInputs:
    items: list[FilterItem]
    source: str  # "download.csv" or "raw/ scan"
    notes: list[str] = field(default_factory=list)
    missing: list[FilterItem] = field(default_factory=list)  # reported as downloaded but not on disk


def _rel(data_dir: Path, p: Path) -> str:
    return p.resolve().relative_to(data_dir.resolve()).as_posix()


def filter_inputs(data_dir: str | os.PathLike, classes: list[str]) -> FilterInputs:
    """Rows of ``reports/download.csv`` that say a clip is on disk (``downloaded``/``skipped``) for a configured
    class; without that report (files a user copied in), every video file under ``raw/<label_slug>/``."""
    data_dir = Path(data_dir)
    report = data_dir / "reports" / "download.csv"
    if not report.is_file():
        return FilterInputs(scan_raw(data_dir, classes), "raw/ scan",
                            ["no reports/download.csv: checking every video file under raw/<class>/"])
    wanted = set(classes)
    out = FilterInputs([], "download.csv")
    other, seen = 0, set()
    for r in read_csv_rows(report):
        if r.get("status") not in ("downloaded", "skipped") or not r.get("path") or r["path"] in seen:
            continue
        seen.add(r["path"])
        if r.get("label") not in wanted:
            other += 1
            continue
        try:
            p = safe_join(data_dir, r["path"])
        except ValueError as e:  # UnsafePathError: a report row pointing outside data_dir is never touched
            out.notes.append(f"ignored report row {r.get('clip_id') or r['path']!r}: {e}")
            continue
        stem = Path(r["path"]).stem
        item = FilterItem(p, _rel(data_dir, p), r["label"], r.get("split", ""), r.get("clip_id") or stem,
                          r.get("youtube_id", ""), r.get("time_start", ""), r.get("time_end", ""))
        (out.items if p.is_file() else out.missing).append(item)
    if other:
        out.notes.append(f"{other} report row(s) of classes not in the config were not checked")
    return out


def scan_raw(data_dir: str | os.PathLike, classes: list[str]) -> list[FilterItem]:
    data_dir = Path(data_dir)
    items: list[FilterItem] = []
    for label in classes:
        folder = data_dir / "raw" / label_slug(label)
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if not p.is_file() or is_partial(p) or p.name.startswith(".") or p.suffix.lower() not in VIDEO_SUFFIXES:
                continue
            m = _STEM_RE.match(p.stem)
            items.append(FilterItem(
                p, _rel(data_dir, p), label, "", p.stem, m["yid"] if m else "",
                str(int(m["s"])) if m else "", str(int(m["e"])) if m else "",
            ))
    return items


# -- re-running: what the previous report already settled ------------------------------------------------------
def file_stamp(p: Path) -> tuple[int, int]:
    st = p.stat()
    return st.st_size, st.st_mtime_ns


def reusable_row(item: FilterItem, previous: dict[str, dict[str, str]], data_dir: Path) -> dict[str, Any] | None:
    """The previous verdict on ``item`` when nothing on disk changed since: a kept file with the same size, mtime
    and check version, or a file that was quarantined and has not come back to raw/ (no re-download)."""
    row = previous.get(item.rel)
    if row is None or row.get("check_version") != str(CHECK_VERSION):
        return None
    if row.get("status") == "kept" and item.path.is_file():
        if (str(item.path.stat().st_size), str(item.path.stat().st_mtime_ns)) == (row.get("size"), row.get("mtime_ns")):
            return {**row, **item.carried()}
        return None
    if row.get("status") == "quarantined" and not item.path.exists() and (data_dir / row.get("path", "")).is_file():
        return {**row, **item.carried()}
    return None


def quarantined_row(item: FilterItem, data_dir: Path) -> dict[str, Any] | None:
    """The verdict on a file that is gone from ``raw/`` because an earlier run quarantined it, read back from its
    ``quarantine/<class>/<name>.reason.txt``. A filter killed after quarantining a file but before writing its
    report used to list that file as missing and leave it out of ``filter.csv``; the file and its reason are on
    disk, so the row is rebuilt. With numbered copies (``x.1.mp4``) the newest one is the verdict."""
    try:
        folder = safe_join(data_dir, "quarantine", label_slug(item.label))
    except ValueError:
        return None
    name = Path(item.rel).name
    stem, suffix = Path(name).stem, Path(name).suffix
    candidates = [folder / name] + sorted(folder.glob(f"{stem}.*{suffix}")) if folder.is_dir() else []
    found = [p for p in candidates if p.is_file() and p.with_name(p.name + ".reason.txt").is_file()
             and (p.name == name or p.name[len(stem) + 1:-len(suffix) or None].isdigit())]
    if not found:
        return None
    q = max(found, key=lambda p: p.stat().st_mtime_ns)
    reason, _, message = q.with_name(q.name + ".reason.txt").read_text(errors="replace").strip().partition(": ")
    if reason not in REASONS:
        reason, message = "unreadable", f"{reason}: {message}".strip(": ")
    size, mtime = file_stamp(q)
    return {"path": _rel(data_dir, q), "status": "quarantined", "reason": reason, "message": message,
            **item.carried(), "original_path": item.rel, "size": size, "mtime_ns": mtime,
            "check_version": CHECK_VERSION}


def previous_rows(report: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Last run's filter.csv keyed by the raw path each row is about."""
    return {r.get("original_path") or r.get("path", ""): r for r in read_csv_rows(report)}


# -- acting on a verdict -----------------------------------------------------------------------------------------
def quarantine_file(data_dir: str | os.PathLike, path: Path, label: str, reason: str, message: str) -> Path:
    """Move ``path`` to ``quarantine/<label_slug>/`` (never delete: the user may want to look at it), with a
    ``<name>.reason.txt`` beside it. An earlier quarantined copy of the same name is kept: the new one gets a
    numbered name."""
    folder = safe_join(data_dir, "quarantine", label_slug(label))
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / path.name
    n = 1
    while dest.exists():
        dest = folder / f"{path.stem}.{n}{path.suffix}"
        n += 1
    shutil.move(str(path), str(dest))
    atomic_write_text(dest.with_name(dest.name + ".reason.txt"), f"{reason}: {message}\n")
    return dest


def result_row(item: FilterItem, result: CheckResult, data_dir: Path, *, stamp: tuple[int, int],
               moved_to: Path | None = None) -> dict[str, Any]:
    res = asdict(result)
    return {
        "path": _rel(data_dir, moved_to) if moved_to else item.rel,
        "status": "kept" if result.ok else "quarantined",
        "reason": result.reason,
        "message": result.message,
        **item.carried(),
        "original_path": item.rel,
        "size": stamp[0],
        "mtime_ns": stamp[1],
        **{k: res[k] for k in ("frames", "width", "height", "rotation", "codec", "decode_errors")},
        "duration": round(result.duration, 4),
        "fps": round(result.fps, 4),
        "check_version": CHECK_VERSION,
    }


def remove_empty_dirs(root: str | os.PathLike) -> list[Path]:
    """Class folders under ``raw/`` left empty by quarantining (deepest first; ``root`` itself stays)."""
    root = Path(root)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()  # only succeeds when empty
            removed.append(d)
        except OSError:
            pass
    return removed


def write_filter_report(rows: Iterable[dict[str, Any]], path: str | os.PathLike) -> Path:
    rows = sorted(rows, key=lambda r: (r["label"], r["original_path"] or r["path"]))
    return write_report(rows, FILTER_COLUMNS, path)


@dataclass
class FilterSummary:
    counts: dict[str, int]
    per_class: dict[str, dict[str, int]]
    failed: bool
    message: str


def summarize(rows: list[dict[str, Any]], classes: list[str], *, reused: int = 0, missing: int = 0) -> FilterSummary:
    per_class = {c: {"kept": 0, "quarantined": 0} for c in classes}
    reasons: dict[str, int] = {}
    for r in rows:
        per_class.setdefault(r["label"], {"kept": 0, "quarantined": 0})[r["status"]] += 1
        if r["status"] == "quarantined":
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    kept = sum(v["kept"] for v in per_class.values())
    counts = {"checked": len(rows) - reused, "already_checked": reused, "kept": kept,
              "quarantined": len(rows) - kept}
    if missing:
        counts["missing_files"] = missing
    counts.update({f"quarantined_{k}": v for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])})
    counts.update({f"kept[{c}]": per_class[c]["kept"] for c in classes})
    usable = [c for c in classes if per_class[c]["kept"] > 0]
    by_class = ", ".join(f"{c!r}: {per_class[c]['kept']}" for c in classes)
    if len(usable) < 2:
        return FilterSummary(counts, per_class, True,
                             f"fewer than two classes have usable clips (kept per class: {by_class}); "
                             "a classifier needs at least two")
    msg = f"{kept} of {len(rows)} clips kept ({by_class})"
    if len(rows) - kept:
        msg += "; quarantined: " + ", ".join(f"{v} {k}" for k, v in reasons.items())
    return FilterSummary(counts, per_class, False, msg)
