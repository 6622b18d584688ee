"""What the pretrain stage pretrains on and where its output lives, without Prefect or MLflow.

* :func:`pretrain_clips`: the stored clips of ``pretrain.splits`` (train and val by default; test is refused by the
  config and never read here) plus ``pretrain.extra_clips``: folders of videos (sampled once, as the frames stage
  samples, into ``data_dir/pretrain/extra/``) or another stored dataset (every clip of it; if it is this very
  dataset, only its train and val clips).
* :func:`decide_input`: the input form the encoder is pretrained on, which is the form training will use.
  ``train.input`` rgb/diff is taken as it is. ``auto`` (the default) is decided on the train and val splits
  only: the baseline's two feature halves (``tasks/lib/baseline.py``: the mean frame, i.e. appearance, and the
  motion energy), each a logistic regression fitted on train (C by cross-validation on train), scored by val macro
  F1; differences when motion scores at least as well as appearance, else RGB. Without val clips: RGB, as
  ``train.input: auto`` does. Seconds, where training both candidates (what ``fit`` does for ``auto``) would cost
  a whole pretraining each.
* :func:`pretrain_key`: the fingerprint of the dataset, the clips, the options and the seed; the stage's output is
  ``data_dir/pretrain/<key>/`` (``last.pt``, ``encoder.pt``, ``pretrain.json``) and the train stage finds it by the
  same key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from model.dataset import DatasetError, DatasetInfo, load_dataset
from model.options import PRETRAIN_INIT, PRETRAIN_META, PretrainOptions, TrainOptions, stable_hash

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")


def pretrain_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "pretrain"


def uses_pretraining(train: TrainOptions, pretrain: PretrainOptions) -> bool:
    """Training starts from the pretrain stage's encoder: ``train.init: pretrain``, or ``pretrain.enabled`` with no
    other ``train.init``."""
    return train.init == PRETRAIN_INIT or (pretrain.enabled and not train.init)


def split_clips(info: DatasetInfo, splits: list[str]) -> list[Path]:
    if "test" in splits:
        raise ValueError("pretrain.splits must not include test: the test split is only ever evaluated")
    rows = info.manifest[info.manifest["split"].isin(splits)]
    return [info.path / p for p in rows["frames_path"]]


def extra_clips(folders: list[str], info: DatasetInfo, cache: Path) -> tuple[list[Path], list[str]]:
    """The clips of ``pretrain.extra_clips`` and one note per folder. Raises ValueError for a folder that does not
    exist or holds no clip."""
    paths: list[Path] = []
    notes: list[str] = []
    for folder in folders:
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise ValueError(f"pretrain.extra_clips: {folder} is not a folder")
        dataset = next((d for d in (root, root / "dataset") if (d / "dataset.json").is_file()), None)
        if dataset is not None:
            other = load_dataset(dataset)
            if (other.num_frames, other.image_size) != (info.num_frames, info.image_size):
                raise ValueError(f"pretrain.extra_clips: {dataset} stores {other.num_frames} frames of "
                                 f"{other.image_size}px, this dataset {info.num_frames} of {info.image_size}px")
            same = other.fingerprint == info.fingerprint or dataset.resolve() == info.path.resolve()
            rows = other.manifest[other.manifest["split"] != "test"] if same else other.manifest
            found = [other.path / p for p in rows["frames_path"]]
            notes.append(f"{folder}: {len(found)} stored clips" + (" (this dataset: test left out)" if same else ""))
        else:
            videos = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
            found, failed = sample_videos(videos, info.num_frames, info.image_size, cache)
            notes.append(f"{folder}: {len(found)} videos sampled" + (f", {failed} unreadable" if failed else ""))
        if not found:
            raise ValueError(f"pretrain.extra_clips: {folder} holds no video and no stored dataset")
        paths += found
    return paths, notes


def sample_videos(videos: list[Path], num_frames: int, size: int, cache: Path) -> tuple[list[Path], int]:
    """Each video sampled like the frames stage (``tasks/lib/sampling.py``) into ``cache``, once: a file's name
    is the hash of its path, size, modification time and the sampling parameters."""
    from model.atomic import atomic_path
    from tasks.lib.sampling import SamplingError, sample_clip, sampling_params

    out, failed = [], 0
    for video in videos:
        st = video.stat()
        name = stable_hash([str(video.resolve()), st.st_size, int(st.st_mtime), sampling_params(num_frames, size)])
        target = Path(cache) / f"{name}.npy"
        if not target.is_file():
            try:
                frames = sample_clip(video, num_frames, size)
            except (SamplingError, OSError, ValueError):
                failed += 1
                continue
            with atomic_path(target) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, frames)
        out.append(target)
    return out, failed


def pretrain_clips(info: DatasetInfo, opts: PretrainOptions, data_dir: Path) -> tuple[list[Path], list[str]]:
    """Every clip the stage pretrains on and notes saying where they came from."""
    own = split_clips(info, list(opts.splits))
    extra, notes = extra_clips(list(opts.extra_clips), info, pretrain_dir(data_dir) / "extra")
    return own + extra, [f"{len(own)} clips of the {'+'.join(opts.splits)} split(s)", *notes]


def decide_input(info: DatasetInfo, train: TrainOptions) -> tuple[str, dict[str, Any]]:
    """The input form to pretrain (and then train) on, and why; see the module docstring."""
    if train.input != "auto":
        return train.input, {"why": "train.input"}
    from threadpoolctl import threadpool_limits

    from model.metrics import macro_f1
    from tasks.lib.baseline import SIDE, _classifier, choose_C, dataset_features

    df = info.manifest
    split = df["split"].to_numpy()
    if not (split == "val").any():
        return "rgb", {"why": "no validation split to choose on: rgb, the input that keeps appearance"}
    x = dataset_features(info).astype(np.float64)
    y = df["label_index"].to_numpy(dtype=int)
    k = len(info.classes)
    train_rows, val_rows = split == "train", split == "val"
    scores = {}
    with threadpool_limits(1):
        for name, cols in (("rgb", slice(0, SIDE * SIDE)), ("diff", slice(SIDE * SIDE, None))):
            C = choose_C(x[train_rows][:, cols], y[train_rows])
            clf = _classifier(C).fit(x[train_rows][:, cols], y[train_rows])
            scores[name] = float(macro_f1(y[val_rows], clf.predict(x[val_rows][:, cols]), k))
    chosen = "diff" if scores["diff"] >= scores["rgb"] else "rgb"
    return chosen, {"why": "val macro F1 of a logistic regression on motion energy (diff) vs the mean frame (rgb)",
                    "val_f1": scores}


def pretrain_key(info: DatasetInfo, train: TrainOptions, opts: PretrainOptions, seed: int) -> str:
    """What decides the pretrained encoder: the dataset, the extra folders (their contents are fingerprinted when
    they are read), the pretrain options, the network and its view, the augmentation, the seed."""
    view = {k: getattr(train, k) for k in ("model", "input", "view_frames", "augment", "crop_scale")}
    return stable_hash({"dataset": info.fingerprint, "num_frames": info.num_frames, "image_size": info.image_size,
                        "pretrain": opts.determining(), "train": view, "seed": seed, "version": 1})


def output_dir(data_dir: Path, key: str) -> Path:
    return pretrain_dir(data_dir) / key


def finished(folder: Path) -> bool:
    return (Path(folder) / PRETRAIN_META).is_file() and (Path(folder) / "encoder.pt").is_file()

