"""Pure helpers of the train stage (tasks/train.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from model.training import prediction_table
from tasks.train import _misclassified_rows


def test_misclassified_clips_most_confidently_wrong_first():
    rows = pd.DataFrame({"clip_id": ["a", "b", "c", "d"], "label": ["x", "y", "x", "z"]})
    probs = np.array([[0.2, 0.5, 0.3], [0.9, 0.1, 0.0], [0.6, 0.3, 0.1], [0.1, 0.7, 0.2]])
    table = prediction_table(rows, probs, ["x", "y", "z"])
    assert _misclassified_rows(table) == [
        {"clip_id": "b", "label": "y", "predicted": "x", "confidence": 0.9},
        {"clip_id": "d", "label": "z", "predicted": "y", "confidence": 0.7},
        {"clip_id": "a", "label": "x", "predicted": "y", "confidence": 0.5},
    ]
    assert _misclassified_rows(table, limit=1)[0]["clip_id"] == "b"
    assert _misclassified_rows(None) == [] and _misclassified_rows(table.iloc[:0]) == []
