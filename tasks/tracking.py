"""Everything MLflow: the one module of the project that imports ``mlflow``.

The training loop knows nothing of tracking; it reports through a callback, and :class:`MlflowReporter` is the
callback the train stage plugs in. Models are saved in MLflow's *pickle* format with the ``model/`` package as
``code_paths``: MLflow 3's default ``torch.export`` format froze the batch size to 1 and wrote tens of MB of
example JSON in a trial here, while pickle loads for any batch size from any working directory.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import prefect  # noqa: F401  -- import before mlflow.pytorch, which otherwise spoils Prefect's log handlers
import mlflow
import mlflow.pytorch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.types import Schema, TensorSpec
import numpy as np

from tasks.core.config import MlflowConfig

CHAMPION, CHALLENGER = "champion", "challenger"
DEFAULT_STORE = Path("mlruns")


def resolve_tracking_uri(cfg: MlflowConfig) -> str:
    """Config first, then ``$MLFLOW_TRACKING_URI``, else an embedded SQLite store under ``./mlruns``.

    An absolute SQLite path needs four slashes (``sqlite:////abs/mlflow.db``); ``sqlite:///`` + an absolute
    path string gives exactly that."""
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    DEFAULT_STORE.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(DEFAULT_STORE / 'mlflow.db').resolve()}"


def _artifact_root(uri: str) -> str | None:
    """For an embedded SQLite store keep artifacts beside the database (not in whatever the cwd is)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "artifacts").resolve().as_uri()
    return None


def use_store(cfg: MlflowConfig) -> str:
    uri = resolve_tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def ensure_experiment(name: str, uri: str) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return mlflow.create_experiment(name, artifact_location=_artifact_root(uri))


class MlflowReporter:
    """Training callback: per-epoch metrics into the active run (step = epoch)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.client = MlflowClient()

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and np.isfinite(v)}
        mlflow.log_metrics(clean, step=int(epoch), run_id=self.run_id)


def find_reusable_run(experiment: str, train_key: str, model_name: str) -> dict[str, Any] | None:
    """A finished run with the same training key whose model is still registered: training again would give
    the same model, so the pipeline reuses it (``--force-train`` overrides)."""
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = mlflow.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.train_key = '{train_key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
        max_results=5,
    )
    client = MlflowClient()
    for run in runs:
        try:
            versions = client.search_model_versions(f"name = '{model_name}' and run_id = '{run.info.run_id}'")
        except MlflowException:
            versions = []
        if versions:
            v = max(versions, key=lambda mv: int(mv.version))
            return {"run_id": run.info.run_id, "version": int(v.version), "metrics": dict(run.data.metrics)}
    return None


@contextmanager
def training_run(experiment: str, run_name: str, tags: dict[str, str]) -> Iterator[str]:
    uri = mlflow.get_tracking_uri()
    exp_id = ensure_experiment(experiment, uri)
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=tags) as run:
        yield run.info.run_id


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def log_params(params: dict[str, Any]) -> None:
    flat = {k: ("" if v is None else str(v)[:6000]) for k, v in flatten(params).items()}
    mlflow.log_params(flat)


def log_dataset(manifest_path: Path, fingerprint: str, name: str) -> None:
    import pandas as pd

    df = pd.read_parquet(manifest_path)
    ds = mlflow.data.from_pandas(df, source=str(manifest_path.resolve()), targets="label", name=name, digest=fingerprint)
    mlflow.log_input(ds, context="training")


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}, step=step)


def log_artifacts(paths: list[Path], artifact_path: str | None = None) -> None:
    for p in paths:
        mlflow.log_artifact(str(p), artifact_path=artifact_path)


def log_dict(data: dict[str, Any], name: str) -> None:
    mlflow.log_dict(data, name)


def set_tags(tags: dict[str, Any]) -> None:
    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def classifier_signature(num_frames: int, size: int, num_classes: int) -> ModelSignature:
    """uint8 clips in, class probabilities out; -1 batch so any batch size is valid."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, num_frames, size, size, 3), "frames")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes), "probabilities")]),
    )


def log_classifier(classifier, *, metadata: dict[str, Any]) -> str:
    """Log the wrapped network (uint8 frames -> probabilities) and return its model URI."""
    import model as model_pkg

    sig = classifier_signature(metadata["num_frames"], metadata["image_size"], len(metadata["classes"]))
    info = mlflow.pytorch.log_model(
        classifier,
        name="model",
        signature=sig,
        serialization_format="pickle",
        code_paths=[str(Path(model_pkg.__file__).parent)],
        metadata=metadata,
        pip_requirements=["torch==2.13.0", "einops==0.8.2", "numpy"],
    )
    return info.model_uri


@dataclass
class Registration:
    name: str
    version: int
    champion_version: int | None
    decision: str  # promoted | kept_incumbent | first_champion
    challenger_score: float
    incumbent_score: float | None

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def register_and_promote(model_uri: str, name: str, run_id: str, score: float, metric: str = "best_val_f1") -> Registration:
    """New version + alias ``challenger``; ``champion`` moves only when the challenger's score is strictly higher
    (ties keep the incumbent). The decision and both scores go onto the run."""
    client = MlflowClient()
    mv = mlflow.register_model(model_uri, name)
    version = int(mv.version)
    client.set_registered_model_alias(name, CHALLENGER, str(version))
    incumbent_score: float | None = None
    try:
        champ = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champ = None
    if champ is None:
        decision, champion_version = "first_champion", version
    else:
        incumbent_run = client.get_run(champ.run_id) if champ.run_id else None
        incumbent_score = (incumbent_run.data.metrics.get(metric) if incumbent_run else None)
        if incumbent_score is None or score > incumbent_score:
            decision, champion_version = "promoted", version
        else:
            decision, champion_version = "kept_incumbent", int(champ.version)
    if champion_version == version:
        client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_model_version_tag(name, str(version), metric, f"{score:.6f}")
    with_run = {"registry.version": version, "registry.decision": decision,
                "registry.champion_version": champion_version}
    for k, v in with_run.items():
        client.set_tag(run_id, k, str(v))
    client.log_metric(run_id, "challenger_score", float(score))
    if incumbent_score is not None:
        client.log_metric(run_id, "incumbent_score", float(incumbent_score))
    return Registration(name, version, champion_version, decision, float(score), incumbent_score)


def aliases(name: str) -> dict[str, int]:
    client = MlflowClient()
    out = {}
    for alias in (CHAMPION, CHALLENGER):
        try:
            out[alias] = int(client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            pass
    return out


def load_classifier(model_uri: str, tracking_uri: str | None = None):
    """Load a registered classifier (``models:/NAME@champion``, ``runs:/...``) on CPU, with its metadata."""
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    net = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    net.eval()
    return net
