"""Child processes die with their parent.

After ``kill -9`` of ``vivit``, Prefect's temporary server (uvicorn) was still alive 60 s later in 26 of 32
trials, and the ffmpeg children of a killed download kept running. A SIGKILL runs no handler in the parent, so the
children must be told by the kernel: on Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` in the child (between fork
and exec) makes the kernel kill it when the thread that started it exits. Every child we start (ffmpeg, yt-dlp's
ffmpeg, the Prefect server) is started from a thread that waits for it (or from the main thread), so that thread
outlives it unless the whole process dies. Elsewhere (macOS) this is a no-op.

No Prefect here.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from typing import Any, Callable

PR_SET_PDEATHSIG = 1

_prctl: Callable[..., int] | None = None
if sys.platform.startswith("linux"):
    try:  # resolved once here: the child (between fork and exec) must do as little as possible
        _prctl = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        _prctl = None


def _make_preexec() -> Callable[[], None] | None:
    if _prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl: nobody will signal us
            os._exit(1)

    return preexec


def die_with_parent_kwargs() -> dict[str, Any]:
    """Extra ``subprocess.Popen``/``run`` keyword arguments that make the child die with this process."""
    fn = _make_preexec()
    return {"preexec_fn": fn} if fn else {}


_ytdlp_patched = False


def patch_ytdlp_popen() -> None:
    """yt-dlp starts ffmpeg through its own ``Popen`` subclass: give those children the same parent-death
    signal (idempotent)."""
    global _ytdlp_patched
    if _ytdlp_patched or _prctl is None:
        return
    try:
        from yt_dlp.utils import _utils
    except ImportError:  # pragma: no cover
        return
    original = _utils.Popen.__init__

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if "preexec_fn" not in kwargs:
            kwargs.update(die_with_parent_kwargs())
        original(self, *args, **kwargs)

    _utils.Popen.__init__ = __init__
    _ytdlp_patched = True
