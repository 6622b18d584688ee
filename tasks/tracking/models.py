"""Logging the packaged classifier as the two MLflow pyfunc models (:mod:`tasks.serving`), and loading it back."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import mlflow.pytorch

import tasks.serving
from tasks.serving import CODE, REQUIREMENTS
# ClassifierPyfunc and VideoPyfunc stay importable from here: models pickled before tasks/serving/ existed name them so.
from tasks.serving.pyfunc import (  # noqa: F401
    CLASSIFIER_ARTIFACT,
    ClassifierPyfunc,
    VideoPyfunc,
    classifier_signature,
    video_signature,
)
from tasks.tracking.store import require_existing_store

# An input example of real clips would be megabytes of JSON: the explicit signatures say it all.
warnings.filterwarnings("ignore", message=".*An input example was not provided")


def _stage_code(dest: Path) -> list[str]:
    """Copy :data:`tasks.serving.CODE` into ``dest`` in the project's layout and return its top-level folders, the
    ``code_paths``: MLflow copies each by its base name, so the model gets ``model/`` and a ``tasks/`` holding only
    the served package and the library modules it imports, under their usual import names."""
    root = Path(tasks.serving.__file__).resolve().parents[2]
    for rel in CODE:
        src, out = root / rel, dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, out)
    return [str(dest / top) for top in sorted({Path(rel).parts[0] for rel in CODE})]


@contextlib.contextmanager
def _no_artifact_progress_bars():
    """MLflow copies a model's artifacts into it with the progress bar of a download: two bars of a local copy in
    the train stage's log per model. Off while the models are logged; downloads elsewhere keep theirs."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def log_classifier(classifier, *, metadata: dict[str, Any]) -> str:
    """Log the classifier twice under the run: ``model`` (uint8 frames -> probabilities, the registered one) and
    ``video_model`` (video files -> label + probabilities). Both are models from code (``served_frames.py``,
    ``served_video.py``) with the classifier as a weights-only artifact. Returns the URI of ``model``."""
    from model.checkpoint import save_classifier

    here = Path(tasks.serving.__file__).resolve().parent
    classes = list(metadata["classes"])
    with tempfile.TemporaryDirectory(prefix="vivit-package-") as tmp, _no_artifact_progress_bars():
        weights = Path(tmp) / "classifier.pt"
        save_classifier(classifier, weights)
        both = {"artifacts": {CLASSIFIER_ARTIFACT: str(weights)}, "code_paths": _stage_code(Path(tmp) / "code"),
                "pip_requirements": REQUIREMENTS}
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(here / "served_frames.py"), metadata=metadata,
            signature=classifier_signature(metadata["num_frames"], metadata["image_size"], classes), **both)
        mlflow.pyfunc.log_model(
            name="video_model", python_model=str(here / "served_video.py"), signature=video_signature(classes),
            metadata={**metadata, "input": "video files: content (bytes); path only under VIVIT_SERVE_ROOT"},
            # "" = read request content only; load_model(..., model_config={"serve_root": DIR}) or $VIVIT_SERVE_ROOT
            # opens paths under DIR (tasks/serving/pyfunc.py VideoPyfunc)
            model_config={"serve_root": ""}, **both)
    return info.model_uri


def load_classifier(model_uri: str, tracking_uri: str | None = None):
    """Load a registered classifier (``models:/NAME@champion``, ``runs:/...``) on CPU as a PyTorch module with
    ``classes``, ``num_frames`` and ``image_size``. Models logged in the PyTorch flavour (before the pyfunc
    wrapper) still load."""
    if tracking_uri:
        require_existing_store(tracking_uri)
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    flavors = mlflow.models.get_model_info(model_uri).flavors
    if "pytorch" in flavors:
        net = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    else:
        net = mlflow.pyfunc.load_model(model_uri).unwrap_python_model().classifier
    net.eval()
    return net



def pyfunc_probabilities(model_uri: str, frames: Any):
    """The registered frames model's answer through MLflow's pyfunc, as a ``(B, K)`` array: what an export is
    checked against (``tasks/export.py``)."""
    import numpy as np

    return np.asarray(mlflow.pyfunc.load_model(model_uri).predict(frames), dtype=np.float64)
