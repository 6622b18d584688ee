"""The MLflow side for real: a SQLite store and registry in tmp_path, a logged classifier, the champion rules,
and loading ``models:/NAME@champion`` in a fresh process from another working directory."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tasks import tracking
from tasks.lib.config import MlflowConfig
from tests.support.registry import tiny_classifier
from tests.support.videos import make_counter_video

T, S, K = 4, 32, 2


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t", model_name="clf")
    tracking.use_store(cfg)
    return cfg


def _classifier(seed: int = 0):
    return tiny_classifier(["dribbling basketball", "dunking basketball"], seed=seed, num_frames=T, size=S)


def _log_version(store: MlflowConfig, score: float, baseline: float | None = None) -> tracking.Registration:
    with tracking.training_run(store.experiment, f"s{score}", {"train_key": "k"}) as run_id:
        tracking.log_metrics({tracking.SELECTION_METRIC: score})
        uri = tracking.log_classifier(_classifier(), metadata={"classes": ["a", "b"], "num_frames": T, "image_size": S})
        return tracking.register_and_promote(uri, store.model_name, run_id, score, baseline=baseline)


def test_default_store_is_embedded_sqlite_with_four_slashes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.resolve_tracking_uri(MlflowConfig())
    assert uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db" and uri.startswith("sqlite:////")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.resolve_tracking_uri(MlflowConfig()) == "http://127.0.0.1:5000"
    assert tracking.resolve_tracking_uri(MlflowConfig(tracking_uri="sqlite:////x.db")) == "sqlite:////x.db"


def test_champion_moves_only_on_a_strictly_better_score(store):
    first = _log_version(store, 0.70)
    assert (first.version, first.decision, first.champion_version) == (1, "first_champion", 1)
    worse = _log_version(store, 0.60)
    assert (worse.version, worse.decision, worse.champion_version, worse.incumbent_score) == (2, "kept_incumbent", 1, 0.70)
    tie = _log_version(store, 0.70)
    assert (tie.decision, tie.champion_version) == ("kept_incumbent", 1)
    better = _log_version(store, 0.90)
    assert (better.version, better.decision, better.champion_version) == (4, "promoted", 4)
    assert tracking.aliases(store.model_name) == {"champion": 4, "challenger": 4}

    from mlflow import MlflowClient

    run = MlflowClient().get_run(MlflowClient().get_model_version(store.model_name, "2").run_id)
    assert run.data.tags["registry.decision"] == "kept_incumbent"
    assert run.data.metrics["registry/incumbent_score"] == pytest.approx(0.70)
    assert run.data.metrics["registry/challenger_score"] == pytest.approx(0.60)


def test_a_model_not_above_the_baseline_is_never_champion(store):
    """The champion rule (tasks/tracking/registry.py below_baseline): the smoothed val score must be strictly above
    the baseline's val macro F1, whatever the incumbent; such a version is still registered, as challenger, and the
    run and the version say by how much it fell short."""
    from mlflow import MlflowClient

    under = _log_version(store, 0.60, baseline=0.65)
    assert (under.version, under.decision, under.champion_version) == (1, "below_baseline", None)
    assert "0.050 below the baseline's 0.650" in under.reason
    assert tracking.aliases(store.model_name) == {"challenger": 1}
    assert tracking.aliases(store.model_name + tracking.VIDEO_SUFFIX) == {"challenger": 1}
    client = MlflowClient()
    version = client.get_model_version(store.model_name, "1")
    assert version.tags[tracking.BASELINE_METRIC] == "0.650000"
    assert "below the baseline" in client.get_run(version.run_id).data.tags["registry.reason"]

    equal = _log_version(store, 0.65, baseline=0.65)
    assert equal.decision == "below_baseline" and "only equal to" in equal.reason
    above = _log_version(store, 0.70, baseline=0.65)
    assert (above.decision, above.champion_version) == ("first_champion", 3)
    better_but_under = _log_version(store, 0.90, baseline=0.95)  # beats the incumbent, not its own baseline
    assert (better_but_under.decision, better_but_under.champion_version) == ("below_baseline", 3)
    assert tracking.aliases(store.model_name) == {"champion": 3, "challenger": 4}
    assert _log_version(store, 0.80, baseline=None).decision == "promoted"  # no validation split: no baseline


def test_registering_a_run_again_reuses_its_version(store):
    """The train stage retries the registry call when the store drops: a retry must not add a second version
    (of either model) for the same run."""
    from mlflow import MlflowClient

    with tracking.training_run(store.experiment, "r", {"train_key": "k"}) as run_id:
        uri = tracking.log_classifier(_classifier(), metadata={"classes": ["a", "b"], "num_frames": T, "image_size": S})
        first = tracking.register_and_promote(uri, store.model_name, run_id, 0.7)
        again = tracking.register_and_promote(uri, store.model_name, run_id, 0.7)
    assert first.version == again.version == 1 and again.champion_version == 1
    for name in (store.model_name, store.model_name + tracking.VIDEO_SUFFIX):
        assert [int(v.version) for v in MlflowClient().search_model_versions(f"name = '{name}'")] == [1]


def test_signature_is_uint8_clips_with_free_batch(store):
    sig = tracking.classifier_signature(T, S, ["a", "b"])
    assert sig.inputs.inputs[0].shape == (-1, T, S, S, 3) and sig.inputs.inputs[0].type == np.dtype(np.uint8)
    assert sig.inputs.inputs[0].name is None  # a named tensor makes pyfunc pass a dict, which serving refuses
    assert sig.outputs.input_names() == ["a", "b"]


def test_registered_champion_predicts_in_a_fresh_process(store, tmp_path):
    _log_version(store, 0.8)
    videos = [make_counter_video(tmp_path / f"v{i}.mp4", 30 + 10 * i, width=64, height=48, seed=i) for i in range(3)]
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "predict", *map(str, videos), str(corrupt),
         "--model", f"models:/{store.model_name}@champion", "--tracking-uri", store.tracking_uri],
        cwd=elsewhere, capture_output=True, text=True, timeout=180,
        env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert [r["path"] for r in lines] == [*map(str, videos), str(corrupt)]
    for r in lines[:3]:
        assert r["label"] in ("dribbling basketball", "dunking basketball")
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert r["positive_class"] == "dunking basketball"
        assert r["p_positive"] == r["probabilities"]["dunking basketball"]
    assert "error" in lines[3] and "label" not in lines[3]


def test_loaded_model_takes_any_batch_size(store):
    import torch

    _log_version(store, 0.5)
    clf = tracking.load_classifier(f"models:/{store.model_name}@champion", store.tracking_uri)
    for b in (1, 5):
        out = clf(torch.randint(0, 255, (b, T, S, S, 3), dtype=torch.uint8))
        assert out.shape == (b, K) and torch.allclose(out.sum(1), torch.ones(b), atol=1e-5)


def test_metric_names_group_by_split_and_round_trip():
    names = {"train_loss": "train/loss", "val_f1": "val/f1", "best_val_f1": "val/best_f1", "test_auc": "test/auc",
             "val_recall_dunking_basketball": "val/recall_dunking_basketball", "lr": "optim/lr",
             "epoch_seconds": "time/epoch_seconds", "train_seconds": "time/train_seconds",
             "best_epoch": "val/best_epoch", "challenger_score": "registry/challenger_score"}
    assert {k: tracking.metric_name(k) for k in names} == names
    assert {v: tracking.internal_metric_name(v) for v in names.values()} == {v: k for k, v in names.items()}


def test_champion_scoring_reads_runs_logged_before_the_renaming(store):
    """An incumbent from an older version has only ``best_val_f1``; a new run has ``val/best_score``: both compare."""
    from mlflow import MlflowClient

    with tracking.training_run(store.experiment, "old", {}) as run_id:
        MlflowClient().log_metric(run_id, "best_val_f1", 0.8)  # the old flat name
        uri = tracking.log_classifier(_classifier(), metadata={"classes": ["a", "b"], "num_frames": T, "image_size": S})
        tracking.register_and_promote(uri, store.model_name, run_id, 0.8)
    assert _log_version(store, 0.7).decision == "kept_incumbent"
    better = _log_version(store, 0.9)
    assert better.decision == "promoted" and better.incumbent_score == pytest.approx(0.8)


def test_runs_record_the_code_version_and_the_experiment_kind(store, tmp_path):
    with tracking.training_run(store.experiment, "r", {}) as run_id:
        pass
    from mlflow import MlflowClient

    run = MlflowClient().get_run(run_id)
    head = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]), "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    assert run.data.tags["mlflow.source.git.commit"] == head and run.data.tags["code.git_dirty"] in ("true", "false")
    assert MlflowClient().get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    # outside a git checkout only the package version is known
    assert set(tracking.code_version_tags(tmp_path)) == {"code.version"}


def test_logging_a_run_says_nothing_about_nothing(store, tmp_path, capfd):
    """A training's log carries no MLflow noise: no warning about a dataset source that is 'ambiguous' between two
    registrations of the same class or about integer manifest columns, no CloudPickle warning (the models are
    logged from code), and no progress bars for the local copy of the classifier's artifact."""
    import warnings

    from model.dataset import load_dataset
    from tests.support.tiny_dataset import noise_dataset

    info = load_dataset(noise_dataset(tmp_path / "ds", counts={"train": [3, 3], "val": [1, 1], "test": [1, 1]}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tracking.training_run(store.experiment, "quiet", {"train_key": "k"}):
            tracking.log_dataset(info, "ds")
            tracking.log_classifier(_classifier(), metadata={"classes": ["a", "b"], "num_frames": T, "image_size": S})
    said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert not [m for m in said if "dataset source" in m or "integer column" in m], said
    out = capfd.readouterr()
    assert "CloudPickle" not in out.err + out.out and "Downloading artifacts" not in out.err + out.out


def test_every_registered_version_carries_its_model_card(tmp_path):
    """The card (tasks/tracking/card.py) from what the train stage logs: classes, dataset fingerprint and clips per
    split, the recipe, val/test scores with their intervals beside the baseline's, how to call it, and the champion
    rule as the registry applies it; on both registered models, with the registered models' descriptions."""
    from mlflow import MlflowClient

    from tests.support.registry import CLASSES, register_trained, store_config

    cfg = store_config(tmp_path / "store")
    register_trained(cfg, score=0.8, baseline=0.6, test_f1=0.75)
    under, _ = register_trained(cfg, score=0.5, baseline=0.6)
    assert under.decision == "below_baseline"
    client = MlflowClient()
    for name in ("clf", "clf-video"):
        v1 = client.get_model_version(name, "1")
        text, tags = v1.description, v1.tags
        assert all(f"`{c}`" in text for c in CLASSES) and "fp0123" in text and "train 30, val 12, test 12" in text
        assert "Preset `frame-mlp`, input `diff (chosen by train.input auto on validation)`" in text
        assert "| val smoothed macro F1 (champion score) | 0.800 |  | 0.600 |" in text
        assert "| test macro F1 | 0.750 | [0.550, 0.850] | 0.550 |" in text
        assert tracking.CHAMPION_RULE in text and "first_champion" in text
        assert f"vivit predict clip.mp4 videos/ --model models:/clf/1 --tracking-uri {cfg.tracking_uri}" in text
        assert "mlflow.pyfunc.load_model('models:/clf-video/1')" in text and "/invocations" in text
        assert json.loads(tags["card.classes"]) == CLASSES and tags["card.dataset_fingerprint"] == "fp0123"
        assert (tags["card.test_f1"], tags["card.test_f1_ci"], tags["card.baseline_val_f1"]) == \
               ("0.7500", "[0.550, 0.850]", "0.6000")
        v2 = client.get_model_version(name, "2")
        assert "below_baseline" in v2.description and "below the baseline's 0.600" in v2.description
        described = client.get_registered_model(name).description
        assert tracking.CHAMPION_RULE in described and "`@champion` = v1" in described
        assert "`@challenger` = v2" in described and "Latest version v2" in described
    # the rule the card states is the one the registry applies
    assert "strictly above the baseline's validation macro F1" in tracking.CHAMPION_RULE
    assert tracking.SELECTION_METRIC in tracking.CHAMPION_RULE and tracking.BASELINE_METRIC in tracking.CHAMPION_RULE


def test_a_reused_version_registered_before_model_cards_gets_its_card(store):
    """The pipeline reusing a run whose version predates the cards (no description) writes them then."""
    from mlflow import MlflowClient

    _log_version(store, 0.7)
    client = MlflowClient()
    for name in (store.model_name, store.model_name + tracking.VIDEO_SUFFIX):
        client.update_model_version(name, "1", description="")  # as an older version registered it
        assert not client.get_model_version(name, "1").description
    assert tracking.find_reusable_run(store.experiment, "k", store.model_name)["version"] == 1
    for name in (store.model_name, store.model_name + tracking.VIDEO_SUFFIX):
        assert tracking.CHAMPION_RULE in client.get_model_version(name, "1").description
