"""The model family: every preset's shapes, argument checks, central-frame init, overfitting a tiny batch, and the
inference wrapper that shares preprocessing with training."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.data import ClipDataset
from model.frame_mlp import FrameMLP, FrameMLPConfig
from model.predict import MEAN, STD, SingleFrame, VideoClassifier, predict_proba, preprocess, single_frame_clip
from model.presets import DEFAULT_PRESET, PRESETS, build_model, describe
from model.vivit import ViViT, ViViTConfig, inflate_patch_embedding
from tests.support.tiny_dataset import noise_dataset


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny(name: str, num_classes: int = 3, num_frames: int = 4, image_size: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, num_classes=num_classes, num_frames=num_frames, image_size=image_size)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_shapes_gradients_no_nan(name):
    model = tiny(name)
    x = torch.randn(2, 4, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.ndim == 3 and feats.shape[0] == 2
    logits = model.forward_head(feats)
    assert logits.shape == (2, 3)
    assert model.forward_head(feats, pre_logits=True).ndim == 2
    out = model(x)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    with pytest.raises(ValueError, match="expected input"):
        model(torch.randn(2, 5, 3, 32, 32))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_describe_matches_the_built_model(name):
    d = describe(name, num_frames=16, image_size=128)
    model = build_model(name, num_classes=2, num_frames=16, image_size=128)
    assert d["params"] == sum(p.numel() for p in model.parameters())
    assert 0.05 < d["gflops"] < 50


def test_default_preset_is_factorised_encoder():
    cfg = PRESETS[DEFAULT_PRESET]
    assert DEFAULT_PRESET == "vivit-fe-conv-tiny" and cfg.variant == "factorised_encoder" and cfg.stem == "conv"
    assert {"frame-mlp", "vivit-fe-tiny", "vivit-fe-small", "vivit-joint-tiny", "vivit-fsa-tiny"} <= set(PRESETS)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError) as e:
        build_model("vivit-huge", num_classes=2, num_frames=16, image_size=128)
    assert all(n in str(e.value) for n in PRESETS)
    with pytest.raises(ValueError, match="no field"):
        build_model(DEFAULT_PRESET, num_classes=2, num_frames=16, image_size=128, depht=3)


def test_constructors_take_their_config_and_check_arguments():
    with pytest.raises(TypeError, match="takes a ViViTConfig"):
        ViViT(2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes a FrameMLPConfig"):
        FrameMLP(dict(num_classes=2, num_frames=16, image_size=128))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="depht"):
        ViViTConfig(num_classes=2, num_frames=16, image_size=128, depht=3)
    bad = [
        dict(image_size=120),  # not a multiple of the patch
        dict(num_frames=15),  # not a multiple of the tubelet
        dict(dim=100, heads=3),
        dict(num_classes=1),
        dict(variant="divided"),
        dict(variant="factorised_self_attention", pool="cls"),
        dict(drop_path=1.0),
        dict(depth=0),
        dict(pool="max"),
    ]
    for override in bad:
        kw = dict(num_classes=2, num_frames=16, image_size=128) | override
        with pytest.raises(ValueError):
            ViViT(ViViTConfig(**kw))
    with pytest.raises(ValueError):
        FrameMLP(FrameMLPConfig(num_classes=2, num_frames=16, image_size=128, dim=10, heads=3))


def test_config_round_trip():
    model = ViViT(ViViTConfig(num_classes=4, num_frames=8, image_size=32, variant="joint", dim=32, heads=2, depth=1))
    again = ViViT.from_config(model.config)
    assert again.config == model.config
    assert isinstance(model.config, ViViTConfig)


def test_inflate_patch_embedding_is_central_frame():
    torch.manual_seed(0)
    conv2d = torch.nn.Conv2d(3, 8, kernel_size=4, stride=4)
    for t in (1, 2, 3, 4):
        w3 = inflate_patch_embedding(conv2d.weight.detach(), t)
        assert w3.shape == (8, 3, t, 4, 4)
        assert torch.equal(w3[:, :, t // 2], conv2d.weight.detach())
        assert w3.abs().sum() == conv2d.weight.detach().abs().sum()  # zero elsewhere
        clip = torch.randn(2, 3, t, 16, 16)
        out3 = F.conv3d(clip, w3, conv2d.bias, stride=(t, 4, 4))[:, :, 0]
        out2 = conv2d(clip[:, :, t // 2])
        torch.testing.assert_close(out3, out2, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        inflate_patch_embedding(torch.zeros(8, 3, 4), 2)


def test_model_loads_a_2d_patch_embedding():
    model = ViViT(ViViTConfig(num_classes=2, num_frames=4, image_size=32, tubelet_size=2, patch_size=16, dim=32,
                              heads=2, depth=1, temporal_depth=1))
    conv2d = torch.nn.Conv2d(3, 32, kernel_size=16, stride=16)
    model.load_patch_embedding(conv2d.weight.detach(), conv2d.bias.detach())
    x = torch.randn(1, 4, 3, 32, 32)
    tokens = model.patch_embed(x)  # (B, nt, S, D)
    for step, frame in enumerate((1, 3)):  # central frame of tubelets [0,1] and [2,3]
        expect = conv2d(x[:, frame]).flatten(2).transpose(1, 2)
        torch.testing.assert_close(tokens[:, step], expect, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="does not fit"):
        model.load_patch_embedding(torch.zeros(32, 3, 8, 8))


@pytest.mark.parametrize("name", ["vivit-fe-tiny", "vivit-joint-tiny", "vivit-fsa-tiny", "frame-mlp"])
def test_tiny_model_overfits_a_tiny_batch(name):
    model = tiny(name, num_classes=3)
    x = torch.randn(6, 4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    model.train()
    for _ in range(40):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert (logits.argmax(-1) == y).all()
    assert F.cross_entropy(logits, y).item() < 0.1


def test_preprocess_layout_and_normalisation():
    frames = np.zeros((2, 4, 8, 8, 3), np.uint8)
    frames[..., 0] = 255
    x = preprocess(frames)
    assert x.shape == (2, 4, 3, 8, 8) and x.dtype == torch.float32
    torch.testing.assert_close(x[0, 0, :, 0, 0], torch.tensor([(1 - MEAN[0]) / STD[0], -MEAN[1] / STD[1], -MEAN[2] / STD[2]]))
    assert torch.equal(preprocess(torch.from_numpy(frames)), x)
    with pytest.raises(ValueError):
        preprocess(frames.astype(np.float32))
    with pytest.raises(ValueError):
        preprocess(frames[0])


def test_video_classifier_probabilities_any_batch():
    net = tiny(DEFAULT_PRESET, num_classes=3).eval()
    clf = VideoClassifier(net, classes=["a", "b", "c"], num_frames=4, image_size=32)
    assert (clf.classes, clf.num_frames, clf.image_size) == (["a", "b", "c"], 4, 32)
    for b in (1, 5):
        frames = torch.randint(0, 256, (b, 4, 32, 32, 3), dtype=torch.uint8)
        with torch.no_grad():
            p = clf(frames)
        assert p.shape == (b, 3) and p.dtype == torch.float32
        torch.testing.assert_close(p.sum(-1), torch.ones(b))
        np.testing.assert_allclose(predict_proba(clf, frames.numpy()), p.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(predict_proba(net, frames, batch_size=2), p.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="expected uint8 frames"):
        clf(torch.zeros(1, 5, 32, 32, 3, dtype=torch.uint8))


def test_single_frame_sees_only_the_middle_frame():
    x = torch.arange(6.0).view(1, 6, 1, 1, 1).expand(2, 6, 3, 4, 4)
    sf = single_frame_clip(x)
    assert sf.shape == x.shape and (sf == 3.0).all()
    net = SingleFrame(tiny(DEFAULT_PRESET)).eval()
    a = torch.randn(1, 4, 3, 32, 32)
    b = a.clone()
    b[:, [0, 1, 3]] = torch.randn(1, 3, 3, 32, 32)  # change every frame but the middle one (index 2)
    with torch.no_grad():
        torch.testing.assert_close(net(a), net(b))


def test_augmentation_is_identical_for_all_frames(tmp_path):
    root = noise_dataset(tmp_path, counts={"train": [2, 2]}, num_frames=4, size=32)
    import pandas as pd

    rows = pd.read_parquet(root / "manifest.parquet")
    # make every frame of every clip the same, then any per-frame difference would come from augmentation
    for p in rows["frames_path"]:
        arr = np.load(root / p)
        np.save(root / p, np.repeat(arr[:1], 4, axis=0))
    ds = ClipDataset(root, rows, num_frames=4, image_size=32, augment=True, seed=1)
    plain = ClipDataset(root, rows, num_frames=4, image_size=32, augment=False)
    changed = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            clip, label = ds[i]
            assert clip.shape == (4, 32, 32, 3) and clip.dtype == torch.uint8
            assert label == rows["label_index"][i]
            assert all(torch.equal(clip[0], clip[t]) for t in range(1, 4))
            changed += not torch.equal(clip, plain[i][0])
    assert changed > 0  # augmentation does something
    ds.set_epoch(1)
    assert torch.equal(ds[0][0], ds[0][0])  # and is reproducible


def test_model_package_stands_alone():
    """MLflow ships model/ as the logged model's code: it must not need tasks/, prefect or mlflow."""
    import subprocess
    import sys

    code = ("import sys, model.training, model.predict, model.presets, model.metrics, model.data, model.dataset; "
            "bad = [m for m in ('tasks', 'prefect', 'mlflow', 'sklearn') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_motion_init_starts_half_the_tubelet_filters_as_temporal_differences():
    """Static appearance cancels in those filters (they sum to zero over time); the other half is untouched."""
    m = build_model("vivit-fe-tiny", num_classes=2, num_frames=8, image_size=32)
    w = m.patch_embed.proj.weight  # (D, C, t, p, p)
    half = w.shape[0] // 2
    assert torch.allclose(w[:half].sum(dim=2), torch.zeros_like(w[:half].sum(dim=2)), atol=1e-6)
    assert w[half:].sum(dim=2).abs().max() > 1e-3
    still = torch.rand(1, 1, 3, 32, 32).expand(1, 8, 3, 32, 32)  # a clip with no motion at all
    tokens = m.patch_embed(still)  # (B, T', N, D)
    assert torch.allclose(tokens[..., :half], m.patch_embed.proj.bias[:half].expand_as(tokens[..., :half]), atol=1e-5)


@pytest.mark.parametrize("name,overrides", [("vivit-joint-tiny", {}), ("vivit-fe-tiny", {"pool": "cls"}),
                                            ("vivit-fe-tiny", {})])
def test_forward_skips_dead_query_rows_but_gives_the_full_models_logits_and_gradients(name, overrides):
    """With CLS pooling, forward() runs each encoder's last block for the CLS query only. That must be pure
    saving: the same logits and the same gradients as pooling the fully computed tokens, in train mode with
    stochastic depth (same seed, same drop masks)."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, num_frames=4, image_size=32, drop_path=0.3).train()
    x = torch.randn(3, 4, 3, 32, 32)
    params = list(model.parameters())
    torch.manual_seed(1)
    fast = model(x)
    g_fast = torch.autograd.grad(fast.square().sum(), params)
    torch.manual_seed(1)
    full = model.forward_head(model.forward_features(x))
    g_full = torch.autograd.grad(full.square().sum(), params)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_fast, g_full):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in g_fast)
    last = (model.encoder if name == "vivit-joint-tiny" else model.temporal).blocks[-1]
    seen = []
    last.mlp.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    model(x)
    model.forward_features(x)
    assert seen == ([1, 9] if name == "vivit-joint-tiny" else [1, 3]) if model.config.pool == "cls" else [2, 2]


def test_transformer_keep_returns_the_first_tokens_of_the_full_pass():
    from model.layers import Transformer

    torch.manual_seed(0)
    enc = Transformer(32, depth=3, heads=4).eval()
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        full, kept = enc(x), enc(x, keep=2)
    assert kept.shape == (2, 2, 32)
    torch.testing.assert_close(kept, full[:, :2], rtol=1e-5, atol=1e-6)
    no_bias = Transformer(32, depth=1, heads=4, qkv_bias=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(no_bias(x, keep=1), no_bias(x)[:, :1], rtol=1e-5, atol=1e-6)


def test_conv_stem_gives_the_tubelet_grid_and_checks_its_strides():
    cfg = ViViTConfig(num_classes=2, num_frames=8, image_size=32, patch_size=8, tubelet_size=2, dim=32, heads=2,
                      stem="conv", stem_width=8)
    m = ViViT.from_config(cfg)
    tokens = m.patch_embed(torch.randn(2, 8, 3, 32, 32))
    assert tokens.shape == (2, 4, 16, 32)  # (B, T/t, (H/p)^2, D), as the linear tubelet embedding gives
    lin = ViViT.from_config(ViViTConfig(**{**cfg.__dict__, "stem": "linear"}))
    assert lin.patch_embed(torch.randn(2, 8, 3, 32, 32)).shape == tokens.shape
    with pytest.raises(ValueError, match="power of 2"):
        ViViTConfig(num_classes=2, num_frames=6, image_size=24, patch_size=8, tubelet_size=3, stem="conv")
    with pytest.raises(ValueError, match="only the linear tubelet embedding"):
        m.load_patch_embedding(torch.randn(32, 3, 8, 8))


def test_views_train_draws_inside_segments_eval_views_cover_the_clip():
    from model.views import ViewSpec, eval_views, segment_positions, view_indices

    assert segment_positions(32, 4).tolist() == [4, 12, 20, 28]  # one view: the segment centres
    assert segment_positions(32, 4, view=0, num_views=2).tolist() == [2, 10, 18, 26]
    assert segment_positions(32, 4, view=1, num_views=2).tolist() == [6, 14, 22, 30]
    rng = np.random.default_rng(0)
    draws = np.stack([segment_positions(32, 4, rng=rng) for _ in range(200)])
    for i in range(4):  # every draw stays in its own segment, and the draws vary
        assert draws[:, i].min() >= 8 * i and draws[:, i].max() < 8 * (i + 1) and len(set(draws[:, i])) > 4
    spec = ViewSpec(num_frames=4, input="diff", test_views=2)
    idx = view_indices(9, spec)
    assert len(idx) == spec.frames_per_view == 8 and (idx[1::2] == idx[0::2] + 1).all() and idx.max() <= 8
    clip = np.arange(9).reshape(9, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)
    views = eval_views(clip, spec)
    assert views.shape == (2, 8, 2, 2, 3)
    assert sorted(set(views[:, 0::2, 0, 0, 0].ravel().tolist())) == list(range(8))  # together: every pair start
    with pytest.raises(ValueError, match="at least 5"):
        view_indices(4, spec)


def test_a_checkpoint_written_with_diff_gap_still_loads(tmp_path):
    """``train.diff_gap`` was removed (no gain, docs/quality.md): files written while it existed carry
    ``"diff_gap": 1`` in their view, which loads as today's view; another gap, or the removed ``rgb_diff`` input,
    is refused in words."""
    from dataclasses import asdict

    from model.checkpoint import load_best, load_classifier, network_record
    from model.views import ViewSpec

    view = ViewSpec(num_frames=4, input="diff", test_views=1)
    net = build_model("frame-mlp", num_classes=2, num_frames=4, image_size=16)
    record = network_record(net, classes=["a", "b"], num_frames=6, image_size=16, view=view, single_frame=False)
    assert "diff_gap" not in record["view"]
    torch.save({**record, "view": {**asdict(view), "diff_gap": 1}}, tmp_path / "old.pt")
    assert load_best(tmp_path / "old.pt")[1]["view"] == view
    assert load_classifier(tmp_path / "old.pt").view == view
    torch.save({**record, "view": {**asdict(view), "diff_gap": 2}}, tmp_path / "gap2.pt")
    with pytest.raises(ValueError, match="train.diff_gap=2.*retrain"):
        load_best(tmp_path / "gap2.pt")
    assert ViewSpec.from_record({"num_frames": 4, "input": "diff", "test_views": 2}) == ViewSpec(num_frames=4)
    with pytest.raises(ValueError, match="rgb_diff .*removed"):  # the removed 6-channel input: refused in words
        ViewSpec.from_record({**asdict(view), "input": "rgb_diff"})


def test_preprocess_turns_a_view_into_the_inputs_form():
    from model.views import DIFF_SCALE, ViewSpec

    frames = np.zeros((1, 4, 8, 8, 3), np.uint8)
    frames[0, 1] = 51  # pair 0: 0 -> 51; pair 1: 0 -> 0
    diff = preprocess(frames, ViewSpec(num_frames=2, input="diff"))
    assert diff.shape == (1, 2, 3, 8, 8)
    torch.testing.assert_close(diff[0, 0], torch.full((3, 8, 8), 0.2 / DIFF_SCALE))
    assert (diff[0, 1] == 0).all()
    with pytest.raises(ValueError, match="4 frames"):
        preprocess(frames[:, :3], ViewSpec(num_frames=2, input="diff"))


def test_the_views_mean_and_std_normalise_rgb_and_older_views_keep_imagenets():
    from model.views import ViewSpec

    frames = np.full((1, 2, 4, 4, 3), 255, np.uint8)
    frames[..., 1] = 0
    half = ViewSpec(num_frames=2, input="rgb", mean=[0.5, 0.5, 0.5], std=(0.5, 0.25, 0.5))  # lists, as in a checkpoint
    assert half.mean == (0.5, 0.5, 0.5) and half == ViewSpec(num_frames=2, input="rgb", mean=(0.5,) * 3, std=(0.5, 0.25, 0.5))
    torch.testing.assert_close(preprocess(frames, half)[0, 0, :, 0, 0], torch.tensor([1.0, -2.0, 1.0]))
    older = ViewSpec.from_record({"num_frames": 2, "input": "rgb", "test_views": 1, "diff_gap": 1})  # a pre-mean/std checkpoint
    assert (older.mean, older.std) == (MEAN, STD)
    torch.testing.assert_close(preprocess(frames, older), preprocess(frames))
    with pytest.raises(ValueError, match="std must be 3"):
        ViewSpec(std=(0.5, 0.0, 0.5))


def test_video_classifier_averages_its_views():
    from model.predict import view_probabilities
    from model.views import ViewSpec, eval_views

    spec = ViewSpec(num_frames=4, input="diff", test_views=3)
    net = build_model(DEFAULT_PRESET, num_classes=2, num_frames=4, image_size=32).eval()
    clf = VideoClassifier(net, classes=["a", "b"], num_frames=12, image_size=32, view=spec)
    frames = torch.randint(0, 256, (2, 12, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        p = clf(frames)
        each = [F.softmax(net(preprocess(eval_views(frames, spec)[:, v], spec)), -1) for v in range(3)]
        torch.testing.assert_close(p, sum(each) / 3)
        torch.testing.assert_close(view_probabilities(net, eval_views(frames, spec), spec), p)
    with pytest.raises(ValueError, match="needs at least"):
        VideoClassifier(net, classes=["a", "b"], num_frames=4, image_size=32, view=spec)


def test_clip_dataset_random_views_in_training_fixed_views_in_evaluation(tmp_path):
    import pandas as pd

    from model.views import ViewSpec

    root = noise_dataset(tmp_path, counts={"train": [1, 1]}, num_frames=9, size=16)
    rows = pd.read_parquet(root / "manifest.parquet")
    spec = ViewSpec(num_frames=4, input="diff", test_views=2)
    kw = dict(num_frames=9, image_size=16, view=spec, seed=0)
    train = ClipDataset(root, rows, training=True, **kw)
    seen = set()
    for epoch in range(6):
        train.set_epoch(epoch)
        clip, _ = train[0]
        assert clip.shape == (8, 16, 16, 3)
        seen.add(clip.numpy().tobytes())
    assert len(seen) > 1  # a different temporal view across epochs
    evaluation = ClipDataset(root, rows, training=False, **kw)
    views, _ = evaluation[0]
    assert views.shape == (2, 8, 16, 16, 3)
    evaluation.set_epoch(3)
    assert torch.equal(evaluation[0][0], views)  # fixed
