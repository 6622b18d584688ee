"""The numpy metrics agree with scikit-learn's (the reference), including the edge cases."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from model.metrics import accuracy, classification_report, confusion_matrix, macro_f1, precision_recall_f1, roc_auc


@pytest.mark.parametrize("k,seed", [(2, 0), (3, 1), (5, 2)])
def test_against_sklearn(k, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, 200)
    pred = np.where(rng.random(200) < 0.6, y, rng.integers(0, k, 200))
    labels = list(range(k))
    cm = confusion_matrix(y, pred, k)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y, pred, labels=labels))
    assert accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred))
    assert macro_f1(y, pred, k) == pytest.approx(skm.f1_score(y, pred, average="macro", labels=labels))
    p, r, f, s = precision_recall_f1(cm)
    sp, sr, sf, ss = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    np.testing.assert_allclose(p, sp)
    np.testing.assert_allclose(r, sr)
    np.testing.assert_allclose(f, sf)
    np.testing.assert_array_equal(s, ss)


def test_absent_class_counts_zero_like_sklearn():
    y = np.array([0, 0, 1, 1])
    pred = np.array([0, 0, 0, 1])  # class 2 never appears
    assert macro_f1(y, pred, 3) == pytest.approx(
        skm.f1_score(y, pred, average="macro", labels=[0, 1, 2], zero_division=0)
    )


def test_roc_auc_with_ties_and_degenerate_cases():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) * 0.5 + 0.3 * y, 1)  # rounding makes many ties
    assert roc_auc(y, scores) == pytest.approx(skm.roc_auc_score(y, scores))
    assert roc_auc(np.array([1, 1, 1]), np.array([0.1, 0.5, 0.9])) is None
    assert roc_auc(np.array([0, 1]), np.array([0.2, 0.8])) == 1.0
    assert roc_auc(np.array([0, 1]), np.array([0.8, 0.2])) == 0.0


def test_classification_report():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4]])
    y = np.array([0, 1, 0, 1])
    rep = classification_report(y, probs, ["neg", "pos"], loss=0.5)
    assert rep["accuracy"] == 0.5
    assert rep["confusion_matrix"] == [[1, 1], [1, 1]]
    assert all(isinstance(v, int) for row in rep["confusion_matrix"] for v in row)
    assert rep["auc"] == pytest.approx(skm.roc_auc_score(y, probs[:, 1]))
    assert rep["per_class"]["pos"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert rep["loss"] == 0.5 and rep["num_samples"] == 4
    three = classification_report(np.array([0, 1, 2]), np.eye(3), ["a", "b", "c"])
    assert three["auc"] is None and three["f1"] == 1.0
    with pytest.raises(ValueError):
        classification_report(y, probs, ["a", "b", "c"])
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 2)


def test_metric_label_slug_matches_the_folder_slug():
    from model.metrics import label_slug
    from tasks.lib.paths import label_slug as folder_slug

    for label in ["dribbling basketball", "Dunking  Basketball!", "a-b_c", "tai chi (24 form)", "x.y"]:
        assert label_slug(label) == folder_slug(label)
    with pytest.raises(ValueError):
        label_slug("!!!")
