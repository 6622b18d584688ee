"""Filter stage: the files the download report lists -> kept, or moved to ``quarantine/`` with a reason;
``reports/filter.csv`` for the frames stage. Fails (non-zero exit in the CLI) when fewer than two classes keep a
usable clip, since no classifier can be trained on that."""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.utilities.annotations import opaque

from tasks.cluster import map_clips
from tasks.lib import filtering as core
from tasks.lib.config import FilterStage
from tasks.lib.errors import StageFailed, failed_summary
from tasks.lib.locks import data_dir_lock
from tasks.lib.results import StageResult
from tasks.filter import check_clip, plan_filter, write_filter_report


@flow(name="filter")
def filter_flow(config: FilterStage, force: bool = False) -> StageResult:
    """``force``: check every file again, even those the last report already judged. Raises StageFailed (the
    flow run ends Failed) when fewer than two classes keep a clip."""
    with data_dir_lock(config.data_dir, "filter"):
        return _filter(config, force)


def _filter(config: FilterStage, force: bool) -> StageResult:
    logger = get_run_logger()
    plan = plan_filter(config, force)
    for note in plan.notes:
        logger.info(note)
    for item in plan.missing:
        logger.warning("%s is in the download report but not on disk: skipped", item.rel)
    if not plan.todo and not plan.reused:
        where = "reports/download.csv" if plan.source == "download.csv" else f"{config.raw_dir}/<class>/"
        raise StageFailed(failed_summary(
            "filter", f"no clips to check in {where} for classes {config.classes}: run `vivit download` first",
            {"missing_files": len(plan.missing)}), user_error=True)
    rows = list(plan.reused)
    # threads: filter.workers clips at once; dask: one clip at a time per single-threaded worker process
    threads = config.filter.workers if config.cluster.engine == "threads" else 1
    rows += map_clips(config.cluster, "filter", check_clip, "item", plan.todo, {"data_dir": config.data_dir}, threads)
    report = write_filter_report(opaque(rows), config.reports_dir / "filter.csv", config.raw_dir)  # plain rows: not walked
    s = core.summarize(rows, config.classes, reused=len(plan.reused), missing=len(plan.missing))
    create_table_artifact(
        [{"class": c, **v} for c, v in s.per_class.items()],
        key="filter-summary",
        description=f"filter: clips kept / quarantined per class (inputs: {plan.source}); report {report}",
    )
    (logger.error if s.failed else logger.info)(s.message)
    outputs = [str(report)] + ([str(config.quarantine_dir)] if s.counts["quarantined"] else [])
    summary = StageResult(stage="filter", counts=s.counts, outputs=outputs, message=s.message, failed=s.failed)
    if s.failed:
        raise StageFailed(summary)
    return summary
