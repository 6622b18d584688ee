"""The benchmark scripts keep working (they are run by hand, so nothing else would notice them break). Tiny
inputs: these check that the scripts run and report what they claim to, not any speed or quality figure."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.support.tiny_dataset import noise_dataset

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_script_trains_the_three_models_and_writes_its_table(tmp_path, capsys):
    root = noise_dataset(tmp_path / "ds", counts={"train": [4, 2], "val": [2, 2], "test": [2, 2]}, num_frames=4, size=32)
    out = tmp_path / "q.json"
    rows = _script("quality").main(["--dataset", str(root), "--epochs", "1", "--json", str(out)])
    assert [r["preset"] for r in rows.values()] == ["vivit-fe-tiny", "vivit-fe-tiny", "frame-mlp"]
    assert [r["single_frame"] for r in rows.values()] == [False, True, False]
    for r in rows.values():
        assert 0.0 <= r["val_accuracy"] <= 1.0 and 0.0 <= r["test_f1"] <= 1.0 and r["best_epoch"] == 1
    assert json.loads(out.read_text())["rows"] == rows
    assert "| frame-mlp (original design) |" in capsys.readouterr().out


def test_quality_script_says_what_is_missing(tmp_path):
    with pytest.raises(SystemExit, match="no manifest.parquet"):
        _script("quality").main(["--dataset", str(tmp_path), "--json", str(tmp_path / "q.json")])
