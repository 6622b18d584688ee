"""The I3D-stem transformer (``train.init: i3d-kinetics400``) on a tiny set with a random stem: the encoder trains on
stem maps computed once, and the packaged network (stem + encoder on frames) computes what training evaluated."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from model.checkpoint import load_best
from model.data import ClipDataset
from model.dataset import load_dataset
from model.evaluation import predict_probabilities
from model.i3d import INIT_ID
from model.i3d_vivit import I3DViViT, TokenEncoder, TokenEncoderConfig, build_i3d_vivit
from model.options import TrainOptions
from model.pretrained import PretrainedError, checkpoint_input
from model.training import fit
from tests.support.i3d import random_i3d_cache
from tests.support.tiny_dataset import noise_dataset


@pytest.fixture
def i3d_cache(tmp_path, monkeypatch):
    return random_i3d_cache(tmp_path / "cache", monkeypatch)


def test_encoder_shapes_and_the_stem_stays_frozen():
    net = build_i3d_vivit(3, None, grid=(2, 2, 2), depth=1)
    x = torch.rand(2, 16, 3, 32, 32) * 2 - 1  # (B, T, 3, H, W) as preprocess gives it
    assert net(x).shape == (2, 3) and net.stem_maps(x).shape == (2, 832, 2, 2, 2)
    net.train()
    assert not net.stem.training and net.encoder.training
    assert all(not p.requires_grad for p in net.stem.parameters())
    enc = TokenEncoder(TokenEncoderConfig(num_classes=4, in_channels=8, grid=(1, 2, 2), token_dropout=0.5)).train()
    assert enc(torch.randn(3, 8, 2, 4, 4)).shape == (3, 4)  # token dropout keeps 2 of 4 positions


def test_checkpoint_input_needs_no_files_and_a_missing_cache_says_what_to_do(tmp_path, monkeypatch):
    src = checkpoint_input(INIT_ID)
    assert (src.kind, src.frames, src.size, src.mean, src.std, src.size_fixed) == ("i3d", 16, 224, (0.5,) * 3,
                                                                                  (0.5,) * 3, False)
    monkeypatch.setenv("VIVIT_CACHE", str(tmp_path / "empty"))
    root = noise_dataset(tmp_path / "ds", counts={"train": [2, 2], "val": [1, 1], "test": [1, 1]}, num_frames=16)
    with pytest.raises(PretrainedError, match="converted weights are not in .*package registry"):
        fit(root, TrainOptions(init=INIT_ID, view_frames=16, epochs=1), work_dir=tmp_path / "w")


def test_fit_trains_the_encoder_on_cached_maps_and_the_package_computes_the_same(tmp_path, i3d_cache):
    root = noise_dataset(tmp_path / "ds", counts={"train": [6, 6], "val": [4, 4], "test": [3, 3]}, num_frames=16)
    opts = TrainOptions(init=INIT_ID, view_frames=16, epochs=3, batch_size=8, lr=1e-3, warmup_epochs=0.5)
    assert opts.input == "rgb"
    result = fit(root, opts, work_dir=tmp_path / "runs" / "a")
    assert isinstance(result.model, I3DViViT) and len(result.history) == 3
    assert any("stem maps computed once" in n for n in result.notes), result.notes
    assert result.view.mean == (0.5,) * 3 and result.view.std == (0.5,) * 3  # [-1, 1], as the checkpoint saw
    assert len(list((tmp_path / "runs" / "stem-cache").glob("*.pt"))) == 1

    # the whole network on the test clips' frames = what training evaluated on the cached maps
    info = load_dataset(root)
    clips = ClipDataset(root, info.split("test"), num_frames=info.num_frames, image_size=info.image_size,
                        view=result.view)
    _, probs, _ = predict_probabilities(result.model, DataLoader(clips, batch_size=4), torch.device("cpu"),
                                        result.classes, result.view)
    cached = result.test_predictions[[f"p_{c}" for c in result.classes]].to_numpy()
    np.testing.assert_allclose(probs, cached, atol=2e-3)
    net, meta = load_best(result.checkpoint_path)  # rebuilt from best.pt alone
    assert isinstance(net, I3DViViT)
    x = torch.rand(2, 16, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(net(x), result.model.eval()(x))

    again = fit(root, opts.model_copy(update={"resume": False}), seed=1, work_dir=tmp_path / "runs" / "b")
    assert any("stem maps reused" in n for n in again.notes), again.notes
    with pytest.raises(PretrainedError, match="always frozen"):
        fit(root, opts.model_copy(update={"freeze": "backbone"}), work_dir=tmp_path / "runs" / "c")
