"""Pretrained starts (``train.init``) from checkpoints the tests build themselves with transformers'
``save_pretrained``: loaded through the same code path as a hub id, checked to reproduce the source model's
features, then fine-tuned and registered by the real train flow."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from model.presets import get_config  # noqa: E402
from model.pretrained import PretrainedError, build_pretrained, resolve  # noqa: E402

T, S = 4, 32


@pytest.fixture(scope="module")
def vivit_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.VivitConfig(image_size=S, num_frames=T, tubelet_size=[2, 16, 16], hidden_size=32,
                                   num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=5)
    folder = tmp_path_factory.mktemp("vivit")
    model = transformers.VivitForVideoClassification(cfg).eval()
    with torch.no_grad():  # non-trivial values everywhere (HF initialises some to zeros / ones)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def vit_ckpt(tmp_path_factory):
    torch.manual_seed(1)
    cfg = transformers.ViTConfig(image_size=S, patch_size=16, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, hidden_act="gelu_pytorch_tanh",
                                 layer_norm_eps=1e-6)
    folder = tmp_path_factory.mktemp("vit")
    model = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(folder)
    return folder, model


def _preset(name: str, **kw):
    return get_config(name, num_classes=3, num_frames=kw.pop("num_frames", T), image_size=kw.pop("image_size", S), **kw)


def test_a_vivit_checkpoint_computes_the_source_models_features(vivit_ckpt):
    folder, hf = vivit_ckpt
    ours, notes = build_pretrained(str(folder), _preset("vivit-fe-tiny"))
    ours.eval()
    assert ours.config.variant == "joint" and ours.config.dim == 32 and ours.config.depth == 2 and not notes
    assert ours.head.out_features == 3  # a new head for the configured classes
    x = torch.randn(2, T, 3, S, S)
    with torch.no_grad():
        want = hf.vivit(pixel_values=x).last_hidden_state
        got = ours.forward_features(x)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_an_image_vit_initialises_the_factorised_encoder(vit_ckpt):
    folder, hf = vit_ckpt
    frame = torch.randn(2, 3, S, S)
    clip = frame[:, None].expand(-1, T, -1, -1, -1)  # a still video
    with torch.no_grad():
        want = hf(pixel_values=frame).last_hidden_state  # (B, 1 + patches, D)
        for inflation in ("central", "filter"):
            ours, notes = build_pretrained(str(folder), _preset("vivit-fe-tiny"), inflation=inflation)
            ours.eval()
            assert ours.config.variant == "factorised_encoder" and ours.config.temporal_depth == 2 and not notes
            tokens = ours.patch_embed(clip)  # (B, nt, S, D): each tubelet of a still clip = the frame's patch
            torch.testing.assert_close(tokens[:, 0], hf.embeddings.patch_embeddings(frame), atol=1e-5, rtol=1e-4)
            # the spatial transformer is the ViT (mean pooling drops the CLS row, so compare a CLS preset)
        ours, _ = build_pretrained(str(folder), dataclasses.replace(_preset("vivit-fe-tiny"), pool="cls"))
        ours.eval()
        x = torch.cat([ours.cls_token.expand(2, -1, -1), ours.patch_embed(clip)[:, 0]], dim=1) + ours.pos_embed
        torch.testing.assert_close(ours.spatial(x), want, atol=2e-5, rtol=1e-4)
        # another clip size: the position grid is interpolated and the model runs
        big, _ = build_pretrained(str(folder), _preset("vivit-fe-tiny", image_size=64))
        assert big(torch.randn(1, T, 3, 64, 64)).shape == (1, 3)


def test_mismatches_and_hub_access_are_clear_errors(vivit_ckpt, tmp_path, monkeypatch):
    folder, _ = vivit_ckpt
    with pytest.raises(PretrainedError, match=r"expects 4 frames of 32x32, but the dataset stores 8 frames of 32x32"):
        build_pretrained(str(folder), _preset("vivit-fe-tiny", num_frames=8))
    with pytest.raises(PretrainedError, match="neither a checkpoint folder nor"):
        resolve(str(tmp_path / "missing"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(PretrainedError, match="HF_HUB_OFFLINE is set and it is not in the local cache"):
        resolve("nobody-here/no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedError, match="no config.json"):
        build_pretrained(str(tmp_path / "empty"), _preset("vivit-fe-tiny"))


@pytest.mark.slow
def test_a_fine_tune_runs_and_registers(prefect_harness, vivit_ckpt, vit_ckpt, tmp_path):
    from mlflow import MlflowClient

    from flows.train import train_flow
    from tasks.core.config import PipelineConfig
    from tests.support.tiny_dataset import noise_dataset

    for name, (folder, _) in (("vivit", vivit_ckpt), ("vit", vit_ckpt)):
        cfg = PipelineConfig.model_validate({
            "data_dir": str(tmp_path / name),
            "frames": {"num_frames": T, "size": S},
            "train": {"epochs": 2, "batch_size": 4, "patience": None, "init": str(folder), "input": "rgb",
                      "view_frames": T, "test_views": 1, "min_epochs": 0},
            "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "ft", "model_name": name},
        })
        noise_dataset(cfg.dataset_dir, counts={"train": [6, 6], "val": [2, 2], "test": [2, 2]}, num_frames=T, size=S,
                      classes=cfg.classes)
        summary = train_flow(cfg)
        assert not summary["failed"], summary
        res = summary["result"]
        run = MlflowClient(cfg.mlflow.tracking_uri).get_run(res["run_id"])
        assert run.data.params["train.init"] == str(folder) and res["registry"]["aliases"]["champion"] == 1
        from tasks.tracking import load_classifier

        clf = load_classifier(f"models:/{name}@champion", cfg.mlflow.tracking_uri)
        variant = {"vivit": "joint", "vit": "factorised_encoder"}[name]
        assert clf.network.config.variant == variant and clf.network.config.dim == 32
        out = clf(torch.from_numpy(np.zeros((1, T, S, S, 3), np.uint8)))
        assert out.shape == (1, 2)


@pytest.mark.parametrize("spec", ["backbone", 1])
def test_freezing_keeps_the_pretrained_weights(vivit_ckpt, tmp_path, spec, torch_one_thread):
    from model.training import TrainOptions, fit
    from tests.support.tiny_dataset import noise_dataset

    folder, _ = vivit_ckpt
    data = noise_dataset(tmp_path / "data", counts={"train": [4, 4], "val": [2, 2]}, num_frames=T, size=S)
    opts = TrainOptions(epochs=2, batch_size=4, patience=None, init=str(folder), freeze=spec, lr=1e-2, augment=False,
                        input="rgb", view_frames=T, test_views=1, min_epochs=0)
    result = fit(data, opts, work_dir=tmp_path / "run")
    source, _ = build_pretrained(str(folder), _preset("vivit-fe-tiny"))
    trained = dict(result.model.named_parameters())
    same = {n for n, p in source.named_parameters() if torch.equal(p, trained[n])}
    assert any("frozen" in note for note in result.notes)
    if spec == "backbone":
        assert same == {n for n in trained if not n.startswith("head.")}
    else:
        assert {n for n in trained if n.startswith(("patch_embed.", "encoder.blocks.0."))} <= same
        assert "pos_embed" in same and not any(n.startswith("encoder.blocks.1.") for n in same)
    with pytest.raises(PretrainedError, match="only 2 blocks"):
        from model.pretrained import freeze

        freeze(source, 3)


def test_a_pretrained_start_needs_rgb_input(vivit_ckpt):
    from model.training import TrainOptions

    folder, _ = vivit_ckpt
    with pytest.raises(ValueError, match="train.input: rgb"):
        TrainOptions(init=str(folder))  # the default input is frame differences
    assert TrainOptions(init=str(folder), input="rgb").init == str(folder)
