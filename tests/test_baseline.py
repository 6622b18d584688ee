"""The trivial reference every training is held against (tasks/lib/baseline.py): what it sees, that it chooses its
regularisation on the train split alone, and that it is the same logistic regression scikit-learn fits."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from model.dataset import load_dataset
from tasks.lib import baseline
from tests.support.tiny_dataset import write_dataset


def _clip(rng: np.random.Generator, moving: bool, bright: bool) -> np.ndarray:
    """Motion energy tells the class when ``moving`` follows the label; the mean frame when ``bright`` does."""
    base = rng.integers(100, 140, (1, 32, 32, 3)) + (60 if bright else 0)
    frames = np.repeat(base, 12, 0) + rng.integers(0, 6, (12, 32, 32, 3))
    if moving:
        for t in range(12):
            frames[t, :, (3 * t) % 32: (3 * t) % 32 + 4] = 255
    return np.clip(frames, 0, 255).astype(np.uint8)


def _dataset(tmp_path, cue: str, n: int = 16):
    rng = np.random.default_rng(0)
    clips = []
    for split, count in (("train", n), ("val", 8), ("test", 8)):
        for i in range(count):
            y = i % 2
            other = bool(rng.integers(0, 2))
            clips.append((_clip(rng, moving=bool(y) if cue == "motion" else other,
                                bright=bool(y) if cue == "appearance" else other), y, split))
    return load_dataset(write_dataset(tmp_path / cue, clips, ["still", "moving"]))


@pytest.mark.parametrize("cue", ["motion", "appearance"])
def test_the_reference_reads_motion_energy_and_the_mean_frame(tmp_path, cue):
    ref = baseline.reference(_dataset(tmp_path, cue))
    assert ref.scores["val"]["f1"] == 1.0 and ref.scores["test"]["accuracy"] == 1.0
    metrics = ref.metrics()
    assert set(metrics) == {"baseline/C", "baseline/val_accuracy", "baseline/val_f1", "baseline/test_accuracy",
                            "baseline/test_f1"}
    assert metrics["baseline/C"] in baseline.C_GRID


def test_features_are_mean_frame_and_motion_energy():
    still = np.full((8, 64, 64, 3), 100, np.uint8)
    f = baseline.clip_features(still)
    assert f.shape == (2 * baseline.SIDE ** 2,)
    assert np.allclose(f[: baseline.SIDE ** 2], 100 / 255, atol=1e-6) and np.all(f[baseline.SIDE ** 2:] == 0)
    flicker = still.copy()
    flicker[1::2] = 200
    assert f[baseline.SIDE ** 2:].sum() < baseline.clip_features(flicker)[baseline.SIDE ** 2:].sum()


def test_C_is_chosen_on_train_only_and_the_fit_is_scikit_learns(tmp_path):
    """Relabelling val and test at random changes no choice the reference makes (they are only scored), and the
    fitted model predicts what a plain scikit-learn LogisticRegression with that C predicts."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    info = _dataset(tmp_path, "motion")
    x = baseline.dataset_features(info)
    ref = baseline.reference(info, x)
    shuffled = info.manifest.copy()
    held = shuffled["split"] != "train"
    shuffled.loc[held, "label_index"] = np.random.default_rng(1).permutation(shuffled.loc[held, "label_index"].to_numpy())
    assert baseline.reference(dataclasses.replace(info, manifest=shuffled), x).C == ref.C

    train = (info.manifest["split"] == "train").to_numpy()
    y = info.manifest["label_index"].to_numpy()
    scale = StandardScaler().fit(x[train])
    plain = LogisticRegression(C=ref.C, max_iter=5000).fit(scale.transform(x[train]), y[train])
    ours = baseline._classifier(ref.C).fit(x[train].astype(np.float64), y[train])
    assert np.array_equal(plain.predict(scale.transform(x[~train])), ours.predict(x[~train].astype(np.float64)))
