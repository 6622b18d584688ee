"""Stage helpers: a stage flow that is expected to fail (it must raise StageFailed, so its flow run ends Failed in
Prefect, and carry its summary), and the download report a later stage reads, written by hand."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable

import pytest

from tasks.lib.errors import StageFailed


def failed_summary(flow: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(StageFailed) as info:
        flow(*args, **kwargs)
    summary = info.value.summary
    assert summary["failed"] is True
    return summary


def write_download_report(data_dir: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """``<data_dir>/reports/download.csv`` as the download stage writes it, for tests that start at filter."""
    path = Path(data_dir) / "reports" / "download.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path
