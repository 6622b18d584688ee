"""Figures for people reading an MLflow run: learning curves and the confusion matrix (Agg backend, no display)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def learning_curves(history: list[dict[str, float]], path: Path) -> Path:
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
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion_matrix(cm: list[list[int]], classes: list[str], path: Path, title: str = "test confusion matrix") -> Path:
    k = len(classes)
    fig, ax = plt.subplots(figsize=(2.2 + 0.9 * k, 1.8 + 0.9 * k))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=30, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    top = max((max(r) for r in cm), default=0)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i][j]), ha="center", va="center", color="white" if cm[i][j] > top / 2 else "black")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
