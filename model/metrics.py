"""Classification metrics in plain numpy, so the training core needs no scikit-learn.

Conventions follow scikit-learn's (the tests cross-check against it): a precision or recall whose denominator
is zero counts as 0; macro F1 averages the per-class F1 over *all* classes, present or not.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

_SLUG_RE = re.compile(r"[^a-z0-9]+")


def label_slug(label: str) -> str:
    """Metric-name form of a class label, ``"dribbling basketball"`` -> ``"dribbling_basketball"``: the same rule as
    ``tasks.lib.paths.label_slug`` (kept here so that ``model/`` stands alone when MLflow ships it as code)."""
    slug = _SLUG_RE.sub("_", str(label).strip().lower()).strip("_")
    if not slug:
        raise ValueError(f"label {label!r} has no usable characters for a metric name")
    return slug


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[i, j]`` = number of samples of true class ``i`` predicted as ``j``."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in length")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} has labels outside [0, {num_classes})")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    return float((y_true == y_pred).mean()) if y_true.size else 0.0


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def precision_recall_f1(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 and support from a confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    precision = _safe_div(tp, cm.sum(axis=0))
    recall = _safe_div(tp, cm.sum(axis=1))
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return precision, recall, f1, cm.sum(axis=1).astype(np.int64)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    return float(precision_recall_f1(confusion_matrix(y_true, y_pred, num_classes))[2].mean())


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """Binary ROC-AUC (positive class 1) by the rank statistic, ties counted half; ``None`` when only one class
    is present (AUC is undefined there)."""
    y_true = np.asarray(y_true).ravel().astype(bool)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # average ranks over ties (1-based)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: unlike the normal approximation it stays inside [0, 1] and is
    honest for the 15-80 clips a validation split of a few classes has."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def bootstrap_interval(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, *, resamples: int = 1000,
                       seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the macro F1 (clips resampled with replacement; seeded, so a report is
    reproducible). Macro F1 has no closed-form interval."""
    y_true, y_pred = np.asarray(y_true, np.int64).ravel(), np.asarray(y_pred, np.int64).ravel()
    n = len(y_true)
    if n == 0:
        return (0.0, 1.0)
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    scores = [macro_f1(y_true[i], y_pred[i], num_classes) for i in idx]
    lo, hi = np.percentile(scores, [2.5, 97.5])
    return (float(lo), float(hi))


def classification_report(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str], *, loss: float | None = None, intervals: bool = True
) -> dict[str, Any]:
    """Everything the training loop reports for one split, from true labels and ``(N, K)`` probabilities:
    accuracy, macro ``f1``, ``loss`` (if given), ``auc`` (binary only; positive class = index 1),
    ``confusion_matrix`` (list of lists of int) and ``per_class`` ``{label: {precision, recall, f1, support}}``;
    with ``intervals``, 95% confidence intervals ``accuracy_ci`` (Wilson) and ``f1_ci`` (bootstrap)."""
    probs = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    if probs.ndim != 2 or probs.shape[1] != k:
        raise ValueError(f"probs must be (N, {k}), got {probs.shape}")
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    cm = confusion_matrix(y_true, y_pred, k)
    precision, recall, f1, support = precision_recall_f1(cm)
    out: dict[str, Any] = {
        "accuracy": accuracy(y_true, y_pred),
        "f1": float(f1.mean()),
        "loss": None if loss is None else float(loss),
        "auc": roc_auc(y_true, probs[:, 1]) if k == 2 else None,
        "confusion_matrix": cm.astype(int).tolist(),
        "per_class": {
            c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, c in enumerate(classes)
        },
        "num_samples": int(len(y_true)),
    }
    if intervals:
        out["accuracy_ci"] = list(wilson_interval(int((y_true == y_pred).sum()), len(y_true)))
        out["f1_ci"] = list(bootstrap_interval(y_true, y_pred, k))
    return out
