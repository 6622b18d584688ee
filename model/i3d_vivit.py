"""A transformer over I3D token maps: the hybrid of the ViT paper (convolutional feature maps as the tokens), with
Kinetics-400 I3D (``model/i3d.py``) as the stem.

The stem's map after an endpoint (``Mixed_4f``: 832 channels at T/4 x H/16 x W/16) is average-pooled to a small
grid, each position is a token (LayerNorm, a linear projection, a learned position), and a small joint-attention
encoder with a CLS token classifies. :class:`TokenEncoder` is the part that learns; :class:`I3DViViT` puts the
frozen stem in front of it, so the packaged model takes frames like every other network here.

Why a frozen stem and a cache: the stem costs ~55 GFLOP per 16-frame 224-pixel clip and the encoder well under
one, so on a CPU training touches only the encoder, on maps computed once per clip.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from model.i3d import CHANNELS, I3D
from model.layers import Transformer, init_weights


@dataclass(frozen=True)
class TokenEncoderConfig:
    num_classes: int
    in_channels: int = CHANNELS["Mixed_4f"]
    grid: tuple[int, int, int] = (4, 7, 7)  # (T', H', W') the map is pooled to: the token positions
    dim: int = 192
    depth: int = 2
    heads: int = 3
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    drop_path: float = 0.1
    token_dropout: float = 0.1  # in training, a share of the map's positions is dropped before the encoder


class TokenEncoder(nn.Module):
    """``(B, C, T', H', W')`` stem maps -> ``(B, num_classes)``."""

    def __init__(self, config: TokenEncoderConfig) -> None:
        super().__init__()
        self.config = c = config
        self.grid = c.grid
        self.norm_in = nn.LayerNorm(c.in_channels)
        self.proj = nn.Linear(c.in_channels, c.dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos = nn.Parameter(torch.zeros(1, c.grid[0] * c.grid[1] * c.grid[2], c.dim))
        self.drop = nn.Dropout(c.dropout)
        self.encoder = Transformer(c.dim, depth=c.depth, heads=c.heads, mlp_ratio=c.mlp_ratio, dropout=c.dropout,
                                   drop_path=c.drop_path)
        self.head = nn.Linear(c.dim, c.num_classes)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)

    def tokens(self, maps: torch.Tensor) -> torch.Tensor:
        """The map pooled to ``grid``, one token per position ``(B, N, C)``. A map already at ``grid`` (the network's
        stem pools it there) is not pooled again: the same numbers, and a graph ONNX can express (model/export.py)."""
        maps = maps.float()
        if tuple(maps.shape[-3:]) != tuple(self.grid):
            maps = F.adaptive_avg_pool3d(maps, self.grid)
        return rearrange(maps, "b c t h w -> b (t h w) c")

    def forward_features(self, maps: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.norm_in(self.tokens(maps))) + self.pos
        if self.training and self.config.token_dropout > 0:
            keep = max(1, round(x.shape[1] * (1 - self.config.token_dropout)))
            idx = torch.rand(x.shape[0], x.shape[1], device=x.device).argsort(1)[:, :keep]
            x = torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[2]))
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.drop(x)], dim=1)
        return self.encoder(x, keep=1)[:, 0]

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(maps))


@dataclass(frozen=True)
class I3DViViTConfig:
    """What rebuilds an :class:`I3DViViT` (``model.checkpoint.load_best``); ``family`` tells it from the others."""

    encoder: TokenEncoderConfig
    until: str = "Mixed_4f"
    family: str = "i3d-vivit"


class I3DViViT(nn.Module):
    """Network input ``(B, T, 3, H, W)`` (what :func:`model.predict.preprocess` gives, here RGB in ``[-1, 1]``) ->
    logits: the frozen I3D stem up to ``until``, its map pooled to the encoder's grid, then the encoder."""

    frozen_stem = True  # model.training trains the encoder on cached stem maps (stem_maps)

    def __init__(self, stem: I3D, encoder: TokenEncoder, until: str = "Mixed_4f") -> None:
        super().__init__()
        self.stem, self.encoder, self.until = stem, encoder, until
        self.stem.requires_grad_(False)

    def train(self, mode: bool = True) -> "I3DViViT":
        super().train(mode)
        self.stem.eval()  # frozen: its BatchNorm statistics are the checkpoint's, never this set's
        return self

    @property
    def config(self) -> I3DViViTConfig:
        return I3DViViTConfig(self.encoder.config, self.until)

    @torch.no_grad()
    def stem_maps(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, 3, H, W)`` -> the stem's map pooled to the encoder's grid, ``(B, C, T', H', W')``: what the
        encoder sees, and what training caches."""
        maps = self.stem.forward_features(x.transpose(1, 2), self.until)
        return F.adaptive_avg_pool3d(maps, self.encoder.grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.stem_maps(x))

    @torch.no_grad()
    def stem_maps_and_pooled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`stem_maps` and the stem's pooled 1024-d vector (the linear probe's input) from one pass."""
        maps, pooled = self.stem.features_and_pooled(x.transpose(1, 2), self.until)
        return F.adaptive_avg_pool3d(maps, self.encoder.grid), pooled


def build_i3d_vivit(num_classes: int, stem_state: dict[str, torch.Tensor] | None, until: str = "Mixed_4f",
                    **encoder: object) -> I3DViViT:
    # encoder: TokenEncoderConfig's fields but num_classes and in_channels (which follow the classes and ``until``)
    """The Kinetics I3D stem (``stem_state``: a converted state dict; None leaves it random, for tests of shapes)
    under a new encoder for ``num_classes``. The stem's own 400-way classifier is dropped."""
    stem = I3D(num_classes=400)
    if stem_state is not None:
        stem.load_state_dict(stem_state, strict=True)
    stem.logits = nn.Identity()
    encoder = {**encoder, "in_channels": CHANNELS[until]}
    if "grid" in encoder:
        encoder["grid"] = tuple(encoder["grid"])  # type: ignore[arg-type]
    cfg = TokenEncoderConfig(num_classes=num_classes, **encoder)  # type: ignore[arg-type]
    return I3DViViT(stem.eval(), TokenEncoder(cfg), until)


def map_view_probabilities(encoder: nn.Module, maps: torch.Tensor) -> torch.Tensor:
    """Cached maps ``(B, V, C, T', H', W')`` -> the mean over views of the softmax, ``(B, K)``: exactly what
    :func:`model.predict.view_probabilities` computes on the frames of those views with the whole network."""
    b, v = maps.shape[:2]
    return F.softmax(encoder(maps.flatten(0, 1).float()).float(), dim=-1).view(b, v, -1).mean(dim=1)


class MapsDataset(torch.utils.data.Dataset):
    """Cached stem maps of one split, ``(N, variants, C, T', H', W')`` fp16. Training draws one variant per clip and
    epoch (the evaluation views and their mirror images: the augmentation a frozen stem leaves); evaluation returns
    the first ``views`` (the evaluation views, unmirrored) for :func:`map_view_probabilities`."""

    def __init__(self, maps: torch.Tensor, labels: "np.ndarray", *, training: bool, views: int, seed: int = 0) -> None:
        self.maps, self.labels, self.training, self.views = maps, labels, training, views
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.training:
            pick = int(np.random.default_rng([self.seed, self.epoch, i]).integers(self.maps.shape[1]))
            return self.maps[i, pick].float(), int(self.labels[i])
        return self.maps[i, : self.views].float(), int(self.labels[i])


@torch.inference_mode()
def compute_maps(network: I3DViViT, clips, *, mirrored: bool, prepare, device: torch.device) -> dict[str, torch.Tensor]:
    """Every clip's views through the stem: ``maps`` ``(N, V or 2V, C, T', H', W')`` fp16 and ``pooled``
    ``(N, V or 2V, 1024)`` (the stem's own pooled vector, for a linear probe). ``clips``: per clip its evaluation
    views as uint8 ``(V, P, S, S, 3)``; ``prepare``: the network input of one view batch (the run's preprocess).
    ``mirrored`` adds each view flipped left-right after the plain ones."""
    network.eval()
    maps, pooled = [], []
    for views in clips:
        x = prepare(torch.from_numpy(np.ascontiguousarray(views)))  # (V, T, 3, S, S)
        if mirrored:
            x = torch.cat([x, x.flip(-1)])
        m, p = network.stem_maps_and_pooled(x.to(device))
        maps.append(m.half().cpu())
        pooled.append(p.float().cpu())
    if not maps:  # an empty split
        return {"maps": torch.zeros(0, dtype=torch.float16), "pooled": torch.zeros(0)}
    return {"maps": torch.stack(maps), "pooled": torch.stack(pooled)}
