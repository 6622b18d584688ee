"""``vivit ui`` and ``vivit serve`` for real, as a user starts them from a plain shell (no activated venv): the servers
come up, answer over loopback and are wired to each other, and Ctrl-C stops every child; the "Next:" commands a
training prints run as printed."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from flows.services import free_port
from tests.support.registry import S, T, register_trained, store_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
VIVIT = Path(sys.executable).parent / "vivit"
PLAIN_PATH = "/usr/local/bin:/usr/bin:/bin"  # a shell where the venv was never activated


def _plain_env(**extra: str) -> dict[str, str]:
    drop = {"MLFLOW_TRACKING_URI", "PREFECT_API_URL", "VIRTUAL_ENV", "PREFECT_HOME"}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "PATH": PLAIN_PATH, **extra}


def _children(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        todo += kids
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def _lines_until(proc: subprocess.Popen, marker: str, timeout_s: float) -> list[str]:
    lines, deadline = [], time.time() + timeout_s
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if marker in line:
            return lines
    proc.send_signal(signal.SIGINT)
    raise AssertionError(f"no {marker!r} within {timeout_s} s: {lines} {proc.stderr.read()[-3000:]}")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A project folder with model ``clf`` v1 (champion) in its ``mlruns/`` store."""
    d = tmp_path_factory.mktemp("project")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    cfg = store_config(d / "mlruns", experiment="svc")
    _, run_id = register_trained(cfg)
    return {"dir": d, "cfg": cfg, "run_id": run_id}


def test_vivit_ui_serves_both_uis_wired_and_ctrl_c_stops_them(store, tmp_path):
    home = tmp_path / "prefect-home"
    pport, mport = free_port(0), free_port(0)
    args = [str(VIVIT), "ui", "--set", f"data_dir={tmp_path / 'data'}", "--set", "mlflow.experiment=svc",
            "--tracking-uri", store["cfg"].tracking_uri, "--prefect-port", str(pport), "--mlflow-port", str(mport)]
    proc = subprocess.Popen(args, cwd=store["dir"], env=_plain_env(PREFECT_HOME=str(home)), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = _lines_until(proc, "Ctrl-C stops", 300)
        links = {ln.split()[0]: ln.split()[2] for ln in lines if ln.startswith(("Prefect UI", "MLflow UI"))}
        assert links["Prefect"] == f"http://127.0.0.1:{pport}/", lines
        assert links["MLflow"] == f"http://127.0.0.1:{mport}/#/experiments/1/runs/{store['run_id']}", lines
        assert f"PREFECT_HOME {home}" in "\n".join(lines)
        # both pages over loopback; the Prefect UI is told the API of *this* port, not Prefect's default 4200
        assert b"<html" in _get(links["Prefect"]).lower() and b"<html" in _get(f"http://127.0.0.1:{mport}/").lower()
        settings = json.loads(_get(f"http://127.0.0.1:{pport}/ui-settings"))
        assert settings["api_url"] == f"http://127.0.0.1:{pport}/api"
        assert json.loads(_get(f"http://127.0.0.1:{pport}/api/health")) is True
        run = json.loads(_get(f"http://127.0.0.1:{mport}/api/2.0/mlflow/runs/get?run_id={store['run_id']}"))
        assert run["run"]["info"]["run_id"] == store["run_id"]
        assert home.is_dir() and any(home.iterdir()), "the Prefect server used another home"
        children = _children(proc.pid)
        assert len(children) >= 2
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    time.sleep(0.5)
    assert not [c for c in children if _alive(c)], "a server outlived vivit ui"
    for port in (pport, mport):
        with pytest.raises(OSError):
            _get(f"http://127.0.0.1:{port}/")


def test_the_printed_serve_command_answers_rest_requests(store, tmp_path, capsys):
    """The "Next:" block of a training, pasted into a shell without the venv: ``vivit serve`` finds its own uvicorn,
    and the model answers; a wrong name is one line listing the registered models, before any server starts."""
    from flows.terminal import next_steps
    from tasks.lib.config import load_config
    from tasks.lib.results import StageResult
    from tests.support.registry import tiny_classifier

    cfg = load_config(None, ["mlflow.model_name=clf", "mlflow.experiment=svc"])
    train = StageResult(stage="train", result={"tracking_uri": store["cfg"].tracking_uri,
                                               "registry": {"aliases": {"champion": 1}}})
    cwd = Path.cwd()
    os.chdir(ROOT)  # the project folder, where the printed commands are meant to be pasted
    try:
        next_steps(cfg, [train])
    finally:
        os.chdir(cwd)
    printed = [ln.strip().split("  #")[0] for ln in capsys.readouterr().out.splitlines() if " serve " in ln]
    assert printed and printed[0].startswith(".venv/bin/vivit serve models:/clf@champion"), printed
    port = free_port(0)
    cmd = shlex.split(printed[0].replace("--port 5001", f"--port {port}"))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_plain_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while True:
            try:
                _get(f"http://127.0.0.1:{port}/ping")
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
                time.sleep(0.5)
        frames = np.random.default_rng(0).integers(0, 256, (2, T, S, S, 3), dtype=np.uint8)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", method="POST",
                                     data=json.dumps({"inputs": frames.tolist()}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            got = json.loads(r.read())["predictions"]
        children = _children(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    import torch

    with torch.inference_mode():
        want = tiny_classifier()(torch.from_numpy(frames)).numpy()
    np.testing.assert_allclose([[row[c] for c in tiny_classifier().classes] for row in got], want, atol=1e-5)
    assert proc.returncode == 0 and not [c for c in children if _alive(c)]

    wrong = subprocess.run([*cmd[:2], "models:/clff@champion", *cmd[3:]], cwd=ROOT, env=_plain_env(),
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and wrong.stderr.strip().count("\n") == 0, wrong.stderr
    assert "no registered model 'clff'" in wrong.stderr and "registered are clf" in wrong.stderr
