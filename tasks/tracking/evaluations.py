"""An evaluation of a registered model version on a labelled set, as its own MLflow run (``vivit evaluate``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

from tasks.tracking.catalog import EVALUATION_TAG, ModelRef
from tasks.tracking.runs import code_version_tags, owner_tags
from tasks.tracking.store import ensure_experiment


def _experiment_of(ref: ModelRef, fallback: str) -> str:
    """The training run's experiment, so the evaluation sits beside the run it evaluates; else ``fallback``."""
    if ref.run_id:
        try:
            return MlflowClient().get_run(ref.run_id).info.experiment_id
        except Exception:  # noqa: BLE001 - a version without its run (deleted): evaluations still need a home
            pass
    return ensure_experiment(fallback, mlflow.get_tracking_uri())


def log_evaluation(ref: ModelRef, report: dict[str, Any], *, source: str, digest: str, classes: list[str],
                   predictions_csv: str, misclassified: list[dict[str, Any]], confusion_png: Path | None,
                   failed: int, fallback_experiment: str) -> str:
    """One run tagged as an evaluation of ``ref`` (``model.name``, ``model.version``, ``model.uri``,
    ``model.run_id``, the labelled set and its digest): ``eval/*`` metrics with their intervals and per class, the
    confusion matrix (PNG and JSON), the report, the per-clip predictions and the misclassified clips. The version
    gets a tag ``eval.last_run`` pointing at it. Returns the run id."""
    exp_id = _experiment_of(ref, fallback_experiment)
    label = f"{ref.name} v{ref.version}" if ref.name else ref.uri
    tags = {EVALUATION_TAG: "true", "model.uri": ref.uri, "model.name": ref.name or "",
            "model.version": str(ref.version or ""), "model.run_id": ref.run_id or "", "eval.source": source,
            "eval.digest": digest, "mlflow.note.content": f"Evaluation of {label} on {source} ({report['num_samples']} "
                                                          f"clips, {failed} unreadable)",
            **code_version_tags(), **owner_tags()}
    with mlflow.start_run(experiment_id=exp_id, run_name=f"eval-{label.replace(' ', '-')}", tags=tags) as run:
        metrics = {"eval/accuracy": report["accuracy"], "eval/f1": report["f1"], "eval/clips": report["num_samples"],
                   "eval/unreadable": failed}
        for k in ("accuracy", "f1"):
            lo, hi = report[f"{k}_ci"]
            metrics |= {f"eval/{k}_ci_low": lo, f"eval/{k}_ci_high": hi}
        from model.metrics import label_slug

        for c, m in report["per_class"].items():
            metrics |= {f"eval/{s}_{label_slug(c)}": float(m[s]) for s in ("precision", "recall", "f1")}
        mlflow.log_metrics(metrics)
        mlflow.log_params({"model_uri": ref.uri, "annotations": source[:500], "classes": json.dumps(classes)[:6000]})
        mlflow.log_dict(report, "evaluation/report.json")
        mlflow.log_dict({"classes": classes, "confusion_matrix": report["confusion_matrix"]},
                        "evaluation/confusion_matrix.json")
        mlflow.log_text(predictions_csv, "evaluation/predictions.csv")
        mlflow.log_dict({"misclassified": misclassified}, "evaluation/misclassified.json")
        if confusion_png is not None:
            mlflow.log_artifact(str(confusion_png), "evaluation")
        run_id = run.info.run_id
    if ref.name and ref.version:
        MlflowClient().set_model_version_tag(ref.name, str(ref.version), "eval.last_run", run_id)
    return run_id
