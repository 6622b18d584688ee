"""Does the pretrain stage pay? The default recipe from scratch against masked video pretraining + fine-tuning at
the same total CPU budget, on one stored dataset (default ``data/surv_fight/dataset``: ``vivit run --config
configs/surv_fight.yaml --stages download,filter,frames`` makes it), per seed:

* **scratch**: ``train:`` defaults exactly as the train stage runs them (``train.input: auto`` trains both inputs
  for the probe, then continues the one better on validation).
* **pretrain**: ``model.pretrain.pretrain`` on the train + val clips (never test; labels unused), in the input form
  the stage decides on train/val (``tasks/lib/pretraining.py`` ``decide_input``), ``--pretrain-epochs`` epochs.
* **fine-tune**: ``fit`` from the pretrained encoder (what ``train.init: pretrain`` runs), the other options the
  defaults, its ``epochs`` cut so that pretraining + fine-tuning use at most the CPU seconds the scratch run used
  (per-epoch cost measured on the scratch run); early stopping on validation as always.
* **reference**: the logistic regression every training logs (tasks/lib/baseline.py).
* **linear probe**: a logistic regression (C chosen on val) on the pooled features of the pretrained encoder and of
  the same encoder at random initialisation: whether pretraining learnt anything a classifier can read.

These are the same functions the stages call (the stages add Prefect and MLflow around them), so the benchmark
needs no Prefect server. CPU time is the process's (``time.process_time``, every thread), not the wall clock: the
machine is shared. Nothing is chosen on test. Phases can run as separate processes (``--phase scratch`` and
``--phase pretrain`` at the same time, then ``--phase finetune``, ``--phase report``); results go to
``benchmarks/out/pretrain/``. The last line: ``pretrain_test_f1=X scratch_test_f1=Y ref_test_f1=Z
pretrain_cpu_min=W`` (means over the seeds).

Usage: ``python benchmarks/pretrain.py [--data DIR] [--seeds 0] [--pretrain-epochs 40] [--phase all]``
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.options import PretrainOptions, TrainOptions  # noqa: E402

OUT = ROOT / "benchmarks" / "out" / "pretrain"
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _save(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=float))


def _test_f1(result) -> float:
    return float(result.test_metrics["f1"])


def scratch(info, seed: int, work: Path) -> dict:
    from model.training import fit

    c0, w0 = time.process_time(), time.time()
    r = fit(info, TrainOptions(), seed=seed, work_dir=work / f"scratch-{seed}")
    cpu = time.process_time() - c0
    choice = r.input_choice or {}
    others = sum(c["epochs"] for n, c in (choice.get("candidates") or {}).items() if n != choice.get("chosen"))
    epochs = len(r.history) + others
    return {"test_f1": _test_f1(r), "val_score": r.best_val_score, "val_f1": r.best_val_f1, "cpu_s": cpu,
            "wall_s": time.time() - w0, "epoch_equivalents": epochs, "cpu_per_epoch": cpu / max(epochs, 1),
            "input": r.view.input, "best_epoch": r.best_epoch, "epochs_run": len(r.history)}


def pretrain_phase(info, seed: int, work: Path, epochs: int) -> dict:
    from model.pretrain import pretrain
    from tasks.lib.pretraining import decide_input, pretrain_clips, pretrain_key

    form, why = decide_input(info, TrainOptions())
    train = TrainOptions(input=form)
    opts = PretrainOptions(epochs=epochs)
    clips, notes = pretrain_clips(info, opts, work)
    key = pretrain_key(info, train, opts, seed)
    w0 = time.time()
    r = pretrain(clips, train, opts, num_frames=info.num_frames, image_size=info.image_size,
                 work_dir=work / "pretrain" / key, seed=seed, fingerprint=key, about={"dataset": info.fingerprint})
    return {"folder": str(work / "pretrain" / key), "input": form, "decision": why, "cpu_s": r.cpu_seconds,
            "wall_s": time.time() - w0, "epochs": epochs, "clips": len(clips), "notes": notes,
            "loss": [h["loss"] for h in r.history]}


def finetune(info, seed: int, work: Path, budget_s: float | None, per_epoch: float | None, pre: dict,
             epochs: int | None = None) -> dict:
    from model.training import fit

    if epochs is None:
        epochs = max(1, min(TrainOptions().epochs, math.floor(max(budget_s, 0) / per_epoch)))
    c0, w0 = time.process_time(), time.time()
    r = fit(info, TrainOptions(input=pre["input"], init=pre["folder"], epochs=epochs), seed=seed,
            work_dir=work / f"finetune-{seed}-{epochs}")
    return {"test_f1": _test_f1(r), "val_score": r.best_val_score, "val_f1": r.best_val_f1,
            "cpu_s": time.process_time() - c0, "wall_s": time.time() - w0, "epochs": epochs,
            "best_epoch": r.best_epoch, "epochs_run": len(r.history)}


def linear_probe(info, seed: int, pre: dict) -> dict:
    """Pooled features of the pretrained and of a randomly initialised encoder, logistic regression, C on val."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from model.data import ClipDataset
    from model.metrics import macro_f1
    from model.presets import build_model, get_config
    from model.pretrain import load_encoder, pooled_features

    train = TrainOptions(input=pre["input"])
    view = train.view
    build = dict(num_classes=len(info.classes), num_frames=view.num_frames, image_size=info.image_size,
                 in_channels=view.channels)
    torch.manual_seed(seed)
    nets = {"random": build_model(train.model, **build),
            "pretrained": load_encoder(pre["folder"], get_config(train.model, **build))[0]}
    y = {s: np.asarray(info.split(s)["label_index"], dtype=int) for s in ("train", "val", "test")}
    out = {}
    for name, net in nets.items():
        feats = {s: pooled_features(net, ClipDataset(info.path, info.split(s), num_frames=info.num_frames,
                                                     image_size=info.image_size, view=view), view)
                 for s in ("train", "val", "test")}
        best = None
        for C in C_GRID:
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000)).fit(feats["train"], y["train"])
            val = macro_f1(y["val"], clf.predict(feats["val"]), len(info.classes))
            if best is None or val > best[0] + 1e-9:
                best = (val, C, clf)
        val, C, clf = best
        pred = clf.predict(feats["test"])
        out[name] = {"C": C, "val_f1": float(val), "test_f1": float(macro_f1(y["test"], pred, len(info.classes))),
                     "test_accuracy": float((pred == y["test"]).mean())}
    return out


def _update(path: Path, seed: int, key: str, value: dict) -> None:
    """Merge one result into the JSON (phases may run as separate processes)."""
    state = _load(path)
    state.setdefault(str(seed), {})[key] = value
    _save(path, state)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "surv_fight" / "dataset")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--pretrain-epochs", type=int, default=PretrainOptions().epochs)
    ap.add_argument("--phase", choices=("all", "scratch", "pretrain", "finetune", "probe", "report"), default="all")
    ap.add_argument("--finetune-epochs", type=int, default=None,
                    help="fine-tune this many epochs (early stopping as always) instead of what is left of the "
                         "scratch run's CPU time (then the scratch run need not have run)")
    ap.add_argument("--recorded-scratch", type=float, nargs=2, default=None, metavar=("TEST_F1", "CPU_MIN"),
                    help="report: a scratch result recorded elsewhere (e.g. docs/quality.md's make quality) for the "
                         "seeds whose scratch run is missing")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    from model.dataset import load_dataset
    from tasks.lib.baseline import reference

    info = load_dataset(args.data)
    work = args.out / "work" / info.fingerprint
    path = args.out / f"{info.fingerprint}.json"
    for seed in args.seeds:
        if args.phase in ("all", "scratch") and "scratch" not in _load(path).get(str(seed), {}):
            _update(path, seed, "scratch", scratch(info, seed, work))
        if args.phase in ("all", "pretrain") and "pretrain" not in _load(path).get(str(seed), {}):
            _update(path, seed, "pretrain", pretrain_phase(info, seed, work, args.pretrain_epochs))
        s = _load(path).get(str(seed), {})
        if args.phase in ("all", "finetune"):
            if args.finetune_epochs:
                name = f"finetune_{args.finetune_epochs}"
                if name not in s:
                    _update(path, seed, name, finetune(info, seed, work, None, None, s["pretrain"],
                                                       args.finetune_epochs))
            elif "finetune_budget" not in s:
                budget = s["scratch"]["cpu_s"] - s["pretrain"]["cpu_s"]
                _update(path, seed, "finetune_budget", finetune(info, seed, work, budget,
                                                                s["scratch"]["cpu_per_epoch"], s["pretrain"]))
        if args.phase in ("all", "probe") and "probe" not in s and "pretrain" in s:
            _update(path, seed, "probe", linear_probe(info, seed, s["pretrain"]))
    if args.phase not in ("all", "report"):
        return
    state = _load(path)
    ref = reference(info).metrics()
    print(f"dataset {args.data} ({info.fingerprint}), seeds {args.seeds}; reference test F1 "
          f"{ref['baseline/test_f1']:.3f} (val {ref['baseline/val_f1']:.3f})")
    chosen, scratch_f1, pre_cpu = [], [], []
    for seed in args.seeds:
        r = state[str(seed)]
        pr = r["pretrain"]
        pre_cpu.append(pr["cpu_s"] / 60)
        print(f"seed {seed}: pretrain {pr['input']} ({pr['decision'].get('val_f1')}) {pr['epochs']} epochs on "
              f"{pr['clips']} clips, {pr['cpu_s'] / 60:.1f} CPU min, loss {pr['loss'][0]:.4f} -> {pr['loss'][-1]:.4f}")
        if "scratch" in r:
            sc = r["scratch"]
            scratch_f1.append(sc["test_f1"])
            print(f"  scratch ({sc['input']}): val {sc['val_score']:.3f} test {sc['test_f1']:.3f}, "
                  f"{sc['cpu_s'] / 60:.1f} CPU min, {sc['epochs_run']} epochs")
        elif args.recorded_scratch:
            scratch_f1.append(args.recorded_scratch[0])
            print(f"  scratch: recorded test {args.recorded_scratch[0]:.3f}, {args.recorded_scratch[1]:.1f} CPU min "
                  "(--recorded-scratch)")
        fts = {k: v for k, v in r.items() if k.startswith("finetune")}
        for name, ft in sorted(fts.items()):
            print(f"  {name}: {ft['epochs']} epochs max, {ft['epochs_run']} run, val {ft['val_score']:.3f} "
                  f"test {ft['test_f1']:.3f}, {ft['cpu_s'] / 60:.1f} CPU min (+ {pr['cpu_s'] / 60:.1f} pretraining)")
        if fts:  # the fine-tune with the better smoothed val score (chosen on validation, never on test)
            chosen.append(max(fts.values(), key=lambda f: f["val_score"])["test_f1"])
        if "probe" in r:
            pb = r["probe"]
            print("  linear probe: " + ", ".join(f"{n} val {p['val_f1']:.3f} test {p['test_f1']:.3f} "
                                                  f"(acc {p['test_accuracy']:.3f})" for n, p in pb.items()))
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    print(f"pretrain_test_f1={mean(chosen):.3f} scratch_test_f1={mean(scratch_f1):.3f} "
          f"ref_test_f1={ref['baseline/test_f1']:.3f} pretrain_cpu_min={mean(pre_cpu):.1f}")


if __name__ == "__main__":
    main()
