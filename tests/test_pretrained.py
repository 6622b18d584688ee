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
from model.pretrained import PretrainedError, build_pretrained, checkpoint_input, resolve  # noqa: E402
from tests.support.videos import demo_source_fixture  # noqa: E402

T, S = 4, 32
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _jitter(model):
    """Non-trivial values everywhere (HF initialises some to zeros / ones, e.g. VideoMAE's q/v biases)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _videomae_config(**kw):
    return transformers.VideoMAEConfig(image_size=S, patch_size=16, num_frames=T, tubelet_size=2, hidden_size=32,
                                       num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=5,
                                       decoder_hidden_size=16, decoder_num_hidden_layers=1,
                                       decoder_num_attention_heads=2, decoder_intermediate_size=32, **kw)


@pytest.fixture(scope="module")
def videomae_ckpt(tmp_path_factory):
    """The fine-tuned layout (``MCG-NJU/videomae-base-finetuned-kinetics``): mean pooling + fc_norm, a processor
    with ImageNet statistics."""
    torch.manual_seed(2)
    folder = tmp_path_factory.mktemp("videomae")
    model = _jitter(transformers.VideoMAEForVideoClassification(_videomae_config(use_mean_pooling=True)).eval())
    model.save_pretrained(folder)
    # as MCG-NJU's processor files say (transformers' own VideoMAE processor defaults to 0.5/0.5)
    transformers.VideoMAEImageProcessor(size={"shortest_edge": S}, crop_size={"height": S, "width": S},
                                        image_mean=list(IMAGENET[0]), image_std=list(IMAGENET[1])).save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def videomae_pretraining_ckpt(tmp_path_factory):
    """The self-supervised layout (``MCG-NJU/videomae-base``): encoder + decoder, a final LayerNorm on the tokens,
    no processor file (the family's ImageNet statistics apply)."""
    torch.manual_seed(3)
    folder = tmp_path_factory.mktemp("videomae-pt")
    model = _jitter(transformers.VideoMAEForPreTraining(_videomae_config(use_mean_pooling=False)).eval())
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def vivit_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.VivitConfig(image_size=S, num_frames=T, tubelet_size=[2, 16, 16], hidden_size=32,
                                   num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=5)
    folder = tmp_path_factory.mktemp("vivit")
    model = _jitter(transformers.VivitForVideoClassification(cfg).eval())
    model.save_pretrained(folder)
    transformers.VivitImageProcessor().save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def vit_ckpt(tmp_path_factory):
    torch.manual_seed(1)
    cfg = transformers.ViTConfig(image_size=S, patch_size=16, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64)  # HF's defaults: exact GELU, eps 1e-12
    folder = tmp_path_factory.mktemp("vit")
    model = _jitter(transformers.ViTModel(cfg, add_pooling_layer=False).eval())
    model.save_pretrained(folder)
    # a processor with its own statistics: they, not the family's defaults, must reach the model
    transformers.ViTImageProcessor(image_mean=[0.4, 0.3, 0.2], image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)
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


def test_a_videomae_checkpoint_computes_the_source_models_features(videomae_ckpt, videomae_pretraining_ckpt):
    x = torch.randn(2, T, 3, S, S)
    with torch.no_grad():
        # fine-tuned layout: tokens without a final norm, their mean, then fc_norm
        folder, hf = videomae_ckpt
        ours, notes = build_pretrained(str(folder), _preset("vivit-fe-tiny"))
        ours.eval()
        c = ours.config
        assert (c.variant, c.pool, c.fc_norm, c.act, c.dim, c.depth) == ("joint", "mean", True, "gelu", 32, 2)
        assert ours.head.out_features == 3 and not notes
        tokens = hf.videomae(pixel_values=x).last_hidden_state
        torch.testing.assert_close(ours.forward_features(x), tokens, atol=2e-5, rtol=1e-4)
        want = hf.fc_norm(tokens.mean(1))
        torch.testing.assert_close(ours.forward_head(ours.forward_features(x), pre_logits=True), want,
                                   atol=2e-5, rtol=1e-4)
        # pretraining layout (videomae.* keys, a decoder we do not use): a final LayerNorm on the tokens
        folder, hf = videomae_pretraining_ckpt
        ours, _ = build_pretrained(str(folder), _preset("vivit-fe-tiny"))
        ours.eval()
        assert ours.config.fc_norm is False and ours.fc_norm is None
        want = hf.videomae(pixel_values=x).last_hidden_state
        torch.testing.assert_close(ours.forward_features(x), want, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(ours.forward_head(ours.forward_features(x), pre_logits=True), want.mean(1),
                                   atol=2e-5, rtol=1e-4)
        assert ours(x).shape == (2, 3)


def test_the_checkpoint_says_what_it_sees(videomae_ckpt, videomae_pretraining_ckpt, vivit_ckpt, vit_ckpt):
    """Frames, size and mean/std from config.json and preprocessor_config.json, without reading any weights."""
    got = {name: checkpoint_input(str(ckpt[0])) for name, ckpt in
           (("videomae", videomae_ckpt), ("videomae-pt", videomae_pretraining_ckpt), ("vivit", vivit_ckpt),
            ("vit", vit_ckpt))}
    assert (got["videomae"].frames, got["videomae"].size, (got["videomae"].mean, got["videomae"].std)) == (T, S, IMAGENET)
    assert (got["videomae-pt"].mean, got["videomae-pt"].std) == IMAGENET  # no processor file: the family's
    assert (got["vivit"].frames, got["vivit"].mean, got["vivit"].std) == (T, (0.5,) * 3, (0.5,) * 3)
    assert (got["vit"].frames, got["vit"].size, got["vit"].size_fixed) == (None, S, False)
    assert (got["vit"].mean, got["vit"].std) == ((0.4, 0.3, 0.2), (0.2, 0.25, 0.3))


def test_the_pipeline_config_follows_the_checkpoint(videomae_ckpt, vit_ckpt, tmp_path, monkeypatch):
    from tasks.lib.config import ConfigError, load_config

    folder = str(videomae_ckpt[0])
    rgb = ["train.input=rgb", f"train.init={folder}"]
    cfg = load_config(None, rgb)  # frames and size left out: the checkpoint's
    assert (cfg.frames.num_frames, cfg.train.view_frames, cfg.frames.size) == (T, T, S)
    cfg = load_config(None, [*rgb, "frames.num_frames=8", f"train.view_frames={T}", f"frames.size={S}"])
    assert (cfg.frames.num_frames, cfg.train.view_frames) == (8, T)  # more stored frames: views draw from them
    for bad, named in (("train.view_frames=2", "train.view_frames is 2"), ("frames.num_frames=2", "frames.num_frames is 2"),
                       ("frames.size=64", "frames.size is 64")):
        with pytest.raises(ConfigError, match=rf"trained on .*{named}"):
            load_config(None, [*rgb, bad])
    again = type(cfg).model_validate(cfg.model_dump(mode="json"))  # what a Prefect parameter round trip does
    assert (again.frames.num_frames, again.train.view_frames, again.frames.size) == (8, T, S)
    # the train stage run alone (its deployment's form holds only its keys) follows the checkpoint too
    from pydantic import ValidationError

    from tasks.lib.config import TrainStage

    assert TrainStage.model_validate({"train": {"input": "rgb", "init": folder}}).train.view_frames == T
    assert cfg.stage("train").train.view_frames == T
    with pytest.raises(ValidationError, match="train.view_frames is 2"):
        TrainStage.model_validate({"train": {"input": "rgb", "init": folder, "view_frames": 2}})
    # an image ViT: its size unless set (any size loads, the position grid is interpolated); frames are the user's
    vit = ["train.input=rgb", f"train.init={vit_ckpt[0]}"]
    assert load_config(None, vit).frames.size == S and load_config(None, [*vit, "frames.size=64"]).frames.size == 64
    assert load_config(None, vit).train.view_frames == 16
    # a hub id is looked up when the config is read (its config files only), and offline that is a clear error
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ConfigError, match="nobody-here/no-such-model.*HF_HUB_OFFLINE is set"):
        load_config(None, ["train.input=rgb", "train.init=nobody-here/no-such-model"])


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


demo_source = demo_source_fixture(per_class=6, seed=2, width=64, height=48, duration=3.0, clip_len=2.0)


@pytest.mark.slow
def test_fine_tunes_run_end_to_end_through_vivit_run(prefect_harness, demo_source, videomae_ckpt, vivit_ckpt,
                                                     vit_ckpt, tmp_path, capsys):
    """`vivit run` (download from file:// sources -> filter -> frames -> train -> register) from each kind of
    checkpoint, with frames and size left to the checkpoint; the registered model then predicts a clip with
    the checkpoint's normalisation."""
    import json

    import pandas as pd
    import yaml
    from mlflow import MlflowClient

    from flows.cli import main
    from tasks.tracking import load_classifier

    src, csv = demo_source
    config = tmp_path / "ft.yaml"
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"), "annotations": [str(csv)],
        "url_template": f"file://{src}/videos/{{youtube_id}}.mp4",
        "download": {"allow_file_urls": True, "workers": 2, "retries": 0},
        "train": {"input": "rgb", "epochs": 1, "batch_size": 4, "patience": None, "min_epochs": 0, "test_views": 1},
        "mlflow": {"tracking_uri": db, "experiment": "ft"},
    }))
    runs = (("videomae", videomae_ckpt, [], "joint", IMAGENET),
            ("vivit", vivit_ckpt, [], "joint", ((0.5,) * 3, (0.5,) * 3)),
            # an image checkpoint has no frame count: the same stored frames as the video runs, so no data work
            ("vit", vit_ckpt, ["frames.num_frames=4", "train.view_frames=4"], "factorised_encoder",
             ((0.4, 0.3, 0.2), (0.2, 0.25, 0.3))))
    for name, (folder, _), extra, variant, (mean, std) in runs:
        sets = [f"train.init={folder}", f"mlflow.model_name={name}", *extra]
        assert main(["run", "--config", str(config), *[a for kv in sets for a in ("--set", kv)]]) == 0, name
        info = json.loads((tmp_path / "data" / "dataset" / "dataset.json").read_text())
        assert (info["num_frames"], info["size"]) == (T, S)  # the frames stage stored what the checkpoint sees
        clf = load_classifier(f"models:/{name}@challenger", db)  # champion or not: that is the baseline's business
        assert clf.network.config.variant == variant and clf.network.config.dim == 32
        assert (clf.num_frames, clf.image_size, clf.view.mean, clf.view.std) == (T, S, mean, std)
        version = MlflowClient(db).get_model_version_by_alias(name, "challenger")
        assert MlflowClient(db).get_run(version.run_id).data.params["train.init"] == str(folder)
    downloads = pd.read_csv(tmp_path / "data" / "reports" / "download.csv")
    assert set(downloads["status"]) == {"skipped"}  # the later runs reused the first run's data

    clip = sorted((src / "videos").glob("*.mp4"))[0]
    capsys.readouterr()
    # 1-epoch fine-tunes on a few synthetic clips need not beat their baseline: predict with the newest version
    assert main(["predict", "--config", str(config), "--model", "models:/videomae@challenger", "--top-k", "1",
                 str(clip)]) == 0
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert "error" not in line and line["label"] in {"dribbling basketball", "dunking basketball"}
    assert sum(line["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


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
    assert TrainOptions(init=str(folder)).input == "rgb"  # a checkpoint's input, not the from-scratch diff default
    with pytest.raises(ValueError, match="train.input: rgb"):
        TrainOptions(init=str(folder), input="diff")  # asked for explicitly: refused, with the fix
    assert TrainOptions(init=str(folder), input="rgb").init == str(folder)
