"""A labelled set of local videos to evaluate a model on (``vivit evaluate``): a CSV of ``path,label`` rows, or a
folder with one sub-folder per class.

* **CSV**: a header naming a path column (``path``, ``video``, ``file`` or ``filename``) and a ``label`` column;
  other columns are ignored. Relative paths are relative to the CSV's own folder, as in ``vivit predict``'s lists.
* **Folder**: ``ROOT/<class>/**/<video>``; the sub-folder's name is the label, the videos are found as ``vivit
  predict`` finds them in a folder (video suffixes, recursively, no hidden or partial files).
* **Kinetics CSV** (``label,youtube_id,time_start,time_end[,split]``) with a ``data_dir``: each row is the clip the
  download stage stored as ``<data_dir>/raw/<label_slug>/<id>_<start>_<end>.mp4``; ``split`` keeps the rows of one
  split. A clip that is not there (never downloaded, or quarantined by the filter stage) is still listed, and
  the evaluation reports it as unreadable.

Labels are checked against the model's classes before anything is decoded: an unknown one is a
:class:`~tasks.lib.errors.UserError` naming it and the classes the model knows.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import UserError
from .filtering import VIDEO_SUFFIXES
from .paths import is_partial

PATH_COLUMNS = ("path", "video", "file", "filename")


@dataclass(frozen=True)
class LabelledClip:
    path: str
    label: str


def _videos_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                  and not p.name.startswith(".") and not is_partial(p))


KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")


def _from_kinetics(path: Path, rows: list[list[str]], data_dir: Path | None, split: str | None) -> list[LabelledClip]:
    from .paths import UnsafePathError, clip_stem, label_slug, safe_join

    if data_dir is None:
        raise UserError(f"{path} is a Kinetics annotation file (YouTube ids, no local files): pass --data-dir (or "
                        "--config) naming the data_dir the download stage stored them in, or list local files as a "
                        "CSV with columns path,label, or a folder per class")
    header = [h.strip().lower() for h in rows[0]]
    col = {k: header.index(k) for k in (*KINETICS_COLUMNS, "split") if k in header}
    if split is not None and "split" not in col:
        raise UserError(f"{path} has no split column to take --split {split} from")
    out = []
    for n, r in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in r):
            continue
        if split is not None and r[col["split"]].strip() != split:
            continue
        try:
            label = r[col["label"]].strip()
            stem = clip_stem(r[col["youtube_id"]].strip(), float(r[col["time_start"]]), float(r[col["time_end"]]))
            out.append(LabelledClip(str(safe_join(data_dir, "raw", label_slug(label), stem + ".mp4")), label))
        except (IndexError, ValueError, UnsafePathError) as e:
            raise UserError(f"{path} line {n}: {e}") from None
    return out


def _from_csv(path: Path, data_dir: Path | None = None, split: str | None = None) -> list[LabelledClip]:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise UserError(f"{path} is empty: write a header 'path,label' and one row per video")
    header = [h.strip().lower() for h in rows[0]]
    col = next((header.index(k) for k in PATH_COLUMNS if k in header), None)
    if col is None and set(KINETICS_COLUMNS) <= set(header):
        return _from_kinetics(path, rows, data_dir, split)
    if split is not None:
        raise UserError(f"--split applies to a Kinetics annotation file; {path} lists paths")
    if col is None or "label" not in header:
        raise UserError(f"{path} needs a header with a path column ({', '.join(PATH_COLUMNS)}) and a label column, "
                        f"got {','.join(rows[0])!r}")
    lab = header.index("label")
    out = []
    for n, r in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in r):
            continue
        if len(r) <= max(col, lab) or not r[col].strip() or not r[lab].strip():
            raise UserError(f"{path} line {n}: needs a path and a label, got {','.join(r)!r}")
        p = Path(r[col].strip())
        out.append(LabelledClip(str(p if p.is_absolute() else path.parent / p), r[lab].strip()))
    return out


def _from_folder(root: Path) -> list[LabelledClip]:
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UserError(f"{root} has no sub-folders: put each class's videos in a folder named after the class")
    return [LabelledClip(str(v), d.name) for d in classes for v in _videos_under(d)]


def read_labelled(source: str | Path, classes: Sequence[str] | None = None, *, data_dir: str | Path | None = None,
                  split: str | None = None) -> list[LabelledClip]:
    """The labelled clips of ``source`` (CSV of paths, folder per class, or Kinetics CSV with ``data_dir``); with
    ``classes``, labels checked against them (:func:`check_labels`)."""
    source = Path(source)
    if source.is_dir():
        if split is not None:
            raise UserError(f"--split applies to a Kinetics annotation file; {source} is a folder")
        clips = _from_folder(source)
    elif source.is_file():
        clips = _from_csv(source, Path(data_dir) if data_dir is not None else None, split)
    else:
        raise UserError(f"no such file or folder: {source} (--annotations takes a CSV of path,label or a folder "
                        "with one sub-folder per class)")
    if not clips:
        raise UserError(f"{source} lists no videos" + (f" of split {split!r}" if split is not None else ""))
    if classes is not None:
        check_labels(clips, classes, source)
    return clips


def check_labels(clips: Sequence[LabelledClip], classes: Sequence[str], source: str | Path) -> None:
    """An unknown label is a :class:`UserError` naming it and the model's classes."""
    unknown = sorted({c.label for c in clips} - set(classes))
    if unknown:
        raise UserError(f"{source}: label(s) {', '.join(map(repr, unknown))} are not classes of this model "
                        f"({', '.join(map(repr, classes))})")


def labelled_digest(clips: Sequence[LabelledClip]) -> str:
    """What was evaluated, as a short hash of the (path, label) list: two evaluations on the same list share it."""
    h = hashlib.sha256()
    for c in clips:
        h.update(f"{c.path}\t{c.label}\n".encode())
    return h.hexdigest()[:16]
