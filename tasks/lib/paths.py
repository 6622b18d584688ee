"""Safe file names for untrusted labels and ids; leftovers of atomic writes (written by :mod:`model.atomic`).

Labels and YouTube ids come from CSV files we do not control, so nothing derived from them may
escape ``data_dir``; and a crash must never leave a half-written file under its final name.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SLUG_RE = re.compile(r"[^a-z0-9]+")


class UnsafePathError(ValueError):
    """A label or id would produce a path outside the data folder, or an empty/unsafe name."""


def label_slug(label: str) -> str:
    """``"dribbling basketball"`` -> ``"dribbling_basketball"``; refuses anything that slugs to nothing."""
    if not isinstance(label, str):
        raise UnsafePathError(f"label must be a string, got {type(label).__name__}")
    if "/" in label or "\\" in label or "\x00" in label or ".." in label:
        raise UnsafePathError(f"unsafe label {label!r}: path separators and '..' are not allowed")
    slug = _SLUG_RE.sub("_", label.strip().lower()).strip("_")
    if not slug:
        raise UnsafePathError(f"label {label!r} has no usable characters for a folder name")
    return slug


def check_youtube_id(youtube_id: str) -> str:
    """YouTube ids are 11 characters of ``[A-Za-z0-9_-]``; we accept up to 64 of those and nothing else."""
    if not isinstance(youtube_id, str) or not _ID_RE.match(youtube_id):
        raise UnsafePathError(f"unsafe youtube_id {youtube_id!r}: only letters, digits, '-' and '_' are allowed")
    return youtube_id


def clip_stem(youtube_id: str, time_start: float, time_end: float) -> str:
    """The Kinetics naming convention: ``<id>_<start:06d>_<end:06d>``."""
    check_youtube_id(youtube_id)
    return f"{youtube_id}_{int(time_start):06d}_{int(time_end):06d}"


def safe_join(root: str | os.PathLike, *parts: str) -> Path:
    """Join ``parts`` under ``root`` and refuse any result that resolves outside it."""
    root_r = Path(root).resolve()
    out = root_r.joinpath(*parts).resolve()
    if out != root_r and root_r not in out.parents:
        raise UnsafePathError(f"path {'/'.join(parts)!r} escapes {root_r}")
    return out


_OWNER_RE = re.compile(r"\.part-(\d+)-[0-9a-f]{8}")


def partial_owner_alive(path: Path) -> bool:
    """Whether the process that writes the temporary file ``path`` may still be at work: its pid (in the name)
    runs on this host. A name without a pid predates this scheme (every writer since names itself, and holds the
    data_dir lock while it writes), so nothing is writing it."""
    m = _OWNER_RE.search(path.name)
    if m is None:
        return False
    pid = int(m.group(1))
    if pid == os.getpid():
        return False  # ours, from an earlier run in this process: nothing is writing it now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_partial(path: Path) -> bool:
    """True for leftovers of an interrupted atomic write (``.<stem>.part-xxxx.ext``) and yt-dlp's ``.part`` files."""
    return (path.name.startswith(".") and ".part-" in path.name) or path.suffix in {".part", ".ytdl"}
