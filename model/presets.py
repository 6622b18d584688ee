"""Named model presets, resolvable from the ``train.model`` string of the config.

Parameter counts and forward GFLOPs per clip (16x128x128, counted with ``torch.utils.flop_counter``, one
multiply-add = 2 FLOPs) are in docs/training.md, "Models"; :func:`describe` computes them for any input size.
"""
from __future__ import annotations

from dataclasses import fields, replace
from functools import lru_cache
from typing import Union

import torch
from torch import nn

from model.frame_mlp import FrameMLP, FrameMLPConfig
from model.options import DEFAULT_PRESET, PRESET_NAMES  # noqa: F401 - DEFAULT_PRESET importable from here too
from model.vivit import ViViT, ViViTConfig

Config = Union[ViViTConfig, FrameMLPConfig]

# Placeholders for the data-dependent fields; build_model() replaces them.
_D = dict(num_classes=2, num_frames=16, image_size=128)

PRESETS: dict[str, Config] = {
    # The original Keras design (per-frame dense embedding, one transformer block): the baseline.
    "frame-mlp": FrameMLPConfig(**_D, hidden=256, dim=128, heads=4, mlp_ratio=2.0, head_hidden=128, dropout=0.1),
    # The earlier default: model 2, factorised encoder. 2x16x16 tubelets -> 8 temporal x 64 spatial tokens. Mean pooling at
    # both levels: with two stacked CLS tokens the factorised encoder sat at chance for ~20 epochs on small data
    # (the temporal-order test task) where mean pooling learned in ~5.
    "vivit-fe-tiny": ViViTConfig(**_D, variant="factorised_encoder", tubelet_size=2, patch_size=16, dim=128,
                                 depth=4, temporal_depth=2, heads=4, mlp_ratio=4.0, pool="mean", dropout=0.0,
                                 drop_path=0.1, head_dropout=0.1, motion_init=True),
    # Default: model 2 with a convolutional tubelet stem and 8x8 patches (an 8x8 grid at 64 px), trained on frame
    # differences (train.input: diff). Measured on real clips (docs/quality.md, "History"): the linear
    # tubelet embedding of vivit-fe-tiny barely fitted ~100 training clips, this one learns them.
    "vivit-fe-conv-tiny": ViViTConfig(**_D, variant="factorised_encoder", tubelet_size=2, patch_size=8, dim=128,
                                      depth=4, temporal_depth=2, heads=4, mlp_ratio=4.0, pool="mean", dropout=0.0,
                                      drop_path=0.1, head_dropout=0.1, stem="conv", stem_width=32),
    "vivit-fe-small": ViViTConfig(**_D, variant="factorised_encoder", tubelet_size=2, patch_size=16, dim=192,
                                  depth=6, temporal_depth=3, heads=3, mlp_ratio=4.0, pool="mean", dropout=0.0,
                                  drop_path=0.1, head_dropout=0.1),
    # Model 1, joint space-time attention over all 512 tokens; same width/heads/tubelet as the default.
    "vivit-joint-tiny": ViViTConfig(**_D, variant="joint", tubelet_size=2, patch_size=16, dim=128, depth=4,
                                    heads=4, mlp_ratio=4.0, pool="cls", dropout=0.0, drop_path=0.1, head_dropout=0.1),
    # Model 3, factorised self-attention (space then time inside each block); mean pooling.
    "vivit-fsa-tiny": ViViTConfig(**_D, variant="factorised_self_attention", tubelet_size=2, patch_size=16, dim=128,
                                  depth=4, heads=4, mlp_ratio=4.0, pool="mean", dropout=0.0, drop_path=0.1,
                                  head_dropout=0.1),
}

assert tuple(PRESETS) == PRESET_NAMES, "model/options.py PRESET_NAMES names the presets, in this order"


def get_config(name: str, *, num_classes: int, num_frames: int, image_size: int, **overrides) -> Config:
    """The preset's config with the data-dependent fields (and any ``overrides``) filled in; validated."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    base = PRESETS[name]
    known = {f.name for f in fields(base)}
    bad = set(overrides) - known
    if bad:
        raise ValueError(f"preset {name!r} has no field(s) {sorted(bad)}; fields: {sorted(known)}")
    return replace(base, num_classes=num_classes, num_frames=num_frames, image_size=image_size, **overrides)


def build_model(name: str, *, num_classes: int, num_frames: int, image_size: int, **overrides) -> nn.Module:
    """Instantiate preset ``name`` for ``num_classes`` classes and ``(num_frames, 3, image_size, image_size)`` input."""
    cfg = get_config(name, num_classes=num_classes, num_frames=num_frames, image_size=image_size, **overrides)
    return (ViViT if isinstance(cfg, ViViTConfig) else FrameMLP).from_config(cfg)


def register_cpu_attention_flops() -> None:
    """torch's FlopCounterMode has formulas for the CUDA attention kernels but not for the CPU flash kernel that
    ``scaled_dot_product_attention`` uses on CPU when gradients are on, so attention would count as free there.
    Register the same formulas for it (once; a no-op if torch has them)."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None and fwd not in fc.flop_registry:
        @fc.register_flop_formula(fwd)
        def _fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return fc.sdpa_flop_count(query_shape, key_shape, value_shape)
    if bwd is not None and bwd not in fc.flop_registry:
        @fc.register_flop_formula(bwd)
        def _bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Forward FLOPs (2 per multiply-add) for one input of ``input_shape`` (including the batch dimension)."""
    from torch.utils.flop_counter import FlopCounterMode

    register_cpu_attention_flops()
    x = torch.zeros(input_shape, device=next(model.parameters()).device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def describe(name: str, num_frames: int = 16, image_size: int = 64, num_classes: int = 2, in_channels: int = 3) -> dict:
    """``{"params": int, "gflops": float}``: parameters and forward GFLOPs per view of ``num_frames x image_size^2``
    (``in_channels`` per position). Built on the meta device, so it costs milliseconds and no memory."""
    return dict(_describe(name, num_frames, image_size, num_classes, in_channels))


@lru_cache(maxsize=64)
def _describe(name: str, num_frames: int, image_size: int, num_classes: int, in_channels: int) -> dict:
    with torch.device("meta"):
        model = build_model(name, num_classes=num_classes, num_frames=num_frames, image_size=image_size,
                            in_channels=in_channels)
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model.eval(), (1, num_frames, in_channels, image_size, image_size))
    return {"params": int(params), "gflops": round(flops / 1e9, 3)}
