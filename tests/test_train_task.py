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


def test_only_the_registry_call_retries_and_only_when_the_store_is_down():
    """Training is never retried (a failure is a bug to read); registration is, when MLflow did not answer."""
    from types import SimpleNamespace

    from tasks.lib.errors import ServiceUnavailable
    from tasks.train import _store_down, log_training, register_model, train_model

    assert train_model.retries == 0 and log_training.retries == 0
    assert register_model.retries == 2 and register_model.retry_condition_fn is _store_down
    down = ConnectionError("connection refused")
    assert _store_down(None, None, SimpleNamespace(data=down))
    assert _store_down(None, None, SimpleNamespace(data=ServiceUnavailable("MLflow at x is not answering")))
    assert not _store_down(None, None, SimpleNamespace(data=ValueError("bad score")))


def test_the_run_folder_key_is_the_checkpoints_fingerprint(tmp_path):
    """One definition of what determines a training (model/training.py ``training_fingerprint``): the train stage's
    key (its run folder, the ``train_key`` tag) is the fingerprint ``last.pt`` carries, so a killed run resumes from
    that folder; execution-only options keep it, a determining option or the seed changes it."""
    import torch

    from model.dataset import load_dataset
    from model.options import EXECUTION_ONLY
    from model.training import fit, training_fingerprint
    from tasks.lib.config import PipelineConfig
    from tasks.train import train_key
    from tests.support.tiny_dataset import noise_dataset

    info = load_dataset(noise_dataset(tmp_path / "data", counts={"train": [3, 3], "val": [2, 2]}, num_frames=4,
                                      size=16))
    train = {"model": "frame-mlp", "input": "rgb", "view_frames": 4, "test_views": 1, "epochs": 1, "batch_size": 2}
    config = PipelineConfig.model_validate({"data_dir": str(tmp_path), "train": train}).stage("train")
    key = train_key(config, info)
    assert key == training_fingerprint(config.train, config.seed, info)

    execution = {"resume": False, "num_workers": 1, "device": "cpu", "compile": True, "precision": "fp32",
                 "processes": 2}
    assert set(execution) == EXECUTION_ONLY
    moved = config.model_copy(update={"train": config.train.model_copy(update=execution)})
    assert train_key(moved, info) == key
    assert train_key(config.model_copy(update={"train": config.train.model_copy(update={"lr": 1e-3})}), info) != key
    assert train_key(config.model_copy(update={"seed": config.seed + 1}), info) != key

    work = config.data_dir / "runs" / key
    fit(info, config.train, seed=config.seed, work_dir=work)
    assert torch.load(work / "last.pt", weights_only=True)["fingerprint"] == key
