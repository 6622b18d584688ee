"""The training loop the train stage calls: :func:`fit` a preset on a frames dataset and return the best model.

What it does, and why:

* AdamW (fused; no weight decay on biases, norms, position embeddings and CLS tokens), a per-step cosine schedule with
  linear warm-up, gradient clipping, label smoothing.
* Class imbalance (the default data is about 2:1): ``weighted_loss`` weighs the loss by ``n / (K * n_k)``.
* Views (:mod:`model.views`): each training step sees one random temporal view per clip; evaluation averages the
  softmax of ``test_views`` fixed views, exactly as the packaged model does at prediction time.
* Which weights are kept (``selection``). ``best_val`` (default): the epoch with the best EMA of the *validation
  macro F1* (accuracy flatters the majority class; the EMA keeps a lucky epoch on 15-80 validation clips from
  deciding), never before ``min_epochs`` (default 0: no floor), ties to the lower validation loss, early stopping after ``patience``.
  ``final``: the weights at the end of the cosine schedule, no early stopping, validation only reports (measured
  no better on real clips: docs/quality.md, "History"). Either way the champion score is the smoothed val F1
  of the kept epoch, and the kept weights are evaluated once on the test split, with confidence intervals.
* A checkpoint after every epoch (``last.pt``, written atomically: model, optimiser, scheduler, epoch, RNG states,
  history, early-stopping state and a fingerprint of options + dataset) and the best weights (``best.pt``).
  ``resume=True`` continues an interrupted run from ``last.pt`` when the fingerprint matches, so a crash costs at
  most one epoch and the result equals an uninterrupted run. Everything is loaded with ``weights_only=True``.
* Device ``auto``: CUDA when available, else CPU. ``precision`` (:mod:`model.precision`): bf16 autocast on CUDA,
  fp32 on CPU unless ``bf16`` is asked for. ``torch.compile`` optional.
* ``processes > 1``: DistributedDataParallel under torchrun (:mod:`model.distributed`): same global batch and
  sample order as one process; rank 0 alone validates, writes checkpoints and reports.
* ``single_frame=True`` (ablation) wraps the network in :class:`model.predict.SingleFrame`: it sees the middle
  position of its view repeated ``T`` times, so the architecture is unchanged and only the temporal information is
  removed (with ``input="rgb"``: one frame, appearance only).

Reported metrics per epoch (``TrainCallback.on_epoch_end``): ``train_loss`` (the training objective, with label
smoothing and class weights, under augmentation), ``train_accuracy``, ``train_f1`` (macro, from the training
passes), ``val_loss`` (plain cross-entropy), ``val_accuracy``, ``val_f1`` (macro), ``val_auc`` (2 classes only),
``val_precision_<label_slug>``, ``val_recall_<label_slug>``, ``val_f1_smoothed`` (the selection score), ``lr``,
``epoch_seconds``. No tracking library is
imported here: the caller plugs one in through the callback.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from model import distributed as ddp
from model.data import ClipDataset, balanced_class_weights
from model.dataset import DatasetError, DatasetInfo, load_dataset
from model.checkpoint import (CHECKPOINT_VERSION, atomic_save, load_best, network_record, plain_state, rng_state,
                              set_rng_state)
from model.evaluation import autocast, evaluate, predict_probabilities, prediction_table
from model.metrics import classification_report, label_slug
from model.optim import make_optimizer, param_groups, warmup_cosine
from model.atomic import atomic_write_text
from model.options import TrainOptions, stable_hash
from model.precision import autocast_dtype
from model.predict import SingleFrame, preprocess
from model.presets import build_model, get_config
from model.views import ViewSpec, view_indices

log = logging.getLogger(__name__)

@dataclass
class TrainResult:
    model: nn.Module  # best weights, eval mode, on CPU
    classes: list[str]
    num_frames: int  # stored frames per clip (what the sampler must produce)
    image_size: int
    view: ViewSpec
    preset: str
    history: list[dict[str, float]]  # flat per-epoch metrics, as the callback got them
    best_epoch: int
    best_val_f1: float  # raw val macro F1 at the selected epoch
    best_val_score: float  # the smoothed val macro F1 that selected it
    val_metrics: dict[str, Any]
    test_metrics: dict[str, Any]
    stopped_early: bool
    checkpoint_path: Path  # best.pt
    test_predictions: pd.DataFrame | None = None  # per test clip, see prediction_table()
    epoch_reports: list[dict[str, Any]] = field(default_factory=list)  # per epoch: train/val confusion matrices
    single_frame: bool = False
    resumed_from_epoch: int = 0
    notes: list[str] = field(default_factory=list)
    # train.input auto: {"chosen", "probe_epochs", "candidates": {input: {"val_score", "val_loss", "epochs"}}}
    input_choice: dict[str, Any] | None = None


class TrainCallback(Protocol):
    """Receives progress. Every method is optional: :func:`fit` calls whichever the object has."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def on_probe_epoch(self, candidate: str, epoch: int, probe_epochs: int, metrics: dict[str, float]) -> None: ...

    def on_train_end(self, result: TrainResult) -> None: ...


# -- small pieces ------------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """``train.device`` on this machine; RuntimeError naming the setting for one it does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RuntimeError(f"train.device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device {name!r}: CUDA is not available on this machine (torch {torch.__version__}): "
                           "use train.device: auto or cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise RuntimeError(f"train.device {name!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                           f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False


def _epoch_seed(seed: int, epoch: int, salt: int) -> int:
    """Independent, reproducible seeds per (seed, epoch, purpose)."""
    return int(np.random.SeedSequence([seed, epoch, salt]).generate_state(1, dtype=np.uint64)[0] % 2**63)


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
# -- the run: what fit() sets up once ------------------------------------------------------------------------------
@dataclass
class _Run:
    """Everything :func:`fit` builds before the first epoch."""

    opts: TrainOptions
    seed: int
    info: DatasetInfo
    view: ViewSpec
    device: torch.device
    network: nn.Module  # the bare network (saved in best.pt)
    model: nn.Module  # network, or SingleFrame(network)
    forward: nn.Module  # model, or its torch.compile'd version
    train_ds: ClipDataset
    loader_kw: dict[str, Any]
    eval_loaders: dict[str, DataLoader]
    criterion: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    fingerprint: str
    last_path: Path
    best_path: Path
    ranks: ddp.Ranks = field(default_factory=ddp.Ranks)
    ddp_model: nn.Module | None = None  # DDP(model) for the training passes when ranks.active
    amp: torch.dtype | None = None  # autocast dtype (None: fp32)
    prepare: Any = None  # a training batch -> the network's input (None: preprocess with the view)
    probabilities: Any = None  # evaluation: view batch -> probabilities (None: model.predict.view_probabilities)

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def has_val(self) -> bool:
        return len(self.eval_loaders["val"].dataset) > 0


@dataclass
class TrainState:
    """What changes from epoch to epoch (and what ``last.pt`` restores): the selection and early-stopping state.

    The score is an exponential moving average of the validation macro F1 (``selection_smoothing``): with 15-80
    validation clips one clip moves F1 by 1-7 points. ``final`` keeps every epoch in turn (the last one stays);
    ``best_val`` never selects before ``min_epochs`` and ties go to the lower validation loss."""

    epoch: int = 0
    best_epoch: int = 0
    best_score: float = -math.inf  # smoothed val F1 at the best epoch
    best_val_f1: float = -math.inf  # raw val F1 at the best epoch
    best_loss: float = math.inf
    smoothed: float | None = None
    since_best: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    epoch_reports: list[dict[str, Any]] = field(default_factory=list)

    def observe(self, epoch: int, f1: float, loss: float, opts: TrainOptions) -> bool:
        """Record epoch ``epoch``'s validation result; True when it becomes the kept epoch."""
        self.epoch = epoch
        a = opts.selection_smoothing
        self.smoothed = f1 if self.smoothed is None else a * self.smoothed + (1 - a) * f1
        if opts.selection == "final":
            self.best_epoch, self.best_score, self.best_val_f1, self.best_loss = epoch, self.smoothed, f1, loss
            return True
        if epoch < min(opts.min_epochs, opts.epochs):
            return False
        score = self.smoothed
        if score > self.best_score + 1e-12 or (abs(score - self.best_score) <= 1e-12 and loss < self.best_loss):
            self.best_epoch, self.best_score, self.best_val_f1, self.best_loss, self.since_best = epoch, score, f1, loss, 0
            return True
        self.since_best += 1
        if opts.patience is not None and self.since_best >= opts.patience:
            self.stopped_early = True
        return False

    def keep_last(self, epoch: int) -> bool:
        """Without a validation split every epoch is the best one: the last is kept."""
        self.epoch, self.best_epoch, self.best_score, self.best_val_f1 = epoch, epoch, math.nan, math.nan
        return True


def _dataset_info(dataset: Path | str | DatasetInfo) -> DatasetInfo:
    """A caller that has read the dataset already (the train task) passes its :class:`DatasetInfo`: read once."""
    return dataset if isinstance(dataset, DatasetInfo) else load_dataset(Path(dataset))


def _setup(dataset: Path | DatasetInfo, opts: TrainOptions, seed: int, work_dir: Path, notes: list[str]) -> _Run:
    info = _dataset_info(dataset)
    dataset_dir = info.path
    k = len(info.classes)
    train_rows = info.split("train")
    if len(train_rows) == 0:
        raise DatasetError(f"{dataset_dir}: the train split is empty")
    view = opts.view
    try:
        view.check_stored(info.num_frames)
    except ValueError as e:
        raise DatasetError(f"{dataset_dir}: {e}") from None
    build = dict(num_classes=k, num_frames=view.num_frames, image_size=info.image_size, in_channels=view.channels)
    get_config(opts.model, **build)  # fail early, with the preset's own message
    ranks = ddp.join(opts.device)
    device = ddp.rank_device(resolve_device(opts.device), ranks)
    seed_everything(seed)
    if opts.init:
        from model.pretrained import build_pretrained, checkpoint_input

        network, init_notes = build_pretrained(opts.init, get_config(opts.model, **build), inflation=opts.init_inflation)
        notes.extend(init_notes)
        source = checkpoint_input(opts.init)  # the checkpoint's RGB statistics travel with the model, in its view
        view = replace(view, mean=source.mean, std=source.std)
    else:
        network = build_model(opts.model, **build)
    if opts.freeze not in ("none", 0, None):
        from model.pretrained import freeze

        notes.append(f"train.freeze={opts.freeze}: {freeze(network, opts.freeze):,} parameters frozen")
    model = (SingleFrame(network) if opts.single_frame else network).to(device)

    def dataset(rows: pd.DataFrame, training: bool) -> ClipDataset:
        return ClipDataset(dataset_dir, rows, num_frames=info.num_frames, image_size=info.image_size, view=view,
                           training=training, augment=training and opts.augment, crop_scale=opts.crop_scale, seed=seed)

    loader_kw = dict(batch_size=opts.batch_size, num_workers=opts.num_workers, pin_memory=device.type == "cuda")
    eval_loaders = {name: DataLoader(dataset(info.split(name), False), shuffle=False, **loader_kw)
                    for name in ("val", "test")}
    loader_kw["batch_size"] = ddp.per_rank_batch(opts.batch_size, ranks)  # training: this rank's share
    train_labels = np.asarray(train_rows["label_index"], dtype=np.int64)
    weight = balanced_class_weights(train_labels, k).to(device) if opts.class_balance == "weighted_loss" else None

    def criterion(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not ranks.active:
            return F.cross_entropy(logits, y, weight=weight, label_smoothing=opts.label_smoothing)
        # the weighted mean over the *global* batch: DDP averages the ranks' gradients, hence the world factor
        total = F.cross_entropy(logits, y, weight=weight, label_smoothing=opts.label_smoothing, reduction="sum")
        norm = weight[y].sum() if weight is not None else torch.tensor(float(len(y)), device=logits.device)
        return total * ranks.world / ddp.global_sum(norm.detach(), ranks)

    steps_per_epoch = math.ceil(len(train_rows) / opts.batch_size)
    optimizer = make_optimizer(param_groups(model, opts.weight_decay), lr=opts.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(opts.epochs * steps_per_epoch, round(opts.warmup_epochs * steps_per_epoch))
    )
    work_dir.mkdir(parents=True, exist_ok=True)
    train_ds, trained, hooks = dataset(train_rows, True), model, {}
    if getattr(network, "frozen_stem", False):  # train the encoder alone, on stem maps computed once per clip
        if ranks.active or opts.single_frame:
            raise ValueError("a frozen-stem start (train.init i3d-kinetics400) trains on one process without "
                             "train.single_frame: its encoder costs seconds per epoch")
        train_ds, eval_loaders, hooks = _stem_cache(network, info, opts, view, seed, device, work_dir,
                                                    loader_kw["batch_size"], notes)
        trained = network.encoder
    forward = torch.compile(trained) if opts.compile else trained
    amp = autocast_dtype(opts.precision, device)
    if amp is not None:
        notes.append(f"train.precision={opts.precision}: {amp} autocast")
    return _Run(opts, seed, info, view, device, network, model, forward,
                train_ds, loader_kw, eval_loaders, criterion, optimizer, scheduler,
                training_fingerprint(opts, seed, info), work_dir / "last.pt", work_dir / "best.pt",
                ranks, ddp.wrap(forward, device, ranks) if ranks.active else None, amp, **hooks)


def _stem_cache(network: nn.Module, info: DatasetInfo, opts: TrainOptions, view: ViewSpec, seed: int,
                device: torch.device, work_dir: Path, batch_size: int,
                notes: list[str]) -> tuple[Any, dict[str, DataLoader], dict[str, Any]]:
    """Every clip's evaluation views through the frozen stem once (training clips mirrored too), cached beside the
    run folders (``../stem-cache``, shared by seeds and by runs that differ only in the encoder's options), then
    datasets of those maps. Identical views (as many stored frames as a view takes) are computed once."""
    from model.i3d_vivit import MapsDataset, compute_maps, map_view_probabilities

    distinct = {tuple(view_indices(info.num_frames, view, view=v)) for v in range(view.test_views)}
    cache_view = view if len(distinct) > 1 else replace(view, test_views=1)
    data = info.fingerprint or stable_hash(info.manifest[["clip_id", "label_index", "split", "frames_path"]].to_json())
    key = stable_hash({"dataset": data, "init": opts.init,
                       "view": repr(cache_view), "size": info.image_size, "until": network.until,
                       "grid": network.encoder.grid, "version": CHECKPOINT_VERSION})
    path = work_dir.parent / "stem-cache" / f"{key}.pt"
    prepare = lambda v: preprocess(v, cache_view)  # noqa: E731
    cached = None
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a torn or foreign file is computed again
            log.warning("cannot read %s (%s): computing the stem maps again", path, e)
    if cached is None:
        started, cached = time.perf_counter(), {}
        for split in ("train", "val", "test"):
            rows = info.split(split)
            clips = ClipDataset(info.path, rows, num_frames=info.num_frames, image_size=info.image_size, view=cache_view)
            cached[split] = {**compute_maps(network, (clips[i][0].numpy() for i in range(len(clips))),
                                            mirrored=split == "train", prepare=prepare, device=device),
                             "labels": torch.tensor(np.array(clips.labels))}
            log.info("stem maps of %d %s clips after %.0f s", len(rows), split, time.perf_counter() - started)
        atomic_save(cached, path)
        notes.append(f"stem maps computed once in {time.perf_counter() - started:.0f} s ({path.name})")
    else:
        notes.append(f"stem maps reused from {path}")
    labels = {s: np.asarray(info.split(s)["label_index"], dtype=np.int64) for s in ("train", "val", "test")}
    train_ds = MapsDataset(cached["train"]["maps"], labels["train"], training=True, views=cache_view.test_views,
                           seed=seed)
    evals = {s: DataLoader(MapsDataset(cached[s]["maps"], labels[s], training=False, views=cache_view.test_views),
                           shuffle=False, batch_size=batch_size) for s in ("val", "test")}
    return train_ds, evals, {"prepare": lambda x: x.float(), "probabilities": map_view_probabilities}


def training_fingerprint(opts: TrainOptions, seed: int, info: DatasetInfo) -> str:
    """What determines a training: the determining options (:meth:`TrainOptions.determining`, so
    ``EXECUTION_ONLY`` ones change nothing), the seed and the dataset. The one definition: ``last.pt`` and
    ``input.json`` carry it (a resume needs it to match) and the train stage names its run folder and ``train_key``
    tag with it (``tasks/train.py`` ``train_key``)."""
    data = info.fingerprint or stable_hash(info.manifest[["clip_id", "label_index", "split", "frames_path"]].to_json())
    return stable_hash({"options": opts.determining(), "seed": seed, "dataset": data, "classes": info.classes,
                        "num_frames": info.num_frames, "image_size": info.image_size, "version": CHECKPOINT_VERSION})


def _restore(run: _Run) -> TrainState:
    """The state of an interrupted identical run from ``last.pt`` (weights, optimiser, RNG too), else a new one."""
    state = TrainState()
    if run.opts.resume and run.last_path.is_file():
        try:
            ckpt = torch.load(run.last_path, map_location="cpu", weights_only=True)
        except Exception as e:  # a torn or foreign file: start over rather than fail
            log.warning("cannot read %s (%s): starting fresh", run.last_path, e)
            ckpt = None
        if ckpt is not None and ckpt.get("fingerprint") == run.fingerprint and run.best_path.is_file():
            run.model.load_state_dict(ckpt["model"])
            run.optimizer.load_state_dict(ckpt["optimizer"])
            run.scheduler.load_state_dict(ckpt["scheduler"])
            set_rng_state(ckpt["rng"])
            state = TrainState(**ckpt["state"])
            log.info("resuming from %s after epoch %d", run.last_path, state.epoch)
            return state
        if ckpt is not None:
            log.info("%s belongs to other options or data: starting fresh", run.last_path)
    if run.ranks.main:
        run.best_path.unlink(missing_ok=True)  # never let a stale best.pt from other options stand in for this run
    return state


def _save_best(run: _Run, state: TrainState) -> None:
    if not run.ranks.main:
        return
    record = network_record(run.network, classes=run.classes, num_frames=run.info.num_frames,
                            image_size=run.info.image_size, view=run.view, single_frame=run.opts.single_frame)
    atomic_save({**record, "epoch": state.best_epoch, "val_f1": state.best_val_f1, "val_score": state.best_score,
                 "preset": run.opts.model, "fingerprint": run.fingerprint}, run.best_path)


def _save_last(run: _Run, state: TrainState) -> None:
    if not run.ranks.main:
        return
    atomic_save({"version": CHECKPOINT_VERSION, "fingerprint": run.fingerprint, "model": plain_state(run.model),
                  "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                  "rng": rng_state(), "state": asdict(state), "options": run.opts.model_dump(mode="json")},
                 run.last_path)


def _train_epoch(run: _Run) -> dict[str, Any]:
    forward, device, opts = run.ddp_model or run.forward, run.device, run.opts
    forward.train()
    loss_sum, n, preds, labels, lr = 0.0, 0, [], [], 0.0
    g = torch.Generator().manual_seed(_epoch_seed(run.seed, run.train_ds.epoch, 1))
    sampler = RandomSampler(run.train_ds, generator=g)
    if run.ranks.active:  # every rank drew the same global order (same generator seed): take this rank's share
        sampler = ddp.GlobalOrderSampler(sampler, run.ranks)
    for frames, y in DataLoader(run.train_ds, sampler=sampler, **run.loader_kw):
        y = y.to(device)
        with autocast(device, run.amp):
            x = frames.to(device, non_blocking=True)
            logits = forward(preprocess(x, run.view) if run.prepare is None else run.prepare(x)).float()
        loss = run.criterion(logits, y)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if opts.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(forward.parameters(), opts.grad_clip)
        lr = run.optimizer.param_groups[0]["lr"]
        run.optimizer.step()
        run.scheduler.step()
        loss_sum += loss.item() * len(y)
        n += len(y)
        preds.append(logits.detach().argmax(-1).cpu())
        labels.append(y.cpu())
    if run.ranks.active:  # the epoch's training metrics over every rank's clips
        parts = ddp.gather((loss_sum, n, preds, labels), run.ranks)
        loss_sum, n = sum(p[0] for p in parts), sum(p[1] for p in parts)
        preds, labels = [t for p in parts for t in p[2]], [t for p in parts for t in p[3]]
    onehot = np.eye(len(run.classes))[torch.cat(preds).numpy()]  # a report from hard predictions: accuracy, F1
    report = classification_report(torch.cat(labels).numpy(), onehot, run.classes, loss=loss_sum / max(n, 1),
                                   intervals=False)
    report["auc"] = None
    report["lr"] = lr
    return report


def _epoch(run: _Run, state: TrainState, epoch: int) -> dict[str, float]:
    """One epoch: train, validate, select, checkpoint. Returns the flat metrics the callback gets."""
    t0 = time.perf_counter()
    run.train_ds.set_epoch(epoch)
    train_report = _train_epoch(run)
    if not run.ranks.main:  # rank 0 validates and decides; the others take its state and metrics
        synced, metrics = ddp.from_main(None, run.ranks)
        state.__dict__.update(synced)
        return metrics
    metrics = _flat_metrics("train", train_report, run.classes)
    val_report = (evaluate(run.forward, run.eval_loaders["val"], run.device, run.classes, run.view, run.amp,
                           run.probabilities) if run.has_val else None)
    if val_report is None:
        improved = state.keep_last(epoch)
    else:
        metrics.update(_flat_metrics("val", val_report, run.classes))
        improved = state.observe(epoch, val_report["f1"], val_report["loss"], run.opts)
        metrics["val_f1_smoothed"] = float(state.smoothed)
    metrics["lr"] = float(train_report["lr"])
    metrics["epoch_seconds"] = time.perf_counter() - t0
    if improved:
        _save_best(run, state)
    state.history.append({"epoch": float(epoch), **metrics})
    state.epoch_reports.append(_epoch_report(epoch, {"train": train_report, "val": val_report}))
    _save_last(run, state)
    if run.ranks.active:
        ddp.from_main((dict(state.__dict__), metrics), run.ranks)
    return metrics


# -- fit ---------------------------------------------------------------------------------------------------------
def fit(dataset: Path | DatasetInfo, options: TrainOptions, *, seed: int = 0, work_dir: Path,
        callback: TrainCallback | None = None) -> TrainResult:
    """Train ``options.model`` on ``dataset`` (its folder, or the :class:`DatasetInfo` a caller has read; split
    ``train``), select on the smoothed ``val`` macro F1,
    evaluate the best weights on ``test``; checkpoints under ``work_dir``. See the module docstring.
    With ``processes > 1`` it launches torchrun, waits for the ranks, then evaluates what they trained here
    (:func:`collect`); inside torchrun (``model/ddp_rank.py``) a rank returns None, because evaluating belongs to
    the process that launched it."""
    if options.processes > 1 and not ddp.in_torchrun():
        info = _dataset_info(dataset)
        ddp.launch(info.path, options, device=resolve_device(options.device), seed=seed, work_dir=work_dir,
                   callback=callback)
        return collect(info, options, seed=seed, work_dir=work_dir, callback=callback)
    notes: list[str] = []
    choice = None
    if options.input == "auto":
        dataset = _dataset_info(dataset)  # read once for the candidates and the kept run
        options, work_dir, choice = _choose_input(dataset, options, seed, Path(work_dir), callback)
        notes.append(_choice_note(choice))
    run = _setup(dataset, options, seed, Path(work_dir), notes)
    state = _restore(run)
    resumed_from = state.epoch if choice is None or choice["resumed_from"] is None else choice["resumed_from"]
    if resumed_from:
        notes.append(f"resumed after epoch {resumed_from}")
    if not run.has_val:
        notes.append("the val split is empty: no early stopping, the last epoch is kept")
    for epoch in range(state.epoch + 1, options.epochs + 1):
        if state.stopped_early:
            break
        metrics = _epoch(run, state, epoch)
        if run.ranks.main:
            _call(callback, "on_epoch_end", epoch, dict(metrics))
        if state.stopped_early:
            log.info("early stop after epoch %d: the smoothed val macro F1 has not improved for %d epochs",
                     epoch, state.since_best)
    if run.ranks.active:
        return None
    result = _final_evaluation(run, state, notes, resumed_from, choice)
    _call(callback, "on_train_end", result)
    return result


# -- train.input: auto ---------------------------------------------------------------------------------------------
CHOICE_FILE = "input.json"


def _choose_input(dataset: Path | DatasetInfo, options: TrainOptions, seed: int, work_dir: Path,
                  callback: Any) -> tuple[TrainOptions, Path, dict[str, Any]]:
    """Train every candidate input for ``options.probe_epochs`` (each in ``work_dir/<input>``, resumable like any
    run: a candidate is exactly the run that names its input), then keep the one with the better smoothed val
    macro F1 (ties: lower val loss). Returns the chosen run's options and folder, to be continued from its probe.

    Why a probe and not two whole runs: on the recorded curves the better input led from a fifth of the schedule on
    (docs/quality.md), and training the loser to the end would double the cost. The decision is written to
    ``input.json`` so that a resumed run, or the launcher of DDP ranks, continues the same candidate."""
    info = _dataset_info(dataset)
    key = training_fingerprint(options, seed, info)
    saved = _saved_choice(work_dir, key) if options.resume else None
    if saved is not None:
        chosen = saved["chosen"]  # decided before an interruption: the chosen run resumes where it stopped
        return options.model_copy(update={"input": chosen, "resume": True}), work_dir / chosen, {**saved, "resumed_from": None}
    probe, candidates, restored = options.probe_epochs, {}, 0
    main = True
    for name in options.inputs:
        run = _setup(info, options.model_copy(update={"input": name}), seed, work_dir / name, [])
        main = run.ranks.main
        state = _restore(run)
        restored = max(restored, min(state.epoch, probe))
        for epoch in range(state.epoch + 1, probe + 1):
            if state.stopped_early:
                break
            metrics = _epoch(run, state, epoch)
            if run.ranks.main:
                _call(callback, "on_probe_epoch", name, epoch, probe, dict(metrics))
        candidates[name] = {"val_score": float(state.best_score), "val_loss": float(state.best_loss),
                            "epochs": int(state.epoch), "has_val": run.has_val}
        del run, state
    if not all(c["has_val"] for c in candidates.values()):
        chosen, why = "rgb", "no validation split to choose on: rgb, the input that keeps appearance"
    else:
        chosen = max(options.inputs, key=lambda n: (candidates[n]["val_score"], -candidates[n]["val_loss"]))
        why = "the better smoothed val macro F1"
    choice = {"fingerprint": key, "chosen": chosen, "why": why, "probe_epochs": probe, "resumed_from": restored,
              "candidates": candidates}
    if main:
        atomic_write_text(work_dir / CHOICE_FILE, json.dumps(choice, indent=1))
    log.info("train.input auto: %s", _choice_note(choice))
    return options.model_copy(update={"input": chosen, "resume": True}), work_dir / chosen, choice


def _saved_choice(work_dir: Path, key: str) -> dict[str, Any] | None:
    """The decision of an earlier (interrupted) run with the same options, seed and data."""
    try:
        saved = json.loads((Path(work_dir) / CHOICE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and saved.get("fingerprint") == key else None


def _choice_note(choice: dict[str, Any]) -> str:
    scores = ", ".join(f"{n} {c['val_score']:.3f}" for n, c in choice["candidates"].items())
    return (f"train.input auto chose {choice['chosen']} after {choice['probe_epochs']} probe epochs "
            f"({choice['why']}: {scores})")


def collect(dataset: Path | DatasetInfo, options: TrainOptions, *, seed: int = 0, work_dir: Path,
            callback: TrainCallback | None = None) -> TrainResult:
    """The result of a run whose epochs other processes trained (torchrun ranks): ``last.pt``'s history and
    ``best.pt`` evaluated once, here."""
    notes: list[str] = []
    single = options.model_copy(update={"processes": 1, "resume": True})
    choice = None
    if single.input == "auto":  # the ranks chose; their decision is in input.json
        choice = _saved_choice(Path(work_dir), training_fingerprint(single, seed, _dataset_info(dataset)))
        if choice is None:
            raise RuntimeError(f"{Path(work_dir) / CHOICE_FILE} holds no input choice of this run")
        single, work_dir = single.model_copy(update={"input": choice["chosen"]}), Path(work_dir) / choice["chosen"]
        notes.append(_choice_note(choice))
    run = _setup(dataset, single, seed, Path(work_dir), notes)
    state = _restore(run)
    if state.epoch == 0:
        raise RuntimeError(f"{run.last_path} holds no finished epoch of this run")
    notes.append(f"trained by {options.processes} DistributedDataParallel processes")
    result = _final_evaluation(run, state, notes, 0, choice)
    _call(callback, "on_train_end", result)
    return result


def _final_evaluation(run: _Run, state: TrainState, notes: list[str], resumed_from: int,
                      choice: dict[str, Any] | None = None) -> TrainResult:
    """Load ``best.pt`` and evaluate it once on val and test."""
    best = torch.load(run.best_path, map_location="cpu", weights_only=True)
    run.network.load_state_dict(best["model"])
    val_metrics = (evaluate(run.forward, run.eval_loaders["val"], run.device, run.classes, run.view, run.amp,
                            run.probabilities) if run.has_val else {})
    test_rows = run.info.split("test")
    if len(test_rows):
        labels, probs, loss = predict_probabilities(run.forward, run.eval_loaders["test"], run.device, run.classes,
                                                    run.view, run.amp, run.probabilities)
        test_metrics = classification_report(labels, probs, run.classes, loss=loss)
    else:
        probs = np.zeros((0, len(run.classes)))
        test_metrics = {"num_samples": 0, "note": "the test split is empty: no test evaluation"}
        notes.append(test_metrics["note"])
    run.model.cpu().eval()
    return TrainResult(
        model=run.model, classes=list(run.classes), num_frames=run.info.num_frames, image_size=run.info.image_size,
        view=run.view, preset=run.opts.model, history=state.history, epoch_reports=state.epoch_reports,
        best_epoch=int(state.best_epoch), best_val_f1=float(state.best_val_f1), best_val_score=float(state.best_score),
        val_metrics=val_metrics, test_metrics=test_metrics, stopped_early=bool(state.stopped_early),
        checkpoint_path=run.best_path, test_predictions=prediction_table(test_rows, probs, run.classes),
        single_frame=run.opts.single_frame, resumed_from_epoch=int(resumed_from), notes=notes,
        input_choice=None if choice is None else {k: choice[k] for k in ("chosen", "probe_epochs", "candidates")},
    )


__all__ = ["TrainOptions", "TrainResult", "TrainCallback", "TrainState", "fit", "collect", "evaluate", "prediction_table",
           "load_best", "training_fingerprint"]
