"""Kinetics annotation CSVs: read, validate, select.

Kinetics-400/600/700-2020 files share ``label,youtube_id,time_start,time_end,split[,is_cc]``; K400's test file
has no ``label`` column. Rows are untrusted input: ids and labels are checked before they ever become paths.
"""
from __future__ import annotations

import difflib
import io
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .config import normalise_split
from .paths import UnsafePathError, check_youtube_id, clip_stem, label_slug

REQUIRED = ["youtube_id", "time_start", "time_end", "split"]


class AnnotationError(ValueError):
    """The CSV itself is unusable (missing columns, no rows) or a requested class does not exist."""


@dataclass(frozen=True)
class Clip:
    """One requested clip. ``clip_id`` is unique and safe to use as a file stem."""

    youtube_id: str
    label: str
    time_start: float
    time_end: float
    split: str

    @property
    def clip_id(self) -> str:
        return clip_stem(self.youtube_id, self.time_start, self.time_end)

    @property
    def slug(self) -> str:
        return label_slug(self.label)


def read_csv_source(source: str, timeout: float = 60.0) -> pd.DataFrame:
    """A local path or an http(s) URL. Other schemes are refused (no file:// surprises here)."""
    if source.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(source, timeout=timeout) as r:  # noqa: S310 - scheme checked above
                data = r.read()
        except OSError as e:
            raise AnnotationError(f"cannot fetch annotations {source}: {e}") from e
        return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    if "://" in source:
        raise AnnotationError(f"annotations must be a local path or http(s) URL, got {source!r}")
    p = Path(source)
    if not p.is_file():
        raise AnnotationError(f"annotations file not found: {p}")
    return pd.read_csv(p, dtype=str, keep_default_na=False)


def parse_annotations(df: pd.DataFrame, source: str = "<csv>") -> tuple[pd.DataFrame, list[str]]:
    """Validate columns and values; returns the clean rows and a list of human-readable problems for
    rows that were dropped (bad id, bad times), so a single bad row never sinks a whole CSV."""
    df = df.rename(columns=lambda c: str(c).strip().lower())
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise AnnotationError(
            f"{source}: missing columns {missing}; a Kinetics CSV has label,youtube_id,time_start,time_end,split"
        )
    if "label" not in df.columns:
        df = df.assign(label="")  # K400 test: unlabeled
    problems: list[str] = []
    keep = []
    for i, row in enumerate(df.itertuples(index=False), start=2):  # line 1 is the header
        try:
            check_youtube_id(str(row.youtube_id).strip())
            s, e = float(row.time_start), float(row.time_end)
            if not (s >= 0 and e > s):
                raise ValueError(f"time_end ({e}) must be greater than time_start ({s}) >= 0")
            if row.label:
                label_slug(str(row.label))
            keep.append(i - 2)
        except (UnsafePathError, ValueError) as err:
            problems.append(f"{source}:{i}: {err}")
    out = df.iloc[keep].copy()
    out["youtube_id"] = out["youtube_id"].str.strip()
    out["label"] = out["label"].str.strip()
    out["time_start"] = out["time_start"].astype(float)
    out["time_end"] = out["time_end"].astype(float)
    out["split"] = out["split"].map(normalise_split)
    return out.reset_index(drop=True), problems


def closest_labels(name: str, labels: list[str], n: int = 5) -> list[str]:
    return difflib.get_close_matches(name, labels, n=n, cutoff=0.4) or sorted(labels)[:n]


def select_clips(
    df: pd.DataFrame,
    classes: list[str],
    splits: list[str] | None = None,
    max_per_class: int | None = None,
) -> list[Clip]:
    """Rows of the requested classes (and splits), deduplicated, capped per class in file order."""
    labels = sorted(set(df["label"]) - {""})
    unknown = [c for c in classes if c not in labels]
    if unknown:
        hints = "; ".join(f"{c!r}: did you mean {closest_labels(c, labels)}?" for c in unknown)
        raise AnnotationError(f"unknown class name(s) {unknown}. {hints}")
    sel = df[df["label"].isin(classes)]
    if splits is not None:
        sel = sel[sel["split"].isin(splits)]
    sel = sel.drop_duplicates(subset=["youtube_id", "time_start", "time_end"])
    if max_per_class is not None:
        sel = sel.groupby("label", sort=False, group_keys=False).head(max_per_class)
    clips = [
        Clip(r.youtube_id, r.label, float(r.time_start), float(r.time_end), r.split)
        for r in sel.itertuples(index=False)
    ]
    return clips


def load_clips(
    sources: list[str], classes: list[str], splits: list[str] | None = None, max_per_class: int | None = None
) -> tuple[list[Clip], list[str]]:
    frames, problems = [], []
    for src in sources:
        df, probs = parse_annotations(read_csv_source(src), source=src)
        frames.append(df)
        problems += probs
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=REQUIRED + ["label"])
    if df.empty:
        raise AnnotationError(f"no usable rows in {sources}")
    return select_clips(df, classes, splits, max_per_class), problems
