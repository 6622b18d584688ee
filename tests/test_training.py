"""The training loop on datasets the tests write in the frames stage's format: resume after a crash equals an
uninterrupted run, class balancing, empty splits, the callback contract, and temporal sensitivity (a ViViT learns
frame order, the same model fed one frame cannot)."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from model.data import balanced_class_weights
from model.dataset import load_dataset
from model.predict import SingleFrame, VideoClassifier, predict_proba
from model.training import TrainOptions, TrainResult, fit, load_best, training_fingerprint
from model.views import ViewSpec
from tasks.lib.config import PipelineConfig
from tests.support.tiny_dataset import noise_dataset, temporal_order_dataset


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def small_ds(tmp_path_factory):
    """About 2:1 classes, like the default data."""
    root = tmp_path_factory.mktemp("small")
    return noise_dataset(root, counts={"train": [12, 6], "val": [4, 4], "test": [3, 3]}, num_frames=4, size=32,
                         classes=["dribbling basketball", "dunking basketball"])


def opts(**kw) -> TrainOptions:
    """Small-data options: the linear-embedding preset on RGB (these datasets' classes differ in brightness, which
    frame differences cannot see), one view of every stored frame, raw val F1 selection from the first epoch."""
    base = dict(model="vivit-fe-tiny", input="rgb", view_frames=4, test_views=1, selection_smoothing=0.0,
                min_epochs=0, epochs=4, batch_size=4, lr=1e-3, warmup_epochs=1.0, patience=None)
    return TrainOptions(**(base | kw))


class Crash(RuntimeError):
    pass


class Recorder:
    def __init__(self, crash_after: int | None = None) -> None:
        self.epochs: list[tuple[int, dict]] = []
        self.ended: list[TrainResult] = []
        self.crash_after = crash_after

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append((epoch, metrics))
        if epoch == self.crash_after:
            raise Crash(f"simulated crash after epoch {epoch}")

    def on_train_end(self, result):
        self.ended.append(result)


def _without_time(history):
    return [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in history]


def test_the_config_section_is_the_training_options():
    """One definition: the YAML's ``train:`` section is :class:`TrainOptions` itself, and the options that only
    change how a run executes are left out of what determines it."""
    from model.options import EXECUTION_ONLY

    cfg = PipelineConfig()
    assert type(cfg.train) is TrainOptions
    assert set(cfg.train.determining()) == set(TrainOptions.model_fields) - EXECUTION_ONLY
    with pytest.raises(ValueError, match="did you mean"):
        TrainOptions(model="vivit-fe-tny")
    with pytest.raises(ValueError):
        TrainOptions(class_balance="oversample")  # type: ignore[arg-type]
    for removed in ({"diff_gap": 2}, {"class_balance": "sampler"}):  # removed options
        with pytest.raises(ValueError):
            TrainOptions(**removed)
    with pytest.raises(ValueError, match="view_frames"):
        PipelineConfig.model_validate({"frames": {"num_frames": 16}, "train": {"view_frames": 16, "input": "diff"}})


def test_resume_after_crash_equals_uninterrupted_run(small_ds, tmp_path):
    straight_cb = Recorder()
    straight = fit(small_ds, opts(), work_dir=tmp_path / "straight", callback=straight_cb)

    crash_cb = Recorder(crash_after=2)
    with pytest.raises(Crash):
        fit(small_ds, opts(), work_dir=tmp_path / "resumed", callback=crash_cb)
    assert (tmp_path / "resumed" / "last.pt").is_file()
    ckpt = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert ckpt["state"]["epoch"] == 2 and {"model", "optimizer", "scheduler", "rng", "state", "fingerprint"} <= set(ckpt)

    resumed_cb = Recorder()
    resumed = fit(small_ds, opts(), work_dir=tmp_path / "resumed", callback=resumed_cb)
    assert resumed.resumed_from_epoch == 2
    assert [e for e, _ in resumed_cb.epochs] == [3, 4]
    assert _without_time(resumed.history) == _without_time(straight.history)
    assert resumed.epoch_reports == straight.epoch_reports and len(resumed.epoch_reports) == 4
    for (k, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k
    last_a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    last_b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(last_a[k], last_b[k]) for k in last_a)
    assert resumed.test_metrics == straight.test_metrics
    assert resumed.best_epoch == straight.best_epoch and resumed.best_val_f1 == straight.best_val_f1

    # a finished run resumes to the same result without training again
    again_cb = Recorder()
    again = fit(small_ds, opts(), work_dir=tmp_path / "resumed", callback=again_cb)
    assert again_cb.epochs == [] and again.test_metrics == straight.test_metrics
    # other options: the checkpoint is not theirs, so training starts over
    other = fit(small_ds, opts(lr=2e-3, epochs=1), work_dir=tmp_path / "resumed")
    assert other.resumed_from_epoch == 0 and len(other.history) == 1


def test_result_metrics_and_callback(small_ds, tmp_path):
    cb = Recorder()
    result = fit(small_ds, opts(epochs=2), work_dir=tmp_path, callback=cb)
    assert [e for e, _ in cb.epochs] == [1, 2] and cb.ended == [result]
    metrics = cb.epochs[-1][1]
    expected = {"train_loss", "train_accuracy", "train_f1", "val_loss", "val_accuracy", "val_f1", "val_auc", "lr",
                "epoch_seconds"}
    expected |= {f"{split}_{m}_{c}" for split in ("train", "val") for m in ("precision", "recall")
                 for c in ("dribbling_basketball", "dunking_basketball")}
    assert expected <= set(metrics)
    # per epoch, the confusion matrices of both splits (18 train clips, 8 val clips)
    assert [r["epoch"] for r in result.epoch_reports] == [1, 2]
    for r in result.epoch_reports:
        assert sum(map(sum, r["train"]["confusion_matrix"])) == 18 and sum(map(sum, r["val"]["confusion_matrix"])) == 8
        assert set(r["val"]["per_class"]) == {"dribbling basketball", "dunking basketball"}
    last = result.epoch_reports[-1]["val"]
    assert metrics["val_recall_dunking_basketball"] == pytest.approx(last["per_class"]["dunking basketball"]["recall"])
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert result.classes == ["dribbling basketball", "dunking basketball"]
    assert (result.num_frames, result.image_size, result.preset) == (4, 32, "vivit-fe-tiny")
    assert not result.model.training and next(result.model.parameters()).device.type == "cpu"
    assert result.checkpoint_path == tmp_path / "best.pt" and result.checkpoint_path.is_file()
    test = result.test_metrics
    assert {"accuracy", "f1", "loss", "auc", "confusion_matrix", "per_class"} <= set(test)
    assert sum(map(sum, test["confusion_matrix"])) == 6
    assert set(test["per_class"]["dunking basketball"]) == {"precision", "recall", "f1", "support"}
    assert result.val_metrics["f1"] == pytest.approx(result.best_val_f1)
    assert result.history[result.best_epoch - 1]["val_f1"] == pytest.approx(result.best_val_f1)
    # per-clip test predictions agree with the report, and carry the positive-class probability (2 classes)
    pred = result.test_predictions
    assert list(pred.columns) == ["clip_id", "label", "predicted", "correct", "p_dribbling basketball",
                                  "p_dunking basketball", "p_positive"]
    assert len(pred) == 6 and pred["clip_id"].is_unique
    np.testing.assert_allclose(pred[["p_dribbling basketball", "p_dunking basketball"]].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(pred["p_positive"], pred["p_dunking basketball"])
    assert pred["correct"].mean() == pytest.approx(test["accuracy"])
    assert ((pred["p_positive"] > 0.5) == (pred["predicted"] == "dunking basketball")).all()

    # best.pt rebuilds the same network, and the classifier gives the same probabilities
    net, meta = load_best(result.checkpoint_path)
    assert meta["classes"] == result.classes and meta["epoch"] == result.best_epoch
    frames = np.random.default_rng(0).integers(0, 256, (3, 4, 32, 32, 3), dtype=np.uint8)
    clf = VideoClassifier(result.model, classes=result.classes, num_frames=4, image_size=32)
    np.testing.assert_allclose(predict_proba(net, frames), predict_proba(clf, frames), rtol=1e-5, atol=1e-6)


def test_callback_methods_are_optional_and_empty_test_split_is_reported(tmp_path):
    root = noise_dataset(tmp_path / "ds", counts={"train": [6, 3], "val": [2, 2]}, num_frames=4, size=32)

    class OnlyEpochs:
        seen = 0

        def on_epoch_end(self, epoch, metrics):
            OnlyEpochs.seen += 1

    result = fit(root, opts(epochs=1, model="frame-mlp", class_balance="none"), work_dir=tmp_path / "w",
                 callback=OnlyEpochs())
    assert OnlyEpochs.seen == 1
    assert result.test_metrics["num_samples"] == 0 and "empty" in result.test_metrics["note"]
    assert any("test split is empty" in n for n in result.notes)


def test_class_weights():
    labels = np.array([0] * 8 + [1] * 4 + [2] * 2)
    w = balanced_class_weights(labels, 4)  # class 3 absent
    from sklearn.utils.class_weight import compute_class_weight

    np.testing.assert_allclose(w[:3].numpy(), compute_class_weight("balanced", classes=np.arange(3), y=labels), rtol=1e-6)
    assert w[3] == 0
    # the weighted loss makes each class count the same in total
    per_class_total = [w[c].item() * (labels == c).sum() for c in range(3)]
    assert np.allclose(per_class_total, per_class_total[0])


def test_dataset_contract_checked(tmp_path):
    root = noise_dataset(tmp_path, counts={"train": [2, 2]}, num_frames=4, size=32)
    info = load_dataset(root)
    assert info.classes == ["class 0", "class 1"] and (info.num_frames, info.image_size) == (4, 32)
    import pandas as pd

    df = pd.read_parquet(root / "manifest.parquet")
    df.loc[0, "label_index"] = 1 - df.loc[0, "label_index"]
    df.to_parquet(root / "manifest.parquet")
    with pytest.raises(ValueError, match="disagree"):
        load_dataset(root)
    with pytest.raises(ValueError, match="no manifest"):
        load_dataset(tmp_path / "nothing")


def test_temporal_sensitivity(tmp_path):
    """Only frame order decides the label (a bar moving down vs the same clip reversed; every single frame has the
    same distribution in both classes). The default ViViT preset learns it; the same model fed the middle frame
    only stays at chance."""
    root = temporal_order_dataset(tmp_path / "ds", per_class={"train": 40, "val": 40, "test": 8}, num_frames=8, size=32)
    common = dict(epochs=8, batch_size=16, lr=1e-3, warmup_epochs=1.0, augment=False, patience=None, view_frames=8)
    video = fit(root, opts(**common), work_dir=tmp_path / "video")
    frame = fit(root, opts(**common, single_frame=True), work_dir=tmp_path / "frame")
    assert isinstance(frame.model, SingleFrame)
    video_acc = max(h["val_accuracy"] for h in video.history)
    frame_acc = [h["val_accuracy"] for h in frame.history]
    assert video.val_metrics["accuracy"] >= 0.9, video.history
    assert video_acc >= 0.9
    # 80 balanced val clips: chance is 0.5 +- 0.056 (1 sd); the single-frame model never gets clearly above it
    assert max(frame_acc) <= 0.7, frame_acc
    assert frame.val_metrics["accuracy"] <= 0.7


@pytest.mark.slow
@pytest.mark.skipif(not any(shutil.which(c) for c in ("cc", "gcc", "clang")), reason="torch.compile on CPU needs a C compiler")
def test_compile_option_trains_and_reports_what_the_plain_network_computes(tmp_path):
    """``train.compile: true`` runs through torch.compile (Inductor). Its dropout draws differ from eager mode, so
    the runs are not comparable step by step; what must hold is that the metrics it reports and the best.pt it
    writes belong to the same function: the plain network rebuilt from best.pt gives the reported val metrics."""
    from torch.utils.data import DataLoader

    from model.data import ClipDataset
    from model.dataset import load_dataset
    from model.training import evaluate

    root = noise_dataset(tmp_path / "ds", counts={"train": [6, 3], "val": [3, 3], "test": [2, 2]}, num_frames=4, size=32)
    result = fit(root, opts(model="vivit-joint-tiny", epochs=2, compile=True), work_dir=tmp_path / "compiled")
    assert len(result.history) == 2 and all(math.isfinite(h["train_loss"]) for h in result.history)
    net, _ = load_best(result.checkpoint_path)
    assert not hasattr(net, "_orig_mod")
    info = load_dataset(root)
    view = ViewSpec(num_frames=4, input="rgb", test_views=1)
    val = ClipDataset(root, info.split("val"), num_frames=4, image_size=32, view=view, seed=0)
    eager = evaluate(net, DataLoader(val, batch_size=4), torch.device("cpu"), info.classes, view)
    assert eager["loss"] == pytest.approx(result.val_metrics["loss"], rel=1e-4)
    assert eager["accuracy"] == result.val_metrics["accuracy"]


def test_three_classes_softmax_report_without_binary_extras(tmp_path):
    """K > 2: softmax over all classes, a K x K confusion matrix, no ROC-AUC and no positive-class column."""
    root = noise_dataset(tmp_path / "ds", counts={"train": [3, 3, 2], "val": [2, 1, 1], "test": [1, 2, 1]},
                         num_frames=4, size=32)
    result = fit(root, opts(epochs=1, model="vivit-joint-tiny"), work_dir=tmp_path / "w")
    assert result.classes == ["class 0", "class 1", "class 2"]
    assert "val_auc" not in result.history[0] and result.test_metrics["auc"] is None
    assert np.array(result.test_metrics["confusion_matrix"]).shape == (3, 3)
    assert np.array(result.epoch_reports[0]["train"]["confusion_matrix"]).sum() == 8
    pred = result.test_predictions
    assert "p_positive" not in pred.columns and len(pred) == 4
    np.testing.assert_allclose(pred[["p_class 0", "p_class 1", "p_class 2"]].sum(axis=1), 1.0, rtol=1e-5)


def test_default_recipe_learns_motion_from_frame_differences(tmp_path):
    """The default preset on frame differences (one of auto's two candidates), random temporal views and two test
    views learn the direction of motion, which no single frame shows."""
    root = temporal_order_dataset(tmp_path / "ds", per_class={"train": 32, "val": 24, "test": 8}, num_frames=10, size=32)
    defaults = TrainOptions()
    assert (defaults.model, defaults.input, defaults.selection) == ("vivit-fe-conv-tiny", "auto", "best_val")
    result = fit(root, TrainOptions(input="diff", view_frames=8, epochs=6, batch_size=16, lr=1e-3, warmup_epochs=1.0,
                                    augment=False, min_epochs=2), work_dir=tmp_path / "w")
    assert result.view == ViewSpec(num_frames=8, input="diff", test_views=2)
    assert result.best_epoch >= 2
    assert result.val_metrics["accuracy"] >= 0.9, result.history
    lo, hi = result.val_metrics["accuracy_ci"]
    assert lo <= result.val_metrics["accuracy"] <= hi and hi - lo < 0.3
    net, meta = load_best(result.checkpoint_path)
    assert meta["view"] == result.view


def test_selection_smooths_the_val_score_and_waits_for_min_epochs():
    from model.training import TrainState

    o = TrainOptions(selection="best_val", selection_smoothing=0.5, min_epochs=3, patience=2, epochs=20)
    s = TrainState()
    # epoch 1 is a lucky spike before min_epochs: never selected
    assert [s.observe(e, f1, 1.0, o) for e, f1 in [(1, 0.9), (2, 0.5)]] == [False, False]
    assert s.observe(3, 0.6, 1.0, o) and s.best_epoch == 3  # 0.5*0.7 + 0.5*0.6
    assert s.best_score == pytest.approx(0.65) and s.best_val_f1 == 0.6
    # one lucky epoch moves the smoothed score only half-way; two worse ones in a row stop training (patience 2)
    assert s.observe(4, 0.9, 1.0, o) and s.best_score == pytest.approx(0.775)
    assert not s.observe(5, 0.5, 1.0, o) and not s.stopped_early
    assert not s.observe(6, 0.5, 1.0, o) and s.stopped_early
    # ties go to the lower loss
    t = TrainState()
    o0 = TrainOptions(selection="best_val", selection_smoothing=0.0, min_epochs=0)
    assert t.observe(1, 0.7, 0.6, o0) and not t.observe(2, 0.7, 0.6, o0) and t.observe(3, 0.7, 0.5, o0)


def test_final_selection_keeps_the_last_epoch_and_scores_it_smoothed():
    from model.training import TrainState

    s = TrainState()
    o = TrainOptions(selection="final", selection_smoothing=0.5, patience=1, min_epochs=5, epochs=4)
    assert all(s.observe(e, f1, 1.0, o) for e, f1 in [(1, 0.9), (2, 0.5), (3, 0.5), (4, 0.7)])
    assert s.best_epoch == 4 and s.best_val_f1 == 0.7 and not s.stopped_early  # no patience, no min_epochs
    assert s.best_score == pytest.approx(0.5 * (0.5 * (0.5 * 0.9 + 0.25) + 0.25) + 0.35)


def test_auto_input_probes_both_inputs_and_keeps_the_one_validation_prefers(tmp_path):
    """``train.input: auto`` (the default): where only brightness carries the class, frame differences (which
    cancel it) cannot learn and RGB can; the probe must see that on validation and continue RGB. The decision is
    recorded, the kept run is the plain RGB run continued, and a re-run resumes it without probing again."""
    import json

    root = noise_dataset(tmp_path / "ds", counts={"train": [24, 24], "val": [16, 16], "test": [8, 8]}, num_frames=5)
    o = TrainOptions(view_frames=4, epochs=5, input_probe=0.4, batch_size=16, lr=2e-3, warmup_epochs=0.5,
                     augment=False, patience=None)
    assert o.input == "auto" and o.probe_epochs == 2 and o.inputs == ("diff", "rgb")
    seen = []

    class Probe:
        def on_probe_epoch(self, candidate, epoch, probe_epochs, metrics):
            seen.append((candidate, epoch, probe_epochs, "val_f1_smoothed" in metrics))

    work = tmp_path / "w"
    result = fit(root, o, work_dir=work, callback=Probe())
    assert seen == [("diff", 1, 2, True), ("diff", 2, 2, True), ("rgb", 1, 2, True), ("rgb", 2, 2, True)]
    choice = result.input_choice
    assert choice["chosen"] == "rgb" and result.view.input == "rgb", choice
    assert choice["candidates"]["rgb"]["val_score"] > choice["candidates"]["diff"]["val_score"] + 0.2, choice
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4, 5]  # the kept candidate's whole curve
    assert result.val_metrics["f1"] >= 0.9 and not any("resumed" in n for n in result.notes)
    assert any("auto chose rgb" in n for n in result.notes)
    saved = json.loads((work / "input.json").read_text())
    assert saved["chosen"] == "rgb" and saved["fingerprint"] == training_fingerprint(o, 0, load_dataset(root))
    assert (work / "diff" / "last.pt").is_file() and (work / "rgb" / "best.pt").is_file()
    # the candidate is exactly the plain rgb run: same training fingerprint, so its checkpoint is that run's
    assert torch.load(work / "rgb" / "last.pt", weights_only=True)["fingerprint"] == training_fingerprint(
        o.model_copy(update={"input": "rgb"}), 0, load_dataset(root))
    seen.clear()
    again = fit(root, o, work_dir=work, callback=Probe())
    assert seen == [] and again.input_choice["chosen"] == "rgb" and again.resumed_from_epoch == 5
    assert again.best_epoch == result.best_epoch


def test_auto_input_follows_a_pretrained_start_to_rgb():
    assert TrainOptions(init="some/checkpoint").input == "rgb"
    assert TrainOptions(init="some/checkpoint", input="auto").input == "rgb"
    assert "input_probe" not in TrainOptions(input="rgb").determining()
    assert TrainOptions().determining()["input_probe"] == 0.2
