"""What ``vivit`` prints in the terminal: the stage summaries, the "Next:" commands, the prediction bar, and the
log filter that keeps expected failures to their one line."""
from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.lib.results import StageResult


def print_summary(s: StageResult) -> None:
    print(f"\n== {s.stage}: {'FAILED' if s.failed else 'ok'}")
    if s.message:
        print(f"   {s.message}")
    if s.counts:
        width = max(len(k) for k in s.counts)
        for k, v in s.counts.items():
            print(f"   {k:<{width}}  {v}")
    for out in s.outputs:
        print(f"   wrote {out}")


def next_steps(cfg, summaries: list[StageResult]) -> None:
    train = next((s for s in summaries if s.stage == "train" and not s.failed), None)
    if not train:
        return
    from tasks import tracking

    uri = train.result["tracking_uri"]
    tracking.use_store(cfg.mlflow.model_copy(update={"tracking_uri": uri}))
    exp_id = tracking.experiment_id(cfg.mlflow.experiment)
    page = tracking.experiment_url("http://127.0.0.1:5000", exp_id) if exp_id else "http://127.0.0.1:5000"
    # no champion when every version so far fell below the baseline: the commands then name the challenger
    alias = "champion" if "champion" in train.result["registry"].get("aliases", {}) else "challenger"
    print("\nNext:")
    print(f"   mlflow ui --backend-store-uri {uri} --port 5000      # then open {page}")
    print(f"   vivit predict VIDEO.mp4 --model models:/{cfg.mlflow.model_name}@{alias} --tracking-uri {uri}")
    print(f"   mlflow models serve -m models:/{cfg.mlflow.model_name}@{alias} --env-manager local --port 5001"
          f"   # with MLFLOW_TRACKING_URI={uri}")


@contextlib.contextmanager
def quiet_expected_tracebacks(debug: bool):
    """Prefect logs every failed flow/task run with its traceback. For failures that already have their one
    line (a failed stage, a user error, an unreachable store, a full disk) that is 20-30 lines of noise, so
    without ``--debug`` the traceback is dropped from those records (the message line stays)."""
    if debug:
        yield
        return
    import logging

    from prefect.logging.configuration import setup_logging

    from tasks.lib.errors import ServiceUnavailable, StageFailed, UserError, is_disk_full

    def expected(exc: BaseException) -> bool:
        if isinstance(exc, (StageFailed, UserError, ServiceUnavailable)) or is_disk_full(exc):
            return True
        from tasks.tracking import is_store_down  # only reached once mlflow is imported anyway

        return is_store_down(exc)

    class Quiet(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            exc = record.exc_info[1] if record.exc_info else None
            if exc is not None and expected(exc):
                record.exc_info, record.exc_text = None, None
            return True

    setup_logging()
    quiet = Quiet()
    handlers = {h for name in ["", *logging.root.manager.loggerDict] for h in logging.getLogger(name).handlers
                if isinstance(getattr(logging.getLogger(name), "handlers", None), list)}
    for h in handlers:
        h.addFilter(quiet)
    for noisy in ("urllib3", "urllib3.connectionpool"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(quiet)


def progress_bar(total: int):
    """A bar on stderr when it is a terminal (stdout stays clean JSON lines); nothing otherwise."""
    if not sys.stderr.isatty() or total == 0:
        return lambda done: None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("[bold]predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=True)
    progress.start()
    task = progress.add_task("predict", total=total)

    def update(done: int | None) -> None:
        if done is None:
            progress.stop()
        else:
            progress.update(task, completed=done)

    return update
