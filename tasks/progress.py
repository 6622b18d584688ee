"""Progress for long per-clip stages and training, where people look: a bar in the terminal (when it is one), a
progress artifact in the Prefect UI, and a log line every tenth of the way for everything else (the log file, CI
logs, workers).

In a terminal, ``vivit`` opens one live area for the whole command (:func:`live_area`, from ``flows/terminal.py``):
a status line that names the current step and how long it has taken, and one bar per running stage. Log lines are
printed above it through the same console (:meth:`LiveArea.print`), so they never overwrite a bar. Without that area
(a flow run by a worker, a test) :func:`gather` draws its own bar when stderr is a terminal, as before.

Log records about progress carry ``vivit_progress=(label, done, total)`` (:data:`PROGRESS`), so the terminal can
show them as a bar in a terminal and every quarter of the way in a pipe; records of one clip carry
``vivit_per_item=True`` (:data:`PER_ITEM`): the log file and the Prefect UI keep them, the terminal does not."""
from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any, Iterator, Sequence, TypeVar

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, as_completed

R = TypeVar("R")
PROGRESS, PER_ITEM = "vivit_progress", "vivit_per_item"


class LiveArea:
    """The last line of the terminal while a command runs: a spinner, the current stage's bar (a pulse between
    bars), the count, and the current step with the time since the stage's last news. One line, so redrawing it
    never scrolls the terminal."""

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        from rich.table import Column

        self.progress = Progress(SpinnerColumn(), TextColumn("{task.fields[label]}", table_column=Column(no_wrap=True)),
                                 BarColumn(bar_width=20), TextColumn("{task.fields[count]}"), TimeElapsedColumn(),
                                 TextColumn("{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis")),
                                 console=console, transient=True)
        self._task = self.progress.add_task("starting", total=None, label="vivit", count="")
        self._bar: str | None = None
        self._lock = threading.Lock()

    def status(self, text: str) -> None:
        """The current step, at the end of the line (cut to what a narrow terminal leaves it)."""
        width = max(20, self.progress.console.width - 64)
        self.progress.update(self._task, description=text if len(text) <= width else text[: width - 1] + "…")

    def print(self, line: str) -> None:
        self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def bar(self, label: str, done: int, total: int, unit: str = "") -> None:
        """Show ``done`` of ``total`` for ``label`` (a new label restarts the clock); at ``total`` the line goes
        back to a pulse."""
        with self._lock:
            if label != self._bar:
                self.progress.reset(self._task, total=total, label=label, count="")  # fields replace, not merge
                self._bar = label
            if done >= total:
                self.progress.update(self._task, completed=0, total=None, count="", label="vivit")
                self._bar = None
            else:
                self.progress.update(self._task, completed=done, total=total, count=f"{done}/{total} {unit}".rstrip())


_LIVE: LiveArea | None = None


@contextlib.contextmanager
def live_area(console: Any) -> Iterator[LiveArea]:
    """The command's one live area on ``console`` (a terminal), shared by every bar until the block ends."""
    global _LIVE
    area = LiveArea(console)
    area.progress.start()
    _LIVE = area
    try:
        yield area
    finally:
        _LIVE = None
        area.progress.stop()


def live() -> LiveArea | None:
    return _LIVE


def report(logger: Any, label: str, done: int, total: int, unit: str, message: str, *args: Any) -> None:
    """Advance the bar ``label`` and log ``message`` to ``logger`` (a run's logger) as a progress record."""
    if _LIVE is not None:
        _LIVE.bar(label, done, total, unit)
    logger.info(message, *args, extra={PROGRESS: (label, done, total)})


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
    area = _LIVE
    bar = None if area is not None else _terminal_bar(stage, total)
    next_log = max(1, total // 10)
    for done, fut in enumerate(as_completed(futures), start=1):
        results[index[id(fut)]] = fut.result()
        if area is not None:
            area.bar(stage, done, total, unit)
        elif bar is not None:
            bar[0].update(bar[1], completed=done)
        if done % next_log == 0 or done == total:
            logger.info("%s: %d/%d %s (%d%%)", stage, done, total, unit, 100 * done // total,
                        extra={PROGRESS: (stage, done, total)})
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
