"""The download report (``reports/download.csv``), its summary line, and the housekeeping of partial files
left by a crash."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from tasks.lib import reports
from tasks.lib.download.errors import too_old_hint
from tasks.lib.paths import is_partial, partial_owner_alive


REPORT_COLUMNS = [
    "youtube_id", "label", "split", "status", "reason", "path", "message", "time_start", "time_end", "clip_id",
]


# -- housekeeping and the report -----------------------------------------------------------------------------
def clean_partials(raw_dir: str | os.PathLike) -> list[Path]:
    """Remove temporary files an interrupted run left under ``raw/`` (never a finished clip), and only those of
    owners that are dead: a temporary name carries its writer's pid, so a run never deletes the files of another
    one still at work (before the owner was recorded, a second run deleted a first one's downloads in flight)."""
    root = Path(raw_dir)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for p in root.rglob("*"):
        if p.is_file() and is_partial(p) and not partial_owner_alive(p):
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


def report_csv(rows: Iterable[dict[str, Any]]) -> str:
    return reports.report_csv(rows, REPORT_COLUMNS)


def write_report(rows: Iterable[dict[str, Any]], path: str | os.PathLike) -> Path:
    """``reports/download.csv``, written under a temporary name and renamed (a crash leaves the old report)."""
    return reports.write_report(rows, REPORT_COLUMNS, path)


def summary_message(counts: dict[str, int]) -> str:
    """``12 of 14 clips ready (10 downloaded, 2 already there); 2 failed: 1 http_error, 1 not_video``."""
    ready = counts["downloaded"] + counts["skipped"]
    msg = (f"{ready} of {counts['requested']} clips ready ({counts['downloaded']} downloaded, "
           f"{counts['skipped']} already there)")
    if counts["failed"]:
        reasons = ", ".join(f"{v} {k.removeprefix('failed_')}" for k, v in counts.items() if k.startswith("failed_"))
        msg += f"; {counts['failed']} failed: {reasons}"
    if counts.get("failed_extractor_error"):
        msg += f" ({too_old_hint()})"
    return msg


def summarize(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """``requested, downloaded, skipped, failed`` then ``failed_<reason>`` counts, most frequent first."""
    rows = list(rows)
    status = Counter(r["status"] for r in rows)
    reasons = Counter(r["reason"] for r in rows if r["status"] == "failed")
    counts = {"requested": len(rows), "downloaded": status["downloaded"], "skipped": status["skipped"],
              "failed": status["failed"]}
    counts.update({f"failed_{k}": v for k, v in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))})
    return counts
