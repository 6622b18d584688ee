"""``vivit``: run any stage, the whole pipeline, or prediction from a shell.

Each stage command runs its Prefect flow (a temporary local Prefect server unless ``PREFECT_API_URL`` points at
a real one), prints a one-screen summary and the paths it wrote, and exits non-zero only when the stage as a
whole failed: some clips failing is a normal, reported outcome.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import flows  # noqa: F401  -- sets the embedded Prefect defaults before prefect is imported
from flows import model_commands
from flows.server import own_prefect_server
from flows.terminal import next_steps, print_summary, progress_bar, quiet_expected_tracebacks, step, terminal_output

if TYPE_CHECKING:
    from tasks.lib.results import StageResult

EXIT_OK, EXIT_STAGE_FAILED, EXIT_USAGE = 0, 1, 2


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, help="YAML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--debug", action="store_true", help="show tracebacks (errors are one line otherwise)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="show every Prefect log line in the terminal, one per clip included (always in "
                        "DATA_DIR/logs/vivit.log and the Prefect UI)")
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
            ("pretrain", "masked video pretraining of the encoder on the dataset's train+val clips (docs/pretrain.md)",
             "pretrain again even if this encoder exists"),
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
    p = sub.add_parser("ui", help="start the Prefect UI (this project's Prefect home) and the MLflow UI (--config's "
                                   "store), print both links, stop both on Ctrl-C")
    _config_args(p)
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: config, env, ./mlruns)")
    p.add_argument("--prefect-port", type=int, default=4200, help="Prefect UI port (a free one if taken)")
    p.add_argument("--mlflow-port", type=int, default=5000, help="MLflow UI port (a free one if taken)")
    p.add_argument("--timeout", type=_positive_float, default=180.0, help="seconds to wait for each server")
    p = sub.add_parser("serve", help="serve a registered model over REST (mlflow models serve with this "
                                      "environment's Python), until Ctrl-C")
    p.add_argument("model_uri", metavar="MODEL_URI", help="e.g. models:/vivit-demo@champion")
    _config_args(p)
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: config, env, ./mlruns)")
    p.add_argument("--port", type=int, default=5001, help="port (0: a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--video", action="store_true", help="serve NAME-video, the model that takes video files, "
                                                         "instead of NAME (frames)")
    model_commands.add_parsers(sub)  # evaluate, runs, models, export
    return ap


def _presets(cfg) -> int:
    """Every preset's size and cost on the clips this config trains on (what a view costs the network), the
    config's own model marked."""
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


def _run_stage(name: str, cfg, args) -> list[StageResult]:
    """The stage's (or pipeline's) summaries; a failed stage raises StageFailed carrying them."""
    if name == "run":
        from flows.pipeline import pipeline_flow

        return pipeline_flow(cfg, **args.pipeline)
    from flows.pipeline import STAGES

    return [STAGES[name](cfg.stage(name), force=args.force)]


def _missing_input(cfg, args) -> str | None:
    """The one line for a stage (or ``vivit run``'s first stage) started without what the stage before it writes,
    found before the Prefect server starts."""
    from tasks.guards import missing_stage_input

    if args.command == "run":
        from flows.pipeline import select_stages

        first = select_stages(args.pipeline["stages"], args.pipeline["start"])[0]
    else:
        first = args.command
    return missing_stage_input(first, cfg.stage(first))


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
    if args.command in ("ui", "serve"):
        from flows import services

        return services.ui(cfg, args) if args.command == "ui" else services.serve(cfg, args)
    if args.command in model_commands.COMMANDS:
        return model_commands.run(cfg, args)
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
    problem = _missing_input(cfg, args)
    if problem:
        print(f"vivit: {problem}", file=sys.stderr)
        return EXIT_USAGE
    from tasks.lib.errors import StageFailed

    from prefect.settings import PREFECT_API_URL

    with terminal_output(cfg.data_dir / "logs", args.command, args.verbose) as log_path, \
            quiet_expected_tracebacks(args.debug):
        step(f"flows report to {PREFECT_API_URL.value()}" if PREFECT_API_URL.value() else
             "starting a temporary Prefect server (its runs stay in PREFECT_HOME: vivit ui shows them)")
        with own_prefect_server(cfg.data_dir / "logs" / "prefect-server.log"):
            try:
                summaries, failure = _run_stage(args.command, cfg, args), None
            except StageFailed as e:
                summaries, failure = e.summaries, e
    for s in summaries:
        print_summary(s)
    if log_path is not None:
        print(f"\nlog: {log_path} (every line, one per clip included; --verbose shows them here)")
    next_steps(cfg, summaries)
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
    except (DatasetMissingError, ValueError) as e:  # no dataset yet, or a batch the processes cannot split
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


def _predict(cfg, args) -> int:
    """Everything the user named is checked (options, inputs, the store, the model's name) before the model loads,
    which takes seconds; a mistake in any of them is one line and exit 2."""
    from tasks.lib.predicting import ResultWriter, expand_inputs, json_line, stream_predictions

    if args.stride is not None and args.window is None:
        print("vivit: --stride needs --window", file=sys.stderr)
        return EXIT_USAGE
    if args.output and args.output.suffix.lower() not in ResultWriter.SUFFIXES:
        print(f"vivit: --output must end in .jsonl or .csv, got {args.output.name!r}", file=sys.stderr)
        return EXIT_USAGE
    items = list(expand_inputs(args.videos))
    missing = [i for i in items if i.error]
    if missing:
        shown = "; ".join(f"{i.path or repr(i.path)}: {i.error}" for i in missing[:3])
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        print(f"vivit: nothing classified, {len(missing)} input(s) not found: {shown}{more}", file=sys.stderr)
        return EXIT_USAGE
    from tasks import tracking
    from tasks.tracking.catalog import resolve_model

    uri = args.tracking_uri or tracking.resolve_tracking_uri(cfg.mlflow, create=False)
    tracking.require_existing_store(uri)  # a missing SQLite file would be created, empty
    try:
        tracking.use_store(cfg.mlflow.model_copy(update={"tracking_uri": uri}))
        model_uri = args.model or tracking.default_model_uri(cfg.mlflow.model_name, explicit=args.config is not None)
        resolve_model(model_uri)  # a wrong name lists the registered models, before seconds of loading
    except Exception as e:  # noqa: BLE001 - a UserError's line, or any other lookup failure, the same way
        print(f"vivit: cannot load model {args.model or '(default)'} from {uri}: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        classifier = tracking.load_classifier(model_uri, uri)
    except Exception as e:  # noqa: BLE001 - any load failure is reported the same way
        print(f"vivit: cannot load model {model_uri} from {uri}: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        writer = ResultWriter(args.output, classifier.classes, args.top_k) if args.output else None
    except ValueError as e:
        print(f"vivit: {e}", file=sys.stderr)
        return EXIT_USAGE
    bar = progress_bar(len(items))
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
                print(json_line(r), flush=True)
            bar(done)
        ok = True
    finally:
        bar(None)
        if writer:
            writer.close(ok)
    if writer:
        print(f"wrote {args.output}: {done} videos, {failed} failed", file=sys.stderr)
    return EXIT_STAGE_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
