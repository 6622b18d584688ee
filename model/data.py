"""Training samples from the stored dataset (its format: :mod:`model.dataset`), read lazily.

Each clip is a ``(T, S, S, 3)`` uint8 ``.npy``. Clips are memory-mapped (``np.load(mmap_mode="r")``) and only
the crop a sample needs is read, so memory does not grow with the number of clips.

Augmentation is the same for every frame of a clip (one random resized crop box and one flip decision per clip),
because a per-frame crop would make objects jitter and fake the motion the model is meant to learn. Each sample's
randomness comes from ``(seed, epoch, index)``, so an epoch is reproducible whatever the worker count and after a
resume.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from model.dataset import DatasetError
from model.views import ViewSpec, eval_views, view_indices


def random_resized_crop_box(
    rng: np.random.Generator, height: int, width: int, *, scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` as torchvision's RandomResizedCrop draws it (10 tries, then the centre crop)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def _resize_uint8(frames: np.ndarray, size: int) -> np.ndarray:
    """``(T, h, w, 3)`` uint8 -> ``(T, size, size, 3)`` uint8, bilinear with antialiasing."""
    x = torch.from_numpy(np.array(frames)).permute(0, 3, 1, 2).float()  # (T, 3, h, w); np.array copies mapped pages
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


class ClipDataset(Dataset):
    """Clips of one split with their label index; see the module docstring.

    With a ``view`` (:class:`model.views.ViewSpec`): in ``training`` mode each item is one view at random positions
    (a new draw every epoch), uint8 ``(frames_per_view, S, S, 3)``; otherwise the spec's fixed evaluation views,
    ``(V, frames_per_view, S, S, 3)``. Without a view, every stored frame, ``(F, S, S, 3)``. Only the frames a view
    needs are read from the memory-mapped file. Call :meth:`set_epoch` before each epoch so augmentation differs
    between epochs (and is reproducible)."""

    def __init__(self, dataset_dir: Path, rows: pd.DataFrame, *, num_frames: int, image_size: int,
                 view: ViewSpec | None = None, training: bool = False, augment: bool = False,
                 crop_scale: float = 0.5, seed: int = 0) -> None:
        self.root = Path(dataset_dir)
        self.paths = [str(p) for p in rows["frames_path"]]
        self.labels = np.asarray(rows["label_index"], dtype=np.int64)
        self.num_frames, self.image_size = int(num_frames), int(image_size)
        if view is not None:
            view.check_stored(self.num_frames)
        self.view, self.training = view, bool(training)
        self.augment, self.crop_scale, self.seed, self.epoch = bool(augment), float(crop_scale), int(seed), 0

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _open(self, i: int) -> np.ndarray:
        path = self.root / self.paths[i]
        arr = np.load(path, mmap_mode="r")
        if arr.ndim != 4 or arr.shape[0] != self.num_frames or arr.shape[3] != 3 or arr.dtype != np.uint8:
            raise DatasetError(f"{path}: expected uint8 ({self.num_frames}, H, W, 3), got {arr.dtype} {arr.shape}")
        return arr

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        arr = self._open(i)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        if self.view is None:
            frames = arr
        elif self.training:
            frames = arr[view_indices(self.num_frames, self.view, rng=rng)]  # fancy indexing reads only these frames
        else:
            frames = eval_views(arr, self.view)  # (V, P, H, W, 3)
        t, h, w = frames.shape[-4:-1]
        flat = frames.reshape(-1, h, w, 3)
        if self.augment:
            top, left, ch, cw = random_resized_crop_box(rng, h, w, scale=(self.crop_scale, 1.0))
            flat = _resize_uint8(flat[:, top : top + ch, left : left + cw], self.image_size)  # same box every frame
            if rng.random() < 0.5:
                flat = flat[:, :, ::-1]  # same flip every frame
        elif (h, w) != (self.image_size, self.image_size):
            flat = _resize_uint8(flat, self.image_size)
        out = np.array(flat).reshape(frames.shape[:-3] + (self.image_size, self.image_size, 3))  # copy: read the pages
        return torch.from_numpy(out), int(self.labels[i])


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """``n / (K * n_k)`` per class (scikit-learn's "balanced"), so each class carries the same total weight in the
    loss; a class absent from training gets weight 0 (it contributes nothing to the loss anyway)."""
    counts = class_counts(labels, num_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(num_classes)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(w, dtype=torch.float32)
