"""The stages' CSV reports (download.csv, filter.csv, frames.csv): one writer and one reader for all of them."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Iterable

from model.atomic import atomic_write_text


def report_csv(rows: Iterable[dict[str, Any]], columns: list[str]) -> str:
    """CSV text with exactly ``columns`` (extra keys in a row are left out)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def write_report(rows: Iterable[dict[str, Any]], columns: list[str], path: str | os.PathLike) -> Path:
    """Written under a temporary name and renamed: a crash leaves the previous report, never half a new one."""
    return atomic_write_text(path, report_csv(rows, columns))


def read_csv_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """A previous stage's report as dicts; a missing report is an empty one."""
    p = Path(path)
    if not p.is_file():
        return []
    with p.open(newline="") as f:
        return [dict(r) for r in csv.DictReader(f)]
