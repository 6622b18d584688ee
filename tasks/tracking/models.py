"""The packaged classifier as MLflow pyfunc models (frames in, and video files in), their signatures, loading."""
from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import mlflow.pytorch
from mlflow.models.signature import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec
import numpy as np

from tasks.tracking.store import require_existing_store


def classifier_signature(num_frames: int, size: int, classes: list[str] | int) -> ModelSignature:
    """uint8 clips in (an *unnamed* tensor, -1 batch so any batch size is valid), one probability column per class
    out. A named input tensor makes pyfunc hand the model a dict, which MLflow's PyTorch flavour and the REST server
    then refuse ("PyTorch flavor does not support List or Dict input types")."""
    names = [f"class_{i}" for i in range(classes)] if isinstance(classes, int) else list(classes)
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, num_frames, size, size, 3))]),
        outputs=Schema([ColSpec("double", c) for c in names]),
    )


def video_signature(classes: list[str]) -> ModelSignature:
    """Video files in (a ``path`` on the server's disk, or the file's ``content``: base64 in JSON), the label, the
    error (empty when none) and one probability column per class out."""
    return ModelSignature(
        inputs=Schema([ColSpec("string", "path", required=False), ColSpec("binary", "content", required=False)]),
        outputs=Schema([ColSpec("string", "label"), ColSpec("string", "error"), *(ColSpec("double", c) for c in classes)]),
    )


def _frames_array(model_input: Any) -> np.ndarray:
    """What pyfunc may hand over for the tensor signature: the array itself, or a dict/DataFrame wrapping it."""
    if isinstance(model_input, dict) and len(model_input) == 1:
        model_input = next(iter(model_input.values()))
    arr = np.asarray(model_input)
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255 or not np.all(np.equal(np.mod(arr, 1), 0))):
            raise ValueError("frames must be uint8 RGB values 0..255")
        arr = arr.astype(np.uint8)
    return arr


# An input example of real clips would be megabytes of JSON: the explicit signatures below say it all.
warnings.filterwarnings("ignore", message=".*An input example was not provided")


class ClassifierPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc face of a :class:`model.predict.VideoClassifier`: uint8 ``(B, T, S, S, 3)`` in, a DataFrame of
    per-class probabilities (columns = class names) out. ``classifier`` stays reachable for PyTorch users through
    ``unwrap_python_model()``; :func:`load_classifier` does that. Logged as code (``served_frames.py``), it starts
    empty and loads the classifier from the model's ``classifier`` artifact; models logged before that carry it
    pickled."""

    # The explicit signatures validate inputs; MLflow's type-hint wrapper (and its warning) would only add a layer.
    _skip_type_hint_validation = True

    def __init__(self, classifier: Any = None) -> None:
        self.classifier = classifier

    def load_context(self, context) -> None:  # noqa: ANN001 - pyfunc's interface
        if self.classifier is None:
            from model.checkpoint import load_classifier as load_file

            self.classifier = load_file(Path(context.artifacts[CLASSIFIER_ARTIFACT]))

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - pyfunc's interface
        import pandas as pd
        import torch

        frames = _frames_array(model_input)
        with torch.inference_mode():
            probs = self.classifier(torch.from_numpy(np.ascontiguousarray(frames))).float().cpu().numpy()
        return pd.DataFrame(probs.astype(np.float64), columns=list(self.classifier.classes))


class VideoPyfunc(ClassifierPyfunc):
    """Videos in (``path`` or ``content`` column), frames sampled exactly as the frames stage does (and checked as
    the filter stage does), label + per-class probabilities out; a bad video gives a row with ``error`` set."""

    def predict(self, context, model_input, params=None):  # noqa: ANN001
        import pandas as pd

        from tasks.predict import classify_videos

        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        classes = list(self.classifier.classes)
        with tempfile.TemporaryDirectory(prefix="vivit-serve-") as tmp:
            paths = []
            for i, row in enumerate(df.to_dict("records")):
                content, path = row.get("content"), row.get("path")
                if content is not None and not (isinstance(content, float) and np.isnan(content)):
                    dest = Path(tmp) / f"video{i}"
                    dest.write_bytes(bytes(content))
                    paths.append(str(dest))
                else:
                    paths.append("" if path is None or (isinstance(path, float) and np.isnan(path)) else str(path))
            results = classify_videos(self.classifier, paths)
        rows = [{"label": r.get("label", ""), "error": r.get("error", ""),
                 **{c: float(r["probabilities"][c]) if "probabilities" in r else float("nan") for c in classes}}
                for r in results]
        return pd.DataFrame(rows, columns=["label", "error", *classes])


def _code_paths() -> list[str]:
    """The packages a served model imports: ``model`` (the network) and ``tasks`` (these pyfunc classes, sampling)."""
    import model as model_pkg
    import tasks as tasks_pkg

    return [str(Path(model_pkg.__file__).parent), str(Path(tasks_pkg.__file__).parent)]


REQUIREMENTS = ["torch==2.13.0", "einops==0.8.2", "numpy", "pandas", "av==18.1.0", "prefect==3.8.8", "pydantic",
                "pyyaml"]


CLASSIFIER_ARTIFACT = "classifier"  # the weights-only file (model/checkpoint.py save_classifier) in both models


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

    here = Path(__file__).resolve().parent
    classes = list(metadata["classes"])
    with tempfile.TemporaryDirectory(prefix="vivit-package-") as tmp, _no_artifact_progress_bars():
        weights = Path(tmp) / "classifier.pt"
        save_classifier(classifier, weights)
        both = {"artifacts": {CLASSIFIER_ARTIFACT: str(weights)}, "code_paths": _code_paths(),
                "pip_requirements": REQUIREMENTS}
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(here / "served_frames.py"), metadata=metadata,
            signature=classifier_signature(metadata["num_frames"], metadata["image_size"], classes), **both)
        mlflow.pyfunc.log_model(
            name="video_model", python_model=str(here / "served_video.py"), signature=video_signature(classes),
            metadata={**metadata, "input": "video files: path or content (bytes)"}, **both)
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

