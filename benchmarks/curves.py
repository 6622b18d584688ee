"""Record a training's whole curve (every epoch's validation *and* test probabilities) so that selection rules,
checkpoint ensembles and input fusion can be replayed afterwards, decided on validation alone, without training
again: ``benchmarks/selection.py`` reads what this writes.

One training per call, with ``fit``'s own setup and epoch (``model.training``), no early stopping, and the test
split evaluated every epoch (that draws other random numbers than ``fit`` does, so a curve's last epoch is not
bit-identical to a ``vivit train`` of the same seed; it is the same recipe).

Usage: ``python benchmarks/curves.py --dataset data/hmdb5/dataset --seed 0 --out benchmarks/out/curves/hmdb5-diff-0.npz
[--set input=rgb ...]``
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.evaluation import predict_probabilities  # noqa: E402
from model.options import TrainOptions  # noqa: E402
from model import training  # noqa: E402


def record(dataset: Path, opts: TrainOptions, seed: int, work: Path) -> dict[str, np.ndarray]:
    notes: list[str] = []
    run = training._setup(dataset, opts.model_copy(update={"patience": None, "resume": False}), seed, work, notes)
    state = training.TrainState()
    val, test, train_loss, seconds = [], [], [], []
    y = {}
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    plain = training.evaluate

    def evaluate(*a, **kw):  # the epoch's own validation pass, its probabilities kept (no second pass)
        labels, probs, loss = predict_probabilities(*a, **kw)
        seen.append((labels, probs))
        return training.classification_report(labels, probs, run.classes, loss=loss)

    training.evaluate = evaluate
    for epoch in range(1, opts.epochs + 1):
        t0 = time.perf_counter()
        metrics = training._epoch(run, state, epoch)
        y["val"], probs = seen.pop()
        val.append(probs)
        labels, probs, _ = predict_probabilities(run.forward, run.eval_loaders["test"], run.device, run.classes,
                                                 run.view, run.amp)
        y["test"] = labels
        test.append(probs)
        train_loss.append(metrics["train_loss"])
        seconds.append(time.perf_counter() - t0)
        print(f"epoch {epoch} train_loss={metrics['train_loss']:.3f} val_f1={metrics.get('val_f1', float('nan')):.3f}",
              flush=True)
    training.evaluate = plain
    return {"val": np.stack(val), "test": np.stack(test), "y_val": y["val"], "y_test": y["test"],
            "train_loss": np.array(train_loss), "seconds": np.array(seconds)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="train option (YAML value), e.g. input=rgb")
    args = ap.parse_args(argv)
    import yaml

    opts = TrainOptions(**{k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.overrides)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    curves = record(args.dataset, opts, args.seed, args.out.with_suffix(".work"))
    np.savez_compressed(args.out, **curves, options=json.dumps(opts.determining()), seed=args.seed)
    print(f"wrote {args.out} ({curves['seconds'].sum():.0f} s)")


if __name__ == "__main__":
    main()
