"""Progress for long per-clip stages, where people look: a bar in the terminal (when it is one), a progress
artifact in the Prefect UI, and a log line every tenth of the way for everything else (CI logs, workers)."""
from __future__ import annotations

import sys
from typing import Any, Sequence, TypeVar

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, as_completed

R = TypeVar("R")


def gather(futures: Sequence[PrefectFuture[R]], stage: str, unit: str = "clips") -> list[R]:
    """Results in submission order, reporting as each future completes."""
    futures = list(futures)
    total = len(futures)
    if total == 0:
        return []
    logger = get_run_logger()
    index = {id(f): i for i, f in enumerate(futures)}
    results: list[Any] = [None] * total
    artifact = create_progress_artifact(0.0, key=f"{stage}-progress", description=f"{stage}: {unit} done")
    bar = _terminal_bar(stage, total)
    next_log = max(1, total // 10)
    for done, fut in enumerate(as_completed(futures), start=1):
        results[index[id(fut)]] = fut.result()
        if bar is not None:
            bar[0].update(bar[1], completed=done)
        if done % next_log == 0 or done == total:
            logger.info("%s: %d/%d %s (%d%%)", stage, done, total, unit, 100 * done // total)
            update_progress_artifact(artifact, 100.0 * done / total)
    if bar is not None:
        bar[0].stop()
    return results


def _terminal_bar(stage: str, total: int):
    if not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn(f"[bold]{stage}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=True)
    progress.start()
    return progress, progress.add_task(stage, total=total)
