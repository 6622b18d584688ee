"""Transformer building blocks shared by every model family: pre-norm blocks (timm/nanoGPT style) with attention
through :func:`torch.nn.functional.scaled_dot_product_attention` and stochastic depth.

Numerics follow ViViT's reference implementation (Scenic, JAX), as timm's ViT and HF's ViViT port do: LayerNorm
with eps 1e-6 and the tanh approximation of GELU (flax's ``nn.gelu`` default). PyTorch runs that GELU as one fused
kernel, forward and backward. Checkpoints trained in PyTorch (VideoMAE, HF's image ViT) used exact GELU and eps
1e-12: ``act`` and ``norm_eps`` let a loaded model compute their function instead of an approximation of it."""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


LayerNorm = partial(nn.LayerNorm, eps=1e-6)
GELU_APPROXIMATION = {"gelu_tanh": "tanh", "gelu": "none"}  # act name -> nn.GELU(approximate=...)


def check_positive(config: Any, *names: str) -> None:
    """Raise ``ValueError`` naming the first of ``names`` that is not a positive integer on ``config``."""
    for name in names:
        v = getattr(config, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def check_transformer_config(config: Any, *, positive: tuple[str, ...], rates: tuple[str, ...]) -> None:
    """The argument checks every model family's config shares: ``positive`` integers, ``num_classes >= 2``,
    ``dim`` divisible by ``heads``, ``mlp_ratio > 0`` and the dropout-like ``rates`` in ``[0, 1)``."""
    check_positive(config, *positive)
    if not isinstance(config.num_classes, int) or config.num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {config.num_classes!r}")
    if config.dim % config.heads:
        raise ValueError(f"dim {config.dim} must be divisible by heads {config.heads}")
    if config.mlp_ratio <= 0:
        raise ValueError(f"mlp_ratio must be > 0, got {config.mlp_ratio}")
    for name in rates:
        v = getattr(config, name)
        if not 0.0 <= v < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {v}")


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): drop a residual branch for whole samples, rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    """Multi-head self-attention over ``(B, N, D)`` tokens.

    ``num_queries=n`` lets only the first ``n`` tokens attend (to all ``N``) and returns their ``(B, n, D)``
    outputs. When a model reads nothing but the CLS token after its last block, the other ``N - 1`` query rows
    of that block are dead work: skipping them gives the same logits and gradients for a fraction of the cost."""

    def __init__(self, dim: int, *, heads: int, qkv_bias: bool = True, attn_dropout: float = 0.0, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, *, num_queries: int | None = None) -> torch.Tensor:
        if num_queries is None:
            q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads).unbind(0)
        else:  # the q rows of the fused weight for the first tokens only, k and v for all of them
            dim, w, bias = x.shape[-1], self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, :num_queries], w[:dim], None if bias is None else bias[:dim])
            q = rearrange(q, "b n (h d) -> b h n d", h=self.heads)
            kv = F.linear(x, w[dim:], None if bias is None else bias[dim:])
            k, v = rearrange(kv, "b n (two h d) -> two b h n d", two=2, h=self.heads).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        return self.drop(self.proj(rearrange(x, "b h n d -> b n (h d)")))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, *, dropout: float = 0.0, act: str = "gelu_tanh") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate=GELU_APPROXIMATION[act])
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + mlp(LN(x))``."""

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        drop_path: float = 0.0,
        act: str = "gelu_tanh",
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, heads=heads, qkv_bias=qkv_bias, attn_dropout=attn_dropout, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout=dropout, act=act)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, *, num_queries: int | None = None) -> torch.Tensor:
        """``num_queries=n``: only the first ``n`` tokens are updated and returned, ``(B, n, D)``; see
        :class:`Attention`."""
        h = self.norm1(x)
        if num_queries is not None:
            x = x[:, :num_queries]
        x = x + self.drop_path(self.attn(h, num_queries=num_queries))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Transformer(nn.Module):
    """A stack of :class:`Block` with linearly increasing stochastic depth, and a final LayerNorm (``final_norm=False``:
    none, for a model that normalises after pooling instead)."""

    def __init__(
        self,
        dim: int,
        *,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        drop_path: float | list[float] = 0.0,
        act: str = "gelu_tanh",
        norm_eps: float = 1e-6,
        final_norm: bool = True,
    ) -> None:
        super().__init__()
        rates = drop_path if isinstance(drop_path, list) else stochastic_depth_rates(drop_path, depth)
        if len(rates) != depth:
            raise ValueError(f"need {depth} drop path rates, got {len(rates)}")
        self.blocks = nn.ModuleList(
            Block(dim, heads=heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, dropout=dropout,
                  attn_dropout=attn_dropout, drop_path=r, act=act, norm_eps=norm_eps)
            for r in rates
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if final_norm else nn.Identity()

    def forward(self, x: torch.Tensor, *, keep: int | None = None) -> torch.Tensor:
        """``keep=n`` returns only the first ``n`` tokens ``(B, n, D)``, the same values as ``forward(x)[:, :n]``:
        the last block then computes nothing for the others (a model that pools its CLS token needs ``keep=1``)."""
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, num_queries=keep if i == last else None)
        return self.norm(x)


def stochastic_depth_rates(max_rate: float, depth: int) -> list[float]:
    """``0 .. max_rate`` linearly over ``depth`` blocks (the deepest block is dropped most often)."""
    if depth <= 1:
        return [0.0] * depth if max_rate == 0 else [max_rate] * depth
    return [max_rate * i / (depth - 1) for i in range(depth)]


def init_weights(module: nn.Module) -> None:
    """ViT initialisation: truncated normal (std 0.02) for linear/conv weights, zero biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv3d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
