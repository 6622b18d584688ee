"""Download stage: annotations -> trimmed clips under ``<data_dir>/raw`` + ``reports/download.csv``.

Clips are downloaded by the per-clip task mapped over a thread pool of ``download.workers`` threads (downloads
wait on the network, not the CPU), or, with ``cluster.engine: dask``, in shards on a Dask cluster with
``download.workers`` threads per shard (``tasks/cluster.py``). The stage fails only when nothing is usable: when the annotations cannot be
read, nothing is selected, or not a single clip was downloaded or already on disk.
"""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.utilities.annotations import opaque

from tasks.cluster import map_clips
from tasks.lib import download as core
from tasks.lib.annotations import AnnotationError
from tasks.lib.config import DownloadStage
from tasks.lib.errors import StageFailed, failed_summary
from tasks.lib.locks import data_dir_lock
from tasks.lib.results import StageResult
from tasks.download import clean_partials_task, download_clip_task, select_clips_task, write_report_task


def _failed(message: str, counts: dict[str, int] | None = None, outputs: list[str] | None = None, *,
            user_error: bool = False) -> StageFailed:
    return StageFailed(failed_summary("download", message, counts, outputs), user_error=user_error)


@flow(name="download")
def download_flow(config: DownloadStage, force: bool = False) -> StageResult:
    """``force``: download every selected clip again, even one already on disk (which is kept if that fails; a
    clip the filter quarantined stays rejected until its quarantined file is deleted).
    Raises StageFailed (the flow run ends Failed) when nothing is usable; the summary travels with it."""
    with data_dir_lock(config.data_dir, "download"):
        return _download(config, force)


def _download(config: DownloadStage, force: bool) -> StageResult:
    logger = get_run_logger()
    try:
        core.check_options(config.download)
    except ValueError as e:
        raise _failed(str(e), user_error=True) from None
    try:
        clips = select_clips_task(config)
    except AnnotationError as e:
        raise _failed(f"cannot use the annotations: {e}", user_error=True) from None
    if not clips:
        raise _failed(f"no clip of {config.classes} in splits {config.splits or 'all'} of {config.annotations}",
                      user_error=True)

    clean_partials_task(config.raw_dir)
    # The runner depends on config values known only now, so it is opened here rather than fixed in the
    # decorator; tasks submitted through it are still task runs of this flow run.
    rows = map_clips(config.cluster, "download", download_clip_task, "clip", clips,
                     {"data_dir": config.data_dir, "url_template": config.url_template, "download": config.download,
                      "force": force},
                     threads=config.download.workers)

    # opaque: Prefect resolves a task's parameters by walking them for futures, which for thousands of rows costs
    # more than the task itself; these are plain values
    report = write_report_task(opaque(rows), config.reports_dir / "download.csv")
    counts = core.summarize(rows)
    create_table_artifact(
        [{"kind": "status", "name": k, "count": counts[k]} for k in ("downloaded", "skipped", "failed")]
        + [{"kind": "failure reason", "name": k.removeprefix("failed_"), "count": v}
           for k, v in counts.items() if k.startswith("failed_")],
        key="download-summary",
        description=f"download: {counts['requested']} clips requested; report {report}",
    )
    usable = counts["downloaded"] + counts["skipped"]
    message = core.summary_message(counts)
    logger.info(message)
    outputs = [str(report), str(config.raw_dir)]
    if usable == 0:
        raise _failed(f"no clip could be downloaded: {message}", counts, outputs)
    return StageResult(stage="download", counts=counts, outputs=outputs, message=message)
