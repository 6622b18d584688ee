"""``vivit``: run any stage, the whole pipeline, or prediction from a shell.

Each stage command runs its Prefect flow (a temporary local Prefect server unless ``PREFECT_API_URL`` points at
a real one), prints a one-screen summary and the paths it wrote, and exits non-zero only when the stage as a
whole failed: some clips failing is a normal, reported outcome.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import flows  # noqa: F401  -- sets the embedded Prefect defaults before prefect is imported

EXIT_OK, EXIT_STAGE_FAILED, EXIT_USAGE = 0, 1, 2


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, help="YAML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=5 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vivit", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name, text in (("download", "download the selected Kinetics clips with yt-dlp"),
                       ("filter", "validate downloads, quarantine unusable files"),
                       ("frames", "sample frames uniformly into the dataset"),
                       ("train", "train the configured preset and register it in MLflow")):
        p = sub.add_parser(name, help=text)
        _config_args(p)
        if name == "train":
            p.add_argument("--force", action="store_true", help="train even if an identical run is registered")
    p = sub.add_parser("run", help="the chained pipeline (download -> filter -> frames -> train)")
    _config_args(p)
    p.add_argument("--stages", help="comma-separated subset, e.g. filter,frames")
    p.add_argument("--from", dest="start", help="run from this stage to the end")
    p.add_argument("--force-train", action="store_true", help="train even if an identical run is registered")
    p = sub.add_parser("predict", help="classify videos with a registered model")
    p.add_argument("videos", nargs="+", help="video files")
    p.add_argument("--model", default=None, help="model URI (default models:/<mlflow.model_name>@champion)")
    _config_args(p)
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: config, env, ./mlruns)")
    p = sub.add_parser("demo-data", help="write the offline synthetic Kinetics-format demo dataset")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-dribbling", type=int, default=None)
    p.add_argument("--n-dunking", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra-classes", type=int, default=0, help="add synthetic classes beyond the two (K > 2)")
    sub.add_parser("presets", help="list model presets with parameter counts and GFLOPs per clip")
    return ap


def print_summary(s: dict[str, Any]) -> None:
    status = "FAILED" if s.get("failed") else "ok"
    print(f"\n== {s['stage']}: {status}")
    if s.get("message"):
        print(f"   {s['message']}")
    counts = s.get("counts") or {}
    if counts:
        width = max(len(k) for k in counts)
        for k, v in counts.items():
            print(f"   {k:<{width}}  {v}")
    for out in s.get("outputs") or []:
        print(f"   wrote {out}")


def _run_stage(name: str, cfg, args) -> list[dict]:
    if name == "run":
        from flows.pipeline import pipeline_flow, select_stages

        stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
        select_stages(stages, args.start)  # validate before starting Prefect
        return pipeline_flow(cfg, stages=stages, start=args.start, force_train=args.force_train)
    if name == "train":
        from flows.train import train_flow

        return [train_flow(cfg, force=args.force)]
    from flows.pipeline import STAGES

    return [STAGES[name](cfg)]


def _next_steps(cfg, summaries: list[dict]) -> None:
    train = next((s for s in summaries if s["stage"] == "train" and not s.get("failed")), None)
    if not train:
        return
    uri = train["result"]["tracking_uri"]
    print("\nNext:")
    print(f"   mlflow ui --backend-store-uri {uri} --port 5000      # then open http://127.0.0.1:5000")
    print(f"   vivit predict VIDEO.mp4 --model models:/{cfg.mlflow.model_name}@champion --tracking-uri {uri}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "presets":
        from model.presets import PRESETS, describe

        for name in PRESETS:
            d = describe(name, num_frames=16, image_size=128)
            print(f"{name:<18} params={d['params'] / 1e6:6.2f}M  GFLOPs/clip(16x128x128)={d['gflops']:.2f}")
        return EXIT_OK
    if args.command == "demo-data":
        from tasks.core.demo_data import generate_demo_dataset

        kw = {k: v for k, v in (("n_dribbling", args.n_dribbling), ("n_dunking", args.n_dunking)) if v is not None}
        csv = generate_demo_dataset(args.out, seed=args.seed, extra_classes=args.extra_classes, **kw)
        print(f"wrote {csv} and {csv.parent / 'videos'}")
        return EXIT_OK

    from tasks.core.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"vivit: {e}", file=sys.stderr)
        return EXIT_USAGE

    if args.command == "predict":
        return _predict(cfg, args)
    try:
        summaries = _run_stage(args.command, cfg, args)
    except ValueError as e:
        print(f"vivit: {e}", file=sys.stderr)
        return EXIT_USAGE
    for s in summaries:
        print_summary(s)
    _next_steps(cfg, summaries)
    return EXIT_STAGE_FAILED if any(s.get("failed") for s in summaries) else EXIT_OK


def _predict(cfg, args) -> int:
    from tasks import tracking
    from tasks.predict import classify_videos

    uri = args.tracking_uri or tracking.resolve_tracking_uri(cfg.mlflow)
    model_uri = args.model or f"models:/{cfg.mlflow.model_name}@champion"
    try:
        classifier = tracking.load_classifier(model_uri, uri)
    except Exception as e:  # noqa: BLE001 - any load failure is reported the same way
        print(f"vivit: cannot load model {model_uri} from {uri}: {e}", file=sys.stderr)
        return EXIT_USAGE
    results = classify_videos(classifier, list(args.videos))
    for r in results:
        print(json.dumps(r))
    return EXIT_STAGE_FAILED if any("error" in r for r in results) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
