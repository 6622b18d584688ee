"""``vivit export``: a registered classifier as a TorchScript or ONNX file, for use outside Python and MLflow.

The file computes what the registered pyfunc computes (:class:`model.export.ExportableClassifier`: the same
preprocessing, views and softmax average): uint8 frames ``(B, F, S, S, 3)`` RGB in, class probabilities ``(B, K)``
out, any batch size. Beside it, ``<file>.json`` says how to get those frames from a video (the frame sampler's
parameters), how they become network input (the view: positions, input form, mean/std) and the classes in output
order. Before returning, the export is run on random frames and compared with the registered model (``max_abs_diff``
in the sidecar); ONNX is checked with onnxruntime when it is installed (``pip install -e '.[export]'``).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from model.atomic import atomic_path, atomic_write_text
from tasks.lib.errors import UserError

FORMATS = ("torchscript", "onnx")
SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx"}
TOLERANCE = 1e-4
ONNX_OPSET = 18


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def sampling_record(classifier: Any, fmt: str, model_uri: str, ref: Any = None) -> dict[str, Any]:
    """What a caller of the exported file needs besides the file (the sidecar's content, less the check)."""
    view = getattr(classifier, "view", None)
    f, s = int(classifier.num_frames), int(classifier.image_size)
    return {
        "format": fmt,
        "model_uri": model_uri,
        **({"model_name": ref.name, "model_version": ref.version, "run_id": ref.run_id} if ref and ref.name else {}),
        "classes": list(classifier.classes),
        "input": {"name": "frames", "dtype": "uint8", "shape": ["batch", f, s, s, 3], "layout": "B,T,H,W,C (RGB)"},
        "output": {"name": "probabilities", "dtype": "float32", "shape": ["batch", len(classifier.classes)],
                   "meaning": "softmax averaged over the views; columns in the order of classes"},
        "sampling": {"frames": f, "size": s,
                     "method": f"{f} frames at the centres of {f} equal segments of the decoded frames; each frame's "
                               f"short side resized to {s} (area), then centre-cropped to {s}x{s} "
                               "(tasks/lib/sampling.py sample_clip, as vivit predict and the served models do)"},
        "view": None if view is None else {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(view).items()},
        "mean": list(view.mean) if view is not None else [0.485, 0.456, 0.406],
        "std": list(view.std) if view is not None else [0.229, 0.224, 0.225],
        "preprocessing": "inside the file: uint8 -> [0, 1], the view's frames and input form, mean/std",
    }


def _random_frames(classifier: Any, batch: int, seed: int) -> np.ndarray:
    f, s = classifier.num_frames, classifier.image_size
    return np.random.default_rng(seed).integers(0, 256, (batch, f, s, s, 3), dtype=np.uint8)


def export_classifier(classifier: Any, fmt: str, out: Path) -> None:
    """Write ``classifier`` to ``out`` in ``fmt`` (atomically)."""
    import torch

    from model.export import ExportableClassifier

    module = ExportableClassifier(classifier).eval()
    example = torch.from_numpy(_random_frames(classifier, 2, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracers' notes on shape-dependent Python, fixed by the model
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(module, example, check_trace=False), str(tmp))
        else:
            _export_onnx(module, example, Path(tmp))


def _export_onnx(module: Any, example: Any, dest: Path) -> None:
    import contextlib
    import io
    import logging

    import torch

    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UserError("ONNX export needs the onnx and onnxscript packages: .venv/bin/pip install -e '.[export]'") from None
    # the exporter's progress lines (stdout) and its notes that torchvision's operators are not registered
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            program = torch.onnx.export(module, (example,), input_names=["frames"], output_names=["probabilities"],
                                        dynamic_shapes={"frames": {0: torch.export.Dim("batch")}}, dynamo=True,
                                        opset_version=ONNX_OPSET)
    finally:
        registration.setLevel(level)
    program.save(str(dest))


def run_exported(path: Path, fmt: str, frames: np.ndarray) -> np.ndarray | None:
    """Probabilities of the exported file on ``frames``; None for ONNX without onnxruntime."""
    if fmt == "torchscript":
        import torch

        loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.inference_mode():
            return loaded(torch.from_numpy(frames)).numpy()
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"frames": frames})[0]


def export_model(model_uri: str, fmt: str, out: Path, *, tracking_uri: str) -> dict[str, Any]:
    """Export the registered ``model_uri``, check it against the registered pyfunc on random frames, write the
    sidecar; returns the sidecar's content."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: name the file to write, e.g. {out / ('model' + SUFFIXES[fmt])}")
    from tasks import tracking
    from tasks.lib.config import MlflowConfig

    tracking.require_existing_store(tracking_uri)
    tracking.use_store(MlflowConfig(tracking_uri=tracking_uri))
    ref = tracking.resolve_model(model_uri)
    classifier = tracking.load_classifier(model_uri, tracking_uri)
    export_classifier(classifier, fmt, out)
    frames = _random_frames(classifier, 3, 1)
    if ref.name and ref.name.endswith(tracking.VIDEO_SUFFIX):  # the video twin takes files: its own classifier
        import torch

        with torch.inference_mode():
            want = classifier(torch.from_numpy(frames)).numpy().astype(np.float64)
    else:  # the registered frames model itself, through pyfunc
        want = tracking.pyfunc_probabilities(model_uri, frames)
    got = run_exported(out, fmt, frames)
    record = sampling_record(classifier, fmt, model_uri, ref)
    if got is None:
        record["check"] = "not run: onnxruntime is not installed (pip install -e '.[export]')"
    else:
        diff = float(np.abs(np.asarray(got, np.float64) - want).max())
        if diff > TOLERANCE:
            out.unlink(missing_ok=True)
            raise RuntimeError(f"the exported {fmt} file differs from the registered model by {diff:.2e} "
                               f"(> {TOLERANCE}) on random frames: not written")
        record["check"] = {"max_abs_diff": diff, "tolerance": TOLERANCE, "batch": int(frames.shape[0])}
    atomic_write_text(sidecar_path(out), json.dumps(record, indent=2) + "\n")
    return record
