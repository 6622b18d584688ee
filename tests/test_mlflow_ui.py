"""The MLflow UI as a person sees it, in a real headless browser (Chromium, ``apt install chromium``; skipped
without it): a run recorded by the project opens in the classic model-training view, with the metric charts in one
section per split. ``VIVIT_UI_SHOTS=DIR`` keeps the screenshots (``runs.png``, ``charts.png``) for a look."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tasks import tracking
from tasks.lib.config import MlflowConfig

pytestmark = pytest.mark.slow
CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser(url: str, *args: str) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--virtual-time-budget=25000", "--window-size=1400,900", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout


def _text(dom: str) -> str:
    dom = re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium/chrome binary (apt install chromium)")
def test_experiment_opens_in_the_classic_view_with_charts_by_split(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.use_store(MlflowConfig(tracking_uri=uri, experiment="ui", model_name="ui"))
    with tracking.training_run("ui", "the-run", {}) as run_id:
        reporter = tracking.MlflowReporter(run_id)
        for epoch in (1, 2, 3):
            reporter.on_epoch_end(epoch, {"train_loss": 1 / epoch, "val_loss": 1.2 / epoch, "val_f1": 0.3 * epoch})
        tracking.log_metrics({"test_accuracy": 0.9})
    exp_id = tracking.ensure_experiment("ui", uri)

    port = _port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", uri,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    try:
        deadline = time.time() + 300  # a loaded shared machine can take minutes
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "mlflow server did not start"
                time.sleep(0.5)
        ui = f"http://127.0.0.1:{port}"
        runs = _text(_browser(tracking.experiment_url(ui, exp_id), "--dump-dom"))
        charts = _text(_browser(tracking.experiment_url(ui, exp_id, charts=True), "--dump-dom"))
        shots = Path(os.environ.get("VIVIT_UI_SHOTS") or tmp_path)
        shots.mkdir(parents=True, exist_ok=True)
        _browser(tracking.experiment_url(ui, exp_id), f"--screenshot={shots / 'runs.png'}")
        _browser(tracking.experiment_url(ui, exp_id, charts=True), f"--screenshot={shots / 'charts.png'}")
    finally:
        server.terminate()
        server.wait(30)
    assert "Runs - Experiment" in runs and "the-run" in runs and "1 matching run" in runs
    assert "Latency" not in runs and "Token" not in runs, "the GenAI overview is showing"
    sections = re.findall(r"\b(train|val|test) \((\d+)\)", charts)
    assert dict(sections) == {"train": "1", "val": "2", "test": "1"}, charts[:2000]
    assert (shots / "runs.png").stat().st_size > 10_000
