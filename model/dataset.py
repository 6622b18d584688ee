"""The stored dataset's format, in one place: its layout, the manifest schema, ``dataset.json``, the writer, the
reader and the fingerprint.

The frames stage writes a dataset through :func:`write_dataset_files`; training (``fit``), the train task and
tracking read it through :func:`load_dataset`, once per stage, as a typed :class:`DatasetInfo`. It lives in
``model/`` because the network's data loader reads it and ``model/`` must stand alone (MLflow ships it as the
logged model's code); it needs pandas and the standard library only.

Layout of ``<data_dir>/dataset/``::

    frames/<label_slug>/<clip_id>.npy   (num_frames, image_size, image_size, 3) uint8, uniform over the clip
    manifest.parquet                    one row per clip, MANIFEST_COLUMNS
    dataset.json                        classes, num_frames, size, sampling parameters, fingerprint, splits

``dataset.json`` stores the frame side as ``size`` (the key every written dataset has); in Python the quantity is
``image_size`` everywhere.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from model.atomic import atomic_path, atomic_write_text
from model.options import stable_hash

MANIFEST_NAME, META_NAME, FRAMES_DIR = "manifest.parquet", "dataset.json", "frames"
SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = [
    "clip_id", "label", "label_index", "split", "frames_path", "num_frames", "source_path", "fps", "duration",
    "height", "width", "youtube_id", "time_start", "time_end", "official_split", "source_frames", "source_width",
    "source_height", "frames_sha256", "frames_mtime_ns",
]
REQUIRED_COLUMNS = ("clip_id", "label", "label_index", "split", "frames_path")
# What a model trained on the dataset depends on, per clip (the pixel digest included).
FINGERPRINT_COLUMNS = ("clip_id", "label", "label_index", "split", "frames_path", "num_frames", "frames_sha256")


class DatasetError(ValueError):
    """The dataset folder is missing, malformed or inconsistent with dataset.json."""


@dataclass(frozen=True)
class DatasetInfo:
    """A stored dataset as every reader sees it: rows sorted by (split, clip_id), labels checked against
    ``classes``."""

    classes: list[str]
    num_frames: int
    image_size: int
    fingerprint: str | None
    manifest: pd.DataFrame
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # dataset.json as written

    def split(self, name: str) -> pd.DataFrame:
        return self.manifest[self.manifest["split"] == name].reset_index(drop=True)

    @property
    def split_counts(self) -> dict[str, int]:
        return {s: int(n) for s, n in self.manifest["split"].value_counts().items()}

    @property
    def class_counts(self) -> dict[str, int]:
        return {c: int(n) for c, n in self.manifest["label"].value_counts().items()}

    @property
    def manifest_path(self) -> Path | None:
        return self.path / MANIFEST_NAME if self.path else None


def frames_relpath(label_slug: str, clip_id: str) -> str:
    """``frames/<label_slug>/<clip_id>.npy``, relative to the dataset folder (so the folder can be moved)."""
    return f"{FRAMES_DIR}/{label_slug}/{clip_id}.npy"


def dataset_fingerprint(manifest_rows: list[dict], params: dict, classes: list[str]) -> str:
    """Hash of what a model trained on the dataset depends on: the manifest's content (including every clip's
    pixel digest, split and label) and the sampling parameters. Row order does not matter."""
    rows = sorted((tuple(str(r.get(k, "")) for k in FINGERPRINT_COLUMNS) for r in manifest_rows))
    return stable_hash({"params": params, "classes": list(classes), "rows": rows})


def split_counts(rows: list[dict], classes: list[str]) -> dict[str, dict[str, int]]:
    """``{class: {split: clips}}`` for every class and split, zeros included."""
    counts = {c: dict.fromkeys(SPLITS, 0) for c in classes}
    for r in rows:
        counts[r["label"]][r["split"]] += 1
    return counts


def write_dataset_files(dataset_dir: Path, rows: list[dict], *, classes: list[str], num_frames: int,
                        image_size: int, params: dict, sampling: str, split_mode: str,
                        split_fractions: list[float], seed: int) -> tuple[Path, Path, str]:
    """Write ``manifest.parquet`` (``rows`` in :data:`MANIFEST_COLUMNS`) then ``dataset.json``, each atomically.
    ``dataset.json`` goes last: its fingerprint vouches for the manifest beside it. Returns both paths and the
    fingerprint."""
    manifest = Path(dataset_dir) / MANIFEST_NAME
    with atomic_path(manifest) as tmp:
        pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_parquet(tmp, index=False)
    fingerprint = dataset_fingerprint(rows, params, classes)
    meta = {
        "classes": list(classes), "num_frames": int(num_frames), "size": int(image_size), "sampling": sampling,
        "fingerprint": fingerprint, "params": params, "split_mode": split_mode, "split_fractions": list(split_fractions),
        "seed": seed, "clips": len(rows), "counts": split_counts(rows, classes),
    }
    meta_path = atomic_write_text(Path(dataset_dir) / META_NAME, json.dumps(meta, indent=2) + "\n")
    return manifest, meta_path, fingerprint


def previous_rows(dataset_dir: Path) -> dict[str, dict[str, Any]]:
    """The manifest rows a previous run wrote, by ``frames_path`` (empty when there is none or it is damaged: that
    only costs digests being recomputed)."""
    p = Path(dataset_dir) / MANIFEST_NAME
    if not p.is_file():
        return {}
    try:
        df = pd.read_parquet(p)
    except Exception:  # noqa: BLE001 - any unreadable manifest is as good as none
        return {}
    return {str(r["frames_path"]): r for r in df.to_dict("records")}


def previous_params(dataset_dir: Path) -> dict[str, Any] | None:
    """The sampling parameters a previous run recorded in ``dataset.json``, or None."""
    try:
        return json.loads((Path(dataset_dir) / META_NAME).read_text()).get("params")
    except (OSError, ValueError, AttributeError):
        return None


def load_dataset(dataset_dir: Path) -> DatasetInfo:
    """Read and check ``manifest.parquet`` + ``dataset.json``; rows are sorted by (split, clip_id) so every
    consumer sees one order."""
    dataset_dir = Path(dataset_dir)
    manifest_path, meta_path = dataset_dir / MANIFEST_NAME, dataset_dir / META_NAME
    if not manifest_path.is_file() or not meta_path.is_file():
        raise DatasetError(f"{dataset_dir} has no {MANIFEST_NAME} + {META_NAME}: run the frames stage first "
                           "(`vivit frames --config ...`)")
    meta = json.loads(meta_path.read_text())
    for key in ("classes", "num_frames", "size"):
        if key not in meta:
            raise DatasetError(f"{meta_path} lacks {key!r}")
    classes = [str(c) for c in meta["classes"]]
    if len(classes) < 2:
        raise DatasetError(f"{meta_path}: need at least two classes, got {classes}")
    df = pd.read_parquet(manifest_path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"{manifest_path} lacks columns {missing}")
    bad_split = sorted(set(df["split"]) - set(SPLITS))
    if bad_split:
        raise DatasetError(f"{manifest_path}: unknown splits {bad_split}")
    idx = df["label_index"].astype(int)
    if len(df) and (idx.min() < 0 or idx.max() >= len(classes)):
        raise DatasetError(f"{manifest_path}: label_index outside [0, {len(classes)})")
    mismatch = df[[classes[i] != lab for i, lab in zip(idx, df["label"])]]
    if len(mismatch):
        raise DatasetError(f"{manifest_path}: label and label_index disagree for clip {mismatch['clip_id'].iloc[0]!r}")
    df = df.assign(label_index=idx).sort_values(["split", "clip_id"], kind="mergesort").reset_index(drop=True)
    return DatasetInfo(classes=classes, num_frames=int(meta["num_frames"]), image_size=int(meta["size"]),
                       fingerprint=meta.get("fingerprint"), manifest=df, path=dataset_dir, meta=meta)
