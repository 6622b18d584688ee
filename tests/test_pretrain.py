"""The pretrain stage: tube masking, the target and the loss (model/pretrain.py), the encoder seeing nothing of the
hidden patches, resume after an interruption, fine-tuning from the encoder, the input decision on train/val, and
the stage itself (flow, skip, link to the train run, kill -9 then re-run) on tiny datasets."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from model.options import PretrainOptions, TrainOptions
from model.pretrain import (
    MaskedAutoencoder, build_autoencoder, load_encoder, masked_loss, patchify, pretrain, reconstruction_target,
    tube_mask, unpatchify,
)
from tests.support.tiny_dataset import noise_dataset, temporal_order_dataset

ROOT = Path(__file__).resolve().parents[1]
# tiny clips: 8 stored frames of 32 px; views of 4 positions -> 2 x 4 x 4 tokens of the default preset
TRAIN = dict(view_frames=4, batch_size=4, epochs=2, patience=None)
PRE = dict(epochs=2, batch_size=4, figure_clips=2, warmup_epochs=0)


@pytest.fixture
def tiny(tmp_path, torch_one_thread):
    return temporal_order_dataset(tmp_path / "data" / "dataset", per_class={"train": 4, "val": 2, "test": 2},
                                  num_frames=8, size=32)


def _mae(input_form: str = "diff") -> MaskedAutoencoder:
    torch.manual_seed(0)
    return build_autoencoder(TrainOptions(input=input_form, view_frames=4), PretrainOptions(), image_size=32)


def test_tube_mask_hides_the_ratio_of_patches_and_keeps_at_least_one():
    keep, masked = tube_mask(5, 64, 0.9, generator=torch.Generator().manual_seed(0))
    assert keep.shape == (5, 6) and masked.shape == (5, 64)
    assert (masked.sum(1) == 58).all() and not masked.gather(1, keep).any()
    assert (keep.diff(dim=1) > 0).all()  # sorted, distinct
    keep1, masked1 = tube_mask(2, 4, 0.99)
    assert keep1.shape == (2, 1) and (masked1.sum(1) == 3).all()
    with pytest.raises(ValueError, match="mask ratio"):
        tube_mask(1, 4, 1.0)


def test_target_is_normalised_per_patch_and_still_differences_stay_near_zero():
    x = torch.rand(2, 4, 3, 16, 16)
    assert torch.equal(unpatchify(patchify(x, 2, 8), 2, 8, 2), x)
    rgb = reconstruction_target(x * 5 + 3, 2, 8, "rgb")
    assert rgb.shape == (2, 2, 4, 2 * 8 * 8 * 3)
    assert rgb.mean(-1).abs().max() < 1e-5 and (rgb.std(-1, unbiased=False) - 1).abs().max() < 1e-3
    still = torch.zeros(1, 4, 3, 16, 16)
    still[..., :8, :8] = 0.04 * torch.randn(1, 4, 3, 8, 8)  # quantisation noise of a still patch
    diff = reconstruction_target(still, 2, 8, "diff")
    assert diff.abs().max() < 0.2  # eps 1 for differences: the noise is not blown up to unit variance


def test_loss_reads_only_the_hidden_tubes():
    target = torch.randn(2, 2, 4, 10)
    masked = torch.tensor([[True, False, True, False], [False, False, False, True]])
    pred = target.clone()
    pred[:, :, 1] += 100.0  # a visible tube of the first clip, and one of the second: ignored
    assert masked_loss(pred, target, masked) == 0
    pred[1, :, 3] += 1.0
    assert masked_loss(pred, target, masked) == pytest.approx(2 / 6)  # 2 of 6 hidden (clip, step, tube) rows off by 1


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_the_encoder_sees_nothing_of_the_hidden_patches(pool, torch_one_thread):
    """Each visible tube is tokenised alone: changing every hidden pixel changes no visible token (the conv
    stem's receptive field would otherwise reach into the neighbours)."""
    from dataclasses import replace

    from model.vivit import ViViT

    mae = _mae()
    if pool == "cls":
        mae = MaskedAutoencoder(ViViT(replace(mae.encoder.config, pool="cls")))
    mae.eval()
    x = torch.randn(2, 4, 3, 32, 32)
    keep, masked = tube_mask(2, 16, 0.75, generator=torch.Generator().manual_seed(1))
    y = x.clone()
    hidden = masked.view(2, 4, 4).repeat_interleave(8, 1).repeat_interleave(8, 2)  # (B, H, W) pixels of hidden patches
    y[hidden[:, None, None].expand_as(y)] = 7.0
    with torch.no_grad():
        a, b = mae.encode_visible(x, keep), mae.encode_visible(y, keep)
        assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)
        assert mae(x, keep).shape == (2, 2, 16, 2 * 8 * 8 * 3)


def test_pretraining_resumes_to_the_same_encoder_and_fit_starts_from_it(tiny, tmp_path):
    from model.dataset import load_dataset
    from model.training import fit
    from tasks.lib.pretraining import split_clips

    info = load_dataset(tiny)
    clips = split_clips(info, ["train", "val"])
    assert clips == [info.path / p for p in info.manifest.query("split != 'test'")["frames_path"]]
    with pytest.raises(ValueError, match="test"):
        split_clips(info, ["train", "test"])
    train, opts = TrainOptions(input="diff", **TRAIN), PretrainOptions(**{**PRE, "epochs": 3})
    kw = dict(num_frames=8, image_size=32, seed=0, fingerprint="k")
    whole = pretrain(clips, train, opts, work_dir=tmp_path / "whole", **kw)
    assert [h["epoch"] for h in whole.history] == [1, 2, 3] and whole.examples["target"].shape == (2, 4, 32, 32, 3)

    class Stop(Exception):
        pass

    class KillAfter2:
        def on_epoch_end(self, epoch, metrics):
            if epoch == 2:
                raise Stop

    with pytest.raises(Stop):
        pretrain(clips, train, opts, work_dir=tmp_path / "cut", callback=KillAfter2(), **kw)
    assert not (tmp_path / "cut" / "encoder.pt").exists()
    again = pretrain(clips, train, opts, work_dir=tmp_path / "cut", **kw)
    assert again.resumed_from_epoch == 2 and len(again.history) == 3
    w1 = torch.load(whole.encoder_path, weights_only=True)["model"]
    w2 = torch.load(again.encoder_path, weights_only=True)["model"]
    assert w1.keys() == w2.keys() and not any(k.startswith("head.") for k in w1)
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)  # resumed == uninterrupted
    other = pretrain(clips, train, opts, work_dir=tmp_path / "cut", **{**kw, "fingerprint": "other"})
    assert other.resumed_from_epoch == 0  # another fingerprint's last.pt is not resumed

    # fine-tuning: train.init is the folder, its input the pretrained one; the weights are the encoder's
    opts_ft = TrainOptions(input="diff", init=str(tmp_path / "whole"), **TRAIN)
    assert opts_ft.input == "diff"  # an RGB checkpoint would force rgb; our own pretraining keeps its form
    from model.presets import get_config

    net, notes = load_encoder(tmp_path / "whole", get_config("vivit-fe-conv-tiny", num_classes=2, num_frames=4,
                                                            image_size=32))
    assert "pretrain stage's encoder" in notes[0]
    assert torch.equal(net.state_dict()["temporal.blocks.0.attn.qkv.weight"], w1["temporal.blocks.0.attn.qkv.weight"])
    with pytest.raises(ValueError, match="does not fit this training.*num_frames"):
        load_encoder(tmp_path / "whole", get_config("vivit-fe-conv-tiny", num_classes=2, num_frames=8, image_size=32))
    result = fit(info, opts_ft.model_copy(update={"epochs": 1}), work_dir=tmp_path / "ft")
    assert any("pretrain stage's encoder" in n for n in result.notes) and result.view.input == "diff"
    frozen = fit(info, opts_ft.model_copy(update={"epochs": 1, "freeze": "backbone"}), work_dir=tmp_path / "fz")
    assert torch.equal(frozen.model.state_dict()["temporal.blocks.0.attn.qkv.weight"],
                       w1["temporal.blocks.0.attn.qkv.weight"])  # train.freeze applies to the pretrained encoder


def test_the_input_form_is_decided_on_train_and_val(tmp_path, torch_one_thread):
    from model.dataset import load_dataset
    from tasks.lib.pretraining import decide_input

    bright = load_dataset(noise_dataset(tmp_path / "n", counts={"train": [8, 8], "val": [4, 4], "test": [2, 2]}))
    form, why = decide_input(bright, TrainOptions())
    assert form == "rgb" and why["val_f1"]["rgb"] > why["val_f1"]["diff"]  # a brightness class: appearance
    assert decide_input(bright, TrainOptions(input="diff"))[0] == "diff"
    no_val = load_dataset(noise_dataset(tmp_path / "v", counts={"train": [4, 4], "test": [1, 1]}))
    assert decide_input(no_val, TrainOptions())[0] == "rgb"


def test_config_keeps_pretraining_opt_in_and_off_test():
    from tasks.lib.config import ConfigError, load_config
    from tasks.lib.pretraining import uses_pretraining

    cfg = load_config(None, [])
    assert not cfg.pretrain.enabled and not uses_pretraining(cfg.train, cfg.pretrain)
    on = load_config(None, ["pretrain.enabled=true"])
    assert uses_pretraining(on.train, on.pretrain) and on.stage("train").pretrain.enabled
    assert not uses_pretraining(on.train.model_copy(update={"init": "i3d-kinetics400"}), on.pretrain)
    assert load_config(None, ["train.init=pretrain"]).train.input == "auto"  # decided by the stage, not forced rgb
    with pytest.raises(ConfigError, match="pretrain.splits"):
        load_config(None, ["pretrain.splits=[train, test]"])
    with pytest.raises(ConfigError, match="factorised-encoder presets"):
        load_config(None, ["pretrain.enabled=true", "train.model=frame-mlp"])


# -- the stage -----------------------------------------------------------------------------------------------------
def _stage_config(tmp_path: Path, **pretrain):
    from tasks.lib.config import PipelineConfig

    return PipelineConfig.model_validate({
        "data_dir": str(tmp_path / "data"), "frames": {"num_frames": 8, "size": 32},
        "train": {**TRAIN, "epochs": 1, "batch_size": 8},
        "pretrain": {**PRE, "enabled": True, **pretrain},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "pt", "model_name": "pt"},
    })


def test_stage_logs_its_run_is_skipped_when_done_and_the_train_run_links_to_it(prefect_harness, tiny, tmp_path):
    from mlflow import MlflowClient

    from flows.pipeline import pipeline_flow
    from flows.pretrain import pretrain_flow
    from flows.train import train_flow
    from tasks.lib.errors import StageFailed

    cfg = _stage_config(tmp_path)
    with pytest.raises(StageFailed, match="run `vivit pretrain` first") as missing:  # train before pretrain
        train_flow(cfg.stage("train"))
    assert missing.value.user_error
    first = pretrain_flow(cfg.stage("pretrain"))
    folder = Path(first.result["folder"])
    assert not first.failed and not first.result["reused"] and first.counts == {"clips": 12, "epochs": 2}
    assert (folder / "encoder.pt").is_file() and first.result["input"] in ("rgb", "diff")
    client = MlflowClient(cfg.mlflow.tracking_uri)
    run = client.get_run(first.result["run_id"])
    assert run.data.params["dataset_fingerprint"] == json.loads((tiny / "dataset.json").read_text())["fingerprint"]
    assert run.data.params["pretrain.mask_ratio"] == "0.9" and run.data.tags["pretrain_key"] == first.result["key"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "pretrain/loss")] == [1, 2]
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/pretrain_loss.png", "plots/reconstructions.png"}

    mtimes = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    again = pretrain_flow(cfg.stage("pretrain"))  # same dataset and options: skipped
    assert again.result["reused"] and "reused" in again.message
    assert mtimes == {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}

    # vivit run --stages pretrain,train with pretrain.enabled: pretrain (skipped: done), then train from the encoder
    reran, trained = pipeline_flow(cfg, stages=["pretrain", "train"])
    assert reran.result["reused"] and trained.stage == "train"
    run = client.get_run(trained.result["run_id"])
    assert run.data.tags["pretrain_run_id"] == first.result["run_id"]
    assert run.data.params["pretrain.run_id"] == first.result["run_id"]
    assert run.data.params["train.init"] == str(folder.resolve())
    version = client.get_model_version("pt", str(trained.result["registry"]["version"]))
    assert "12 clips (train+val of dataset" in version.tags["pretrained_on"]
    assert version.tags["pretrain_run_id"] == first.result["run_id"]


KILL_AFTER_FIRST_EPOCH = 300  # seconds to wait for last.pt (imports on a loaded machine)


def test_a_killed_pretraining_resumes_on_the_next_run(prefect_harness, tiny, tmp_path):
    """kill -9 of `vivit pretrain` after its first epoch: the re-run continues from last.pt (not from scratch),
    finishes, and the killed MLflow run is marked killed."""
    import yaml
    from mlflow import MlflowClient
    from prefect.settings import PREFECT_API_URL

    from flows.pretrain import pretrain_flow

    cfg = _stage_config(tmp_path, epochs=6)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": PREFECT_API_URL.value(),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "pretrain", "--config", str(path)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + KILL_AFTER_FIRST_EPOCH
        last = list((tmp_path / "data" / "pretrain").glob("*/last.pt")) if (tmp_path / "data" / "pretrain").is_dir() else []
        while not last and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            last = list((tmp_path / "data" / "pretrain").glob("*/last.pt"))
        assert last, "no epoch finished"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    folder = last[0].parent
    assert not (folder / "encoder.pt").exists()
    done_before = torch.load(last[0], weights_only=True)["epoch"]
    assert 1 <= done_before < 6
    result = pretrain_flow(cfg.stage("pretrain").model_copy(
        update={"pretrain": cfg.pretrain.model_copy(update={"epochs": 6})}))
    assert not result.failed and Path(result.result["folder"]) == folder
    client = MlflowClient(cfg.mlflow.tracking_uri)
    run = client.get_run(result.result["run_id"])
    assert run.data.metrics["pretrain/resumed_from_epoch"] >= done_before
    assert len(client.get_metric_history(run.info.run_id, "pretrain/loss")) == 6  # backfilled
    killed = [r for r in client.search_runs([run.info.experiment_id]) if r.info.run_id != run.info.run_id]
    assert [r.info.status for r in killed] == ["KILLED"]
