"""Quality on a frames dataset: the default preset against the original design (``frame-mlp``) and against itself
fed a single frame, all trained the same way (same options, seed and data).

The issue's question is whether the video transformer uses time at all: the single-frame ablation has the same
network and sees the middle frame repeated, so any gap between the two is what motion is worth on this data.

Usage: ``python benchmarks/quality.py [--dataset data/demo/dataset] [--epochs 30] [--json benchmarks/out/quality.json]``
(``make run`` writes the demo dataset). Takes about 5 minutes on 2 CPU cores at 30 epochs.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.presets import DEFAULT_PRESET  # noqa: E402
from model.training import TrainOptions, fit  # noqa: E402

RUNS = (  # (row name, preset, single_frame)
    (f"{DEFAULT_PRESET} (default)", DEFAULT_PRESET, False),
    (f"{DEFAULT_PRESET}, single frame", DEFAULT_PRESET, True),
    ("frame-mlp (original design)", "frame-mlp", False),
)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=ROOT / "data" / "demo" / "dataset")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "quality.json")
    args = ap.parse_args(argv)
    if not (args.dataset / "manifest.parquet").is_file():
        raise SystemExit(f"{args.dataset} has no manifest.parquet: run `make run` (or the frames stage) first")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, preset, single in RUNS:
            started = time.time()
            # Same options as the train stage's defaults, except: no early stopping, so every model gets all epochs.
            opts = TrainOptions(model=preset, epochs=args.epochs, patience=None, seed=args.seed, single_frame=single,
                                resume=False)
            r = fit(args.dataset, opts, work_dir=Path(tmp) / f"{preset}-{int(single)}")
            val, test = r.val_metrics or {}, r.test_metrics or {}
            rows[name] = {"preset": preset, "single_frame": single, "best_epoch": r.best_epoch,
                          "val_accuracy": val.get("accuracy"), "val_f1": val.get("f1"),
                          "test_accuracy": test.get("accuracy"), "test_f1": test.get("f1"),
                          "seconds": round(time.time() - started, 1)}
            print(f"{name}: {json.dumps(rows[name])}", flush=True)

    def f(v):
        return "-" if v is None else f"{v:.2f}"

    print()
    print("| model | best val accuracy / macro F1 | test accuracy / macro F1 | best epoch |")
    print("|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {f(r['val_accuracy'])} / {f(r['val_f1'])} | {f(r['test_accuracy'])} / {f(r['test_f1'])} | "
              f"{r['best_epoch']} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"dataset": str(args.dataset), "epochs": args.epochs, "seed": args.seed,
                                     "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
