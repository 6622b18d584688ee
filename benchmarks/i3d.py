"""What a Kinetics-400 I3D stem gives on real sets, before it is wired into training (issue 31's measurement).

Per set (a stored frames dataset of 224-pixel clips, e.g. ``vivit run --config configs/hmdb5.yaml --stages
download,filter,frames --set data_dir=data/hmdb5-224 --set frames.size=224 --set frames.num_frames=16``):

1. **Features, once per clip** (timed): the frozen I3D (``tasks/lib/i3d_weights.py``) on 16 uniformly sampled
   frames scaled to ``[-1, 1]``, the Mixed_4f map pooled to 4 x 7 x 7 positions and the pooled 1024-d vector from
   the same pass; the horizontally mirrored clip too (the encoder's training augmentation). Cached in
   ``benchmarks/out/i3d/<set>-<fingerprint>.pt``.
2. **I3D linear probe**: standardised pooled features, a logistic regression whose C is chosen on validation.
3. **I3D-stem transformer** (``model/i3d_vivit.py`` ``TokenEncoder`` on the cached maps), per seed: the training
   recipe's choices (AdamW 5e-4, weight decay 0.05, warm-up then cosine, label smoothing 0.1, class-weighted loss,
   the kept epoch by the smoothed validation macro F1 with patience 20 as ``fit`` keeps it). Fixed before any run;
   nothing here is chosen on test.

The default from scratch is read from ``make quality``'s ``quality.json`` when it has the set. The last line:
``i3d_test_f1=X probe_test_f1=Y scratch_test_f1=Z`` (means over the sets; one line per set before it).

Usage: ``python benchmarks/i3d.py --dataset hmdb5=data/hmdb5-224/dataset --dataset surv_fight=... [--seeds 0 1 2]``
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.data import balanced_class_weights  # noqa: E402
from model.dataset import load_dataset  # noqa: E402
from model.i3d_vivit import TokenEncoder, TokenEncoderConfig  # noqa: E402
from model.metrics import macro_f1  # noqa: E402
from model.optim import make_optimizer, param_groups, warmup_cosine  # noqa: E402
from model.options import TrainOptions  # noqa: E402
from model.training import TrainState  # noqa: E402
from model.views import ViewSpec, view_indices  # noqa: E402

FRAMES = 16
GRID = (4, 7, 7)
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


def extract(dataset_dir: Path, cache: Path, net=None) -> dict:
    """Maps (N, 2, C, 4, 7, 7) fp16 (as stored, mirrored), pooled (N, 1024), labels, splits; cached by the dataset's
    fingerprint."""
    info = load_dataset(dataset_dir)
    path = cache / f"{dataset_dir.parent.name}-{info.fingerprint}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    if net is None:
        from tasks.lib.i3d_weights import load_i3d

        net = load_i3d()
    net.eval()
    spec = ViewSpec(num_frames=FRAMES, input="rgb", test_views=1)
    rows = info.manifest.reset_index(drop=True)
    maps, pooled, started = [], [], time.time()
    for i, row in rows.iterrows():
        frames = np.load(info.path / row["frames_path"])  # (F, S, S, 3) uint8
        clip = torch.from_numpy(frames[view_indices(len(frames), spec)]).permute(3, 0, 1, 2).float() / 127.5 - 1
        x = torch.stack([clip, clip.flip(-1)])
        with torch.inference_mode():
            m, p = net.features_and_pooled(x)
        maps.append(F.adaptive_avg_pool3d(m, GRID).half())
        pooled.append(p[0])
        if (i + 1) % 25 == 0:
            print(f"  {dataset_dir}: {i + 1}/{len(rows)} clips, {time.time() - started:.0f} s", flush=True)
    out = {"maps": torch.stack(maps), "pooled": torch.stack(pooled).float(),
           "labels": torch.tensor(rows["label_index"].to_numpy(), dtype=torch.long),
           "splits": list(rows["split"]), "classes": list(info.classes), "seconds": time.time() - started,
           "size": int(info.image_size)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def _split(feats: dict, name: str) -> np.ndarray:
    return np.array([s == name for s in feats["splits"]])


def probe(feats: dict) -> dict:
    """Logistic regression on the pooled features, C chosen on validation (the test split only reports)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    x, y, k = feats["pooled"].numpy().astype(np.float64), feats["labels"].numpy(), len(feats["classes"])
    tr, va, te = (_split(feats, s) for s in ("train", "val", "test"))
    scaler = StandardScaler().fit(x[tr])
    x = scaler.transform(x)
    best = None
    with threadpool_limits(1):
        for c in C_GRID:
            clf = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(x[tr], y[tr])
            f1 = macro_f1(y[va], clf.predict(x[va]), k)
            if best is None or f1 > best[0] + 1e-12:
                best = (f1, c, clf)
    f1, c, clf = best
    return {"C": c, "val_f1": f1, "test_f1": macro_f1(y[te], clf.predict(x[te]), k),
            "test_accuracy": float((clf.predict(x[te]) == y[te]).mean())}


def train_encoder(feats: dict, seed: int, epochs: int = 60, batch_size: int = 32) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    maps, y, k = feats["maps"], feats["labels"], len(feats["classes"])
    tr, va, te = (np.flatnonzero(_split(feats, s)) for s in ("train", "val", "test"))
    net = TokenEncoder(TokenEncoderConfig(num_classes=k, in_channels=maps.shape[2], grid=GRID))
    steps = math.ceil(len(tr) / batch_size)
    opt = make_optimizer(param_groups(net, 0.05), lr=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(epochs * steps, 2 * steps))
    weight = balanced_class_weights(y[tr].numpy(), k)
    rule, state, best, started = TrainOptions(patience=20, selection_smoothing=0.8), TrainState(), None, time.time()

    def probs(idx: np.ndarray) -> torch.Tensor:
        net.eval()
        with torch.inference_mode():
            return net(maps[idx, 0].float()).softmax(-1)

    for epoch in range(1, epochs + 1):
        net.train()
        order = rng.permutation(tr)
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            flip = torch.as_tensor(rng.integers(0, 2, len(idx)))
            x = maps[idx, flip].float()
            loss = F.cross_entropy(net(x), y[idx], weight=weight, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
        p = probs(va)
        f1 = macro_f1(y[va].numpy(), p.argmax(-1).numpy(), k)
        vloss = float(F.nll_loss(p.clamp_min(1e-12).log(), y[va]))
        if state.observe(epoch, f1, vloss, rule):
            best = {n: t.detach().clone() for n, t in net.state_dict().items()}
        if state.stopped_early:
            break
    net.load_state_dict(best)
    pt = probs(te).argmax(-1).numpy()
    return {"seed": seed, "best_epoch": state.best_epoch, "epochs_run": state.epoch, "val_score": state.best_score,
            "val_f1": state.best_val_f1, "test_f1": macro_f1(y[te].numpy(), pt, k),
            "test_accuracy": float((pt == y[te].numpy()).mean()), "seconds": round(time.time() - started, 1)}


def scratch(quality: Path, name: str) -> float | None:
    try:
        return json.loads(quality.read_text())["sets"][name]["rows"]["default"]["test_f1_mean"]
    except (OSError, ValueError, KeyError):
        return None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", action="append", required=True, metavar="NAME=DIR")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    ap.add_argument("--quality", type=Path, default=ROOT / "benchmarks" / "out" / "quality.json")
    args = ap.parse_args(argv)
    results, lines = {}, []
    for item in args.dataset:
        name, _, folder = item.partition("=")
        feats = extract(Path(folder), args.out / "i3d")
        pr = probe(feats)
        runs = [train_encoder(feats, s, args.epochs) for s in args.seeds]
        for r in runs:
            print(f"{name} seed {r['seed']}: {json.dumps(r)}", flush=True)
        enc = float(np.mean([r["test_f1"] for r in runs]))
        results[name] = {"probe": pr, "encoder": runs, "encoder_test_f1": enc, "scratch_test_f1": scratch(args.quality, name),
                         "feature_seconds": round(feats["seconds"], 1), "clips": len(feats["splits"]), "size": feats["size"]}
        s = results[name]["scratch_test_f1"]
        lines.append(f"{name}: i3d_test_f1={enc:.3f} (val {np.mean([r['val_f1'] for r in runs]):.3f}, worst seed "
                     f"{min(r['test_f1'] for r in runs):.3f}, {np.mean([r['seconds'] for r in runs]):.0f} s/seed) "
                     f"probe_test_f1={pr['test_f1']:.3f} (val {pr['val_f1']:.3f}, C={pr['C']:g}) "
                     f"scratch_test_f1={'-' if s is None else f'{s:.3f}'} features={feats['seconds']:.0f} s "
                     f"for {len(feats['splits'])} clips")
        print(lines[-1], flush=True)
    mean = lambda k: np.mean([r[k] for r in results.values() if r[k] is not None] or [np.nan])  # noqa: E731
    last = (f"i3d_test_f1={mean('encoder_test_f1'):.3f} probe_test_f1="
            f"{np.mean([r['probe']['test_f1'] for r in results.values()]):.3f} scratch_test_f1={mean('scratch_test_f1'):.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "i3d.json").write_text(json.dumps({"sets": results, "lines": lines, "summary": last}, indent=1))
    print(last)
    return {"sets": results, "summary": last}


if __name__ == "__main__":
    main()
