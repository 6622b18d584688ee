"""Kinetics annotation CSVs: read, validate, select.

Kinetics-400/600/700-2020 files share ``label,youtube_id,time_start,time_end,split[,is_cc]``; K400's test file
has no ``label`` column. Rows are untrusted input: ids and labels are checked before they ever become paths.
"""
from __future__ import annotations

import difflib
import io
import math
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .config import normalise_split
from .errors import UserError
from .paths import UnsafePathError, check_youtube_id, clip_stem, label_slug

REQUIRED = ["youtube_id", "time_start", "time_end", "split"]
# Kinetics windows are 10 s. A longer one is allowed (other datasets in the same format), but not one that would
# make yt-dlp/ffmpeg fetch hours of video or overflow a file name: ``inf``, ``99999999`` and ``1e300`` crashed
# the whole stage before these bounds existed.
MAX_WINDOW_S = 600.0
MAX_TIME_S = 999_999.0  # the file stem formats times as 6 digits


class AnnotationError(UserError, ValueError):
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
        return _parse_csv(data, source)
    if "://" in source:
        raise AnnotationError(f"annotations must be a local path or http(s) URL, got {source!r}")
    p = Path(source)
    if not p.is_file():
        raise AnnotationError(f"annotations file not found: {p}")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise AnnotationError(f"cannot read annotations {p}: {e.strerror or e}") from e
    return _parse_csv(data, source)


def _parse_csv(data: bytes, source: str) -> pd.DataFrame:
    """pandas' own errors name neither the file nor the fix; these do."""
    if not data.strip():
        raise AnnotationError(f"{source}: the file is empty; a Kinetics CSV starts with the header "
                              "label,youtube_id,time_start,time_end,split")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{source}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}): "
                              "re-save it as UTF-8") from None
    if text.lstrip()[:1] == "<":
        raise AnnotationError(f"{source}: looks like HTML or XML, not a CSV (a login or error page?): "
                              "download the CSV itself")
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise AnnotationError(f"{source}: not a readable CSV ({' '.join(str(e).split())[:200]})") from None


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
            s, e = check_times(row.time_start, row.time_end)
            if row.label:
                label_slug(str(row.label))
            keep.append(i - 2)
        except (UnsafePathError, ValueError) as err:
            problems.append(f"{source}:{i}: {err}")
    out = df.iloc[keep].copy()
    out["youtube_id"] = out["youtube_id"].str.strip()
    out["label"] = out["label"].str.strip()
    out["time_start"] = out["time_start"].astype(float)  # every kept row passed check_times
    out["time_end"] = out["time_end"].astype(float)
    out["split"] = out["split"].map(normalise_split)
    return out.reset_index(drop=True), problems


def check_times(time_start: object, time_end: object) -> tuple[float, float]:
    """The window ``[time_start, time_end]`` of one row as floats, or ValueError saying what is wrong: finite,
    non-negative, ``end > start``, at most :data:`MAX_WINDOW_S` long and within :data:`MAX_TIME_S`."""
    try:
        s, e = float(str(time_start).strip()), float(str(time_end).strip())
    except ValueError:
        raise ValueError(f"times must be numbers, got time_start={time_start!r}, time_end={time_end!r}") from None
    if not (math.isfinite(s) and math.isfinite(e)):
        raise ValueError(f"times must be finite, got time_start={time_start!r}, time_end={time_end!r}")
    if not (s >= 0 and e > s):
        raise ValueError(f"time_end ({e:g}) must be greater than time_start ({s:g}) >= 0")
    if e > MAX_TIME_S:
        raise ValueError(f"time_end ({e:g}) is beyond {MAX_TIME_S:g} s")
    if e - s > MAX_WINDOW_S:
        raise ValueError(f"window of {e - s:g} s is longer than the {MAX_WINDOW_S:g} s allowed")
    return s, e


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
