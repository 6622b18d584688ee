"""The commands that keep servers running until Ctrl-C: ``vivit ui`` (the Prefect UI and the MLflow UI on this
project's stores) and ``vivit serve`` (a registered model over REST, ``mlflow models serve``).

Their executables are found next to this Python (``.venv/bin/prefect``, ``.venv/bin/mlflow``) and that folder
goes first on the children's PATH, so they work from a plain shell without an activated venv (``mlflow models
serve`` starts ``uvicorn`` from PATH). Every child dies with ``vivit`` (:func:`tasks.lib.procs.die_with_parent_kwargs`)
and is stopped on Ctrl-C or SIGTERM."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

from tasks.lib.errors import UserError
from tasks.lib.procs import die_with_parent_kwargs

LOOPBACK = "127.0.0.1"


def venv_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with this Python's bin folder first on PATH (the venv's tools, activated or not)."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    return {**os.environ, "PATH": bin_dir + (os.pathsep + path if path else ""), **(extra or {})}


def tool(name: str) -> str:
    """The executable ``name`` beside this Python, else on PATH; a UserError naming the install otherwise."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which(name)
    if found:
        return found
    raise UserError(f"{name} is not installed beside {sys.executable}: run `make setup` (or pip install -e .)")


def free_port(preferred: int) -> int:
    """``preferred`` when nothing listens there on loopback, else a free port the system picks."""
    for port in ((preferred, 0) if preferred else (0,)):
        with socket.socket() as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")


def wait_http(url: str, proc: subprocess.Popen, timeout_s: float) -> bool:
    """True once ``url`` answers, False when ``proc`` exits or ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            if proc.poll() is not None:
                return False
            time.sleep(0.3)
    return False


def _start(cmd: list[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            **die_with_parent_kwargs())


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)  # both servers shut down cleanly on SIGINT
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _until_interrupted(procs: list[subprocess.Popen], names: list[str]) -> int:
    """Wait for Ctrl-C (or SIGTERM); a child that exits by itself ends the command with exit 1."""
    def on_term(signum, frame):  # noqa: ANN001
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        while True:
            for p, name in zip(procs, names):
                if p.poll() is not None:
                    print(f"vivit: {name} exited with status {p.returncode}", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nvivit: stopping", file=sys.stderr)
        return 0
    finally:
        _stop(procs)
        signal.signal(signal.SIGTERM, previous)


# -- vivit ui -----------------------------------------------------------------------------------------------------
def ui(cfg, args) -> int:
    """The Prefect UI on this project's Prefect home (``PREFECT_HOME``, flows/__init__.py) and the MLflow UI on the
    configured store, their links (MLflow's to the latest run), until Ctrl-C."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    from tasks import tracking
    from tasks.tracking.store import latest_run_url

    logs = cfg.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    names: list[str] = []
    health: list[str] = []
    lines: list[str] = []

    def start(name: str, cmd: list[str], env: dict[str, str], health_url: str, log: str) -> None:
        procs.append(_start(cmd, env, (logs / log).open("ab")))
        names.append(name)
        health.append(health_url)

    try:
        if PREFECT_API_URL.value():  # a server of the user's own: its UI is already there
            lines.append(f"Prefect UI  {PREFECT_API_URL.value().removesuffix('/api')}   (PREFECT_API_URL)")
        else:
            home = str(PREFECT_HOME.value())
            base = f"http://{LOOPBACK}:{free_port(args.prefect_port)}"
            # the UI asks its server where the API is (/ui-settings): this port, not Prefect's default 4200
            env = venv_env({"PREFECT_HOME": home, "PREFECT_UI_API_URL": f"{base}/api",
                            "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
            env.pop("PREFECT_API_URL", None)
            start("prefect server", [tool("prefect"), "server", "start", "--host", LOOPBACK,
                                     "--port", base.rsplit(":", 1)[1]], env, f"{base}/api/health", "prefect-ui.log")
            lines.append(f"Prefect UI  {base}/   (PREFECT_HOME {home})")
        uri = args.tracking_uri or tracking.resolve_tracking_uri(cfg.mlflow, create=False)
        db = tracking.sqlite_path(uri)
        if db is not None and not db.is_file():
            lines.append(f"MLflow UI   not started: no store at {db} yet (train a model first: vivit run)")
        else:
            base = f"http://{LOOPBACK}:{free_port(args.mlflow_port)}"
            start("mlflow server", [tool("mlflow"), "server", "--backend-store-uri", uri, "--host", LOOPBACK,
                                    "--port", base.rsplit(":", 1)[1], "--workers", "1"], venv_env(),
                  f"{base}/health", "mlflow-ui.log")
            tracking.use_store(cfg.mlflow.model_copy(update={"tracking_uri": uri}))
            run = latest_run_url(base, cfg.mlflow.experiment)
            lines.append(f"MLflow UI   {run or base}   ({'latest run of ' + cfg.mlflow.experiment if run else uri})")
        if procs:
            print(f"vivit: starting the {' and the '.join(names)} (their logs: {logs})", file=sys.stderr, flush=True)
        for p, name, url in zip(procs, names, health):
            if not wait_http(url, p, args.timeout):
                raise UserError(f"the {name} did not answer within {args.timeout:.0f} s: see {logs}")
        for line in lines:
            print(line, flush=True)
        if not procs:
            return 0
        print(f"Ctrl-C stops the {' and the '.join(names)}", flush=True)
    except BaseException:
        _stop(procs)
        raise
    return _until_interrupted(procs, names)


# -- vivit serve --------------------------------------------------------------------------------------------------
def video_model(uri: str) -> str:
    """``models:/NAME@ALIAS`` -> ``models:/NAME-video@ALIAS`` (the model that takes video files)."""
    from tasks.tracking.registry import VIDEO_SUFFIX

    if not uri.startswith("models:/"):
        raise UserError(f"--video needs a models:/NAME@ALIAS or models:/NAME/VERSION URI, got {uri!r}")
    rest = uri.removeprefix("models:/")
    cut = min((i for i in (rest.find("@"), rest.find("/")) if i >= 0), default=len(rest))
    name = rest[:cut]
    return uri if name.endswith(VIDEO_SUFFIX) else f"models:/{name}{VIDEO_SUFFIX}{rest[cut:]}"


def serve(cfg, args) -> int:
    """``mlflow models serve`` on a registered model with this environment's Python and uvicorn, the store
    resolved as ``vivit predict`` does, until Ctrl-C."""
    from tasks import tracking
    from tasks.tracking.catalog import resolve_model

    uri = args.tracking_uri or tracking.resolve_tracking_uri(cfg.mlflow, create=False)
    tracking.require_existing_store(uri)
    tracking.use_store(cfg.mlflow.model_copy(update={"tracking_uri": uri}))
    model = video_model(args.model_uri) if args.video else args.model_uri
    resolve_model(model)  # a wrong name or alias: one line listing what the store has, before the server starts
    port = free_port(args.port) if args.port == 0 else args.port
    cmd = [tool("mlflow"), "models", "serve", "-m", model, "--env-manager", "local", "--host", args.host,
           "--port", str(port)]
    print(f"vivit: serving {model} from {uri} at http://{args.host}:{port}/invocations (Ctrl-C stops it)",
          file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, env=venv_env({"MLFLOW_TRACKING_URI": uri}), stdin=subprocess.DEVNULL,
                            **die_with_parent_kwargs())
    return _until_interrupted([proc], ["mlflow models serve"])
