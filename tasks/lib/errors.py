"""The two kinds of failure the CLI and Prefect must tell apart from a bug.

* :class:`UserError`: something the user can fix (a config key, a CSV, a class name, a preset, a busy data_dir).
  The CLI prints it as one line naming the thing and the fix, and exits 2; the traceback only with ``--debug``.
* :class:`StageFailed`: a stage ran and could not produce a usable result. It is *raised* (not returned), so the
  stage's flow run, and the pipeline's, end **Failed** in Prefect, where deployments, automations and retry
  policies see it; it carries the stage's one-screen summary so the CLI can still print it.

No Prefect here: these are plain exceptions that survive pickling (Prefect may store a failed state's exception).
"""
from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from tasks.lib.results import StageResult


class UserError(Exception):
    """A mistake the user can fix; ``str()`` is the whole one-line message."""


class ServiceUnavailable(Exception):
    """A service the stage needs (the MLflow tracking server) does not answer; ``str()`` is one line."""


class StageFailed(RuntimeError):
    """A stage (or the pipeline) failed as a whole. ``summaries`` are the stages' summary dicts, in order."""

    def __init__(self, summaries: StageResult | list[StageResult], user_error: bool = False):
        self.summaries = [summaries] if isinstance(summaries, Mapping) else list(summaries)
        self.user_error = bool(user_error)
        last = self.summaries[-1] if self.summaries else {}
        super().__init__(f"stage {last.get('stage', '?')} failed: {last.get('message', '')}")

    @property
    def summary(self) -> StageResult:
        return self.summaries[-1]

    def __reduce__(self):
        return (StageFailed, (self.summaries, self.user_error))


def failed_summary(stage: str, message: str, counts: dict[str, int] | None = None,
                   outputs: list[str] | None = None) -> StageResult:
    """The result a failed stage carries: what it counted before failing and why, in one line."""
    return StageResult(stage=stage, counts=dict(counts or {}), outputs=list(outputs or []), message=message,
                       failed=True)


class DiskFullError(OSError):
    """``ENOSPC`` with the words a user needs: where, and about how much was needed."""

    def __init__(self, path: str | os.PathLike, needed_bytes: int | None = None, free_bytes: int | None = None):
        self.path = str(path)
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes
        need = f" (needed ~{_mb(needed_bytes)} MB" if needed_bytes is not None else " ("
        free = f", {_mb(free_bytes)} MB free)" if free_bytes is not None else ")"
        text = f"disk full at {self.path}{need}{free}".replace(" ()", "")
        super().__init__(errno.ENOSPC, text)

    def __str__(self) -> str:
        return self.args[1]

    def __reduce__(self):
        return (DiskFullError, (self.path, self.needed_bytes, self.free_bytes))


def _mb(n: int | None) -> int:
    return max(1, round((n or 0) / 1e6))


def free_bytes(path: str | os.PathLike) -> int:
    """Free space of the filesystem holding ``path`` (or its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_free_space(path: str | os.PathLike, needed_bytes: int, *, free: int | None = None,
                     margin: float = 1.1) -> None:
    """Raise :class:`DiskFullError` before writing ``needed_bytes`` under ``path`` when they will not fit: a full
    disk found up front says so, where the write itself would fail half-way with an opaque message."""
    have = free_bytes(path) if free is None else free
    if needed_bytes * margin > have:
        raise DiskFullError(path, int(needed_bytes), have)


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC anywhere in the chain, including the texts torch and numpy give for a short write."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e).lower()
        if "no space left" in text or "unexpected pos" in text or ("requested and" in text and "written" in text):
            return True
        e = e.__cause__ or e.__context__
    return False


def disk_full_message(exc: BaseException, default_path: str | os.PathLike) -> str:
    """``disk full at PATH (...)`` for any ENOSPC-like exception (see :func:`is_disk_full`)."""
    e: BaseException | None = exc
    while e is not None:
        if isinstance(e, DiskFullError):
            return str(e)
        if isinstance(e, OSError) and getattr(e, "filename", None):
            default_path = Path(e.filename).parent
            break
        e = e.__cause__ or e.__context__
    try:
        free = f", {_mb(free_bytes(default_path))} MB free"
    except OSError:
        free = ""
    return f"disk full at {default_path} ({type(exc).__name__}: {str(exc)[:120]}{free}): free some space and re-run"
