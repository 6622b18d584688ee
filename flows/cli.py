"""``vivit``: run any stage, the whole pipeline, or prediction from a shell.

Each stage command runs its Prefect flow (a temporary local Prefect server unless ``PREFECT_API_URL`` points at
a real one), prints a one-screen summary and the paths it wrote, and exits non-zero only when the stage as a
whole failed: some clips failing is a normal, reported outcome.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import flows  # noqa: F401  -- sets the embedded Prefect defaults before prefect is imported

if TYPE_CHECKING:
    from tasks.lib.results import StageResult

EXIT_OK, EXIT_STAGE_FAILED, EXIT_USAGE = 0, 1, 2


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, help="YAML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--debug", action="store_true", help="show tracebacks (errors are one line otherwise)")
    p.add_argument("--no-wait", dest="no_wait", action="store_true",
                   help="refuse instead of waiting when another run holds the data_dir or MLflow store")


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _positive_float(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vivit", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name, text, force in (
            ("download", "download the selected Kinetics clips with yt-dlp", "download clips already on disk again"),
            ("filter", "validate downloads, quarantine unusable files", "check files the last report already judged"),
            ("frames", "sample frames uniformly into the dataset", "sample clips already sampled again"),
            ("train", "train the configured preset and register it in MLflow",
             "train even if an identical run is registered")):
        p = sub.add_parser(name, help=text)
        _config_args(p)
        p.add_argument("--force", action="store_true", help=force)
        if name == "train":
            p.add_argument("--nproc", type=_positive_int, default=None,
                           help="DistributedDataParallel processes on this machine (same as --set train.processes=N)")
    p = sub.add_parser("ddp-spec", help="prepare a training on several machines: write the ranks' spec and print "
                       "the torchrun command each node runs (trains nothing)")
    _config_args(p)
    p.add_argument("--nnodes", type=_positive_int, required=True, help="machines")
    p.add_argument("--nproc-per-node", type=_positive_int, required=True,
                   help="training processes per machine (one per GPU on CUDA)")
    p.add_argument("--rdzv-endpoint", default="HEAD_HOST:29500", metavar="HOST:PORT",
                   help="where the nodes meet: any one of them, reachable from all (c10d rendezvous)")
    p = sub.add_parser("run", help="the chained pipeline (download -> filter -> frames -> train)")
    _config_args(p)
    p.add_argument("--stages", help="comma-separated subset, e.g. filter,frames")
    p.add_argument("--from", dest="start", help="run from this stage to the end")
    p.add_argument("--force", help="comma-separated stages that redo their work instead of keeping what is done, "
                   "e.g. frames,train")
    p.add_argument("--force-train", action="store_true", help="same as --force train")
    p = sub.add_parser("predict", help="classify videos, folders, globs or list files with a registered model")
    p.add_argument("videos", nargs="+", help="video files, folders (searched recursively), globs ('clips/*.mp4'), "
                   "or .txt/.csv lists of paths")
    p.add_argument("--model", default=None,
                   help="model URI (default models:/<mlflow.model_name>@champion of --config; without --config the "
                        "one registered model with a champion)")
    _config_args(p)
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: config, env, ./mlruns)")
    p.add_argument("--top-k", type=_positive_int, default=None, help="add the K most probable classes to each result")
    p.add_argument("--output", "-o", type=Path, default=None,
                   help="write results to FILE.jsonl or FILE.csv instead of stdout")
    p.add_argument("--window", type=_positive_float, default=None, metavar="SECONDS",
                   help="classify windows of this many seconds (long videos): per-segment results plus their mean")
    p.add_argument("--stride", type=_positive_float, default=None, metavar="SECONDS",
                   help="seconds between window starts (default: the window, i.e. no overlap)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="clips per forward pass (bounds memory)")
    p = sub.add_parser("demo-data", help="write the offline synthetic Kinetics-format demo dataset")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-dribbling", type=int, default=None)
    p.add_argument("--n-dunking", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra-classes", type=int, default=0, help="add synthetic classes beyond the two (K > 2)")
    p = sub.add_parser("doctor", help="check yt-dlp, the JavaScript runtime, ffmpeg, cookies, disk, Prefect and "
                                       "MLflow, one line each with the fix; exit 1 when a required one fails")
    _config_args(p)
    p = sub.add_parser("presets", help="list model presets with parameters and forward GFLOPs per view of --config's "
                                        "clips (train.view_frames positions at frames.size)")
    _config_args(p)
    return ap


def _presets(cfg) -> int:
    """Every preset's size and cost on the clips this config trains on (what a view costs the network, its input
    form included: ``rgb_diff`` has 6 channels), the config's own model marked."""
    from tasks.lib.costs import preset_costs

    t, size = cfg.train.view_frames, cfg.frames.size
    print(f"forward GFLOPs per view: {t} positions at {size}x{size}, input {cfg.train.input} "
          f"(train.view_frames, frames.size, train.input)")
    for name, d in preset_costs(cfg.train, size).items():
        mark = "   <- train.model" if name == cfg.train.model else ""
        if isinstance(d, str):  # a tubelet or patch that does not divide this clip
            print(f"{name:<18} does not fit these clips: {d}{mark}")
            continue
        print(f"{name:<18} params={d['params'] / 1e6:6.2f}M  GFLOPs/view={d['gflops']:6.2f}{mark}")
    return EXIT_OK


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


def _run_stage(name: str, cfg, args) -> list[StageResult]:
    """The stage's (or pipeline's) summaries; a failed stage raises StageFailed carrying them."""
    if name == "run":
        from flows.pipeline import pipeline_flow

        return pipeline_flow(cfg, **args.pipeline)
    from flows.pipeline import STAGES

    return [STAGES[name](cfg.stage(name), force=args.force)]


def _pipeline_args(args) -> dict:
    """``vivit run``'s ``--stages``, ``--from`` and ``--force`` as the pipeline flow's parameters; ValueError
    naming an unknown stage."""
    from flows.pipeline import select_stages

    def names(text: str | None) -> list[str] | None:
        return [s.strip() for s in text.split(",") if s.strip()] if text else None

    stages = names(args.stages)
    force = sorted(set(names(args.force) or []) | ({"train"} if args.force_train else set())) or None
    select_stages(stages, args.start)
    if force:
        select_stages(force)
    return {"stages": stages, "start": args.start, "force": force}


def _next_steps(cfg, summaries: list[StageResult]) -> None:
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        return _main(args)
    except KeyboardInterrupt:
        print("vivit: interrupted; re-run the same command to go on where it stopped", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure becomes one line; --debug shows the traceback
        if debug:
            raise
        code, line = explain(e)
        print(f"vivit: {line}", file=sys.stderr)
        return code


def explain(e: BaseException) -> tuple[int, str]:
    """Exit code and the one line a user reads for an exception that reached the command."""
    from tasks.lib.errors import ServiceUnavailable, UserError, disk_full_message, is_disk_full

    if isinstance(e, UserError):
        return EXIT_USAGE, str(e)
    if isinstance(e, ServiceUnavailable):
        return EXIT_STAGE_FAILED, str(e)
    if is_disk_full(e):
        return EXIT_STAGE_FAILED, disk_full_message(e, Path.cwd())
    text = " ".join(str(e).split())[:300]
    return EXIT_STAGE_FAILED, f"unexpected {type(e).__name__}: {text} (--debug shows the traceback)"


def _main(args) -> int:
    if args.command == "demo-data":
        from tasks.lib.demo import generate_demo_dataset

        kw = {k: v for k, v in (("n_dribbling", args.n_dribbling), ("n_dunking", args.n_dunking)) if v is not None}
        csv = generate_demo_dataset(args.out, seed=args.seed, extra_classes=args.extra_classes, **kw)
        print(f"wrote {csv} and {csv.parent / 'videos'}")
        return EXIT_OK

    from tasks.lib.config import ConfigError, load_config

    if getattr(args, "nproc", None):
        args.overrides.append(f"train.processes={args.nproc}")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"vivit: {e}", file=sys.stderr)
        return EXIT_USAGE

    if args.command == "doctor":
        from tasks.doctor import doctor

        return doctor(cfg)
    if args.command == "presets":
        return _presets(cfg)
    if args.command == "predict":
        return _predict(cfg, args)
    if args.command == "ddp-spec":
        return _ddp_spec(cfg, args)
    if args.no_wait:
        os.environ["VIVIT_NO_WAIT"] = "1"
    if args.command == "run":
        try:
            args.pipeline = _pipeline_args(args)  # checked before Prefect starts
        except ValueError as e:
            print(f"vivit: {e}", file=sys.stderr)
            return EXIT_USAGE
    from tasks.lib.errors import StageFailed

    with _quiet_expected_tracebacks(args.debug), own_prefect_server():
        try:
            summaries, failure = _run_stage(args.command, cfg, args), None
        except StageFailed as e:
            summaries, failure = e.summaries, e
    for s in summaries:
        print_summary(s)
    _next_steps(cfg, summaries)
    if failure is not None:
        return EXIT_USAGE if failure.user_error else EXIT_STAGE_FAILED
    return EXIT_OK


def _ddp_spec(cfg, args) -> int:
    """``vivit ddp-spec``: the spec and the commands of a multi-node training (docs/scaling.md, "Training on several
    processes", Multi-node)."""
    import shlex

    from tasks.train import DatasetMissingError, prepare_multinode

    try:
        plan = prepare_multinode(cfg.stage("train"), args.nnodes, args.nproc_per_node, args.rdzv_endpoint)
    except DatasetMissingError as e:
        print(f"vivit: {e}", file=sys.stderr)
        return EXIT_STAGE_FAILED
    except ValueError as e:
        print(f"vivit: {e}", file=sys.stderr)
        return EXIT_USAGE
    again = ["vivit", "train", *(["--config", str(args.config)] if args.config else []),
             *[x for o in args.overrides for x in ("--set", o)]]
    print(f"wrote {plan.spec}")
    print(f"{plan.world} training processes ({args.nnodes} node(s) x {args.nproc_per_node}), "
          f"{plan.per_process_batch} clip(s) each of the global batch of {cfg.train.batch_size}")
    print("1. on every node (this project installed, data_dir at the same path on a shared filesystem):")
    print(f"   {shlex.join(plan.command)}")
    print("2. when the ranks have finished, where the MLflow store is reachable (evaluates and registers the "
          "finished run; trains nothing again):")
    print(f"   {shlex.join(again)}")
    return EXIT_OK


@contextlib.contextmanager
def _quiet_expected_tracebacks(debug: bool):
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


def _drain_prefect_workers() -> None:
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:  # never started
            pass
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    try:
        run_coro_as_sync(drain())
    except Exception:  # noqa: BLE001 - a log line lost at exit is not worth a traceback
        pass


def temporary_server_settings(api_url: str | None = None) -> dict:
    """Prefect settings for flows that report to a server living only as long as this command (``vivit``'s own,
    a benchmark's, the tests'). No flow-run heartbeats: they let a server notice later that a run crashed, which a
    server that dies with the run never does, and Prefect 3.8.8's heartbeat thread sleeps in whole seconds, so
    every flow run waited for it at its end (an empty flow run took 1.1 s, 0.1 s without). Against a real server
    (``PREFECT_API_URL``, deployments run by a worker) Prefect's own setting applies."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    return {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, **({PREFECT_API_URL: api_url} if api_url else {})}


# own_prefect_server gives the temporary server the parent-death signal by wrapping the ``subprocess`` module that
# Prefect's server module starts it with: an internal, read in these Prefect releases only (pinned in pyproject).
PREFECT_SERVER_TESTED = ("3.8.",)


def server_popen_problem(prefect_server) -> str | None:
    """None when this Prefect's server module is the one the wrapper was written for, else why not."""
    import subprocess

    import prefect

    if not prefect.__version__.startswith(PREFECT_SERVER_TESTED):
        return f"Prefect {prefect.__version__} is not a tested release ({', '.join(PREFECT_SERVER_TESTED)}x)"
    if getattr(prefect_server, "subprocess", None) is not subprocess or not hasattr(prefect_server,
                                                                                   "SubprocessASGIServer"):
        return f"Prefect {prefect.__version__} starts its server differently"
    return None


@contextlib.contextmanager
def own_prefect_server():
    """Without ``PREFECT_API_URL`` the flows need a temporary Prefect server. Prefect starts one itself, but it
    outlived a kill -9 of ``vivit`` in 26 of 32 trials. So the command starts it, from the main thread, as a
    child that the kernel kills when this process dies (``tasks.lib.procs``), stops it on exit, and turns
    SIGTERM into a normal exit (which stops it too). On an untested Prefect it warns and starts the server
    without that signal (:func:`server_popen_problem`)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
    try:
        if PREFECT_API_URL.value() or threading.current_thread() is not threading.main_thread():
            yield None
            return
        from prefect.server.api import server as prefect_server

        from tasks.lib.procs import die_with_parent_kwargs

        problem = server_popen_problem(prefect_server)
        if problem:
            print(f"vivit: warning: {problem}, so its temporary Prefect server may outlive a killed vivit "
                  "(PREFECT_API_URL pointing at a server of your own avoids that)", file=sys.stderr)
        if not hasattr(prefect_server, "SubprocessASGIServer"):  # Prefect starts its own when a flow runs
            yield None
            return
        real = getattr(prefect_server, "subprocess", None)

        class _Subprocess:
            def __getattr__(self, name):
                return getattr(real, name)

            @staticmethod
            def Popen(*a, **kw):  # noqa: N802 - stands in for subprocess.Popen
                return real.Popen(*a, **{**die_with_parent_kwargs(), **kw})

        if not problem:
            prefect_server.subprocess = _Subprocess()
        server = prefect_server.SubprocessASGIServer()
        try:
            server.start()
            with temporary_settings(temporary_server_settings(server.api_url)):
                try:
                    yield server
                finally:
                    _drain_prefect_workers()  # logs and events still queued go out before the server stops
        finally:
            server.stop()
            if not problem:
                prefect_server.subprocess = real
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def _predict(cfg, args) -> int:
    from tasks import tracking
    from tasks.lib.predicting import ResultWriter, expand_inputs, stream_predictions

    if args.stride is not None and args.window is None:
        print("vivit: --stride needs --window", file=sys.stderr)
        return EXIT_USAGE
    uri = args.tracking_uri or tracking.resolve_tracking_uri(cfg.mlflow, create=False)
    tracking.require_existing_store(uri)  # a missing SQLite file would be created, empty
    try:
        tracking.use_store(cfg.mlflow.model_copy(update={"tracking_uri": uri}))
        model_uri = args.model or tracking.default_model_uri(cfg.mlflow.model_name, explicit=args.config is not None)
        classifier = tracking.load_classifier(model_uri, uri)
    except Exception as e:  # noqa: BLE001 - any load failure is reported the same way
        print(f"vivit: cannot load model {args.model or '(default)'} from {uri}: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        writer = ResultWriter(args.output, classifier.classes, args.top_k) if args.output else None
    except ValueError as e:
        print(f"vivit: {e}", file=sys.stderr)
        return EXIT_USAGE
    items = list(expand_inputs(args.videos))
    bar = _progress_bar(len(items))
    failed = done = 0
    ok = False
    try:
        for r in stream_predictions(classifier, items, batch_size=args.batch_size, window=args.window,
                                    stride=args.stride, top_k=args.top_k):
            failed += "error" in r
            done += 1
            if writer:
                writer.write(r)
            else:
                print(json.dumps(r), flush=True)
            bar(done)
        ok = True
    finally:
        bar(None)
        if writer:
            writer.close(ok)
    if writer:
        print(f"wrote {args.output}: {done} videos, {failed} failed", file=sys.stderr)
    return EXIT_STAGE_FAILED if failed else EXIT_OK


def _progress_bar(total: int):
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


if __name__ == "__main__":
    sys.exit(main())
