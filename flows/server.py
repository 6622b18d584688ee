"""The temporary Prefect server a ``vivit`` command runs its flows on when ``PREFECT_API_URL`` names none: started as
a child that dies with ``vivit``, stopped (after the queued logs and events went out) when the command ends."""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path

import flows  # noqa: F401  -- sets the embedded Prefect defaults before prefect is imported


def drain_prefect_workers() -> None:
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:  # never started
            pass
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    try:
        run_coro_as_sync(drain())
    except Exception:  # noqa: BLE001 - a log line lost at exit is not worth a traceback
        pass


def temporary_server_settings(api_url: str | None = None) -> dict:
    """Prefect settings for flows that report to a server living only as long as this command (``vivit``'s own,
    a benchmark's, the tests'). No flow-run heartbeats: they let a server notice later that a run crashed, which a
    server that dies with the run never does, and Prefect 3.8.8's heartbeat thread sleeps in whole seconds, so
    every flow run waited for it at its end (an empty flow run took 1.1 s, 0.1 s without). Against a real server
    (``PREFECT_API_URL``, deployments run by a worker) Prefect's own setting applies."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    return {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, **({PREFECT_API_URL: api_url} if api_url else {})}


# own_prefect_server gives the temporary server the parent-death signal by wrapping the ``subprocess`` module that
# Prefect's server module starts it with: an internal, read in these Prefect releases only (pinned in pyproject).
PREFECT_SERVER_TESTED = ("3.8.",)


def server_popen_problem(prefect_server) -> str | None:
    """None when this Prefect's server module is the one the wrapper was written for, else why not."""
    import subprocess

    import prefect

    if not prefect.__version__.startswith(PREFECT_SERVER_TESTED):
        return f"Prefect {prefect.__version__} is not a tested release ({', '.join(PREFECT_SERVER_TESTED)}x)"
    if getattr(prefect_server, "subprocess", None) is not subprocess or not hasattr(prefect_server,
                                                                                   "SubprocessASGIServer"):
        return f"Prefect {prefect.__version__} starts its server differently"
    return None


@contextlib.contextmanager
def own_prefect_server(log_path: Path | None = None):
    """Without ``PREFECT_API_URL`` the flows need a temporary Prefect server. Prefect starts one itself, but it
    outlived a kill -9 of ``vivit`` in 26 of 32 trials. So the command starts it, from the main thread, as a
    child that the kernel kills when this process dies (``tasks.lib.procs``), stops it on exit, and turns
    SIGTERM into a normal exit (which stops it too). On an untested Prefect it warns and starts the server
    without that signal (:func:`server_popen_problem`). ``log_path``: the server's own output (its startup banner,
    its errors while it stops) goes there instead of the terminal."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
    try:
        if PREFECT_API_URL.value() or threading.current_thread() is not threading.main_thread():
            yield None
            return
        from prefect.server.api import server as prefect_server

        from tasks.lib.procs import die_with_parent_kwargs

        problem = server_popen_problem(prefect_server)
        if problem:
            print(f"vivit: warning: {problem}, so its temporary Prefect server may outlive a killed vivit "
                  "(PREFECT_API_URL pointing at a server of your own avoids that)", file=sys.stderr)
        if not hasattr(prefect_server, "SubprocessASGIServer"):  # Prefect starts its own when a flow runs
            yield None
            return
        real = getattr(prefect_server, "subprocess", None)
        log = None
        if log_path is not None:
            try:
                log_path.parent.mkdir(parents=True, exist_ok=True)
                log = log_path.open("ab")
            except OSError:
                log = None
        output = {"stdout": log, "stderr": real.STDOUT} if log is not None and real is not None else {}

        class _Subprocess:
            def __getattr__(self, name):
                return getattr(real, name)

            @staticmethod
            def Popen(*a, **kw):  # noqa: N802 - stands in for subprocess.Popen
                return real.Popen(*a, **{**die_with_parent_kwargs(), **output, **kw})

        if not problem:
            prefect_server.subprocess = _Subprocess()
        server = prefect_server.SubprocessASGIServer()
        try:
            server.start()
            with temporary_settings(temporary_server_settings(server.api_url)):
                try:
                    yield server
                finally:
                    drain_prefect_workers()  # logs and events still queued go out before the server stops
        finally:
            server.stop()
            if not problem:
                prefect_server.subprocess = real
            if log is not None:
                log.close()
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
