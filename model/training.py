"""The training loop the train stage calls: :func:`fit` a preset on a frames dataset and return the best model.

What it does, and why:

* AdamW (fused; no weight decay on biases, norms, position embeddings and CLS tokens), a per-step cosine schedule with
  linear warm-up, gradient clipping, label smoothing.
* Class imbalance (the default data is about 2:1): ``weighted_loss`` weighs the loss by ``n / (K * n_k)``;
  ``sampler`` draws training clips with a WeightedRandomSampler so every class is seen equally often.
* Model selection and early stopping on the *validation macro F1* (accuracy flatters the majority class); ties go
  to the lower validation loss. The best weights are then evaluated once on the test split.
* A checkpoint after every epoch (``last.pt``, written atomically: model, optimiser, scheduler, epoch, RNG states,
  history, early-stopping state and a fingerprint of options + dataset) and the best weights (``best.pt``).
  ``resume=True`` continues an interrupted run from ``last.pt`` when the fingerprint matches, so a crash costs at
  most one epoch and the result equals an uninterrupted run. Everything is loaded with ``weights_only=True``.
* Device ``auto``: CUDA with bf16 autocast when available, else CPU (fp32). ``torch.compile`` optional.
* ``single_frame=True`` (ablation) wraps the network in :class:`model.predict.SingleFrame`: it sees the middle
  frame repeated ``T`` times, so the architecture is unchanged and only the temporal information is removed.

Reported metrics per epoch (``TrainCallback.on_epoch_end``): ``train_loss`` (the training objective, with label
smoothing and class weights, under augmentation), ``train_accuracy``, ``train_f1`` (macro, from the training
passes), ``val_loss`` (plain cross-entropy), ``val_accuracy``, ``val_f1`` (macro), ``val_auc`` (2 classes only),
``val_precision_<label_slug>``, ``val_recall_<label_slug>``, ``lr``, ``epoch_seconds``. No tracking library is
imported here: the caller plugs one in through the callback.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler, WeightedRandomSampler

from model.data import (
    ClipDataset,
    DatasetError,
    DatasetInfo,
    balanced_class_weights,
    balanced_sample_weights,
    load_dataset,
)
from model.metrics import classification_report, label_slug
from model.predict import SingleFrame, preprocess
from model.presets import PRESETS, build_model, get_config

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
# Options that change how a run executes but not what it computes: they may differ when resuming.
_NOT_FINGERPRINTED = frozenset({"resume", "num_workers", "device", "compile"})


@dataclass
class TrainOptions:
    """Training options; mirror ``tasks.core.config.TrainConfig`` plus the seed:
    ``TrainOptions(**cfg.train.model_dump(), seed=cfg.seed)``."""

    model: str = "vivit-fe-tiny"
    epochs: int = 30
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    grad_clip: float | None = 1.0
    class_balance: Literal["weighted_loss", "sampler", "none"] = "weighted_loss"
    augment: bool = True
    patience: int | None = 8
    device: str = "auto"
    compile: bool = False
    num_workers: int = 0
    resume: bool = True
    single_frame: bool = False
    init: str | None = None  # pretrained checkpoint (model/pretrained.py): a folder or a Hugging Face hub id
    init_inflation: str = "central"
    freeze: str | int = "none"  # "backbone" or the first N blocks (model/pretrained.py:freeze)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in PRESETS:
            raise ValueError(f"unknown model preset {self.model!r}; known presets: {', '.join(sorted(PRESETS))}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError("lr must be > 0, weight_decay and warmup_epochs >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.class_balance not in ("weighted_loss", "sampler", "none"):
            raise ValueError(f"class_balance must be weighted_loss, sampler or none, got {self.class_balance!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")
        if self.num_workers < 0:
            raise ValueError("num_workers must be >= 0")

    def fingerprint(self, dataset: DatasetInfo) -> str:
        """What decides the computation: these options (less the execution-only ones) and the dataset."""
        opts = {k: v for k, v in asdict(self).items() if k not in _NOT_FINGERPRINTED}
        data = dataset.fingerprint or hashlib.sha256(
            dataset.manifest[["clip_id", "label_index", "split", "frames_path"]].to_json().encode()
        ).hexdigest()
        payload = {"options": opts, "dataset": data, "classes": dataset.classes, "num_frames": dataset.num_frames,
                   "image_size": dataset.image_size, "version": CHECKPOINT_VERSION}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    model: nn.Module  # best weights, eval mode, on CPU
    classes: list[str]
    num_frames: int
    image_size: int
    preset: str
    history: list[dict[str, float]]  # flat per-epoch metrics, as the callback got them
    best_epoch: int
    best_val_f1: float
    val_metrics: dict[str, Any]
    test_metrics: dict[str, Any]
    stopped_early: bool
    checkpoint_path: Path  # best.pt
    test_predictions: pd.DataFrame | None = None  # per test clip, see prediction_table()
    epoch_reports: list[dict[str, Any]] = field(default_factory=list)  # per epoch: train/val confusion matrices
    single_frame: bool = False
    resumed_from_epoch: int = 0
    notes: list[str] = field(default_factory=list)


class TrainCallback(Protocol):
    """Receives progress. Both methods are optional: :func:`fit` calls whichever the object has."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def on_train_end(self, result: TrainResult) -> None: ...


# -- small pieces ------------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False


def _epoch_seed(seed: int, epoch: int, salt: int) -> int:
    """Independent, reproducible seeds per (seed, epoch, purpose)."""
    return int(np.random.SeedSequence([seed, epoch, salt]).generate_state(1, dtype=np.uint64)[0] % 2**63)


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors and plain types (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])),
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and kernels only; not on biases, norms, position embeddings and CLS tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(("pos_embed", "cls_token")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(groups: list[dict[str, Any]], *, lr: float) -> torch.optim.Optimizer:
    """AdamW, fused (one kernel for all parameters) where torch supports it: on 2 CPU cores the per-tensor
    implementation measured 3-5x slower per step, and up to 100x slower when other processes share the cores."""
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr)


def warmup_cosine(total_steps: int, warmup_steps: int):
    """LR multiplier per optimiser step: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _atomic_save(obj: Any, path: Path) -> None:
    """Write beside the target, then rename: a crash mid-write never leaves a torn checkpoint under its name."""
    tmp = path.with_name(f".{path.name}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _flat_metrics(prefix: str, report: dict[str, Any], classes: list[str]) -> dict[str, float]:
    out = {f"{prefix}_loss": report["loss"], f"{prefix}_accuracy": report["accuracy"], f"{prefix}_f1": report["f1"]}
    if report.get("auc") is not None:
        out[f"{prefix}_auc"] = report["auc"]
    for c in classes:
        out[f"{prefix}_precision_{label_slug(c)}"] = report["per_class"][c]["precision"]
        out[f"{prefix}_recall_{label_slug(c)}"] = report["per_class"][c]["recall"]
    return {k: float(v) for k, v in out.items() if v is not None}


def _epoch_report(epoch: int, reports: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """What does not fit a flat metric: each split's confusion matrix and per-class table for one epoch."""
    keep = ("confusion_matrix", "per_class", "num_samples")
    return {"epoch": epoch, **{split: {k: r[k] for k in keep} for split, r in reports.items() if r is not None}}


def _call(callback: Any, method: str, *args: Any) -> None:
    fn = getattr(callback, method, None) if callback is not None else None
    if fn is not None:
        fn(*args)


# -- one pass ----------------------------------------------------------------------------------------------------
def _autocast(device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def evaluate(forward: nn.Module, loader: DataLoader, device: torch.device, classes: list[str]) -> dict[str, Any]:
    """The classification report for every clip of ``loader`` (no augmentation), with the plain (unweighted,
    unsmoothed) cross-entropy as ``loss``."""
    labels, probs, loss = _predict(forward, loader, device, classes)
    return classification_report(labels, probs, classes, loss=loss)


@torch.inference_mode()
def _predict(forward: nn.Module, loader: DataLoader, device: torch.device, classes: list[str]):
    """``(labels (N,), probabilities (N, K), mean cross-entropy or None)`` in the loader's order."""
    forward.eval()
    probs, labels, loss_sum = [], [], 0.0
    for frames, y in loader:
        y = y.to(device)
        with _autocast(device):
            logits = forward(preprocess(frames.to(device, non_blocking=True))).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        probs.append(F.softmax(logits, dim=-1).cpu())
        labels.append(y.cpu())
    n = sum(len(y) for y in labels)
    p = torch.cat(probs).numpy() if probs else np.zeros((0, len(classes)))
    t = torch.cat(labels).numpy() if labels else np.zeros(0, np.int64)
    return t, p, loss_sum / n if n else None


def prediction_table(rows: pd.DataFrame, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """One row per clip: ``clip_id``, ``label``, ``predicted``, ``correct``, ``p_<class>`` for every class, and
    for two classes ``p_positive`` (the probability of ``classes[1]``, the positive class), so that a user can
    re-threshold or find the clips the model gets wrong."""
    predicted = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    table = pd.DataFrame({
        "clip_id": rows["clip_id"].to_numpy(), "label": rows["label"].to_numpy(),
        "predicted": [classes[i] for i in predicted],
    })
    table["correct"] = table["label"] == table["predicted"]
    for k, c in enumerate(classes):
        table[f"p_{c}"] = probs[:, k].astype(float)
    if len(classes) == 2:
        table["p_positive"] = probs[:, 1].astype(float)
    return table


def _train_epoch(forward, loader, optimizer, scheduler, criterion, device, grad_clip, classes) -> dict[str, Any]:
    forward.train()
    loss_sum, n, preds, labels, lr = 0.0, 0, [], [], 0.0
    for frames, y in loader:
        y = y.to(device)
        with _autocast(device):
            logits = forward(preprocess(frames.to(device, non_blocking=True))).float()
        loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(forward.parameters(), grad_clip)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * len(y)
        n += len(y)
        preds.append(logits.detach().argmax(-1).cpu())
        labels.append(y.cpu())
    pred = torch.cat(preds).numpy()
    onehot = np.eye(len(classes))[pred]  # a report from hard predictions: accuracy and F1 only
    report = classification_report(torch.cat(labels).numpy(), onehot, classes, loss=loss_sum / max(n, 1))
    report["auc"] = None
    report["lr"] = lr
    return report


# -- fit ---------------------------------------------------------------------------------------------------------
def fit(dataset_dir: Path, options: TrainOptions, *, work_dir: Path, callback: TrainCallback | None = None) -> TrainResult:
    """Train ``options.model`` on ``<dataset_dir>`` (split ``train``), select on ``val`` macro F1, evaluate the best
    weights on ``test``; checkpoints under ``work_dir``. See the module docstring."""
    opts = options
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = work_dir / "last.pt", work_dir / "best.pt"
    info = load_dataset(Path(dataset_dir))
    classes, k = info.classes, len(info.classes)
    train_rows, val_rows, test_rows = info.split("train"), info.split("val"), info.split("test")
    if len(train_rows) == 0:
        raise DatasetError(f"{dataset_dir}: the train split is empty")
    get_config(opts.model, num_classes=k, num_frames=info.num_frames, image_size=info.image_size)  # fail early
    fingerprint = opts.fingerprint(info)
    device = resolve_device(opts.device)
    notes: list[str] = []

    seed_everything(opts.seed)
    if opts.init:
        from model.pretrained import build_pretrained

        preset = get_config(opts.model, num_classes=k, num_frames=info.num_frames, image_size=info.image_size)
        network, init_notes = build_pretrained(opts.init, preset, inflation=opts.init_inflation)
        notes += init_notes
    else:
        network = build_model(opts.model, num_classes=k, num_frames=info.num_frames, image_size=info.image_size)
    if opts.freeze not in ("none", 0, None):
        from model.pretrained import freeze

        notes.append(f"train.freeze={opts.freeze}: {freeze(network, opts.freeze):,} parameters frozen")
    model = (SingleFrame(network) if opts.single_frame else network).to(device)
    forward = torch.compile(model) if opts.compile else model

    def dataset(rows, augment: bool) -> ClipDataset:
        return ClipDataset(dataset_dir, rows, num_frames=info.num_frames, image_size=info.image_size,
                           augment=augment, seed=opts.seed)

    train_ds = dataset(train_rows, opts.augment)
    loader_kw = dict(batch_size=opts.batch_size, num_workers=opts.num_workers, pin_memory=device.type == "cuda")
    eval_loaders = {
        name: DataLoader(dataset(rows, False), sampler=SequentialSampler(range(len(rows))), **loader_kw)
        for name, rows in (("val", val_rows), ("test", test_rows))
    }
    has_val = len(val_rows) > 0
    if not has_val:
        notes.append("the val split is empty: no early stopping, the last epoch is kept")

    train_labels = np.asarray(train_rows["label_index"], dtype=np.int64)
    class_weight = balanced_class_weights(train_labels, k).to(device) if opts.class_balance == "weighted_loss" else None

    def criterion(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, weight=class_weight, label_smoothing=opts.label_smoothing)

    steps_per_epoch = math.ceil(len(train_ds) / opts.batch_size)
    optimizer = make_optimizer(param_groups(model, opts.weight_decay), lr=opts.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(opts.epochs * steps_per_epoch, round(opts.warmup_epochs * steps_per_epoch))
    )

    history: list[dict[str, float]] = []
    epoch_reports: list[dict[str, Any]] = []
    start_epoch, best_epoch, best_f1, best_loss, since_best, stopped_early = 0, 0, -math.inf, math.inf, 0, False
    if opts.resume and last_path.is_file():
        try:
            ckpt = torch.load(last_path, map_location="cpu", weights_only=True)
        except Exception as e:  # a torn or foreign file: start over rather than fail
            log.warning("cannot read %s (%s): starting fresh", last_path, e)
            ckpt = None
        if ckpt is not None and ckpt.get("fingerprint") == fingerprint and best_path.is_file():
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            set_rng_state(ckpt["rng"])
            history = list(ckpt["history"])
            epoch_reports = list(ckpt.get("epoch_reports", []))
            start_epoch, best_epoch, best_f1, best_loss = ckpt["epoch"], ckpt["best_epoch"], ckpt["best_val_f1"], ckpt["best_val_loss"]
            since_best, stopped_early = ckpt["since_best"], ckpt["stopped_early"]
            log.info("resuming from %s after epoch %d", last_path, start_epoch)
            notes.append(f"resumed after epoch {start_epoch}")
        elif ckpt is not None:
            log.info("%s belongs to other options or data: starting fresh", last_path)
    resumed_from = start_epoch
    if start_epoch == 0:
        best_path.unlink(missing_ok=True)  # never let a stale best.pt from other options stand in for this run

    for epoch in range(start_epoch + 1, opts.epochs + 1):
        if stopped_early:
            break
        t0 = time.perf_counter()
        train_ds.set_epoch(epoch)
        g = torch.Generator().manual_seed(_epoch_seed(opts.seed, epoch, 1))
        sampler = (
            WeightedRandomSampler(balanced_sample_weights(train_labels, k), len(train_ds), replacement=True, generator=g)
            if opts.class_balance == "sampler" else RandomSampler(train_ds, generator=g)
        )
        train_loader = DataLoader(train_ds, sampler=sampler, **loader_kw)
        train_report = _train_epoch(forward, train_loader, optimizer, scheduler, criterion, device, opts.grad_clip, classes)
        metrics = _flat_metrics("train", train_report, classes)
        val_report = evaluate(forward, eval_loaders["val"], device, classes) if has_val else None
        if val_report is not None:
            metrics.update(_flat_metrics("val", val_report, classes))
        metrics["lr"] = float(train_report["lr"])
        metrics["epoch_seconds"] = time.perf_counter() - t0

        if val_report is None:
            improved = True
            f1, vloss = math.nan, math.nan
        else:
            f1, vloss = val_report["f1"], val_report["loss"]
            improved = f1 > best_f1 + 1e-12 or (abs(f1 - best_f1) <= 1e-12 and vloss < best_loss)
        if improved:
            best_epoch, best_f1, best_loss, since_best = epoch, f1, vloss, 0
            _atomic_save({"model": _plain_state(network), "epoch": epoch, "val_f1": f1, "preset": opts.model,
                          "model_config": asdict(network.config), "classes": classes,
                          "num_frames": info.num_frames, "image_size": info.image_size,
                          "single_frame": opts.single_frame, "fingerprint": fingerprint}, best_path)
        else:
            since_best += 1
            if opts.patience is not None and since_best >= opts.patience:
                stopped_early = True
        history.append({"epoch": float(epoch), **metrics})
        epoch_reports.append(_epoch_report(epoch, {"train": train_report, "val": val_report}))
        _atomic_save({
            "version": CHECKPOINT_VERSION, "fingerprint": fingerprint, "epoch": epoch,
            "model": _plain_state(model), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": rng_state(), "history": history, "epoch_reports": epoch_reports, "best_epoch": best_epoch,
            "best_val_f1": best_f1, "best_val_loss": best_loss, "since_best": since_best, "stopped_early": stopped_early,
            "options": asdict(opts),
        }, last_path)
        _call(callback, "on_epoch_end", epoch, dict(metrics))
        if stopped_early:
            log.info("early stop after epoch %d: val macro F1 has not improved for %d epochs", epoch, since_best)

    # -- final evaluation of the best weights --------------------------------------------------------------------
    best = torch.load(best_path, map_location="cpu", weights_only=True)
    network.load_state_dict(best["model"])
    val_metrics = evaluate(forward, eval_loaders["val"], device, classes) if has_val else {}
    if len(test_rows):
        labels, probs, loss = _predict(forward, eval_loaders["test"], device, classes)
        test_metrics = classification_report(labels, probs, classes, loss=loss)
        test_predictions = prediction_table(test_rows, probs, classes)
    else:
        test_metrics = {"num_samples": 0, "note": "the test split is empty: no test evaluation"}
        test_predictions = prediction_table(test_rows, np.zeros((0, k)), classes)
        notes.append(test_metrics["note"])
    model.cpu().eval()
    result = TrainResult(
        model=model, classes=list(classes), num_frames=info.num_frames, image_size=info.image_size, preset=opts.model,
        history=history, epoch_reports=epoch_reports, best_epoch=int(best_epoch), best_val_f1=float(best_f1),
        val_metrics=val_metrics, test_metrics=test_metrics, stopped_early=bool(stopped_early),
        checkpoint_path=best_path, test_predictions=test_predictions, single_frame=opts.single_frame,
        resumed_from_epoch=int(resumed_from), notes=notes,
    )
    _call(callback, "on_train_end", result)
    return result


def load_best(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network stored in a ``best.pt`` (eval mode, CPU) and return it with the checkpoint's metadata
    (classes, num_frames, image_size, preset, single_frame)."""
    from model.frame_mlp import FrameMLP
    from model.vivit import ViViT

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg = dict(ckpt["model_config"])
    cls = ViViT if "variant" in cfg else FrameMLP
    network = cls(**cfg)
    network.load_state_dict(ckpt["model"])
    model = SingleFrame(network) if ckpt.get("single_frame") else network
    meta = {k: ckpt[k] for k in ("classes", "num_frames", "image_size", "preset", "single_frame", "epoch", "val_f1")}
    return model.eval(), meta


__all__ = ["TrainOptions", "TrainResult", "TrainCallback", "fit", "evaluate", "prediction_table", "load_best"]
