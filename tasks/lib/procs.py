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
import inspect
import logging
import os
import signal
import subprocess
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


# yt-dlp starts ffmpeg through its own ``subprocess.Popen`` subclass and has no public option to pass
# ``preexec_fn``; wrapping that class's ``__init__`` is the one way in. It is fenced: only a ``yt_dlp.utils.Popen``
# that is still a ``subprocess.Popen`` subclass taking ``**kwargs`` is wrapped. Anything else (a yt-dlp that
# renamed or reshaped it) downloads as before, without this protection, and says so once.
_ytdlp_state: dict[str, Any] = {"done": False, "warned": False, "problem": None}
log = logging.getLogger(__name__)


def _ytdlp_popen() -> tuple[Any, str | None]:
    """yt-dlp's ``Popen`` class if it is still the shape the wrapper expects, else (None, why not)."""
    try:
        import yt_dlp.utils as ytdlp_utils
        from yt_dlp.version import __version__ as version
    except ImportError:  # pragma: no cover - yt-dlp is a dependency
        return None, "yt-dlp is not installed"
    cls = getattr(ytdlp_utils, "Popen", None)
    if not (isinstance(cls, type) and issubclass(cls, subprocess.Popen)):
        return None, f"yt-dlp {version} has no yt_dlp.utils.Popen subclass of subprocess.Popen"
    try:
        params = inspect.signature(cls.__init__).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - a C-level __init__
        params = []
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None, f"yt-dlp {version}'s Popen no longer takes **kwargs"
    return cls, None


def ytdlp_popen_problem() -> str | None:
    """Why yt-dlp's ffmpeg children would not get the parent-death signal here; None when they would (or when
    this platform has no such signal to give)."""
    return None if _prctl is None else _ytdlp_popen()[1]


def patch_ytdlp_popen() -> str | None:
    """Give the ffmpeg children yt-dlp starts the same parent-death signal (idempotent). Returns None when they
    have it (or the platform has no such signal), else why not; that reason is logged once per process."""
    if _ytdlp_state["done"] or _prctl is None:
        return _ytdlp_state["problem"]
    cls, problem = _ytdlp_popen()
    if cls is None:
        _ytdlp_state["problem"] = problem
        if not _ytdlp_state["warned"]:
            _ytdlp_state["warned"] = True
            log.warning("%s: ffmpeg started by yt-dlp may outlive a killed download (kill leftover ffmpeg "
                        "processes by hand, or pin the tested yt-dlp)", problem)
        return problem
    original = cls.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if "preexec_fn" not in kwargs:
            kwargs.update(die_with_parent_kwargs())
        original(self, *args, **kwargs)

    cls.__init__ = __init__
    _ytdlp_state.update(done=True, problem=None)
    return None
