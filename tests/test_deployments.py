"""prefect.yaml for real: a Prefect server on loopback, a process work pool, `prefect deploy --all`, a
deployment run with parameters, and a worker that executes it (the sequence docs/deployments.md documents)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tasks.lib.config import STAGE_CONFIGS, PipelineConfig, load_config
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")
EXPECTED = {"download", "filter", "frames", "pretrain", "train", "pipeline", "predict"}


def test_prefect_yaml_mirrors_demo_config():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    assert names == EXPECTED
    for d in spec["deployments"]:
        assert d["work_pool"]["name"] == "vivit-process"
        module, func = d["entrypoint"].split(":")
        assert (ROOT / module).is_file() and f"def {func}(" in (ROOT / module).read_text()
        demo = load_config(ROOT / "configs/demo.yaml")
        if d["name"] == "pipeline":
            assert PipelineConfig.model_validate(d["parameters"]["config"]) == demo
        elif "config" in d["parameters"]:  # a stage: exactly the keys it reads, with the demo's values
            stage = STAGE_CONFIGS[d["name"]]
            assert stage.model_validate(d["parameters"]["config"]) == demo.stage(d["name"])
            assert set(d["parameters"]["config"]) <= set(stage.model_fields)
        import importlib
        import inspect

        flow = getattr(importlib.import_module(module.replace("/", ".").removesuffix(".py")), func)
        assert set(d["parameters"]) <= set(inspect.signature(flow.fn).parameters), d["name"]


def _cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"prefect {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


@pytest.fixture
def loopback_server(tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=api,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="INFO")
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, "prefect server exited during start-up"
            time.sleep(0.5)
        else:
            pytest.fail("prefect server did not become healthy within 120 s")
        yield api, env
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


@pytest.mark.slow
def test_deploy_run_and_work_against_loopback_server(loopback_server, tmp_path):
    from tasks.lib.demo import generate_demo_dataset

    api, env = loopback_server
    src = tmp_path / "src"
    csv = generate_demo_dataset(src, n_dribbling=6, n_dunking=4, seed=3, width=96, height=72, duration=4.0, clip_len=3.0)
    config = {
        "data_dir": str(tmp_path / "data"),
        "annotations": [str(csv)],
        "url_template": f"file://{src}/videos/{{youtube_id}}.mp4",
        "download": {"allow_file_urls": True, "workers": 2, "retries": 0},
        "frames": {"num_frames": 4, "size": 32},
        "train": {"view_frames": 2},
    }
    _cli(["work-pool", "create", "vivit-process", "--type", "process"], env)
    _cli(["--no-prompt", "deploy", "--all"], env, timeout=300)
    listed = _cli(["deployment", "ls"], env).stdout
    for name in EXPECTED:
        assert f"{name}/{name}" in listed.replace(" ", "") or f"/{name}" in listed, listed
    run = _cli(["deployment", "run", "pipeline/pipeline", "--param", f"config={json.dumps(config)}",
                "--param", 'stages=["download","filter","frames"]'], env)
    assert "Created flow run" in run.stdout or "flow run" in run.stdout.lower()
    _cli(["worker", "start", "--pool", "vivit-process", "--run-once"], env, timeout=400)

    runs = httpx.post(f"{api}/flow_runs/filter", json={"sort": "START_TIME_DESC"}, timeout=10).json()
    by_flow = {}
    for r in runs:
        flow = httpx.get(f"{api}/flows/{r['flow_id']}", timeout=10).json()["name"]
        by_flow.setdefault(flow, []).append(r["state"]["type"])
    assert by_flow.get("pipeline") == ["COMPLETED"], by_flow
    for stage in ("download", "filter", "frames"):  # sub-flows of the pipeline run
        assert by_flow.get(stage) == ["COMPLETED"], by_flow
    assert "train" not in by_flow
    manifest = tmp_path / "data" / "dataset" / "manifest.parquet"
    assert manifest.is_file()
    import pandas as pd

    assert len(pd.read_parquet(manifest)) == 10
