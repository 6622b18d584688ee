"""The packaged classifier as MLflow pyfunc models (frames in, and video files in) and their signatures."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
from mlflow.models.signature import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec
import numpy as np

from tasks.lib.predicting import Item, classify_videos, confined_item, serve_root

CLASSIFIER_ARTIFACT = "classifier"  # the weights-only file (model/checkpoint.py save_classifier) in both models


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
    """Video files in (the file's ``content``: base64 in JSON; or a ``path`` on the server's disk, read only under
    a configured root), the label, the error (empty when none) and one probability column per class out (null
    for a row with an error)."""
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


class ClassifierPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc face of a :class:`model.predict.VideoClassifier`: uint8 ``(B, T, S, S, 3)`` in, a DataFrame of
    per-class probabilities (columns = class names) out. ``classifier`` stays reachable for PyTorch users through
    ``unwrap_python_model()`` (``tasks.tracking.load_classifier`` does that). Logged as code (``served_frames.py``),
    it starts empty and loads the classifier from the model's ``classifier`` artifact; models logged before that
    carry it pickled."""

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
        return _null_non_finite(pd.DataFrame(probs.astype(np.float64), columns=list(self.classifier.classes)))


def _null_non_finite(out):  # noqa: ANN001, ANN202 - a DataFrame of probabilities
    """JSON has no NaN: a probability that is not a finite number (a failed row; a network that produced NaN) is
    None, so MLflow's server writes ``null``. A frame of finite numbers keeps its float columns."""
    values = out.to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isfinite(values).all():
        return out
    return out.astype(object).where(np.isfinite(values), None)


class VideoPyfunc(ClassifierPyfunc):
    """Videos in, frames sampled exactly as the frames stage does (and checked as the filter stage does), label +
    per-class probabilities out; a bad video gives a row with ``error`` set and null probabilities.

    Closed by default: a row's ``content`` (the file's bytes) is what is classified. A ``path`` is read on the
    server's disk only when a root is configured (``$VIVIT_SERVE_ROOT``, or ``serve_root`` in the model config
    at load time) and only inside it (:func:`tasks.lib.predicting.confined_item`); otherwise its row is an error."""

    root: Path | None = None

    def load_context(self, context) -> None:  # noqa: ANN001 - pyfunc's interface
        super().load_context(context)
        self.root = serve_root((getattr(context, "model_config", None) or {}).get("serve_root"))

    def predict(self, context, model_input, params=None):  # noqa: ANN001
        import pandas as pd

        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        classes = list(self.classifier.classes)
        root = self.root if self.root is not None else serve_root()
        with tempfile.TemporaryDirectory(prefix="vivit-serve-") as tmp:
            items = []
            for i, row in enumerate(df.to_dict("records")):
                content, path = row.get("content"), row.get("path")
                if content is not None and not (isinstance(content, float) and np.isnan(content)):
                    dest = Path(tmp) / f"video{i}"
                    dest.write_bytes(bytes(content))
                    items.append(Item(str(dest)))
                elif path is None or (isinstance(path, float) and np.isnan(path)) or not str(path).strip():
                    items.append(Item("", "no input: the row has neither `content` nor `path`"))
                else:
                    items.append(confined_item(str(path), root))
            results = classify_videos(self.classifier, items)
        rows = [{"label": r.get("label", ""), "error": r.get("error", ""),
                 **{c: float(r["probabilities"][c]) if "probabilities" in r else None for c in classes}}
                for r in results]
        out = pd.DataFrame(rows, columns=["label", "error", *classes])
        out[classes] = _null_non_finite(out[classes])  # an error row's probabilities are null, not NaN
        return out
