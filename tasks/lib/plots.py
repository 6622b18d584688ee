"""Figures for people reading an MLflow run: learning curves and the confusion matrix (Agg backend, no display)."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def learning_curves(history: list[dict[str, float]], path: Path, best_epoch: int | None = None) -> Path:
    """Loss and scores per epoch; ``best_epoch`` (the weights that were kept and registered) is marked on both."""
    epochs = [int(h.get("epoch", i + 1)) for i, h in enumerate(history)]
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 4))
    for key, style in (("train_loss", "-o"), ("val_loss", "-s")):
        if any(key in h for h in history):
            ax_loss.plot(epochs, [h.get(key, float("nan")) for h in history], style, label=key, markersize=3)
    for key, style in (("train_accuracy", "-o"), ("val_accuracy", "-s"), ("val_f1", "-^")):
        if any(key in h for h in history):
            ax_score.plot(epochs, [h.get(key, float("nan")) for h in history], style, label=key, markersize=3)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_score.set(xlabel="epoch", ylabel="score", title="accuracy / macro F1", ylim=(0, 1.02))
    for ax in (ax_loss, ax_score):
        if best_epoch is not None:
            ax.axvline(best_epoch, color="tab:red", linestyle="--", linewidth=1, label=f"selected epoch {best_epoch}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def normalise_rows(cm) -> np.ndarray:
    """Each true class's row as fractions of its clips (zeros for a class with none)."""
    counts = np.asarray(cm, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def confusion_matrix(cm: list[list[int]], classes: list[str], path: Path, title: str = "test confusion matrix",
                     normalize: bool = False) -> Path:
    """Counts, or with ``normalize`` each true class's row as fractions (recall on the diagonal), which reads the
    same whatever the class sizes."""
    k = len(classes)
    counts = np.asarray(cm, dtype=float).reshape(k, k)
    if normalize:
        values = normalise_rows(counts)
        text = [[f"{v:.2f}" for v in row] for row in values]
        title = f"{title} (normalised by true class)"
    else:
        values = counts
        text = [[str(int(v)) for v in row] for row in counts]
    fig, ax = plt.subplots(figsize=(2.2 + 0.9 * k, 1.8 + 0.9 * k))
    ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(k), classes, rotation=30, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    top = 1.0 if normalize else max(values.max(), 0)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, text[i][j], ha="center", va="center", color="white" if values[i, j] > top / 2 else "black")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def pretrain_loss(history: list[dict[str, float]], path: Path) -> Path:
    """The pretrain stage's reconstruction loss (hidden tubes, per-patch-normalised target) per epoch."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([int(h["epoch"]) for h in history], [h["loss"] for h in history], "-o", markersize=3)
    ax.set(xlabel="epoch", ylabel="masked reconstruction MSE", title="pretraining loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _shown(frame: np.ndarray, form: str, scale: float) -> np.ndarray:
    """One network-input frame ``(H, W, C)`` as an image: RGB stretched to [0, 1]; differences as grey
    magnitude."""
    if form == "rgb":
        lo, hi = np.percentile(frame, 1), np.percentile(frame, 99)
        return np.clip((frame - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.clip(np.abs(frame).mean(-1) / max(scale, 1e-6), 0, 1)


def reconstructions(examples: dict[str, np.ndarray], path: Path, frames: int = 3) -> Path:
    """For each clip (rows of three panels per shown time step): the masked input, the reconstruction (hidden
    tubes predicted) and the target, at ``frames`` time steps."""
    form = str(examples["input"])
    n, t = examples["target"].shape[:2]
    steps = np.unique(np.linspace(0, t - 1, frames).round().astype(int))
    fig, axes = plt.subplots(n, 3 * len(steps), figsize=(1.6 * 3 * len(steps), 1.7 * n), squeeze=False)
    for i in range(n):
        scale = float(np.percentile(np.abs(examples["target"][i]), 99)) if form == "diff" else 1.0
        for j, step in enumerate(steps):
            for k, key in enumerate(("masked", "reconstruction", "target")):
                ax = axes[i, 3 * j + k]
                img = _shown(examples[key][i, step], form, scale)
                ax.imshow(img, cmap=None if img.ndim == 3 else "gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(f"{key} t={step}", fontsize=7)
    fig.suptitle(f"masked {form} modelling: masked input / reconstruction / target", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
