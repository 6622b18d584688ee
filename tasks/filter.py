"""Prefect tasks of the filter stage: plan (what the previous report already settled), check one file, write
the report. The check is CPU work (a full decode), so it runs on a thread pool of ``filter.workers`` threads,
one decoder thread each (PyAV releases the GIL while decoding)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.lib import filtering as core
from tasks.lib.config import FilterStage


@dataclass
class FilterPlan:
    todo: list[core.FilterItem]
    reused: list[dict[str, Any]]
    missing: list[core.FilterItem]
    source: str
    notes: list[str] = field(default_factory=list)


@task(name="plan-filter", cache_policy=NO_CACHE)
def plan_filter(config: FilterStage, force: bool = False) -> FilterPlan:
    """Split the inputs into files to check and files whose previous verdict still holds (same size, mtime and
    check version; or quarantined and not downloaded again): an unchanged re-run checks nothing. ``force``: no
    previous verdict holds, every file on disk is checked again (quarantined files stay where they are)."""
    inputs = core.filter_inputs(config.data_dir, config.classes)
    previous = {} if force else core.previous_rows(config.reports_dir / "filter.csv")
    todo, reused, missing = [], [], []
    for item in inputs.items + inputs.missing:
        row = core.reusable_row(item, previous, Path(config.data_dir))
        if row is None and not item.path.exists():
            row = core.quarantined_row(item, Path(config.data_dir))
        if row is not None:
            reused.append(row)
        elif item.path.is_file():
            todo.append(item)
        else:
            missing.append(item)
    return FilterPlan(todo, reused, missing, inputs.source, inputs.notes)


@task(name="check-clip", cache_policy=NO_CACHE, task_run_name="check-{item.clip_id}")
def check_clip(item: core.FilterItem, data_dir: Path) -> dict[str, Any]:
    """Judge one file; an unusable one is moved to quarantine at once, so an interrupted run loses nothing."""
    stamp = core.file_stamp(item.path)
    result = core.check_video(item.path, threads=1)
    moved = None
    if not result.ok:
        moved = core.quarantine_file(data_dir, item.path, item.label, result.reason, result.message)
        get_run_logger().warning("quarantined %s: %s (%s)", item.rel, result.reason, result.message)
    return core.result_row(item, result, Path(data_dir), stamp=stamp, moved_to=moved)


@task(name="write-filter-report", cache_policy=NO_CACHE)
def write_filter_report(rows: list[dict[str, Any]], path: Path, raw_dir: Path) -> Path:
    core.remove_empty_dirs(raw_dir)
    return core.write_filter_report(rows, path)
