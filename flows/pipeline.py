"""The chained DAG: download -> filter -> frames -> (pretrain) -> train, each stage a sub-flow that reads only what
the previous stage wrote to disk, so any one of them can also be run (and re-run) alone. pretrain runs when
``pretrain.enabled`` (or when ``stages`` names it)."""
from __future__ import annotations

from typing import Callable

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.download import download_flow
from flows.filter import filter_flow
from flows.frames import frames_flow
from flows.pretrain import pretrain_flow
from flows.train import train_flow
from tasks.lib.config import PipelineConfig, StageConfig
from tasks.lib.errors import StageFailed
from tasks.lib.locks import data_dir_lock
from tasks.lib.results import StageResult

# every stage flow is ``flow(config: <its StageConfig>, force: bool = False) -> StageResult``
STAGES: dict[str, Callable[[StageConfig, bool], StageResult]] = {
    "download": download_flow,
    "filter": filter_flow,
    "frames": frames_flow,
    "pretrain": pretrain_flow,
    "train": train_flow,
}


def select_stages(stages: list[str] | None = None, start: str | None = None) -> list[str]:
    """``stages`` picks a subset (kept in DAG order); ``start`` runs from one stage to the end."""
    names = list(STAGES)
    unknown = [s for s in (stages or []) + ([start] if start else []) if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {names}")
    chosen = [s for s in names if stages is None or s in stages]
    if start:
        chosen = [s for s in chosen if names.index(s) >= names.index(start)]
    if not chosen:
        raise ValueError("no stage selected")
    return chosen


@flow(name="pipeline")
def pipeline_flow(
    config: PipelineConfig,
    stages: list[str] | None = None,
    start: str | None = None,
    force: list[str] | None = None,
) -> list[StageResult]:
    """Each stage gets its part of ``config`` (:meth:`PipelineConfig.stage`); the stages named in ``force`` redo
    their work instead of keeping what is already done. Holds the data_dir lock from the first stage to the last,
    so a second pipeline on the same data_dir waits for all of this one and then finds everything done. A failed
    stage stops the chain and the pipeline raises StageFailed with every stage's summary: its flow run ends
    Failed, as the stage's did."""
    chosen = select_stages(stages, start)
    if not config.pretrain.enabled and not (stages and "pretrain" in stages):
        chosen = [s for s in chosen if s != "pretrain"] or chosen  # opt-in (docs/pretrain.md)
    if force:
        select_stages(force)  # an unknown stage name in force is an error, not a silent no-op
    with data_dir_lock(config.data_dir, "run"):
        return _pipeline(config, chosen, set(force or ()))


def _pipeline(config: PipelineConfig, chosen: list[str], force: set[str]) -> list[StageResult]:
    logger = get_run_logger()
    summaries: list[StageResult] = []
    failure: StageFailed | None = None
    for name in chosen:
        try:
            summary = STAGES[name](config.stage(name), force=name in force)
        except StageFailed as e:
            failure, summary = e, e.summary
        summaries.append(summary)
        if failure is not None:
            logger.error("stage %s failed: %s; later stages not run", name, summary.message)
            break
    create_table_artifact(
        [{"stage": s.stage, "failed": s.failed, "message": s.message, **s.counts} for s in summaries],
        key="pipeline-summary",
        description="one row per stage",
    )
    if failure is not None:
        raise StageFailed(summaries, user_error=failure.user_error) from None
    return summaries
