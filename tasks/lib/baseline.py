"""The trivial reference every training is held against: a logistic regression on the mean frame and the motion
energy of the stored frames.

Why it exists: with a hundred clips a video transformer can score well above chance while learning no more than
"how much moves" or "what the scene looks like", which a linear model on two hand-made features learns in a second.
A training that does not beat this reference has not learnt video, so the train stage reports it next to the
model's scores and the registry refuses such a model the ``champion`` alias.

Features (per clip): 16 uniformly spaced stored frames, grey, area-resized to 32x32; the mean frame (appearance)
and the mean absolute difference of consecutive ones (motion energy), 2 x 1024 values, standardised on the train
split. The regularisation strength is chosen by stratified cross-validation *within the train split*, so the
reference's validation score is as honest as the model's (nothing here looks at val or test to choose).
scikit-learn fits it (already installed with MLflow); the served model never needs it, so it lives here and not in
``model/``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from model.dataset import DatasetInfo
from model.metrics import macro_f1

POSITIONS = 16  # frames the features look at (fewer when a clip stores fewer)
SIDE = 32  # grey frames are area-resized to SIDE x SIDE
C_GRID = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strength of the logistic regression; chosen by CV on train
FOLDS = 5


@dataclass
class Reference:
    """The reference's scores on each split it could be evaluated on, and the C that cross-validation chose."""

    C: float
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # {"val": {"accuracy", "f1"}, "test": ...}

    def metrics(self) -> dict[str, float]:
        """Flat MLflow-style metrics: ``baseline/val_f1``, ``baseline/test_accuracy``, ``baseline/C``, ..."""
        out = {"baseline/C": self.C}
        for split, s in self.scores.items():
            out.update({f"baseline/{split}_{k}": v for k, v in s.items()})
        return out


def clip_features(frames: np.ndarray) -> np.ndarray:
    """Mean frame + motion energy of one clip's stored frames ``(F, S, S, 3)`` uint8: ``(2 * SIDE * SIDE,)``."""
    n = len(frames)
    pos = np.unique(np.linspace(0, n - 1, min(POSITIONS, n)).round().astype(int))
    grey = torch.from_numpy(np.asarray(frames[pos], dtype=np.float32).mean(-1) / 255.0)  # (P, S, S)
    x = F.interpolate(grey[None], size=(SIDE, SIDE), mode="area")[0]
    motion = (x[1:] - x[:-1]).abs().mean(0) if len(x) > 1 else torch.zeros(SIDE, SIDE)
    return torch.cat([x.mean(0).flatten(), motion.flatten()]).numpy()


def dataset_features(info: DatasetInfo) -> np.ndarray:
    """Features of every clip of the manifest, in its order (memory-mapped reads: a few seconds for 300 clips)."""
    return np.stack([clip_features(np.load(info.path / p, mmap_mode="r")) for p in info.manifest["frames_path"]])


def choose_C(x: np.ndarray, y: np.ndarray) -> float:
    """The C with the best cross-validated macro F1 on the train split (ties: the stronger regularisation)."""
    from sklearn.model_selection import StratifiedKFold

    folds = min(FOLDS, int(np.bincount(y).min()) if len(y) else 0)
    if folds < 2:
        return 1.0
    best, best_c = -1.0, C_GRID[0]
    split = list(StratifiedKFold(folds, shuffle=True, random_state=0).split(x, y))
    for C in C_GRID:
        # a plain loop: sklearn's cross_val_predict (joblib, even sequential) ran 10-20x slower here
        preds = np.empty_like(y)
        for fit_idx, held in split:
            preds[held] = _classifier(C).fit(x[fit_idx], y[fit_idx]).predict(x[held])
        score = macro_f1(y, preds, int(y.max()) + 1)
        if score > best + 1e-9:
            best, best_c = score, C
    return best_c


def _classifier(C: float):
    """Standardise, rotate onto the clips' own span, then the logistic regression. With far fewer clips than the
    2048 features the rotation loses nothing (an L2-penalised solution lies in the span of the training rows, and
    the penalty does not change under rotation) but turns L-BFGS's crawl over 2048 dimensions (up to a minute)
    into a fraction of a second."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), PCA(svd_solver="full"), LogisticRegression(C=C, max_iter=5000))


def reference(info: DatasetInfo, features: np.ndarray | None = None) -> Reference:
    """Fit on the train split (C by CV there), score val and test. ``features``: :func:`dataset_features`'s
    output when the caller has it already."""
    from threadpoolctl import threadpool_limits

    x = (dataset_features(info) if features is None else features).astype(np.float64)
    with threadpool_limits(1):  # a BLAS thread pool on a busy machine made this 100x slower (seconds -> minutes)
        return _fit_and_score(x, info)


def _fit_and_score(x: np.ndarray, info: DatasetInfo) -> Reference:
    df = info.manifest
    y, split = df["label_index"].to_numpy(dtype=int), df["split"].to_numpy()
    k = len(info.classes)
    train = split == "train"
    C = choose_C(x[train], y[train])
    clf = _classifier(C).fit(x[train], y[train])
    ref = Reference(C=C)
    for s in ("val", "test"):
        m = split == s
        if m.any():
            pred = clf.predict(x[m])
            ref.scores[s] = {"accuracy": float((pred == y[m]).mean()), "f1": float(macro_f1(y[m], pred, k))}
    return ref
