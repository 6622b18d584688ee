"""Atomic writes, the one implementation: write a hidden sibling that names its writer, then rename.

A crash never leaves a half-written file under its final name, and the temporary name
(``.<stem>.part-<pid>-<hex8><suffix>``) tells cleanup whether its writer is still alive
(``tasks/lib/paths.py`` ``partial_owner_alive``). Lives in ``model/`` because checkpoints and the dataset format
(both here) write through it, and ``model/`` imports nothing from ``tasks/``.
"""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator


def partial_prefix(final: Path) -> str:
    """``.<stem>.part-<pid>-<hex8>``: hidden, unique, and naming the process that writes it."""
    return f".{final.stem}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def tmp_name(final: Path) -> Path:
    """A hidden sibling of ``final`` (same filesystem, so rename is atomic) that keeps the suffix for tools like
    ffmpeg and carries the writer's pid."""
    return final.with_name(f"{partial_prefix(final)}{final.suffix}")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success rename it onto ``final``, on any error remove it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_text(final: str | os.PathLike, text: str) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_text(text)
    return Path(final)
