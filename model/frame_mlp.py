"""The original project's Keras design, kept as an honest baseline for ViViT (arXiv:2103.15691).

Each frame is flattened and embedded by two dense layers (hidden, then embedding), a learned position embedding
over time is added, one pre-norm transformer block (LayerNorm, multi-head self-attention, LayerNorm, MLP) mixes
the frames, the encoded vectors are fused by global average pooling over time and an MLP head with GELU
classifies. There is no spatial structure at all: a frame is one long vector of pixels.

Input is a float clip ``(B, T, C, H, W)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from model.layers import Block, check_transformer_config, init_weights


@dataclass(frozen=True)
class FrameMLPConfig:
    num_classes: int
    num_frames: int
    image_size: int
    in_channels: int = 3
    hidden: int = 256
    dim: int = 128
    heads: int = 4
    mlp_ratio: float = 2.0
    head_hidden: int = 128
    dropout: float = 0.1
    drop_path: float = 0.0

    def __post_init__(self) -> None:
        check_transformer_config(
            self, positive=("num_frames", "image_size", "in_channels", "hidden", "dim", "heads", "head_hidden"),
            rates=("dropout", "drop_path"),
        )


class FrameMLP(nn.Module):
    """See the module docstring. ``FrameMLP(config)`` with a :class:`FrameMLPConfig`."""

    def __init__(self, config: FrameMLPConfig) -> None:
        super().__init__()
        if not isinstance(config, FrameMLPConfig):
            raise TypeError(f"FrameMLP takes a FrameMLPConfig, got {type(config).__name__}")
        self.config = cfg = config
        pixels = cfg.in_channels * cfg.image_size**2
        self.frame_embed = nn.Sequential(
            nn.Linear(pixels, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, cfg.dim)
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_frames, cfg.dim))
        self.block = Block(cfg.dim, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout,
                           drop_path=cfg.drop_path)
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Sequential(
            nn.Linear(cfg.dim, cfg.head_hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.head_hidden, cfg.num_classes)
        )
        self.apply(init_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    @classmethod
    def from_config(cls, config: FrameMLPConfig) -> "FrameMLP":
        return cls(config)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, C, H, W)`` -> encoded per-frame vectors ``(B, T, D)``."""
        cfg = self.config
        want = (cfg.num_frames, cfg.in_channels, cfg.image_size, cfg.image_size)
        if x.ndim != 5 or tuple(x.shape[1:]) != want:
            raise ValueError(f"expected input (B, {', '.join(map(str, want))}), got {tuple(x.shape)}")
        x = self.frame_embed(rearrange(x, "b t c h w -> b t (c h w)"))
        return self.norm(self.block(x + self.pos_embed))

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=1)  # fuse: global average over time
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
