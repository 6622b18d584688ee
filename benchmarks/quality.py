"""Quality on real video, over every real set: the default recipe against the trivial reference (a logistic
regression on the mean frame + motion energy of the stored frames, the one every training logs: tasks/lib/baseline.py),
and optionally ``frame-mlp`` and the single-frame ablation, on the same stored frames and splits, over several seeds.

Every set in ``../shared/datasets/`` (a folder with ``annotations.csv`` and ``videos/``) is measured, with its
``configs/<name>.yaml`` when there is one, else a config made from the folder (``file://`` URLs, the CSV's own
split, its classes); ``--config`` (repeatable) measures those jobs instead. The real download -> filter -> frames
stages run once per set (Prefect flows; a re-run skips what is on disk); every model then trains on the same dataset:

* **default**: ``config.train`` exactly as ``vivit run`` applies it;
* with ``--compare``: **single frame** (the same network on one RGB frame per view: appearance only) and
  **frame-mlp** (the original Keras design on RGB);
* **reference**: the baseline every training logs (C chosen by cross-validation on train; never on val or test).

Nothing here chooses anything on the test split: it is reported. Writes ``benchmarks/out/quality.md`` and
``quality.json`` and ends with ``sets=N mean_test_f1=X min_margin_vs_ref=Y worst_seed_test_f1=Z`` (the mean over
sets of the default's mean test macro F1; the smallest per-set margin of that mean over the reference's test macro
F1; the worst single seed of any set).

With ``--i3d``, per set also the Kinetics-400 I3D rows (issue 31): the same job with ``train.init:
i3d-kinetics400`` in ``DATA_DIR-i3d`` (16 frames of 224 px), its stem + transformer over the seeds, and the **I3D
linear probe** (a logistic regression on the frozen stem's pooled features, C chosen on validation), then the line
``i3d_test_f1=X probe_test_f1=Y scratch_test_f1=Z`` per set and over the sets.

Usage: ``python benchmarks/quality.py [--config FILE ...] [--seeds 0 1 2] [--set train.epochs=30 ...]
[--skip-data] [--compare] [--i3d] [--rows default]`` (``--rows`` retrains only those rows and reuses the others from the
last ``quality.json`` when their options, seeds and dataset are unchanged) (``make quality``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import flows  # noqa: E402,F401  -- embedded Prefect defaults before prefect is imported
from model.options import TrainOptions  # noqa: E402
from tasks.lib.config import ConfigError, PipelineConfig, load_config  # noqa: E402

SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
COMPARISONS = ("single", "frame-mlp")
I3D_ROW, PROBE_ROW = "i3d (I3D stem + transformer, frozen stem)", "i3d-probe (I3D linear probe)"
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


def variants(train: TrainOptions, compare: bool = False) -> dict[str, TrainOptions]:
    """The trained rows: the configured recipe and, with ``compare``, its two ablations with the same other options."""
    rows = {"default": train}
    if compare:
        rows["single frame (RGB)"] = train.model_copy(update={"input": "rgb", "single_frame": True})
        rows["frame-mlp (RGB)"] = train.model_copy(update={"model": "frame-mlp", "input": "rgb"})
    return rows


def shared_sets(root: Path = SHARED_DATASETS) -> list[Path]:
    """One config per real set beside the checkout: ``configs/<name>.yaml`` when the project has one, else one
    written from the folder itself."""
    configs = []
    for folder in sorted(p for p in root.iterdir() if (p / "annotations.csv").is_file()) if root.is_dir() else []:
        own = ROOT / "configs" / f"{folder.name}.yaml"
        configs.append(own if own.is_file() else _config_for(folder))
    return configs


def _config_for(folder: Path) -> Path:
    """A pipeline config for a Kinetics-format folder (``annotations.csv`` + ``videos/<youtube_id>.<ext>``)."""
    import pandas as pd
    import yaml

    exts = sorted({p.suffix for p in (folder / "videos").iterdir() if p.is_file()})
    if len(exts) != 1:
        raise SystemExit(f"{folder}/videos: expected one file type, found {exts or 'none'}: write configs/"
                         f"{folder.name}.yaml for it")
    classes = sorted(pd.read_csv(folder / "annotations.csv")["label"].astype(str).unique())
    path = ROOT / "benchmarks" / "out" / "configs" / f"{folder.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        "data_dir": f"data/{folder.name}", "annotations": str(folder / "annotations.csv"),
        "url_template": f"file://{folder}/videos/{{youtube_id}}{exts[0]}", "classes": classes,
        "download": {"allow_file_urls": True, "workers": 4, "retries": 1}, "frames": {"split_mode": "official"},
        "mlflow": {"experiment": f"vivit-{folder.name}", "model_name": f"vivit-{folder.name}"},
    }))
    return path


def reference(dataset_dir: Path) -> dict[str, float]:
    """The baseline every training logs (``baseline/val_f1``, ``baseline/test_f1``, ...)."""
    from model.dataset import load_dataset
    from tasks.lib.baseline import reference as fit_reference

    return fit_reference(load_dataset(dataset_dir)).metrics()


def run_data_stages(config: PipelineConfig) -> None:
    from flows.pipeline import pipeline_flow

    summaries = pipeline_flow(config, stages=["download", "filter", "frames"])
    failed = [s for s in summaries if s.get("failed")]
    if failed:
        raise SystemExit(f"data stage {failed[0]['stage']} failed: {failed[0].get('message')}")


def row_key(name: str) -> str:
    """The short name ``--rows`` takes: ``default``, ``single``, ``frame-mlp``."""
    return name.split()[0]


def reuse_rows(previous: Path, name: str, wanted: dict[str, TrainOptions], seeds: list[int],
               dataset: str) -> dict[str, dict]:
    """Rows of set ``name`` from an earlier run of this benchmark whose options, seeds and dataset fingerprint are
    exactly the ones asked for now: a change that cannot touch a row need not pay for it again."""
    try:
        old = json.loads(previous.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"cannot reuse rows from {previous}: {e}") from None
    before = old.get("sets", {}).get(name, {})
    if before.get("dataset_fingerprint") != dataset:
        raise SystemExit(f"{previous} measured {name} on another dataset (fingerprint "
                         f"{before.get('dataset_fingerprint')}, now {dataset}): train every row (drop --rows)")
    when = time.strftime("%Y-%m-%d", time.gmtime(previous.stat().st_mtime))
    out = {}
    for row, opts in wanted.items():
        found = before.get("rows", {}).get(row)
        if found is None or found.get("options") != opts.determining() or before.get("seeds") != seeds:
            raise SystemExit(f"{previous} has no row {row!r} of {name} with these options and seeds {seeds}: train "
                             f"it (add {row_key(row)} to --rows)")
        out[row] = {**found, "reused_from": f"{previous.name} ({when})"}
    return out


def train_rows(config: PipelineConfig, rows: dict[str, TrainOptions], seeds: list[int], work: Path,
               progress: Path | None = None) -> dict[str, dict]:
    """Every row x seed; with ``progress``, the runs so far are rewritten there after each one (a long benchmark
    that is stopped still leaves its figures)."""
    from model.training import fit

    out: dict[str, dict] = {}
    for name, opts in rows.items():
        runs = []
        for seed in seeds:
            started = time.time()
            r = fit(config.dataset_dir, opts.model_copy(update={"resume": False}), seed=seed,
                    work_dir=work / f"{row_key(name)}-{seed}")
            val, test = r.val_metrics or {}, r.test_metrics or {}
            runs.append({"seed": seed, "input": r.view.input, "best_epoch": r.best_epoch, "epochs_run": len(r.history),
                         "val_accuracy": val.get("accuracy"), "val_f1": val.get("f1"), "val_score": r.best_val_score,
                         "test_accuracy": test.get("accuracy"), "test_f1": test.get("f1"),
                         "test_f1_ci": test.get("f1_ci"), "seconds": round(time.time() - started, 1)})
            print(f"{name} seed {seed}: {json.dumps(runs[-1])}", flush=True)
            out[name] = {"options": opts.determining(), "runs": runs, **summarise(runs)}
            if progress is not None:
                progress.write_text(json.dumps(out, indent=2))
    return out


def summarise(runs: list[dict]) -> dict[str, float]:
    out = {}
    for k in ("val_accuracy", "val_f1", "test_accuracy", "test_f1", "seconds"):
        v = np.array([r[k] for r in runs if r.get(k) is not None], dtype=float)
        if len(v):
            out[f"{k}_mean"], out[f"{k}_std"], out[f"{k}_min"] = float(v.mean()), float(v.std()), float(v.min())
    return out


def markdown(name: str, rows: dict[str, dict], ref: dict[str, float], seeds: list[int]) -> str:
    def ms(r: dict, k: str) -> str:
        return f"{r[k + '_mean']:.3f} ± {r[k + '_std']:.3f}" if k + "_mean" in r else "-"

    def val(k: str) -> str:
        return f"{ref[k]:.3f}" if k in ref else "-"

    lines = [f"### {name}", "", "| model | input per seed | val accuracy | val macro F1 | test accuracy | "
             "test macro F1 | worst-seed test F1 | time per seed |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row, r in rows.items():
        mark = " †" if r.get("reused_from") else ""
        inputs = " ".join(str(run.get("input", "?")) for run in r.get("runs", []))
        lines.append(f"| {row}{mark} | {inputs} | {ms(r, 'val_accuracy')} | {ms(r, 'val_f1')} | "
                     f"{ms(r, 'test_accuracy')} | {ms(r, 'test_f1')} | {r.get('test_f1_min', float('nan')):.3f} | "
                     f"{r.get('seconds_mean', 0):.0f} s |")
    lines.append(f"| reference: mean frame + motion energy (logistic regression, C={ref.get('baseline/C', 0):g}) | - | "
                 f"{val('baseline/val_accuracy')} | {val('baseline/val_f1')} | {val('baseline/test_accuracy')} | "
                 f"{val('baseline/test_f1')} | - | - |")
    reused = sorted({r["reused_from"] for r in rows.values() if r.get("reused_from")})
    note = f" † reused from {', '.join(reused)}: same options, seeds and data." if reused else ""
    return "\n".join(lines) + f"\n\nseeds: {seeds}; ± is the standard deviation over seeds.{note}\n"


def summary_line(sets: dict[str, dict]) -> str:
    """``sets=N mean_test_f1=X min_margin_vs_ref=Y worst_seed_test_f1=Z`` over the default row of every set."""
    means = [s["rows"]["default"]["test_f1_mean"] for s in sets.values()]
    margins = [s["rows"]["default"]["test_f1_mean"] - s["reference"].get("baseline/test_f1", float("nan"))
               for s in sets.values()]
    worst = min(s["rows"]["default"]["test_f1_min"] for s in sets.values())
    return (f"sets={len(sets)} mean_test_f1={np.mean(means):.3f} min_margin_vs_ref={min(margins):.3f} "
            f"worst_seed_test_f1={worst:.3f}")


def i3d_config(config_path: Path, overrides: list[str], data_dir: Path, size: int) -> PipelineConfig:
    """The same job with ``train.init: i3d-kinetics400`` in its own data folder, its frames what the checkpoint saw
    (16 frames; 224 x 224 unless ``size``), whatever the job sets for the default recipe's frames; the default's
    dataset stays as it is."""
    from model.i3d import INIT_ID, INPUT_FRAMES

    return load_config(config_path, [*overrides, f"train.init={INIT_ID}", f"data_dir={data_dir}-i3d",
                                     f"frames.num_frames={INPUT_FRAMES}", f"frames.size={size}",
                                     f"train.view_frames={INPUT_FRAMES}", "train.input=rgb"])


def i3d_probe(stem_cache: Path) -> dict:
    """The anchor without any transformer: a logistic regression on the frozen stem's pooled 1024-d vector of each
    clip (its first evaluation view, unmirrored, from the training's stem cache), standardised, C chosen on
    validation; test only reports."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from model.metrics import macro_f1

    found = sorted(stem_cache.glob("*.pt"))
    if len(found) != 1:
        raise SystemExit(f"{stem_cache}: expected one stem cache of the I3D rows, found {len(found)}")
    import torch

    cache = torch.load(found[0], weights_only=True)
    x = {s: cache[s]["pooled"][:, 0].double().numpy() for s in ("train", "val", "test")}
    labels = {s: cache[s]["labels"].numpy() for s in ("train", "val", "test")}
    k = int(max(max(v) for v in labels.values() if len(v))) + 1
    scaler = StandardScaler().fit(x["train"])
    x = {s: scaler.transform(v) for s, v in x.items()}
    best = None
    with threadpool_limits(1):
        for c in C_GRID:
            clf = LogisticRegression(C=c, max_iter=5000, class_weight="balanced").fit(x["train"], labels["train"])
            f1 = macro_f1(labels["val"], clf.predict(x["val"]), k)
            if best is None or f1 > best[0] + 1e-12:
                best = (f1, c, clf)
    f1, c, clf = best
    pred = clf.predict(x["test"])
    run = {"seed": 0, "C": c, "val_f1": f1, "val_accuracy": float((clf.predict(x["val"]) == labels["val"]).mean()),
           "test_f1": macro_f1(labels["test"], pred, k), "test_accuracy": float((pred == labels["test"]).mean())}
    return {"options": {"C_grid": list(C_GRID), "chosen_on": "val"}, "runs": [run], **summarise([run])}


def measure_set(config_path: Path, args, work: Path) -> tuple[str, dict]:
    try:
        config = load_config(config_path, args.overrides)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    name = config.data_dir.name
    started = time.time()
    if not args.skip_data:
        run_data_stages(config)
    data_seconds = time.time() - started
    from model.dataset import load_dataset

    fingerprint = load_dataset(config.dataset_dir).fingerprint
    ref = reference(config.dataset_dir)
    every = variants(config.train, args.compare)
    reused = {}
    if args.rows is not None:
        reused = reuse_rows(args.out / "quality.json", name, {n: o for n, o in every.items()
                                                             if row_key(n) not in args.rows}, args.seeds, fingerprint)
    todo = {n: o for n, o in every.items() if n not in reused}
    trained = train_rows(config, todo, args.seeds, work / name, args.out / f"quality.{name}.partial.json")
    rows = {n: trained.get(n) or reused[n] for n in every}
    if args.i3d:
        rows.update(measure_i3d(config_path, config, args, work, name))
    return name, {"config": str(config_path), "dataset": str(config.dataset_dir), "dataset_fingerprint": fingerprint,
                  "seeds": args.seeds, "data_seconds": round(data_seconds, 1), "rows": rows, "reference": ref}


def measure_i3d(config_path: Path, config: PipelineConfig, args, work: Path, name: str) -> dict[str, dict]:
    """The I3D rows of one set: the stem + transformer over the seeds (the first seed's time includes computing the
    stem maps once; later seeds reuse them), and the linear probe on the same cached stem. Reused from the last
    ``quality.json`` unless ``i3d`` is in ``--rows`` (or ``--rows`` is not given)."""
    from model.dataset import load_dataset

    cfg = i3d_config(config_path, args.overrides, config.data_dir, args.i3d_size)
    started = time.time()
    if not args.skip_data:
        run_data_stages(cfg)
    fingerprint = load_dataset(cfg.dataset_dir).fingerprint
    if args.rows is not None and "i3d" not in args.rows:
        old = json.loads((args.out / "quality.json").read_text()).get("sets", {}).get(name, {}).get("rows", {})
        if old.get(I3D_ROW, {}).get("dataset_fingerprint") != fingerprint or old[I3D_ROW].get("seeds") != args.seeds:
            raise SystemExit(f"no reusable I3D rows of {name} for this dataset and these seeds: add i3d to --rows")
        return {n: {**old[n], "reused_from": "quality.json"} for n in (I3D_ROW, PROBE_ROW)}
    trained = train_rows(cfg, {I3D_ROW: cfg.train}, args.seeds, work / f"{name}-i3d")
    probe = i3d_probe(work / f"{name}-i3d" / "stem-cache")
    extra = {"dataset_fingerprint": fingerprint, "seeds": args.seeds, "data_seconds": round(time.time() - started, 1)}
    return {I3D_ROW: {**trained[I3D_ROW], **extra}, PROBE_ROW: {**probe, **extra}}


def i3d_line(sets: dict[str, dict]) -> str | None:
    """``i3d_test_f1=X probe_test_f1=Y scratch_test_f1=Z`` (means over the sets with I3D rows; issue 31)."""
    have = {n: s["rows"] for n, s in sets.items() if I3D_ROW in s["rows"]}
    if not have:
        return None
    line = lambda f: " ".join(f"{k}_test_f1={f(row):.3f}" for k, row in  # noqa: E731
                              (("i3d", I3D_ROW), ("probe", PROBE_ROW), ("scratch", "default")))
    per_set = [f"{n}: " + line(lambda row, r=r: r[row]["test_f1_mean"]) for n, r in have.items()]
    return "\n".join([*per_set, line(lambda row: np.mean([r[row]["test_f1_mean"] for r in have.values()]))])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, action="append", default=None,
                    help="pipeline config, repeatable (default: every set in ../shared/datasets/)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--skip-data", action="store_true", help="use the stored datasets as they are")
    ap.add_argument("--compare", action="store_true", help="also the single-frame and frame-mlp rows")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    ap.add_argument("--i3d", action="store_true", help="also the I3D rows (train.init i3d-kinetics400 on 16 frames of "
                    "224 px in DATA_DIR-i3d, and the I3D linear probe)")
    ap.add_argument("--i3d-size", type=int, default=224, help="frames.size of the I3D rows (224: the checkpoint's)")
    ap.add_argument("--rows", nargs="+", choices=["default", *COMPARISONS, "i3d"], default=None,
                    help="train only these rows; the others are reused from --out's quality.json when their options, "
                         "seeds and data are the same (else an error)")
    ap.add_argument("--work", type=Path, default=None,
                    help="keep the trainings' folders (checkpoints, the I3D stem maps) here, so a rerun resumes and "
                         "reuses them (default: a temporary folder, removed at the end)")
    args = ap.parse_args(argv)
    configs = args.config or shared_sets()
    if not configs:
        raise SystemExit(f"no --config and no real set in {SHARED_DATASETS}: pass a Kinetics-format job's config "
                         "(annotations + url_template)")
    args.out.mkdir(parents=True, exist_ok=True)
    sets = {}
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for path in configs:
            name, result = measure_set(path, args, work)
            sets[name] = result
    last = summary_line(sets)
    tables = "\n".join(markdown(n, s["rows"], s["reference"], args.seeds) for n, s in sets.items())
    i3d = i3d_line(sets)
    result = {"overrides": args.overrides, "seeds": args.seeds, "sets": sets, "summary": last, "i3d_summary": i3d}
    (args.out / "quality.json").write_text(json.dumps(result, indent=2))
    (args.out / "quality.md").write_text(tables + "\n" + (f"{i3d}\n" if i3d else "") + last + "\n")
    print()
    print(tables)
    if i3d:
        print(i3d)
    print(last)
    return result


if __name__ == "__main__":
    main()
