"""Masked video modelling (VideoMAE, Tong et al. 2022, arXiv:2203.12602) of the train preset's encoder on the
user's own clips: what the pretrain stage runs, and what ``train.init: pretrain`` starts from.

* **Tube masking** (:func:`tube_mask`): per clip, ``mask_ratio`` of the spatial patches are hidden, the same ones
  in every frame, so a hidden patch cannot be copied from the frame before or after it.
* **The encoder sees only the visible patches.** Each visible ``T x p x p`` tube goes through the preset's own
  tokeniser (the conv stem or the linear tubelet embedding) on its own, so nothing of a hidden patch leaks into a
  visible token through the stem's receptive field, and at a 0.9 ratio the stem and the spatial transformer do a
  tenth of a classifier's work. The factorised encoder (model 2, the default ``vivit-fe-conv-tiny``) then runs
  unchanged: the spatial transformer over each time step's visible tokens, the temporal transformer over the
  steps.
* **A light decoder** (:class:`MaskedAutoencoder`): the visible tokens and a learned mask token everywhere else,
  each plus its time step's temporal feature (the temporal transformer's output, so every encoder block gets a
  gradient) and position embeddings, ``decoder_depth`` transformer blocks of ``decoder_dim`` (MLP ratio 2) that
  attend within each time step, and a linear layer to the tube's values. On 2 CPU cores the decoder, not the
  encoder, is most of a step (it sees every token, the encoder a tenth), hence one block and attention per time
  step by default. It is dropped after pretraining.
* **The target** (:func:`reconstruction_target`) is what the network sees at that tube, in the train stage's input
  form (:func:`model.views.to_network_input`: normalised RGB or frame differences), normalised per patch as
  VideoMAE does: ``(v - mean) / sqrt(var + eps)`` over the tube's values. ``eps`` is VideoMAE's 1e-6 for RGB and
  1.0 for differences (in units of :data:`model.views.DIFF_SCALE`): a still patch's difference is quantisation
  noise, which a tiny ``eps`` would blow up to unit variance and ask the network to predict. The loss is the mean
  squared error over the hidden tubes only.
* :func:`pretrain` trains it (AdamW, warm-up + cosine, the train stage's augmentation: one random resized crop and
  flip per clip, a random temporal view per epoch), writes ``last.pt`` after every epoch (atomically; a resume with
  the same fingerprint continues where a killed run stopped and ends with the same weights) and at the end the
  encoder's weights (``encoder.pt``, the classifier's state dict without its head) and ``pretrain.json``.
  :func:`load_encoder` builds the train preset from them for ``fit`` (``model/pretrained.py``).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from model.atomic import atomic_write_text
from model.checkpoint import CHECKPOINT_VERSION, atomic_save, plain_state, rng_state, set_rng_state
from model.data import ClipDataset
from model.evaluation import autocast
from model.layers import Transformer, init_weights
from model.optim import make_optimizer, param_groups, warmup_cosine
from model.options import PRETRAIN_ENCODER, PRETRAIN_META, PretrainOptions, TrainOptions, stable_hash
from model.precision import autocast_dtype
from model.predict import preprocess
from model.presets import build_model
from model.views import ViewSpec
from model.vivit import ViViT, ViViTConfig

log = logging.getLogger(__name__)

# per-patch normalisation of the target: VideoMAE's for RGB; differences: see the module docstring
TARGET_EPS = {"rgb": 1e-6, "diff": 1.0}
PRETRAIN_VERSION = 1


# -- masking and the target ----------------------------------------------------------------------------------------
def tube_mask(batch: int, num_patches: int, ratio: float, *, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep, masked)``: per clip the sorted indices of the ``num_patches - round(ratio * num_patches)``
    (at least 1) visible spatial patches, ``(B, n_keep)`` int64, and a bool mask ``(B, num_patches)`` True where
    the patch is hidden. The same patches are hidden in every frame (a tube)."""
    if not 0 < ratio < 1:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    n_keep = max(1, num_patches - int(round(ratio * num_patches)))
    noise = torch.rand(batch, num_patches, generator=generator)
    keep = noise.argsort(dim=1)[:, :n_keep].sort(dim=1).values.to(device)
    masked = torch.ones(batch, num_patches, dtype=torch.bool, device=device)
    masked.scatter_(1, keep, False)
    return keep, masked


def patchify(x: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """Network input ``(B, T, C, H, W)`` -> tubes ``(B, T/t, S, t*p*p*C)``, ``S`` patches in row-major order (the
    tokenisers' order)."""
    return rearrange(x, "b (nt t) c (gh p1) (gw p2) -> b nt (gh gw) (t p1 p2 c)", t=tubelet, p1=patch, p2=patch)


def unpatchify(tubes: torch.Tensor, tubelet: int, patch: int, grid: int) -> torch.Tensor:
    """The inverse of :func:`patchify`."""
    return rearrange(tubes, "b nt (gh gw) (t p1 p2 c) -> b (nt t) c (gh p1) (gw p2)", t=tubelet, p1=patch, p2=patch,
                     gh=grid, gw=grid)


def reconstruction_target(x: torch.Tensor, tubelet: int, patch: int, input_form: str) -> torch.Tensor:
    """Per-patch-normalised tubes of the network input ``x`` ``(B, T, C, H, W)``: ``(B, T/t, S, t*p*p*C)``."""
    tubes = patchify(x.float(), tubelet, patch)
    mean = tubes.mean(dim=-1, keepdim=True)
    var = tubes.var(dim=-1, unbiased=False, keepdim=True)
    return (tubes - mean) / torch.sqrt(var + TARGET_EPS[input_form])


def masked_loss(pred: torch.Tensor, target: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the hidden tubes only: ``pred``/``target`` ``(B, nt, S, P)``, ``masked`` ``(B, S)``."""
    per_tube = (pred.float() - target).pow(2).mean(dim=-1)  # (B, nt, S)
    weight = masked[:, None, :].expand_as(per_tube).float()
    return (per_tube * weight).sum() / weight.sum().clamp_min(1.0)


# -- the network ---------------------------------------------------------------------------------------------------
def check_encoder(encoder: nn.Module) -> ViViTConfig:
    """The encoder must be a factorised-encoder ViViT (model 2): ValueError naming the presets otherwise."""
    cfg = getattr(encoder, "config", None)
    if not isinstance(encoder, ViViT) or cfg.variant != "factorised_encoder":
        raise ValueError("pretraining needs a factorised-encoder ViViT (train.model vivit-fe-conv-tiny, "
                         "vivit-fe-tiny or vivit-fe-small)")
    return cfg


class MaskedAutoencoder(nn.Module):
    """The train preset's encoder (a :class:`model.vivit.ViViT`, factorised encoder; its head is unused) and a light
    decoder; see the module docstring. ``forward(x, keep)`` -> predicted tubes ``(B, T/t, S, t*p*p*C)`` for every
    position (the loss reads the hidden ones)."""

    def __init__(self, encoder: ViViT, *, decoder_dim: int = 64, decoder_depth: int = 2, decoder_heads: int = 4) -> None:
        super().__init__()
        cfg = check_encoder(encoder)
        self.encoder = encoder
        self.grid = cfg.image_size // cfg.patch_size
        self.num_patches = self.grid**2
        self.steps = cfg.num_frames // cfg.tubelet_size
        self.tube_values = cfg.tubelet_size * cfg.patch_size**2 * cfg.in_channels
        heads = decoder_heads if decoder_dim % decoder_heads == 0 else 1
        self.embed = nn.Linear(cfg.dim, decoder_dim)
        self.context = nn.Linear(cfg.dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, decoder_dim))
        self.dec_pos_embed = nn.Parameter(torch.zeros(1, 1, self.num_patches, decoder_dim))
        self.dec_temporal_pos_embed = nn.Parameter(torch.zeros(1, self.steps, 1, decoder_dim))
        self.decoder = Transformer(decoder_dim, depth=decoder_depth, heads=heads, mlp_ratio=2.0)
        self.out = nn.Linear(decoder_dim, self.tube_values)
        for m in (self.embed, self.context, self.decoder, self.out):
            m.apply(init_weights)
        for p in (self.mask_token, self.dec_pos_embed, self.dec_temporal_pos_embed):
            nn.init.trunc_normal_(p, std=0.02)

    def encode_visible(self, x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B, T, C, H, W)``, ``keep`` ``(B, n)`` -> the visible tokens after the spatial transformer
        ``(B, T/t, n, D)`` and the temporal transformer's output per time step ``(B, T/t, D)``."""
        enc, cfg = self.encoder, self.encoder.config
        enc._check_input(x)
        b, n, p = x.shape[0], keep.shape[1], cfg.patch_size
        tubes = rearrange(x, "b t c (gh p1) (gw p2) -> b (gh gw) t c p1 p2", p1=p, p2=p)
        visible = tubes[torch.arange(b, device=x.device)[:, None], keep]  # (B, n, T, C, p, p)
        tok = enc.patch_embed(visible.flatten(0, 1))  # every tube alone: (B*n, nt, 1, D)
        tok = rearrange(tok, "(b n) nt 1 d -> (b nt) n d", b=b)
        cls = cfg.pool == "cls"
        pos = enc.pos_embed[:, int(cls):].expand(b, -1, -1)  # (B, S, D)
        pos = pos.gather(1, keep[..., None].expand(-1, -1, pos.shape[-1]))  # (B, n, D)
        tok = tok + pos.repeat_interleave(self.steps, dim=0)
        if cls:
            first = (enc.cls_token + enc.pos_embed[:, :1]).expand(tok.shape[0], -1, -1)
            tok = torch.cat([first, tok], dim=1)
        tok = enc.spatial(enc.pos_drop(tok))
        step = tok[:, 0] if cls else tok.mean(dim=1)
        step = rearrange(step, "(b nt) d -> b nt d", b=b)
        if cls:
            step = torch.cat([enc.temporal_cls_token.expand(b, -1, -1), step], dim=1)
        temporal = enc.temporal(step + enc.temporal_pos_embed)[:, int(cls):]
        return rearrange(tok[:, int(cls):], "(b nt) n d -> b nt n d", b=b), temporal

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        visible, temporal = self.encode_visible(x, keep)
        b, nt, n, _ = visible.shape
        tokens = self.mask_token.expand(b, nt, self.num_patches, -1).clone()
        index = keep[:, None, :, None].expand(-1, nt, -1, tokens.shape[-1])
        tokens = tokens.scatter(2, index, self.embed(visible).to(tokens.dtype))
        tokens = tokens + self.context(temporal)[:, :, None] + self.dec_pos_embed + self.dec_temporal_pos_embed
        out = self.decoder(rearrange(tokens, "b nt s d -> (b nt) s d"))  # attention within each time step
        return rearrange(self.out(out), "(b nt) s v -> b nt s v", nt=nt)


def build_autoencoder(train: TrainOptions, opts: PretrainOptions, *, image_size: int, num_classes: int = 2,
                      view: ViewSpec | None = None) -> MaskedAutoencoder:
    """The train preset for clips of ``image_size`` in the train stage's view, under a fresh decoder."""
    view = view or train.view
    encoder = build_model(train.model, num_classes=max(2, num_classes), num_frames=view.num_frames,
                          image_size=image_size, in_channels=view.channels)
    return MaskedAutoencoder(encoder, decoder_dim=opts.decoder_dim, decoder_depth=opts.decoder_depth)


def step_loss(mae: MaskedAutoencoder, x: torch.Tensor, input_form: str, ratio: float,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one batch of network input ``x`` and what it was computed from (keep, masked, pred, target)."""
    cfg = mae.encoder.config
    keep, masked = tube_mask(x.shape[0], mae.num_patches, ratio, generator=generator, device=x.device)
    target = reconstruction_target(x, cfg.tubelet_size, cfg.patch_size, input_form)
    pred = mae(x, keep)
    return masked_loss(pred, target, masked), {"keep": keep, "masked": masked, "pred": pred, "target": target}


# -- the clips -----------------------------------------------------------------------------------------------------
def clip_table(paths: list[str | Path]) -> pd.DataFrame:
    """Rows for :class:`model.data.ClipDataset` from absolute ``.npy`` paths (labels are not used: all 0)."""
    return pd.DataFrame({"frames_path": [str(Path(p).resolve()) for p in paths], "label_index": 0})


def clips_fingerprint(paths: list[str | Path]) -> str:
    """What the clip list depends on: each file's path, size and modification time."""
    rows = []
    for p in sorted(str(x) for x in paths):
        st = Path(p).stat()
        rows.append((p, st.st_size, int(st.st_mtime)))
    return stable_hash(rows)


# -- training ------------------------------------------------------------------------------------------------------
@dataclass
class PretrainResult:
    encoder_path: Path  # encoder.pt
    meta: dict[str, Any]  # pretrain.json's content
    history: list[dict[str, float]]  # per epoch: loss, lr, epoch_seconds
    resumed_from_epoch: int = 0
    examples: dict[str, np.ndarray] = field(default_factory=dict)  # reconstruction_examples()
    cpu_seconds: float = 0.0


def _seed(seed: int, epoch: int, salt: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, salt]).generate_state(1, dtype=np.uint64)[0] % 2**63)


def pretrain(clips: list[str | Path], train: TrainOptions, opts: PretrainOptions, *, num_frames: int,
             image_size: int, work_dir: Path, seed: int = 0, fingerprint: str, about: dict[str, Any] | None = None,
             callback: Any = None, device: torch.device | None = None) -> PretrainResult:
    """Masked video modelling of ``train.model`` on ``clips`` (absolute paths of stored ``(F, S, S, 3)`` uint8
    clips) in ``train``'s view, whose ``input`` must be a concrete form (the stage decides ``auto``). Resumes from
    ``work_dir/last.pt`` when its fingerprint is ``fingerprint``; writes ``encoder.pt`` and ``pretrain.json`` there
    at the end (``about``: what the JSON says the clips were). ``callback.on_epoch_end(epoch, metrics)`` is called
    when present."""
    if train.input == "auto":
        raise ValueError("pretrain needs a concrete input form (rgb or diff), not auto")
    if not clips:
        raise ValueError("no clips to pretrain on")
    started_cpu = time.process_time()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    view = train.view
    view.check_stored(num_frames)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    device = device or _device(opts.device)
    mae = build_autoencoder(train, opts, image_size=image_size, view=view).to(device)
    data = ClipDataset(Path("/"), clip_table(clips), num_frames=num_frames, image_size=image_size, view=view,
                       training=True, augment=train.augment, crop_scale=train.crop_scale, seed=seed)
    steps = math.ceil(len(data) / opts.batch_size)
    optimizer = make_optimizer(param_groups(mae, opts.weight_decay), lr=opts.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(opts.epochs * steps, round(opts.warmup_epochs * steps)))
    amp = autocast_dtype(opts.precision, device)
    last = work_dir / "last.pt"
    history: list[dict[str, float]] = []
    start, cpu_before = 0, 0.0
    if opts.resume and last.is_file():
        try:
            ckpt = torch.load(last, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a torn or foreign file: start over
            log.warning("cannot read %s (%s): starting fresh", last, e)
            ckpt = None
        if ckpt is not None and ckpt.get("fingerprint") == fingerprint:
            mae.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            set_rng_state(ckpt["rng"])
            start, history, cpu_before = int(ckpt["epoch"]), list(ckpt["history"]), float(ckpt.get("cpu_seconds", 0))
            log.info("resuming pretraining from %s after epoch %d", last, start)
    for epoch in range(start + 1, opts.epochs + 1):
        t0 = time.perf_counter()
        mae.train()
        data.set_epoch(epoch)
        order = torch.Generator().manual_seed(_seed(seed, epoch, 1))
        masks = torch.Generator().manual_seed(_seed(seed, epoch, 2))
        loss_sum, n = 0.0, 0
        for frames, _ in DataLoader(data, sampler=RandomSampler(data, generator=order), batch_size=opts.batch_size,
                                    num_workers=opts.num_workers, pin_memory=device.type == "cuda"):
            x = preprocess(frames.to(device, non_blocking=True), view)
            with autocast(device, amp):
                loss, _ = step_loss(mae, x, view.input, opts.mask_ratio, masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(mae.parameters(), 1.0)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(frames)
            n += len(frames)
        metrics = {"loss": loss_sum / max(n, 1), "lr": float(lr), "epoch_seconds": time.perf_counter() - t0}
        history.append({"epoch": float(epoch), **metrics})
        cpu = cpu_before + time.process_time() - started_cpu
        atomic_save({"version": CHECKPOINT_VERSION, "fingerprint": fingerprint, "epoch": epoch,
                     "model": plain_state(mae), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "rng": rng_state(), "history": history,
                     "cpu_seconds": cpu}, last)
        if callback is not None and hasattr(callback, "on_epoch_end"):
            callback.on_epoch_end(epoch, dict(metrics))
    cpu = cpu_before + time.process_time() - started_cpu
    meta = {"version": PRETRAIN_VERSION, "fingerprint": fingerprint, "preset": train.model,
            "model_config": asdict(mae.encoder.config), "view": _plain(asdict(view)), "input": view.input,
            "num_frames": int(num_frames), "image_size": int(image_size), "clips": len(clips),
            "epochs": opts.epochs, "mask_ratio": opts.mask_ratio, "final_loss": history[-1]["loss"] if history else None,
            "cpu_seconds": cpu, "options": opts.determining(), **(about or {})}
    encoder_path = work_dir / PRETRAIN_ENCODER
    atomic_save({"model": {k: v for k, v in plain_state(mae.encoder).items() if not k.startswith("head.")},
                 "model_config": asdict(mae.encoder.config), "fingerprint": fingerprint}, encoder_path)
    atomic_write_text(work_dir / PRETRAIN_META, json.dumps(meta, indent=1))
    examples = reconstruction_examples(mae, data, view, opts, count=opts.figure_clips, seed=seed, device=device)
    return PretrainResult(encoder_path, meta, history, start, examples, cpu)


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def reconstruction_examples(mae: MaskedAutoencoder, data: ClipDataset, view: ViewSpec, opts: PretrainOptions, *,
                            count: int, seed: int = 0, device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """For the first ``count`` clips (an unaugmented view, a fixed mask): ``target``, ``masked`` (the input with
    the hidden tubes zeroed) and ``reconstruction`` (the visible tubes as they are, the hidden ones predicted and
    brought back to the target tube's own mean and spread), each ``(N, T, H, W, C)`` float in the network's input
    form, plus ``input`` (the form's name). Empty when ``count`` is 0."""
    if count <= 0 or len(data) == 0:
        return {}
    mae.eval()
    cfg = mae.encoder.config
    clips = ClipDataset(Path("/"), pd.DataFrame({"frames_path": data.paths[:count], "label_index": 0}),
                        num_frames=data.num_frames, image_size=data.image_size, view=view)
    frames = torch.stack([clips[i][0][0] for i in range(len(clips))]).to(device)  # view 0 of each clip
    x = preprocess(frames, view)
    g = torch.Generator().manual_seed(seed)
    keep, masked = tube_mask(len(x), mae.num_patches, opts.mask_ratio, generator=g, device=x.device)
    tubes = patchify(x, cfg.tubelet_size, cfg.patch_size)
    mean, std = tubes.mean(-1, keepdim=True), torch.sqrt(tubes.var(-1, unbiased=False, keepdim=True)
                                                         + TARGET_EPS[view.input])
    pred = mae(x, keep).float() * std + mean
    hidden = masked[:, None, :, None]
    recon = torch.where(hidden, pred, tubes)
    shown = torch.where(hidden, torch.zeros_like(tubes), tubes)
    back = lambda t: unpatchify(t, cfg.tubelet_size, cfg.patch_size, mae.grid).permute(0, 1, 3, 4, 2).cpu().numpy()  # noqa: E731
    mae.train()
    return {"target": back(tubes), "masked": back(shown), "reconstruction": back(recon), "input": view.input}


# -- loading the encoder for fine-tuning ---------------------------------------------------------------------------
def read_meta(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder).expanduser() / PRETRAIN_META).read_text())


def load_encoder(folder: str | Path, preset: ViViTConfig) -> tuple[ViViT, list[str]]:
    """The train preset ``preset`` (its classes, frames, size and channels as the dataset has them now) with the
    pretrained encoder's weights; the head stays new. ValueError when the shapes do not match (another preset,
    view or frame size than the pretraining's)."""
    folder = Path(folder).expanduser()
    meta = read_meta(folder)
    ckpt = torch.load(folder / PRETRAIN_ENCODER, map_location="cpu", weights_only=True)
    saved = {k: v for k, v in ckpt["model_config"].items() if k != "num_classes"}
    want = {k: v for k, v in asdict(preset).items() if k != "num_classes"}
    differ = sorted(k for k in want if saved.get(k) != want[k])
    if differ:
        shown = ", ".join(f"{k}: pretrained {saved.get(k)!r}, now {want[k]!r}" for k in differ)
        raise ValueError(f"the pretrained encoder in {folder} does not fit this training ({shown}): run the "
                         "pretrain stage again for these options")
    network = ViViT(preset)
    missing, unexpected = network.load_state_dict(ckpt["model"], strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise ValueError(f"{folder / PRETRAIN_ENCODER}: weights do not fit (missing {missing}, unexpected {unexpected})")
    note = (f"started from the pretrain stage's encoder ({folder.name}: {meta.get('clips')} clips, "
            f"{meta.get('epochs')} epochs of masked {meta.get('input')} modelling, final loss "
            f"{meta.get('final_loss') or float('nan'):.4f})")
    return network, [note]


@torch.no_grad()
def pooled_features(network: ViViT, data: ClipDataset, view: ViewSpec, *, batch_size: int = 16,
                    device: torch.device | str = "cpu") -> np.ndarray:
    """The pooled pre-logits features ``(N, D)`` of every clip's evaluation views (averaged): a linear probe's
    input."""
    network.eval().to(device)
    out = []
    for frames, _ in DataLoader(data, batch_size=batch_size, shuffle=False):
        b, v = frames.shape[:2]
        x = preprocess(frames.flatten(0, 1).to(device), view)
        f = network.forward_head(network.forward_features(x), pre_logits=True).float()
        out.append(f.view(b, v, -1).mean(1).cpu())
    return torch.cat(out).numpy()
