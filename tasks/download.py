"""Prefect tasks of the download stage: read and select annotations, download one clip, write the report.

Retries: the per-clip task has no Prefect ``retries``. ``tasks.lib.download.download_clip`` retries transient
failures itself (server errors, timeouts, dropped connections) with exponential back-off and returns a report
row in every case, so a clip that fails is a normal, reported outcome rather than a failed task state, and the
number of attempts is exact and tested without a Prefect server.

Caching: none on the per-clip task. Whether a clip needs work is decided by what is on disk (the final file
exists and decodes), which is cheaper than a cache lookup and is right when a user deletes one clip.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.lib import download as core
from tasks.lib.annotations import Clip, load_clips
from tasks.lib.config import DownloadConfig, DownloadStage
from tasks.progress import PER_ITEM


@task(name="select-clips", cache_policy=NO_CACHE)
def select_clips_task(config: DownloadStage) -> list[Clip]:
    """Read every annotation CSV, validate rows, keep the configured classes/splits (``max_per_class`` each).
    Raises AnnotationError when a CSV is unusable or a class name is unknown (with the closest real names)."""
    logger = get_run_logger()
    clips, problems = load_clips(config.annotations, config.classes, config.splits, config.max_per_class)
    for p in problems[:20]:
        logger.warning("skipped annotation row: %s", p)
    if len(problems) > 20:
        logger.warning("... and %d more invalid annotation rows", len(problems) - 20)
    logger.info("%d clips selected for %d classes", len(clips), len(config.classes))
    return clips


def _clip_run_name() -> str:
    from prefect.runtime import task_run

    clip = task_run.parameters.get("clip")
    return f"download-{getattr(clip, 'youtube_id', 'clip')}"


@task(name="download-clip", cache_policy=NO_CACHE, task_run_name=_clip_run_name)
def download_clip_task(clip: Clip, data_dir: Path, url_template: str, download: DownloadConfig,
                       force: bool = False) -> dict[str, Any]:
    """One report row; never raises for a clip-level failure (the reason is in the row)."""
    result = core.download_clip(clip, data_dir, url_template, download, force=force)
    logger = get_run_logger()
    if result.status == "failed":
        logger.warning("%s: failed (%s) after %d attempt(s): %s", result.clip_id or clip.youtube_id,
                       result.reason, result.attempts, result.message)
    else:
        logger.info("%s: %s", result.clip_id, result.status, extra={PER_ITEM: True})
    return result.row()


@task(name="clean-partial-downloads", cache_policy=NO_CACHE)
def clean_partials_task(raw_dir: Path) -> list[str]:
    """Temporary files of a crashed run; removed before downloading so they never pile up."""
    removed = core.clean_partials(raw_dir)
    if removed:
        get_run_logger().info("removed %d stale partial file(s) under %s", len(removed), raw_dir)
    return [str(p) for p in removed]


@task(name="write-download-report", cache_policy=NO_CACHE)
def write_report_task(rows: list[dict[str, Any]], path: Path) -> Path:
    return core.write_report(rows, path)
