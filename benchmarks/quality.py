"""Quality on real video: the default recipe against ``frame-mlp``, the single-frame ablation and a motion-energy
logistic-regression reference, on the same stored frames and splits, over several seeds.

It takes any Kinetics-format job (a pipeline config: CSV + ``url_template``, ``file://`` allowed) and defaults to
``configs/surv_fight.yaml`` (``../shared/datasets/surv_fight``, real surveillance clips split by source video) when
that set is beside the checkout. The real download -> filter -> frames stages run once (Prefect flows; a re-run
skips what is on disk); every model then trains on the same dataset:

* **default**: ``config.train`` exactly as ``vivit run`` applies it;
* **single frame**: the same network and options on one RGB frame per view (appearance only);
* **frame-mlp**: the original Keras design on RGB;
* **reference**: a logistic regression on the motion energy (mean absolute difference of 16 uniformly spaced
  frames, 32x32 grey) of the stored frames, and the same with the mean frame added (appearance + motion).

Writes ``benchmarks/out/quality.md`` and ``quality.json`` and ends with
``real_test_f1=<default mean> ref_test_f1=<reference mean> worst_seed_test_f1=<default min>``.

Usage: ``python benchmarks/quality.py [--config FILE] [--seeds 0 1 2] [--set train.epochs=30 ...] [--skip-data]
[--rows default]`` (``--rows`` retrains only those rows and reuses the others from the last ``quality.json`` when
their options and seeds are unchanged)
(``make quality``). On 2 CPU cores with surv_fight: about 10 minutes per default-recipe seed.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import flows  # noqa: E402,F401  -- embedded Prefect defaults before prefect is imported
from model.metrics import macro_f1  # noqa: E402
from model.options import TrainOptions  # noqa: E402
from tasks.lib.config import ConfigError, PipelineConfig, load_config  # noqa: E402

SURV_FIGHT_CONFIG = ROOT / "configs" / "surv_fight.yaml"
SURV_FIGHT_DATA = ROOT.parent / "shared" / "datasets" / "surv_fight" / "annotations.csv"


def variants(train: TrainOptions) -> dict[str, TrainOptions]:
    """The trained rows: the configured recipe and its two comparisons, all with the same other options."""
    return {
        "default": train,
        "single frame (RGB)": train.model_copy(update={"input": "rgb", "single_frame": True}),
        "frame-mlp (RGB)": train.model_copy(update={"model": "frame-mlp", "input": "rgb"}),
    }


def motion_reference(dataset_dir: Path) -> dict[str, dict[str, float]]:
    """Logistic regressions on hand-made features of the stored frames (train split only for fitting)."""
    import torch
    import torch.nn.functional as F
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from model.dataset import load_dataset
    from model.views import segment_positions

    info = load_dataset(dataset_dir)
    df = info.manifest
    pos = segment_positions(info.num_frames, min(16, info.num_frames))
    grey = np.stack([np.load(dataset_dir / p, mmap_mode="r")[pos].mean(-1) for p in df["frames_path"]])  # (N, 16, S, S)
    x = F.interpolate(torch.from_numpy(grey).float() / 255.0, size=(32, 32), mode="area")
    motion = (x[:, 1:] - x[:, :-1]).abs().mean(1).flatten(1).numpy()
    appearance = x.mean(1).flatten(1).numpy()
    y, split = df["label_index"].to_numpy(), df["split"].to_numpy()
    out = {}
    for name, feats in (("motion energy", motion), ("mean frame + motion energy", np.hstack([appearance, motion]))):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
        clf.fit(feats[split == "train"], y[split == "train"])
        row = {}
        for s in ("val", "test"):
            m = split == s
            if m.any():
                pred = clf.predict(feats[m])
                row[f"{s}_accuracy"] = float((pred == y[m]).mean())
                row[f"{s}_f1"] = macro_f1(y[m], pred, len(info.classes))
        out[name] = row
    return out


def run_data_stages(config: PipelineConfig) -> None:
    from flows.pipeline import pipeline_flow

    summaries = pipeline_flow(config, stages=["download", "filter", "frames"])
    failed = [s for s in summaries if s.get("failed")]
    if failed:
        raise SystemExit(f"data stage {failed[0]['stage']} failed: {failed[0].get('message')}")


def row_key(name: str) -> str:
    """The short name ``--rows`` takes: ``default``, ``single``, ``frame-mlp``."""
    return name.split()[0]


def reuse_rows(previous: Path, wanted: dict[str, TrainOptions], seeds: list[int], dataset: str) -> dict[str, dict]:
    """Rows of an earlier run of this benchmark whose options, seeds and dataset fingerprint are exactly the ones
    asked for now: a recipe change that cannot touch a comparison row (e.g. ``diff_gap`` for the RGB rows) need not
    pay for it again."""
    try:
        old = json.loads(previous.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"cannot reuse rows from {previous}: {e}") from None
    if old.get("dataset_fingerprint") != dataset:
        raise SystemExit(f"{previous} was measured on another dataset (fingerprint {old.get('dataset_fingerprint')}, "
                         f"now {dataset}): train every row (drop --rows)")
    when = time.strftime("%Y-%m-%d", time.gmtime(previous.stat().st_mtime))
    out = {}
    for name, opts in wanted.items():
        row = old.get("rows", {}).get(name)
        if row is None or row.get("options") != opts.determining() or old.get("seeds") != seeds:
            raise SystemExit(f"{previous} has no row {name!r} with these options and seeds {seeds}: train it "
                             f"(add {row_key(name)} to --rows)")
        out[name] = {**row, "reused_from": f"{previous.name} ({when})"}
    return out


def train_rows(config: PipelineConfig, seeds: list[int], work: Path, progress: Path | None = None,
               only: list[str] | None = None) -> dict[str, dict]:
    """Every row (or the ``only`` ones) x seed; with ``progress``, the runs so far are rewritten there after each one
    (a long benchmark that is stopped still leaves its figures)."""
    from model.training import fit

    rows: dict[str, dict] = {}
    for name, opts in variants(config.train).items():
        if only is not None and row_key(name) not in only:
            continue
        runs = []
        for seed in seeds:
            started = time.time()
            r = fit(config.dataset_dir, opts.model_copy(update={"resume": False}), seed=seed,
                    work_dir=work / f"{row_key(name)}-{seed}")
            val, test = r.val_metrics or {}, r.test_metrics or {}
            runs.append({"seed": seed, "best_epoch": r.best_epoch, "epochs_run": len(r.history),
                         "val_accuracy": val.get("accuracy"), "val_f1": val.get("f1"),
                         "test_accuracy": test.get("accuracy"), "test_f1": test.get("f1"),
                         "test_f1_ci": test.get("f1_ci"), "seconds": round(time.time() - started, 1)})
            print(f"{name} seed {seed}: {json.dumps(runs[-1])}", flush=True)
            rows[name] = {"options": opts.determining(), "runs": runs, **summarise(runs)}
            if progress is not None:
                progress.write_text(json.dumps(rows, indent=2))
    return rows


def summarise(runs: list[dict]) -> dict[str, float]:
    out = {}
    for k in ("val_accuracy", "val_f1", "test_accuracy", "test_f1", "seconds"):
        v = np.array([r[k] for r in runs if r.get(k) is not None], dtype=float)
        if len(v):
            out[f"{k}_mean"], out[f"{k}_std"], out[f"{k}_min"] = float(v.mean()), float(v.std()), float(v.min())
    return out


def markdown(rows: dict[str, dict], reference: dict[str, dict], seeds: list[int]) -> str:
    def ms(r: dict, k: str) -> str:
        return f"{r[k + '_mean']:.3f} ± {r[k + '_std']:.3f}" if k + "_mean" in r else "-"

    lines = ["| model | val accuracy | val macro F1 | test accuracy | test macro F1 | worst-seed test F1 | "
             "time per seed |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        mark = " †" if r.get("reused_from") else ""
        lines.append(f"| {name}{mark} | {ms(r, 'val_accuracy')} | {ms(r, 'val_f1')} | {ms(r, 'test_accuracy')} | "
                     f"{ms(r, 'test_f1')} | {r.get('test_f1_min', float('nan')):.3f} | {r.get('seconds_mean', 0):.0f} s |")
    for name, r in reference.items():
        lines.append(f"| reference: {name} (logistic regression) | {r.get('val_accuracy', float('nan')):.3f} | "
                     f"{r.get('val_f1', float('nan')):.3f} | {r.get('test_accuracy', float('nan')):.3f} | "
                     f"{r.get('test_f1', float('nan')):.3f} | - | - |")
    reused = sorted({r["reused_from"] for r in rows.values() if r.get("reused_from")})
    note = f" † reused from {', '.join(reused)}: same options, seeds and data." if reused else ""
    return "\n".join(lines) + f"\n\nseeds: {seeds}; ± is the standard deviation over seeds.{note}\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=None, help="pipeline config (default: configs/surv_fight.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--skip-data", action="store_true", help="use the stored dataset as it is")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    ap.add_argument("--rows", nargs="+", choices=["default", "single", "frame-mlp"], default=None,
                    help="train only these rows; the others are reused from --out's quality.json when their options "
                         "and seeds are the same (else an error)")
    args = ap.parse_args(argv)
    if args.config is None:
        if not SURV_FIGHT_DATA.is_file():
            raise SystemExit("no --config and ../shared/datasets/surv_fight is absent: pass a Kinetics-format job's "
                             "config (annotations + url_template)")
        args.config = SURV_FIGHT_CONFIG
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    started = time.time()
    if not args.skip_data:
        run_data_stages(config)
    data_seconds = time.time() - started
    reference = motion_reference(config.dataset_dir)
    from model.dataset import load_dataset

    fingerprint = load_dataset(config.dataset_dir).fingerprint
    every = variants(config.train)
    reused = {}
    if args.rows is not None:
        reused = reuse_rows(args.out / "quality.json", {n: o for n, o in every.items() if row_key(n) not in args.rows},
                            args.seeds, fingerprint)
    with tempfile.TemporaryDirectory() as tmp:
        args.out.mkdir(parents=True, exist_ok=True)
        trained = train_rows(config, args.seeds, Path(tmp), args.out / "quality.partial.json", only=args.rows)
    rows = {n: trained.get(n) or reused[n] for n in every}
    table = markdown(rows, reference, args.seeds)
    ref_f1 = reference["motion energy"].get("test_f1", float("nan"))
    default = rows["default"]
    last = (f"real_test_f1={default['test_f1_mean']:.3f} ref_test_f1={ref_f1:.3f} "
            f"worst_seed_test_f1={default['test_f1_min']:.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"config": str(args.config), "overrides": args.overrides, "dataset": str(config.dataset_dir),
              "dataset_fingerprint": fingerprint,
              "seeds": args.seeds, "data_seconds": round(data_seconds, 1), "rows": rows, "reference": reference,
              "summary": last}
    (args.out / "quality.json").write_text(json.dumps(result, indent=2))
    (args.out / "quality.md").write_text(table + "\n" + last + "\n")
    print()
    print(table)
    print(last)
    return result


if __name__ == "__main__":
    main()
