"""Checkpoint files: atomic writes, the RNG states a resume restores, and loading the kept weights back.

``fit`` writes ``last.pt`` (everything a resume needs) and ``best.pt`` (the kept weights and what describes them)
through :func:`atomic_save`; both load with ``weights_only=True``. A packaged classifier travels in ``best.pt``'s
format too (:func:`save_classifier`), so a registered model is rebuilt from tensors and plain values, never
unpickled.
"""
from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.atomic import atomic_path
from model.predict import SingleFrame, VideoClassifier
from model.views import ViewSpec

CHECKPOINT_VERSION = 2


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


def atomic_save(obj: Any, path: Path) -> None:
    """Write beside the target, then rename: a crash mid-write never leaves a torn checkpoint under its name."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def network_record(network: nn.Module, *, classes: list[str], num_frames: int, image_size: int,
                   view: ViewSpec | None, single_frame: bool) -> dict[str, Any]:
    """What rebuilds a network and says what it sees: its config and weights, the classes, the stored clip shape
    and the view (``best.pt``'s core, and a packaged classifier's whole file). ``network`` is the bare ViViT or
    FrameMLP; ``single_frame`` wraps it again on loading. ``view`` None: the network sees every stored frame as RGB
    (classifiers packaged before views existed)."""
    return {"model": plain_state(network), "model_config": asdict(network.config), "classes": list(classes),
            "num_frames": int(num_frames), "image_size": int(image_size),
            "view": None if view is None else asdict(view),
            "single_frame": bool(single_frame)}


def load_best(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network stored in a ``best.pt`` (or a :func:`save_classifier` file; eval mode, CPU) and return
    it with the file's metadata (classes, num_frames, image_size, view, single_frame; preset, epoch and val_f1
    where a training wrote it)."""
    from model.frame_mlp import FrameMLP, FrameMLPConfig
    from model.vivit import ViViT, ViViTConfig

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg = dict(ckpt["model_config"])
    if cfg.get("family") == "i3d-vivit":
        from model.i3d_vivit import build_i3d_vivit

        enc = {k: v for k, v in cfg["encoder"].items() if k not in ("num_classes", "in_channels")}
        network = build_i3d_vivit(cfg["encoder"]["num_classes"], None, cfg["until"], **enc)
    else:
        network = ViViT(ViViTConfig(**cfg)) if "variant" in cfg else FrameMLP(FrameMLPConfig(**cfg))
    network.load_state_dict(ckpt["model"])
    model = SingleFrame(network) if ckpt.get("single_frame") else network
    meta = {k: ckpt.get(k) for k in ("classes", "num_frames", "image_size", "preset", "single_frame", "epoch", "val_f1")}
    meta["view"] = None if ckpt.get("view") is None else ViewSpec.from_record(ckpt["view"])
    return model.eval(), meta


def save_classifier(classifier: VideoClassifier, path: Path) -> None:
    """A packaged classifier as one weights-only file (``best.pt``'s format), written atomically."""
    single = isinstance(classifier.network, SingleFrame)
    network = classifier.network.network if single else classifier.network
    atomic_save(network_record(network, classes=classifier.classes, num_frames=classifier.num_frames,
                               image_size=classifier.image_size, view=classifier.view,
                               single_frame=single), path)


def load_classifier(path: Path) -> VideoClassifier:
    """The classifier :func:`save_classifier` wrote, on CPU in eval mode, loaded with ``weights_only=True``."""
    network, meta = load_best(path)
    return VideoClassifier(network, classes=meta["classes"], num_frames=meta["num_frames"],
                           image_size=meta["image_size"], view=meta["view"])
