"""Prefect tasks of the frames stage: plan what is already done, sample one clip into its .npy, and write the
manifest, dataset.json and reports/frames.csv.

Re-running is decided from disk, in one planning task (a Prefect cache lookup would cost a task run per clip):
a clip is done when its ``.npy`` exists with the expected ``(T, S, S, 3)`` uint8 shape, is newer than its source
file, and ``dataset.json`` records the same sampling parameters. So an unchanged re-run samples nothing, deleting
one ``.npy`` redoes only that clip, a re-downloaded source redoes its clip, and a new ``num_frames``/``size`` (or a
new sampler version) redoes all.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from model import dataset as dataset_format
from model.atomic import atomic_write_text
from tasks.lib import filtering, leakage, reports, sampling
from tasks.lib.config import FramesStage, normalise_split
from tasks.lib.errors import UserError
from tasks.lib.paths import UnsafePathError, label_slug, safe_join
from tasks.lib.results import StageResult
from tasks.lib.splits import SplitClip, assign_splits

FRAMES_REPORT_COLUMNS = ["clip_id", "label", "source_path", "status", "reason", "message", "frames_path"]


class FilterReportMissing(UserError, FileNotFoundError):
    """The filter stage has not run (no reports/filter.csv): run it (a user error, exit 2)."""


@dataclass
class ClipJob:
    """One kept clip: where it comes from, where its frames go, and what the filter report said about it."""

    clip_id: str
    label: str
    source: Path
    source_rel: str  # relative to data_dir, as in filter.csv
    dest: Path
    frames_rel: str  # relative to the dataset folder
    meta: dict[str, Any]  # the filter row (split, youtube_id, times, fps, duration, ...)


@dataclass
class FramesPlan:
    todo: list[ClipJob]
    done: list[dict[str, Any]]  # result rows of clips whose .npy is already right
    failed: list[dict[str, Any]]  # clips that cannot even be attempted (missing source, unsafe id)
    params: dict[str, int]
    params_changed: bool
    notes: list[str] = field(default_factory=list)


def decoder_threads(workers: int) -> int:
    """Decoder threads per clip so that ``workers`` clips at once fill the CPUs without oversubscribing them."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, workers))


def _result(job: ClipJob, status: str, *, reason: str = "", message: str = "", **kw: Any) -> dict[str, Any]:
    return {"clip_id": job.clip_id, "label": job.label, "source_path": job.source_rel, "frames_path": job.frames_rel,
            "status": status, "reason": reason, "message": message, "meta": job.meta, **kw}


@task(name="plan-frames", cache_policy=NO_CACHE)
def plan_frames(config: FramesStage, force: bool = False) -> FramesPlan:
    """Kept clips of the configured classes from reports/filter.csv, split into to-do and already done
    (``force``: nothing is done, every clip is sampled again)."""
    report = config.reports_dir / "filter.csv"
    if not report.is_file():
        raise FilterReportMissing(f"no {report}: run `vivit filter --config ...` first")
    params = sampling.sampling_params(config.frames.num_frames, config.frames.size)
    previous = dataset_format.previous_params(config.dataset_dir)
    changed = previous is not None and previous != params
    redo = changed or force
    prev_rows = {} if redo else dataset_format.previous_rows(config.dataset_dir)
    shape = (config.frames.num_frames, config.frames.size, config.frames.size, 3)
    plan = FramesPlan([], [], [], params, changed)
    if changed:
        plan.notes.append(f"sampling parameters changed ({previous} -> {params}): every clip is sampled again")
    elif force:
        plan.notes.append("force: every clip is sampled again")
    wanted, seen = set(config.classes), set()
    for row in reports.read_csv_rows(report):
        if row.get("status") != "kept" or row.get("label") not in wanted:
            continue
        clip_id = row.get("clip_id") or Path(row["path"]).stem
        try:
            slug = label_slug(row["label"])
            frames_rel = dataset_format.frames_relpath(slug, clip_id)
            dest = safe_join(config.dataset_dir, frames_rel)
            source = safe_join(config.data_dir, row["path"])
        except UnsafePathError as e:
            plan.notes.append(f"skipped filter row {clip_id!r}: {e}")
            continue
        if clip_id in seen:
            plan.notes.append(f"clip {clip_id!r} is listed twice (two labels?): only its first row is used")
            continue
        seen.add(clip_id)
        job = ClipJob(clip_id, row["label"], source, row["path"], dest, frames_rel, row)
        if not source.is_file():
            plan.failed.append(_result(job, "failed", reason="missing_source", message=f"{row['path']} is gone"))
        elif not redo and sampling.npy_matches(dest, shape, source.stat().st_mtime_ns):
            prev = prev_rows.get(frames_rel, {})
            # the previous row describes this very file only if it was written for the same source and the .npy
            # has not been rewritten since (an interrupted run can rewrite a .npy and never reach the manifest)
            if (prev.get("source_path") != _source_for_manifest(config, job.source_rel) or not prev.get("frames_sha256")
                    or str(prev.get("frames_mtime_ns")) != str(dest.stat().st_mtime_ns)):
                prev = {}
            plan.done.append(_result(job, "skipped", message="already sampled", info=_info_from(prev, row),
                                     digest=prev.get("frames_sha256") or sampling.array_digest(np.load(dest))))
        else:
            plan.todo.append(job)
    return plan


def _info_from(prev: dict[str, Any], row: dict[str, str]) -> dict[str, Any]:
    """Source facts for a clip sampled on an earlier run: the previous manifest's, else the filter report's."""
    if prev:
        try:
            return {"n_frames": int(prev["source_frames"]), "fps": float(prev["fps"]),
                    "duration": float(prev["duration"]), "width": int(prev["source_width"]),
                    "height": int(prev["source_height"])}
        except (KeyError, TypeError, ValueError):  # a manifest from an older version: use the filter's facts
            pass

    def num(key: str, cast=float) -> Any:
        try:
            return cast(float(row.get(key) or 0))
        except ValueError:
            return cast(0)

    return {"n_frames": num("frames", int), "fps": num("fps"), "duration": num("duration"),
            "width": num("width", int), "height": num("height", int)}


def _source_for_manifest(config: FramesStage, source_rel: str) -> str:
    """The source file relative to the dataset folder (``../raw/<class>/<clip>.mp4``), like every manifest path."""
    source = safe_join(config.data_dir, source_rel)
    return Path(os.path.relpath(source, config.dataset_dir.resolve())).as_posix()


@task(name="sample-clip", cache_policy=NO_CACHE, task_run_name="sample-{job.clip_id}")
def sample_clip_task(job: ClipJob, num_frames: int, size: int, threads: int) -> dict[str, Any]:
    """Sample one clip into its .npy. A clip that cannot be sampled is a result with a reason, not an error."""
    try:
        frames, info = sampling.sample_clip_info(job.source, num_frames, size, threads=threads)
    except sampling.SamplingError as e:
        get_run_logger().warning("cannot sample %s: %s", job.source_rel, e)
        return _result(job, "failed", reason=e.reason, message=e.message)
    sampling.save_npy(job.dest, frames)
    return _result(job, "sampled", info={"n_frames": info.n_frames, "fps": info.fps, "duration": info.duration,
                                         "width": info.width, "height": info.height},
                   digest=sampling.array_digest(frames))


def _float_or_nan(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


@dataclass
class LeakageCheck:
    """What the leakage check found (``tasks/lib/leakage.py``) and did under ``frames.leakage``."""

    report: Path
    pairs: list[leakage.LeakPair]
    decisions: dict[str, str]  # clip_id -> kept / dropped / moved_to_train (drop policy only)
    nearest: list[float]  # per hashed clip, the distance to its nearest clip in another split
    seconds: float

    @property
    def dropped(self) -> list[str]:
        return sorted(c for c, a in self.decisions.items() if a == leakage.DROPPED)

    @property
    def moved(self) -> list[str]:
        return sorted(c for c, a in self.decisions.items() if a == leakage.MOVED)


@dataclass
class DatasetSummary:
    manifest: Path
    dataset_json: Path
    report: Path
    rows: list[dict[str, Any]]
    per_class_split: dict[str, dict[str, int]]
    warnings: list[str]
    removed: list[str]
    fingerprint: str
    leakage: LeakageCheck | None = None


@task(name="write-dataset", cache_policy=NO_CACHE)
def write_dataset(config: FramesStage, plan: FramesPlan, results: list[dict[str, Any]]) -> DatasetSummary:
    """Assign splits over the clips that have frames, write manifest.parquet + dataset.json (atomically), the
    per-clip reports/frames.csv, and remove .npy files no longer in the manifest."""
    everything = plan.done + results + plan.failed
    ok = [r for r in everything if r["status"] in ("sampled", "skipped")]
    clips = [SplitClip(r["clip_id"], r["label"], normalise_split(r["meta"].get("split") or "")) for r in ok]
    fr = config.frames.split
    split = assign_splits(clips, config.frames.split_mode, (fr.train, fr.val, fr.test), config.seed)
    index = {c: i for i, c in enumerate(config.classes)}
    rows = []
    dataset_dir = config.dataset_dir
    for r in sorted(ok, key=lambda r: (index[r["label"]], r["clip_id"])):
        m, info = r["meta"], r["info"]
        rows.append({
            "clip_id": r["clip_id"], "label": r["label"], "label_index": index[r["label"]],
            "split": split.assignment[r["clip_id"]], "frames_path": r["frames_path"],
            "num_frames": config.frames.num_frames,
            "source_path": _source_for_manifest(config, r["source_path"]),
            "fps": float(info["fps"]), "duration": float(info["duration"]),
            "height": config.frames.size, "width": config.frames.size,
            "youtube_id": m.get("youtube_id", ""), "time_start": _float_or_nan(m.get("time_start")),
            "time_end": _float_or_nan(m.get("time_end")), "official_split": normalise_split(m.get("split") or ""),
            "source_frames": int(info["n_frames"]), "source_width": int(info["width"]),
            "source_height": int(info["height"]), "frames_sha256": r["digest"],
            "frames_mtime_ns": (dataset_dir / r["frames_path"]).stat().st_mtime_ns,
        })
    check = check_leakage(config, rows)
    warnings = list(split.warnings)
    kept_frames = {r["frames_path"] for r in rows}  # a dropped clip's frames stay: a re-run need not sample it again
    if check.decisions:
        rows, lost = apply_leakage_drop(rows, check.decisions, config.classes)
        warnings += lost
    manifest, dataset_json, fingerprint = dataset_format.write_dataset_files(
        dataset_dir, rows, classes=config.classes, num_frames=config.frames.num_frames, image_size=config.frames.size,
        params=plan.params, sampling=sampling.SAMPLING_METHOD, split_mode=config.frames.split_mode,
        split_fractions=[fr.train, fr.val, fr.test], seed=config.seed)
    per_class_split = dataset_format.split_counts(rows, config.classes)
    report = atomic_write_text(
        config.reports_dir / "frames.csv",
        reports.report_csv(sorted(everything, key=lambda r: (r["label"], r["clip_id"])), FRAMES_REPORT_COLUMNS),
    )
    removed = prune_frames(dataset_dir, kept_frames)
    return DatasetSummary(manifest, dataset_json, report, rows, per_class_split, warnings, removed, fingerprint,
                          check)


def check_leakage(config: FramesStage, rows: list[dict[str, Any]]) -> LeakageCheck:
    """Find clips in different splits that are the same footage (``tasks/lib/leakage.py``: one youtube_id with
    overlapping windows, or near-identical stored frames) and write ``reports/leakage.csv``, header only when
    there are none. Under ``frames.leakage: drop`` the decisions say which clips leave val/test."""
    started = time.perf_counter()
    clips = [leakage.LeakClip(r["clip_id"], r["split"], r["label"], str(r.get("youtube_id") or ""),
                              _float_or_nan(r.get("time_start")), _float_or_nan(r.get("time_end"))) for r in rows]
    hashes = []
    for r in rows:
        try:
            hashes.append(leakage.npy_hashes(config.dataset_dir / r["frames_path"]))
        except (OSError, ValueError):  # unreadable frames are the sampler's business: this clip is not compared
            hashes.append(None)
    found = leakage.scan_leaks(clips, hashes)
    pairs, nearest = found.pairs, found.nearest
    decisions = leakage.drop_decisions(pairs) if config.frames.leakage == "drop" else {}
    report = reports.write_report(leakage.report_rows(pairs, decisions), leakage.REPORT_COLUMNS,
                                  config.reports_dir / "leakage.csv")
    seconds = time.perf_counter() - started
    finite = sorted(float(d) for d in nearest if math.isfinite(d))
    if finite:
        _logger().info(
            "leakage check: %d clips hashed in %.2f s; nearest clip in another split: min %.1f, median %.1f bits "
            "(threshold %.0f); %d pair(s) across splits", len(finite), seconds, finite[0],
            finite[len(finite) // 2], leakage.THRESHOLD, len(pairs))
    return LeakageCheck(report, pairs, decisions, finite, seconds)


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The task run's logger; a plain one when called outside a run (``write_dataset.fn`` in benchmarks)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def apply_leakage_drop(rows: list[dict[str, Any]], decisions: dict[str, str],
                       classes: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The manifest rows under ``frames.leakage: drop`` (dropped clips out, moved ones in train), and a warning
    for every class and split the drop leaves empty."""
    before = dataset_format.split_counts(rows, classes)
    out = []
    for r in rows:
        action = decisions.get(r["clip_id"])
        if action == leakage.DROPPED:
            continue
        out.append({**r, "split": "train"} if action == leakage.MOVED else r)
    after = dataset_format.split_counts(out, classes)
    warnings = [f"class {c!r} has no {s} clips left after dropping leaked clips (reports/leakage.csv)"
                for c in classes for s in dataset_format.SPLITS if before[c][s] and not after[c][s]]
    return out, warnings


def prune_frames(dataset_dir: Path, keep: set[str]) -> list[str]:
    """The dataset folder holds exactly what the manifest lists: .npy files of clips that are no longer kept (or
    of classes no longer configured) and leftovers of interrupted writes are removed, then empty folders. They are
    derived data: the raw clips stay, and the frames stage can make them again."""
    frames_dir = dataset_dir / "frames"
    removed: list[str] = []
    if not frames_dir.is_dir():
        return removed
    for p in sorted(frames_dir.rglob("*")):
        if p.is_file() and p.relative_to(dataset_dir).as_posix() not in keep:
            p.unlink()
            removed.append(p.relative_to(dataset_dir).as_posix())
    filtering.remove_empty_dirs(frames_dir)
    return removed


def frames_summary(config: FramesStage, plan: FramesPlan, results: list[dict[str, Any]],
                   ds: DatasetSummary) -> StageResult:
    """The stage's counts and one-line message; failed when the dataset would be unusable (fewer than two classes
    with clips, or no training clip)."""
    failures: dict[str, int] = {}
    for r in results + plan.failed:
        if r["status"] == "failed":
            failures[r["reason"]] = failures.get(r["reason"], 0) + 1
    splits = {s: sum(v[s] for v in ds.per_class_split.values()) for s in dataset_format.SPLITS}
    counts = {"clips": len(ds.rows), "sampled": sum(r["status"] == "sampled" for r in results),
              "already_done": len(plan.done), "failed": sum(failures.values()), **splits,
              **{f"failed_{k}": v for k, v in sorted(failures.items(), key=lambda kv: -kv[1])},
              **({"removed_stale": len(ds.removed)} if ds.removed else {})}
    outputs = [str(ds.manifest), str(ds.dataset_json), str(ds.report)]
    leak = ds.leakage
    if leak is not None:
        counts["leakage_pairs"] = len(leak.pairs)
        if leak.decisions:
            counts["leakage_dropped"], counts["leakage_moved"] = len(leak.dropped), len(leak.moved)
        outputs.append(str(leak.report))
    by_class = ", ".join(f"{c!r}: {sum(v.values())}" for c, v in ds.per_class_split.items())
    message = (f"{len(ds.rows)} clips in the dataset ({by_class}); train/val/test = "
               f"{splits['train']}/{splits['val']}/{splits['test']}; {counts['sampled']} sampled now, "
               f"{counts['already_done']} already done")
    if failures:
        message += "; could not sample: " + ", ".join(f"{v} {k}" for k, v in failures.items())
    if leak is not None and leak.pairs:
        reasons = {}
        for p in leak.pairs:
            reasons[p.reason] = reasons.get(p.reason, 0) + 1
        message += (f"\n   leakage: {len(leak.pairs)} pair(s) of clips across splits are the same footage ("
                    + ", ".join(f"{n} {r}" for r, n in reasons.items()) + f"; reports/{leak.report.name})")
        if leak.decisions:
            message += (f": {len(leak.dropped)} val/test clip(s) dropped, {len(leak.moved)} moved to train, "
                        "each kept in train only")
        else:
            message += "; frames.leakage: drop keeps each in train only"
    if ds.warnings:
        message += "\n   warning: " + "\n   warning: ".join(ds.warnings)
    usable = [c for c, v in ds.per_class_split.items() if sum(v.values())]
    if len(usable) < 2:
        message, failed = f"fewer than two classes have sampled clips ({by_class}): {message}", True
    elif splits["train"] == 0:
        message, failed = f"no training clips: {message}", True
    else:
        failed = False
    return StageResult(stage="frames", counts=counts, outputs=outputs, message=message, failed=failed)
