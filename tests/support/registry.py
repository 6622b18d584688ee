"""Tiny registered models on a real MLflow SQLite store, as the train stage registers them: a frame-MLP
``VideoClassifier``, and a run that logs what ``tasks/train.py`` logs (params, final metrics with intervals, the
baseline) before ``register_and_promote``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.lib.config import MlflowConfig

T, S = 4, 32
CLASSES = ["dribbling basketball", "dunking basketball", "shooting basketball"]


def tiny_classifier(classes: list[str] | None = None, *, seed: int = 0, num_frames: int = T, size: int = S,
                    preset: str = "frame-mlp", view: Any = None):
    """A random ``VideoClassifier`` of ``num_frames`` stored frames at ``size``; with a
    :class:`model.views.ViewSpec`, the network sees the view's positions in its input form."""
    import torch

    from model.predict import VideoClassifier
    from model.presets import build_model

    classes = list(classes or CLASSES)
    torch.manual_seed(seed)
    t, channels = (view.num_frames, view.channels) if view is not None else (num_frames, 3)
    net = build_model(preset, num_classes=len(classes), num_frames=t, image_size=size, in_channels=channels)
    return VideoClassifier(net, classes=classes, num_frames=num_frames, image_size=size, view=view)


def store_config(folder: Path, model_name: str = "clf", experiment: str = "t") -> MlflowConfig:
    """A SQLite store under ``folder`` (made the current store)."""
    from tasks import tracking

    folder.mkdir(parents=True, exist_ok=True)
    cfg = MlflowConfig(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}", experiment=experiment, model_name=model_name)
    tracking.use_store(cfg)
    return cfg


def register_trained(cfg: MlflowConfig, classifier: Any = None, *, score: float = 0.8, baseline: float | None = 0.6,
                     test_f1: float = 0.75, split_counts: dict[str, int] | None = None,
                     params: dict[str, Any] | None = None):
    """A run logged the way the train stage logs one (params, final metrics with 95% intervals, the baseline), its
    classifier logged and registered: the :class:`tasks.tracking.Registration` and the run id."""
    from tasks import tracking

    clf = classifier or tiny_classifier()
    classes = list(clf.classes)
    split_counts = split_counts or {"train": 30, "val": 12, "test": 12}
    with tracking.training_run(cfg.experiment, f"s{score}", {"train_key": f"k{score}", "preset": "frame-mlp",
                                                             "dataset.fingerprint": "fp0123"}) as run_id:
        tracking.log_params({
            "train": {"model": "frame-mlp", "input": "auto", "epochs": 3, "batch_size": 4, "lr": 0.001,
                      "selection": "best_val", "selection_smoothing": 0.8, "init": None},
            "seed": 0, "preset": "frame-mlp", "dataset_fingerprint": "fp0123", "classes": classes,
            "sampling": {"num_frames": clf.num_frames, "size": clf.image_size, "method": "uniform"},
            "split_counts": split_counts, **(params or {})})
        tracking.log_params({"input_chosen": "diff"})
        tracking.log_metrics({
            tracking.SELECTION_METRIC: score, "best_val_f1": score + 0.02, "best_val_f1_ci_low": score - 0.2,
            "best_val_f1_ci_high": min(1.0, score + 0.1), "best_val_accuracy": score, "test_f1": test_f1,
            "test_f1_ci_low": test_f1 - 0.2, "test_f1_ci_high": min(1.0, test_f1 + 0.1), "test_accuracy": test_f1,
            "test_accuracy_ci_low": test_f1 - 0.15, "test_accuracy_ci_high": min(1.0, test_f1 + 0.1),
            **({"baseline/val_f1": baseline, "baseline/test_f1": baseline - 0.05} if baseline is not None else {})})
        uri = tracking.log_classifier(clf, metadata={"classes": classes, "num_frames": clf.num_frames,
                                                     "image_size": clf.image_size, "preset": "frame-mlp"})
        reg = tracking.register_and_promote(uri, cfg.model_name, run_id, score, baseline=baseline)
    return reg, run_id
