"""One writer at a time per ``data_dir`` and per MLflow store.

Two runs on one ``data_dir`` fetched the same clips twice, and the second one's cleanup deleted the first one's
temporary files; two trainings on one new SQLite store crashed the second in MLflow's schema migration. So every
stage holds an exclusive lock on its ``data_dir`` (``<data_dir>/.vivit.lock``), and the train stage one on the
MLflow store (``<mlflow.db>.lock``) while it trains and registers.

* The lock is an OS file lock (``filelock`` -> ``flock``): the kernel drops it when its process dies, however it
  dies (kill -9 included), so a lock left by a killed run is simply taken over. Nothing depends on a stale file.
* Beside it, ``<lock>.owner.json`` says who holds it (pid, host, start time, command), so a second run can say
  whom it is waiting for, and a takeover can say whose lock it took.
* A second run waits, saying so once (``wait=False``, the CLI's ``--no-wait``, refuses instead with
  :class:`LockBusy`, a user error).
* Re-entrant within a process: the pipeline flow holds the ``data_dir`` lock while its sub-flows take it again.

No Prefect here.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import filelock

from .errors import UserError

LOCK_NAME = ".vivit.lock"
NO_WAIT_ENV = "VIVIT_NO_WAIT"


class LockBusy(UserError):
    """Another live run holds the lock and the caller asked not to wait."""


@dataclass
class Owner:
    pid: int
    host: str
    started: float  # time.time() when the lock was taken
    command: str
    proc_start: str = ""  # the kernel's start time of ``pid`` (tells a reused pid from the owner)

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host} since {when} ({self.command})"


def process_start_time(pid: int) -> str:
    """Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks since boot); '' where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]


def pid_alive(pid: int, proc_start: str = "") -> bool:
    """True when ``pid`` runs on this host and, if known, was started at ``proc_start`` (not a reused pid)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if proc_start:
        now = process_start_time(pid)
        return not now or now == proc_start
    return True


def owner_alive(host: str, pid: int, proc_start: str = "") -> bool | None:
    """True/False for an owner on this host; None when it ran on another host (unknowable from here)."""
    if host != socket.gethostname():
        return None
    return pid_alive(pid, proc_start)


def this_owner(command: str | None = None) -> Owner:
    pid = os.getpid()
    return Owner(pid, socket.gethostname(), time.time(), command or " ".join(Path(a).name if i == 0 else a
                                                                             for i, a in enumerate(sys.argv[:3])),
                 process_start_time(pid))


def read_owner(lock_path: str | os.PathLike) -> Owner | None:
    try:
        return Owner(**json.loads(Path(f"{lock_path}.owner.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_owner(lock_path: Path, owner: Owner) -> None:
    final = Path(f"{lock_path}.owner.json")
    tmp = final.with_name(f".{final.name}.{owner.pid}.tmp")
    tmp.write_text(json.dumps(asdict(owner)))
    os.replace(tmp, final)


_held: dict[str, list] = {}  # resolved lock path -> [FileLock, depth]
_guard = threading.Lock()


def no_wait_default() -> bool:
    return os.environ.get(NO_WAIT_ENV, "").strip().lower() in {"1", "true", "yes"}


@contextlib.contextmanager
def exclusive(lock_path: str | os.PathLike, what: str, *, wait: bool | None = None, command: str | None = None,
              notify: Callable[[str], None] | None = None, poll: float = 0.5) -> Iterator[Owner | None]:
    """Hold the lock at ``lock_path`` for ``what`` (e.g. ``data_dir data/demo``). Yields the previous owner when
    this took over a lock whose owner died, else None. ``notify`` gets the one-line messages (waiting, takeover).
    """
    notify = notify or (lambda msg: print(f"vivit: {msg}", file=sys.stderr, flush=True))
    wait = (not no_wait_default()) if wait is None else wait
    path = Path(lock_path).resolve()
    key = str(path)
    with _guard:
        if key in _held:
            _held[key][1] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield None
        finally:
            with _guard:
                _held[key][1] -= 1
        return

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(path), thread_local=False)
    said = False
    while True:
        try:
            lock.acquire(timeout=poll if wait else 0)
            break
        except filelock.Timeout:
            holder = read_owner(path)
            who = holder.describe() if holder else "another run"
            if not wait:
                raise LockBusy(f"{what} is in use by {who}: wait for it to finish, or run with another "
                               f"data_dir / MLflow store (without --no-wait this run waits)") from None
            if not said:
                notify(f"{what} is in use by {who}: waiting for it to finish (--no-wait refuses instead)")
                said = True
    previous = read_owner(path)
    took_over = None
    me = this_owner(command)
    if previous is not None and previous.pid != me.pid and owner_alive(previous.host, previous.pid,
                                                                       previous.proc_start) is False:
        took_over = previous
        notify(f"{what}: took over the lock left by {previous.describe()}, which is no longer running")
    elif said:
        notify(f"{what} is free now: going on")
    _write_owner(path, me)
    with _guard:
        _held[key] = [lock, 1]
    try:
        yield took_over
    finally:
        with _guard:
            _held.pop(key, None)
        with contextlib.suppress(OSError):
            Path(f"{path}.owner.json").unlink()
        lock.release(force=True)


def data_dir_lock(data_dir: str | os.PathLike, stage: str, **kw) -> contextlib.AbstractContextManager:
    """The lock every stage holds on its ``data_dir``."""
    return exclusive(Path(data_dir) / LOCK_NAME, f"data_dir {data_dir}", command=f"vivit {stage}", **kw)


def held(lock_path: str | os.PathLike) -> bool:
    """Whether this process holds the lock (tests, assertions)."""
    return str(Path(lock_path).resolve()) in _held
