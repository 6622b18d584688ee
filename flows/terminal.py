"""What ``vivit`` prints in the terminal: the stage summaries, the "Next:" commands, the prediction bar, and the
log filter that keeps expected failures to their one line."""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.lib.results import StageResult


def print_summary(s: StageResult) -> None:
    """A few lines per stage: the verdict and its message, the counts, what it wrote."""
    import textwrap

    print(f"\n== {s.stage}: {'FAILED' if s.failed else 'ok'}")
    if s.message:
        print(textwrap.fill(s.message, 116, initial_indent="   ", subsequent_indent="   "))
    if s.counts:
        counts = ", ".join(f"{k} {v}" for k, v in s.counts.items())
        print(textwrap.fill(counts, 116, initial_indent="   ", subsequent_indent="   ", break_long_words=False))
    if s.outputs:
        print(textwrap.fill("wrote " + ", ".join(map(str, s.outputs)), 116, initial_indent="   ",
                            subsequent_indent="         ", break_long_words=False, break_on_hyphens=False))


def next_steps(cfg, summaries: list[StageResult]) -> None:
    train = next((s for s in summaries if s.stage == "train" and not s.failed), None)
    if not train:
        return
    from tasks import tracking

    uri = train.result["tracking_uri"]
    # no champion when every version so far fell below the baseline: the commands then name the challenger
    alias = "champion" if "champion" in train.result["registry"].get("aliases", {}) else "challenger"
    # the store is named unless it is the one the same command finds by itself here (./mlruns; MLflow has put the
    # store in this process's MLFLOW_TRACKING_URI by now, so that variable says nothing about the user's shell)
    default = f"sqlite:///{(tracking.DEFAULT_STORE / 'mlflow.db').resolve()}"
    store = "" if uri == default else f" --tracking-uri {uri}"
    vivit, model = vivit_command(), f"models:/{cfg.mlflow.model_name}@{alias}"
    print("\nNext (from this folder; no venv to activate):")
    print(f"   {vivit} ui{store}                      # Prefect and MLflow UIs on these runs; Ctrl-C stops them")
    print(f"   {vivit} predict VIDEO.mp4 --model {model}{store}")
    print(f"   {vivit} serve {model}{store} --port 5001    # REST; --video: the model that takes files")


def vivit_command() -> str:
    """How to call ``vivit`` from a plain shell in the working directory: ``vivit`` when that finds this very
    program on PATH, else its path (``.venv/bin/vivit`` from the project folder)."""
    import os
    import shutil

    exe = Path(sys.executable).parent / "vivit"  # not resolved: the venv's bin, not the interpreter it links to
    if not exe.is_file():
        return f"{sys.executable} -m flows.cli"
    found = shutil.which("vivit")
    if found and os.path.samefile(found, exe):
        return "vivit"
    try:
        return str(exe.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(exe)


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


# Prefect's own lines about its runs: in the log file and the UI, not in the terminal (unless --verbose).
_ENGINE = ("Beginning flow run", "Beginning subflow run", "View at ", "Finished in state", "Created task run",
           "Executing ", "Submitting ", "Starting temporary server", "Stopping temporary server",
           "Created flow run", "Running on worker")
_SHOWN_TASK_WARNINGS = 3  # per stage; the rest only in the log file and the UI


class TerminalHandler(logging.Handler):
    """Prefect's console handler, replaced for the length of a command: what a person watching needs, drawn above
    the live area so that no line overwrites a bar.

    Shown: the stages' own lines (flow-run messages), task lines about the whole stage, warnings and errors (the
    first :data:`_SHOWN_TASK_WARNINGS` of a stage's tasks, then a pointer to the log file), progress every quarter
    of the way in a pipe (a bar in a terminal). Not shown: Prefect's engine lines (a run began, finished, its URL on
    a server that ends with the command) and one clip's lines (``vivit_per_item``). ``verbose``: everything, in
    Prefect's format."""

    def __init__(self, area, log_path: Path | None, verbose: bool, formatter: logging.Formatter | None) -> None:
        super().__init__(logging.INFO)
        self.area, self.log_path, self.verbose = area, log_path, verbose
        self.setFormatter(formatter or logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"))
        self._quarter: dict[str, int] = {}
        self._warnings: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.line(record)
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)
            return
        if line is None:
            return
        if self.area is not None:
            self.area.print(line)
        else:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def line(self, record: logging.LogRecord) -> str | None:
        """The terminal line for ``record``, or None to keep it to the log file and the UI."""
        from tasks.progress import PER_ITEM, PROGRESS

        message = record.getMessage()
        if self.area is not None and record.levelno < logging.WARNING:
            self.area.status(_status_text(record, message))
        if self.verbose:
            return self.format(record)
        engine = record.name.startswith("prefect") and message.startswith(_ENGINE)
        flow = getattr(record, "flow_name", None)
        if engine and message.startswith("Beginning") and flow and flow != "pipeline":
            return f"-- {flow}"  # a header per stage; the run's URL dies with this command's server
        if record.levelno >= logging.WARNING:
            if record.name == "prefect.task_runs" or getattr(record, PER_ITEM, False):
                return self._capped_warning(record, message)
            if engine and record.name == "prefect.task_runs":
                return None
            return f"{record.levelname.lower()}: {message}"
        if engine or getattr(record, PER_ITEM, False) or record.name not in ("prefect.flow_runs", "prefect.task_runs"):
            return None
        progress = getattr(record, PROGRESS, None)
        if progress is not None:
            if self.area is not None:  # the bar shows it
                return None
            label, done, total = progress  # a line a quarter of the way; at the end the stage says what it did
            quarter = 4 * done // max(total, 1)
            if quarter <= self._quarter.get(label, 0) or done >= total:
                self._quarter[label] = 0 if done >= total else self._quarter.get(label, 0)
                return None
            self._quarter[label] = quarter
        return f"   {message}"

    def _capped_warning(self, record: logging.LogRecord, message: str) -> str | None:
        stage = getattr(record, "flow_name", None) or "?"
        n = self._warnings[stage] = self._warnings.get(stage, 0) + 1
        if n <= _SHOWN_TASK_WARNINGS:
            return f"{record.levelname.lower()}: {message}"
        if n == _SHOWN_TASK_WARNINGS + 1:
            return f"   ... more warnings of {stage} in {self.log_path or 'the Prefect UI'}"
        return None


# what MLflow prints itself (not through logging) when a model version is registered: the stage says it in one line
_MLFLOW_CHATTER = ("Successfully registered model '", "Created version '", "Registered model '")


class _QuietStderr:
    """``sys.stderr`` for the length of a command without ``--verbose``: MLflow's registry lines go to the log file,
    everything else through unchanged."""

    def __init__(self, stream, log: logging.Handler | None) -> None:
        self._stream, self._log, self._partial = stream, log, ""

    def write(self, text: str) -> int:
        self._partial += text
        while "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            if line.startswith(_MLFLOW_CHATTER):
                if self._log is not None:
                    self._log.handle(logging.LogRecord("mlflow", logging.INFO, __file__, 0, line, None, None))
            else:
                self._stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        held = self._partial
        if held and not any(c.startswith(held) or held.startswith(c) for c in _MLFLOW_CHATTER):
            self._stream.write(held)
            self._partial = ""
        self._stream.flush()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _status_text(record: logging.LogRecord, message: str) -> str:
    flow = getattr(record, "flow_name", None)
    task = getattr(record, "task_run_name", None)
    where = f"{flow}: {task}" if flow and task else (flow or record.name)
    return f"{where}: {' '.join(message.split())[:80]}"


@contextlib.contextmanager
def terminal_output(log_dir: Path | None, command: str, verbose: bool = False):
    """For one command: Prefect's console handler replaced by :class:`TerminalHandler`, a live area when stderr is
    a terminal (:func:`tasks.progress.live_area`), every INFO record also appended to ``log_dir/vivit.log``, and
    MLflow's own INFO lines (creating its tables) kept to that file unless ``verbose``."""
    import logging.handlers
    import time

    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    from tasks.progress import live_area

    setup_logging()
    root = logging.getLogger()
    consoles = [h for h in root.handlers if isinstance(h, PrefectConsoleHandler)]
    file_handler = None
    log_path = None
    if log_dir is not None:
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            log_path = log_dir / "vivit.log"
            file_handler = logging.handlers.RotatingFileHandler(log_path, maxBytes=20_000_000, backupCount=2,
                                                                encoding="utf-8")
        except OSError as e:  # a read-only data_dir: the stage says so itself; the terminal still works
            print(f"vivit: warning: no log file in {log_dir} ({e.strerror or e})", file=sys.stderr)
            log_path, file_handler = None, None
    if file_handler is not None:
        file_handler.setLevel(logging.INFO)
        file_handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s | %(message)s"))
        with log_path.open("a", encoding="utf-8") as f:
            f.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} vivit {command}\n")
    mlflow_logger = logging.getLogger("mlflow")
    mlflow_level = mlflow_logger.level
    if not verbose:
        mlflow_logger.setLevel(logging.WARNING)
    area_cm = live_area(_stderr_console()) if sys.stderr.isatty() else contextlib.nullcontext(None)
    with area_cm as area:
        handler = TerminalHandler(area, log_path, verbose, consoles[0].formatter if consoles else None)
        for h in consoles:
            root.removeHandler(h)
        root.addHandler(handler)
        if file_handler is not None:
            root.addHandler(file_handler)
        stderr = sys.stderr
        if not verbose:
            sys.stderr = _QuietStderr(stderr, file_handler)
        try:
            yield log_path
        finally:
            if sys.stderr is not stderr and isinstance(sys.stderr, _QuietStderr):
                sys.stderr.flush()
                sys.stderr = stderr
            root.removeHandler(handler)
            if file_handler is not None:
                root.removeHandler(file_handler)
                file_handler.close()
            for h in consoles:
                root.addHandler(h)
            mlflow_logger.setLevel(mlflow_level)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def step(text: str) -> None:
    """What the command is doing now: the status line in a terminal, an indented line of its own in a pipe (not
    ``vivit:``, which starts the one line of an error)."""
    from tasks.progress import live

    area = live()
    if area is not None:
        area.status(text)
    else:
        print(f"  {text}", file=sys.stderr, flush=True)
