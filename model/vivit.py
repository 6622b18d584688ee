"""ViViT: A Video Vision Transformer (Arnab et al., 2021, arXiv:2103.15691).

Tubelet embedding (a Conv3d over non-overlapping ``t x p x p`` tubelets, Sec. 3.2) followed by one of the paper's
three encoders (Sec. 3.3):

* ``joint`` (model 1): every spatio-temporal token attends to every other one.
* ``factorised_encoder`` (model 2): a spatial transformer per temporal index, whose per-step representations
  (CLS token or mean) go through a temporal transformer. "Late fusion" of time; the cheapest of the three.
* ``factorised_self_attention`` (model 3): each block attends over space (tokens of one temporal index), then over
  time (tokens of one spatial location), then applies the MLP. Model 3 has no CLS token in the paper; here it
  supports mean pooling only.

The tokeniser is either the paper's linear tubelet embedding or (``stem="conv"``) a small convolutional stem with
the same output grid: stride-2 3x3x3 convolutions with BatchNorm and GELU until the tubelet's stride is reached, then
a 1x1x1 projection to the width. Early convolutions give a transformer the locality prior it otherwise has to learn
from data (Xiao et al. 2021, arXiv:2106.14881); trained from scratch on ~100 real clips the linear embedding
barely fitted the training set, the conv stem did (docs/quality.md, "History").

Tubelets can be initialised from a 2D (image) patch embedding with "central frame" initialisation
(:func:`inflate_patch_embedding`), Sec. 3.4, so image-pretrained ViT patch weights can be loaded.

Pooling: the CLS token (``pool="cls"``), or the mean of the tokens (``pool="mean"``). With ``fc_norm`` the
final LayerNorm moves from the tokens to their mean (VideoMAE's mean pooling, so its fine-tuned checkpoints load;
:mod:`model.pretrained`). ``act`` and ``norm_eps`` pick the GELU and LayerNorm eps of the blocks: the defaults are
the JAX reference's; checkpoints trained in PyTorch name theirs.

Input is a float clip ``(B, T, C, H, W)``, normalised as :func:`model.predict.preprocess` does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from einops import rearrange
from torch import nn

from model.layers import (
    Attention, DropPath, LayerNorm, Mlp, Transformer, check_positive, check_transformer_config, init_weights,
    stochastic_depth_rates,
)

Variant = Literal["joint", "factorised_encoder", "factorised_self_attention"]
VARIANTS: tuple[str, ...] = ("joint", "factorised_encoder", "factorised_self_attention")


@dataclass(frozen=True)
class ViViTConfig:
    """Every architectural choice of a :class:`ViViT`; validated on construction.

    ``depth`` is the number of blocks of the joint and factorised-self-attention encoders and of the *spatial*
    encoder of the factorised encoder; ``temporal_depth`` is the factorised encoder's temporal depth (unused by the
    other variants)."""

    num_classes: int
    num_frames: int
    image_size: int
    variant: Variant = "factorised_encoder"
    in_channels: int = 3
    tubelet_size: int = 2
    patch_size: int = 16
    dim: int = 192
    depth: int = 4
    temporal_depth: int = 2
    heads: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    pool: Literal["cls", "mean"] = "cls"
    fc_norm: bool = False  # final LayerNorm on the pooled mean instead of on every token (needs pool="mean")
    act: Literal["gelu_tanh", "gelu"] = "gelu_tanh"  # the blocks' GELU: tanh approximation or exact
    norm_eps: float = 1e-6
    dropout: float = 0.0
    attn_dropout: float = 0.0
    head_dropout: float = 0.0
    drop_path: float = 0.1
    motion_init: bool = False  # half the tubelet channels start as temporal differences (see ViViT.__init__)
    stem: Literal["linear", "conv"] = "linear"
    stem_width: int = 32  # channels of the conv stem's first stage, doubled at each later stage

    def __post_init__(self) -> None:
        check_transformer_config(
            self,
            positive=("num_frames", "image_size", "in_channels", "tubelet_size", "patch_size", "dim", "depth", "heads"),
            rates=("dropout", "attn_dropout", "head_dropout", "drop_path"),
        )
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.variant == "factorised_encoder":
            check_positive(self, "temporal_depth")
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {self.pool!r}")
        if self.variant == "factorised_self_attention" and self.pool != "mean":
            raise ValueError("factorised_self_attention (model 3) has no CLS token: use pool='mean'")
        if self.fc_norm and (self.pool != "mean" or self.variant != "joint"):
            raise ValueError("fc_norm (a LayerNorm after mean pooling) needs variant='joint' and pool='mean'")
        if self.act not in ("gelu_tanh", "gelu"):
            raise ValueError(f"act must be 'gelu_tanh' or 'gelu', got {self.act!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps!r}")
        if self.num_frames % self.tubelet_size:
            raise ValueError(f"num_frames {self.num_frames} must be a multiple of tubelet_size {self.tubelet_size}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.stem not in ("linear", "conv"):
            raise ValueError(f"stem must be 'linear' or 'conv', got {self.stem!r}")
        if self.stem == "conv":
            check_positive(self, "stem_width")
            for name in ("tubelet_size", "patch_size"):
                v = getattr(self, name)
                if v & (v - 1):
                    raise ValueError(f"the conv stem reaches its stride by halving: {name} must be a power of 2, got {v}")

    @property
    def num_temporal(self) -> int:
        return self.num_frames // self.tubelet_size

    @property
    def num_spatial(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def inflate_patch_embedding(conv2d_weight: torch.Tensor, t: int) -> torch.Tensor:
    """Central-frame initialisation (ViViT Sec. 3.4): a ``(D, C, p, p)`` 2D patch-embedding kernel becomes a
    ``(D, C, t, p, p)`` tubelet kernel that is zero everywhere except at temporal index ``t // 2``. A tubelet
    embedded with it equals the 2D embedding of the tubelet's central frame."""
    if conv2d_weight.ndim != 4:
        raise ValueError(f"expected a (D, C, p, p) Conv2d weight, got shape {tuple(conv2d_weight.shape)}")
    if t < 1:
        raise ValueError(f"t must be >= 1, got {t}")
    out = conv2d_weight.new_zeros(conv2d_weight.shape[:2] + (t,) + conv2d_weight.shape[2:])
    out[:, :, t // 2] = conv2d_weight
    return out


class TubeletEmbedding(nn.Module):
    """``(B, T, C, H, W)`` -> ``(B, T/t, (H/p)*(W/p), D)`` with one Conv3d whose kernel equals its stride."""

    def __init__(self, *, in_channels: int, dim: int, tubelet_size: int, patch_size: int) -> None:
        super().__init__()
        k = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(rearrange(x, "b t c h w -> b c t h w"))
        return rearrange(x, "b d nt nh nw -> b nt (nh nw) d")


class ConvStem(nn.Module):
    """``(B, T, C, H, W)`` -> ``(B, T/t, (H/p)*(W/p), D)``, the grid of :class:`TubeletEmbedding`, from stride-2
    3x3x3 convolutions (time is halved only while the tubelet's temporal stride is not reached yet)."""

    def __init__(self, *, in_channels: int, dim: int, tubelet_size: int, patch_size: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, st, ss = in_channels, tubelet_size, patch_size
        while st > 1 or ss > 1:
            stride = (2 if st > 1 else 1, 2 if ss > 1 else 1, 2 if ss > 1 else 1)
            layers += [nn.Conv3d(c, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm3d(width), nn.GELU()]
            c, st, ss, width = width, st // stride[0], ss // stride[1], width * 2
        layers.append(nn.Conv3d(c, dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.net(rearrange(x, "b t c h w -> b c t h w"))
        return rearrange(x, "b d nt nh nw -> b nt (nh nw) d")


class FactorisedSelfAttentionBlock(nn.Module):
    """Model 3 block on ``(B, nt, S, D)``: spatial attention, temporal attention, MLP, each pre-norm + residual."""

    def __init__(self, dim: int, *, heads: int, mlp_ratio: float, qkv_bias: bool, dropout: float,
                 attn_dropout: float, drop_path: float, act: str, norm_eps: float) -> None:
        super().__init__()
        kw = dict(heads=heads, qkv_bias=qkv_bias, attn_dropout=attn_dropout, dropout=dropout)
        self.norm_s, self.attn_s = LayerNorm(dim, eps=norm_eps), Attention(dim, **kw)
        self.norm_t, self.attn_t = LayerNorm(dim, eps=norm_eps), Attention(dim, **kw)
        self.norm2, self.mlp = LayerNorm(dim, eps=norm_eps), Mlp(dim, int(dim * mlp_ratio), dropout=dropout, act=act)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, nt, s, _ = x.shape
        xs = rearrange(x, "b t s d -> (b t) s d")
        xs = xs + self.drop_path(self.attn_s(self.norm_s(xs)))
        xt = rearrange(xs, "(b t) s d -> (b s) t d", b=b)
        xt = xt + self.drop_path(self.attn_t(self.norm_t(xt)))
        xt = xt + self.drop_path(self.mlp(self.norm2(xt)))
        return rearrange(xt, "(b s) t d -> b t s d", b=b)


class ViViT(nn.Module):
    """Video Vision Transformer; see the module docstring. ``ViViT(config)``: every hyperparameter is a field of
    :class:`ViViTConfig` (``model/presets.py`` names the usual ones)."""

    def __init__(self, config: ViViTConfig) -> None:
        super().__init__()
        if not isinstance(config, ViViTConfig):
            raise TypeError(f"ViViT takes a ViViTConfig, got {type(config).__name__}")
        self.config = cfg = config
        d, nt, ns = cfg.dim, cfg.num_temporal, cfg.num_spatial
        block_kw = dict(heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, dropout=cfg.dropout,
                        attn_dropout=cfg.attn_dropout, act=cfg.act, norm_eps=cfg.norm_eps)
        use_cls = cfg.pool == "cls"

        embed_kw = dict(in_channels=cfg.in_channels, dim=d, tubelet_size=cfg.tubelet_size, patch_size=cfg.patch_size)
        self.patch_embed = (ConvStem(width=cfg.stem_width, **embed_kw) if cfg.stem == "conv"
                            else TubeletEmbedding(**embed_kw))
        self.pos_drop = nn.Dropout(cfg.dropout)
        if cfg.variant == "joint":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if use_cls else None
            self.pos_embed = nn.Parameter(torch.zeros(1, nt * ns + int(use_cls), d))
            self.encoder = Transformer(d, depth=cfg.depth, drop_path=cfg.drop_path, final_norm=not cfg.fc_norm,
                                       **block_kw)
        elif cfg.variant == "factorised_encoder":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if use_cls else None
            self.temporal_cls_token = nn.Parameter(torch.zeros(1, 1, d)) if use_cls else None
            self.pos_embed = nn.Parameter(torch.zeros(1, ns + int(use_cls), d))
            self.temporal_pos_embed = nn.Parameter(torch.zeros(1, nt + int(use_cls), d))
            rates = stochastic_depth_rates(cfg.drop_path, cfg.depth + cfg.temporal_depth)
            self.spatial = Transformer(d, depth=cfg.depth, drop_path=rates[: cfg.depth], **block_kw)
            self.temporal = Transformer(d, depth=cfg.temporal_depth, drop_path=rates[cfg.depth :], **block_kw)
        else:  # factorised_self_attention: separable space + time position embeddings
            self.pos_embed = nn.Parameter(torch.zeros(1, 1, ns, d))
            self.temporal_pos_embed = nn.Parameter(torch.zeros(1, nt, 1, d))
            self.blocks = nn.ModuleList(
                FactorisedSelfAttentionBlock(d, drop_path=r, **block_kw)
                for r in stochastic_depth_rates(cfg.drop_path, cfg.depth)
            )
            self.norm = LayerNorm(d, eps=cfg.norm_eps)
        self.fc_norm = LayerNorm(d, eps=cfg.norm_eps) if cfg.fc_norm else None
        self.head_drop = nn.Dropout(cfg.head_dropout)
        self.head = nn.Linear(d, cfg.num_classes)
        self.apply(init_weights)
        if cfg.stem == "conv":  # PyTorch's (Kaiming) defaults for the conv stem, as CNN stems use, not ViT's 0.02
            for m in self.patch_embed.modules():
                if isinstance(m, (nn.Conv3d, nn.BatchNorm3d)):
                    m.reset_parameters()
        for name, p in self.named_parameters():
            if name.endswith(("pos_embed", "cls_token")):
                nn.init.trunc_normal_(p, std=0.02)
        if cfg.motion_init and cfg.tubelet_size > 1 and cfg.stem == "linear":
            self._init_motion_channels()

    @torch.no_grad()
    def _init_motion_channels(self) -> None:
        """Make the first half of the tubelet filters sum to zero over time, so they start out as frame
        differences: static appearance cancels in them and motion stands out. From scratch on a small dataset the
        network otherwise learns appearance long before motion (measured on the demo data: val accuracy ~0.85
        without, 0.94 with, at 30 epochs)."""
        w = self.patch_embed.proj.weight  # (D, C, t, p, p)
        half = w.shape[0] // 2
        w[:half] -= w[:half].mean(dim=2, keepdim=True)

    @classmethod
    def from_config(cls, config: ViViTConfig) -> "ViViT":
        return cls(config)

    # -- loading image-pretrained weights ------------------------------------------------------------------
    @torch.no_grad()
    def load_patch_embedding(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Initialise the tubelet embedding from a 2D patch embedding ``(D, C, p, p)`` (central frame init)."""
        if not isinstance(self.patch_embed, TubeletEmbedding):
            raise ValueError("only the linear tubelet embedding (stem='linear') can be initialised from a 2D patch embedding")
        conv = self.patch_embed.proj
        inflated = inflate_patch_embedding(weight, conv.kernel_size[0])
        if inflated.shape != conv.weight.shape:
            raise ValueError(f"2D patch embedding {tuple(weight.shape)} does not fit tubelet kernel {tuple(conv.weight.shape)}")
        conv.weight.copy_(inflated)
        if bias is not None:
            conv.bias.copy_(bias)

    # -- forward --------------------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        want = (cfg.num_frames, cfg.in_channels, cfg.image_size, cfg.image_size)
        if x.ndim != 5 or tuple(x.shape[1:]) != want:
            raise ValueError(f"expected input (B, {', '.join(map(str, want))}), got {tuple(x.shape)}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Encoded tokens after the final LayerNorm: ``(B, N, D)`` for joint (N = all tokens [+ CLS]) and the
        factorised encoder (N = temporal tokens [+ CLS]); ``(B, nt*S, D)`` for factorised self-attention. With
        ``fc_norm`` the tokens are not normalised: the LayerNorm comes after pooling, in :meth:`forward_head`."""
        return self._encode(x, cls_only=False)

    def _encode(self, x: torch.Tensor, *, cls_only: bool) -> torch.Tensor:
        """``cls_only``: return just the CLS row ``(B, 1, D)`` (equal to ``forward_features(x)[:, :1]``), so that
        the last block of each encoder skips the query rows nobody reads. With ``pool="cls"`` this takes a joint
        model's training step ~1/depth of the work lighter, with identical logits and gradients."""
        self._check_input(x)
        cfg = self.config
        x = self.patch_embed(x)  # (B, nt, S, D)
        b, nt = x.shape[:2]
        cls = cfg.pool == "cls"
        if cfg.variant == "joint":
            x = rearrange(x, "b t s d -> b (t s) d")
            if cls:
                x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
            return self.encoder(self.pos_drop(x + self.pos_embed), keep=1 if cls_only else None)
        if cfg.variant == "factorised_encoder":
            x = rearrange(x, "b t s d -> (b t) s d")
            if cls:
                x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            # Only each time step's CLS token (or mean) goes on to the temporal encoder.
            x = self.spatial(self.pos_drop(x + self.pos_embed), keep=1 if cls else None)
            x = x[:, 0] if cls else x.mean(dim=1)
            x = rearrange(x, "(b t) d -> b t d", b=b)
            if cls:
                x = torch.cat([self.temporal_cls_token.expand(b, -1, -1), x], dim=1)
            return self.temporal(x + self.temporal_pos_embed, keep=1 if cls_only else None)
        x = self.pos_drop(x + self.pos_embed + self.temporal_pos_embed)
        for block in self.blocks:
            x = block(x)
        return self.norm(rearrange(x, "b t s d -> b (t s) d"))

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0] if self.config.pool == "cls" else x.mean(dim=1)
        if self.fc_norm is not None:
            x = self.fc_norm(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, C, H, W)`` float -> logits ``(B, num_classes)``."""
        return self.forward_head(self._encode(x, cls_only=self.config.pool == "cls"))
