"""The whole DAG for real on a small generated dataset: yt-dlp (file:// sources, local trim fallback), ffmpeg,
PyAV sampling, Prefect flow runs, training, an MLflow SQLite store and registry."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tasks.lib.config import PipelineConfig
from tests.support.videos import demo_source_fixture

pytestmark = pytest.mark.slow


demo_source = demo_source_fixture(per_class=(8, 4), seed=1)


def _config(tmp_path, demo_source, **train) -> PipelineConfig:
    src, csv = demo_source
    return PipelineConfig.model_validate({
        "data_dir": str(tmp_path / "data"),
        "annotations": [str(csv)],
        "url_template": f"file://{src}/videos/{{youtube_id}}.mp4",
        "download": {"allow_file_urls": True, "workers": 2, "retries": 0},
        "frames": {"num_frames": 6, "size": 32},
        "train": {"view_frames": 4, "epochs": 2, "batch_size": 4, "patience": None, "min_epochs": 0, **train},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "e2e", "model_name": "e2e"},
    })


def _mtimes(folder) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_pipeline_end_to_end_then_rerun(prefect_harness, tmp_path, demo_source):
    from mlflow import MlflowClient

    from flows.pipeline import pipeline_flow

    cfg = _config(tmp_path, demo_source)
    first = pipeline_flow(cfg)
    assert [s["stage"] for s in first] == ["download", "filter", "frames", "train"]
    assert not any(s["failed"] for s in first), first

    report = pd.read_csv(cfg.reports_dir / "download.csv")
    assert len(report) == 12 and set(report["status"]) == {"downloaded"}
    manifest = pd.read_parquet(cfg.dataset_dir / "manifest.parquet")
    assert len(manifest) == 12 and set(manifest["split"]) <= {"train", "val", "test"}

    train = first[-1]["result"]
    client = MlflowClient(cfg.mlflow.tracking_uri)
    run = client.get_run(train["run_id"])
    assert run.data.params["preset"] == "vivit-fe-conv-tiny" and run.data.params["view.input"] == "auto"
    # train.input auto: the input chosen on validation, and both candidates' probe scores
    assert run.data.params["input_chosen"] in ("diff", "rgb")
    assert {"input_auto/diff_val_score", "input_auto/rgb_val_score"} <= set(run.data.metrics)
    assert run.data.params["dataset_fingerprint"] and run.data.params["train.lr"] == "0.0005"
    # params are what determines the model; the whole config is an artifact
    assert not [k for k in run.data.params if k.startswith(("download.", "mlflow.", "config.", "train.device"))]
    saved = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / "cfg")))
                           .read_text())
    # the train stage's config: the keys it reads (the data's own settings travel in the dataset input)
    assert set(saved) == {"data_dir", "seed", "train", "pretrain", "mlflow"} and saved["train"]["epochs"] == 2
    described = json.loads(Path(client.download_artifacts(run.info.run_id, "dataset.json", str(tmp_path / "ds")))
                           .read_text())
    assert described == json.loads((cfg.dataset_dir / "dataset.json").read_text())
    assert run.data.tags["prefect.flow_run_id"]
    assert len(run.data.tags["mlflow.source.git.commit"]) == 40 and run.data.tags["code.version"]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    for metric in ("train/loss", "val/loss", "val/accuracy", "val/f1", "optim/lr"):
        assert len(client.get_metric_history(run.info.run_id, metric)) == 2, metric
    assert {"test/accuracy", "test/f1", "val/best_f1", "registry/challenger_score"} <= set(run.data.metrics)
    assert not [k for k in run.data.metrics if "/" not in k], "every metric sits in a group"
    m = run.data.metrics
    assert {"val/best_score", "val/f1_smoothed", "test/accuracy_ci_low", "test/accuracy_ci_high", "test/f1_ci_low",
            "test/f1_ci_high", "val/best_accuracy_ci_low"} <= set(m)
    assert m["test/accuracy_ci_low"] <= m["test/accuracy"] <= m["test/accuracy_ci_high"]
    # the trivial reference on the same frames and splits, beside the model's scores, in the summary too
    assert {"baseline/val_f1", "baseline/test_f1", "baseline/C", "baseline/test_margin", "baseline/val_margin"} <= set(m)
    assert m["baseline/test_margin"] == pytest.approx(m["test/f1"] - m["baseline/test_f1"])
    assert f"baseline (mean frame + motion energy) val_f1={m['baseline/val_f1']:.3f}" in first[-1]["message"]
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/learning_curves.png", "plots/confusion_matrix.png", "plots/confusion_matrix_normalized.png"} <= arts
    assert run.inputs.dataset_inputs, "the manifest is logged as an MLflow dataset input"
    pred = pd.read_csv(client.download_artifacts(run.info.run_id, "report/test_predictions.csv", str(tmp_path / "dl")))
    assert set(pred["clip_id"]) == set(manifest.loc[manifest["split"] == "test", "clip_id"])
    assert pred["correct"].mean() == pytest.approx(run.data.metrics["test/accuracy"])
    assert {"predicted", "p_positive"} <= set(pred.columns)
    report = json.loads(Path(client.download_artifacts(run.info.run_id, "report/classification_report.json",
                                                       str(tmp_path / "dl"))).read_text())
    assert [e["epoch"] for e in report["epochs"]] == [1, 2]
    n_train = int((manifest["split"] == "train").sum())
    assert all(sum(map(sum, e["train"]["confusion_matrix"])) == n_train for e in report["epochs"])
    # these 12 generated clips differ in motion energy alone: the reference is perfect on val, so the 2-epoch model
    # is registered, as challenger, and is not champion, and the summary says why
    assert m["baseline/val_f1"] == 1.0
    assert train["registry"]["decision"] == "below_baseline" and train["registry"]["aliases"] == {"challenger": 1}
    assert "below the baseline's 1.000" in run.data.tags["registry.reason"] and "challenger only" in first[-1]["message"]

    # unchanged inputs: no repeated data work, no retraining
    data_before = _mtimes(cfg.raw_dir) | _mtimes(cfg.dataset_dir / "frames")
    second = pipeline_flow(cfg)
    assert not any(s["failed"] for s in second)
    assert set(pd.read_csv(cfg.reports_dir / "download.csv")["status"]) == {"skipped"}
    assert _mtimes(cfg.raw_dir) | _mtimes(cfg.dataset_dir / "frames") == data_before
    assert second[-1]["result"]["reused"] is True
    assert second[-1]["result"]["metrics"]["best_val_f1"] == pytest.approx(run.data.metrics["val/best_f1"])
    assert len(client.search_model_versions("name = 'e2e'")) == 1

    # only training options changed: data untouched, a new version registered
    third = pipeline_flow(_config(tmp_path, demo_source, lr=1e-3))
    assert third[-1]["result"]["reused"] is False
    assert _mtimes(cfg.raw_dir) | _mtimes(cfg.dataset_dir / "frames") == data_before
    assert len(client.search_model_versions("name = 'e2e'")) == 2
    assert int(client.get_model_version_by_alias("e2e", "challenger").version) == 2

    # one stage alone: deleting one clip's frames redoes only that clip
    victim = cfg.dataset_dir / manifest["frames_path"].iloc[0]
    victim.unlink()
    (frames_summary,) = pipeline_flow(cfg, stages=["frames"])
    assert not frames_summary["failed"] and victim.is_file()
    after = _mtimes(cfg.dataset_dir / "frames")
    changed = [p for p in after if after[p] != data_before.get(p)]
    assert changed == [victim]

    # force: the frames stage samples every clip again; the same pixels give the same dataset, so training is reused
    frames_again, train_again = pipeline_flow(cfg, stages=["frames", "train"], force=["frames"])
    assert (frames_again["counts"]["sampled"], frames_again["counts"]["already_done"]) == (12, 0)
    assert all(t != after[p] for p, t in _mtimes(cfg.dataset_dir / "frames").items())
    assert train_again["result"]["reused"] is True and len(client.search_model_versions("name = 'e2e'")) == 2
    with pytest.raises(ValueError, match="unknown stage"):
        pipeline_flow(cfg, stages=["frames"], force=["frame"])
