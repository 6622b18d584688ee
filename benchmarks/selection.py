"""Replay model-selection rules on recorded training curves (``benchmarks/curves.py``), decided on validation alone.

A rule sees only the validation probabilities of every epoch and returns the epochs (with weights) whose averaged
probabilities are the model's. Each rule is scored two ways:

* **val (honest)**: validation cut in two halves, stratified by class, 50 times: the rule chooses on one half and is
  scored (macro F1) on the other, then the other way round. This is the number to choose a rule by: it is what the
  rule's choice is worth on clips it did not choose on.
* **test**: the rule applied to the whole validation split, scored on test: reported, never used to choose.

Usage: ``python benchmarks/selection.py benchmarks/out/curves/*.npz [--fuse rgb diff]`` prints one table per file
(and, with ``--fuse``, the two inputs' late fusion per set and seed, its weight chosen on validation).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.metrics import macro_f1  # noqa: E402

Rule = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (val probs (E, N, K), labels) -> epoch weights (E,)


def _f1_per_epoch(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.array([macro_f1(y, e.argmax(1), p.shape[2]) for e in p])


def _nll_per_epoch(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(p[:, np.arange(len(y)), y], 1e-12, None)).mean(1)


def _ema(v: np.ndarray, a: float) -> np.ndarray:
    out, s = np.empty_like(v), None
    for i, x in enumerate(v):
        s = x if s is None else a * s + (1 - a) * x
        out[i] = s
    return out


def _one(e: int, n: int) -> np.ndarray:
    w = np.zeros(n)
    w[e] = 1.0
    return w


def _best(score: np.ndarray, min_epochs: int, patience: int | None) -> int:
    """fit's loop over a higher-is-better score: the best epoch from ``min_epochs`` on, stopping after
    ``patience`` epochs without a better one."""
    best, since, pick = -np.inf, 0, len(score) - 1
    for e in range(len(score)):
        if e + 1 < min(min_epochs, len(score)):
            continue
        if score[e] > best + 1e-12:
            best, pick, since = score[e], e, 0
        else:
            since += 1
            if patience is not None and since >= patience:
                break
    return pick


def ema_f1(min_epochs: int, patience: int | None = 20, a: float = 0.8) -> Rule:
    """``fit``'s rule: the best EMA of the val macro F1 from ``min_epochs`` on, early stopping after ``patience``."""
    return lambda p, y: _one(_best(_ema(_f1_per_epoch(p, y), a), min_epochs, patience), len(p))


def ema_loss(a: float = 0.8, patience: int | None = 20) -> Rule:
    """The epoch with the lowest EMA of the val cross-entropy: a continuous signal where F1 moves in steps of one
    clip."""
    return lambda p, y: _one(_best(-_ema(_nll_per_epoch(p, y), a), 0, patience), len(p))


def window(base: Rule, k: int) -> Rule:
    """The base rule's epoch and its ``k`` neighbours on each side, probabilities averaged."""
    def rule(p: np.ndarray, y: np.ndarray) -> np.ndarray:
        e = int(base(p, y).argmax())
        w = np.zeros(len(p))
        w[max(0, e - k): e + k + 1] = 1.0
        return w / w.sum()
    return rule


def top_k(k: int) -> Rule:
    """The ``k`` epochs with the lowest val cross-entropy, probabilities averaged."""
    def rule(p: np.ndarray, y: np.ndarray) -> np.ndarray:
        w = np.zeros(len(p))
        w[np.argsort(_nll_per_epoch(p, y))[:k]] = 1.0
        return w / k
    return rule


def last(frac: float = 0.0) -> Rule:
    """The last epoch (``frac`` 0), or the mean of the last ``frac`` of the schedule."""
    def rule(p: np.ndarray, y: np.ndarray) -> np.ndarray:
        n = max(1, int(round(len(p) * frac)))
        w = np.zeros(len(p))
        w[-n:] = 1.0 / n
        return w
    return rule


RULES: dict[str, Rule] = {
    "EMA F1, from epoch 40, patience 20 (fit's before)": ema_f1(40),
    "EMA F1, from epoch 1, patience 20": ema_f1(0),
    "EMA F1, from epoch 1, no early stop": ema_f1(0, None),
    "EMA val loss, patience 20": ema_loss(),
    "EMA val loss, no early stop": ema_loss(patience=None),
    "EMA val loss +-2 epochs": window(ema_loss(patience=None), 2),
    "lowest val loss, 5 epochs averaged": top_k(5),
    "last epoch": last(),
    "last 25% averaged": last(0.25),
}


def apply(w: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.tensordot(w, p, axes=1)


def halves(y: np.ndarray, rounds: int = 50, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rounds):
        a = np.zeros(len(y), bool)
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            a[idx[: len(idx) // 2]] = True
        out += [(np.flatnonzero(a), np.flatnonzero(~a)), (np.flatnonzero(~a), np.flatnonzero(a))]
    return out


def honest_val(rule: Rule, p: np.ndarray, y: np.ndarray, splits) -> float:
    k = p.shape[2]
    return float(np.mean([macro_f1(y[b], apply(rule(p[:, a], y[a]), p[:, b]).argmax(1), k) for a, b in splits]))


def score(rule: Rule, c: dict, splits) -> dict[str, float]:
    w = rule(c["val"], c["y_val"])
    k = c["val"].shape[2]
    return {"val_honest": honest_val(rule, c["val"], c["y_val"], splits),
            "test_f1": macro_f1(c["y_test"], apply(w, c["test"]).argmax(1), k),
            "epoch": float((w * np.arange(1, len(w) + 1)).sum())}


def load(path: Path) -> dict:
    z = np.load(path)
    return {k: z[k] for k in z.files}


def fuse(a: dict, b: dict, rule: Rule, splits, grid=(0.0, 0.25, 0.5, 0.75, 1.0)) -> dict[str, float]:
    """Late fusion of two inputs' models (each selected by ``rule``): p = w p_a + (1 - w) p_b, w chosen on val (on
    one half for the honest score)."""
    k = a["val"].shape[2]
    y = a["y_val"]

    def probs(c: dict, idx: np.ndarray, split: str) -> np.ndarray:
        return apply(rule(c["val"][:, idx], y[idx]), c[split])

    def pick(idx: np.ndarray) -> float:
        pa, pb = probs(a, idx, "val")[idx], probs(b, idx, "val")[idx]
        return max(grid, key=lambda w: (macro_f1(y[idx], (w * pa + (1 - w) * pb).argmax(1), k), -abs(w - 0.5)))

    honest = []
    for fit_idx, held in splits:
        w = pick(fit_idx)
        pa, pb = probs(a, fit_idx, "val")[held], probs(b, fit_idx, "val")[held]
        honest.append(macro_f1(y[held], (w * pa + (1 - w) * pb).argmax(1), k))
    everything = np.arange(len(y))
    w = pick(everything)
    test = w * probs(a, everything, "test") + (1 - w) * probs(b, everything, "test")
    return {"val_honest": float(np.mean(honest)), "test_f1": macro_f1(a["y_test"], test.argmax(1), k), "weight": w}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("curves", type=Path, nargs="+")
    ap.add_argument("--fuse", nargs=2, metavar=("INPUT_A", "INPUT_B"), default=None,
                    help="also the late fusion of two inputs' curves of the same set and seed (file names "
                         "SET-INPUT-SEED.npz)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    out: dict[str, dict] = {}
    curves = {p.stem: load(p) for p in args.curves}
    for name, c in curves.items():
        splits = halves(c["y_val"])
        out[name] = {r: score(rule, c, splits) for r, rule in RULES.items()}
        print(f"\n{name} ({len(c['val'])} epochs, val {len(c['y_val'])} clips, test {len(c['y_test'])})")
        print("| rule | val macro F1 (choose on one half, score the other) | test macro F1 | epoch |")
        print("|---|---:|---:|---:|")
        for r, s in out[name].items():
            print(f"| {r} | {s['val_honest']:.3f} | {s['test_f1']:.3f} | {s['epoch']:.1f} |")
    if args.fuse:
        ia, ib = args.fuse
        for name, c in curves.items():
            dataset, inp, seed = name.rsplit("-", 2)
            other = curves.get(f"{dataset}-{ib}-{seed}")
            if inp != ia or other is None:
                continue
            splits = halves(c["y_val"])
            print(f"\n{dataset} seed {seed}: late fusion of {ia} and {ib}")
            for r in ("EMA val loss, no early stop", "EMA F1, from epoch 1, patience 20"):
                f = fuse(c, other, RULES[r], splits)
                out.setdefault(f"{dataset}-fuse-{seed}", {})[r] = f
                print(f"  {r}: val {f['val_honest']:.3f} test {f['test_f1']:.3f} (weight of {ia}: {f['weight']})")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
