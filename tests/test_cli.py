"""The `vivit` command as users meet it: exit codes and messages for bad input, and a stage run end to end."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from flows.cli import EXIT_OK, EXIT_STAGE_FAILED, EXIT_USAGE, main

ROOT = Path(__file__).resolve().parents[1]


def test_bad_config_key_exits_2_naming_the_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("frames: {num_frame: 8}\n")
    assert main(["frames", "--config", str(cfg)]) == EXIT_USAGE
    assert "frames.num_frame: unknown key" in capsys.readouterr().err


def test_unknown_stage_exits_2_before_any_work(tmp_path, capsys):
    assert main(["run", "--set", f"data_dir={tmp_path}", "--stages", "download,trian"]) == EXIT_USAGE
    assert "unknown stage(s) ['trian']" in capsys.readouterr().err
    assert main(["run", "--set", f"data_dir={tmp_path}", "--force", "frames,fram"]) == EXIT_USAGE
    assert "unknown stage(s) ['fram']" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def _vivit(args: list[str]) -> subprocess.CompletedProcess:
    """The CLI in its own process (as a user runs it), talking to the session's Prefect test server. In-process
    flow runs under ``capsys`` would leave Prefect's console handler bound to a stream pytest later closes."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_demo_data_then_download_and_an_unknown_class(prefect_harness, tmp_path):
    src = tmp_path / "src"
    assert main(["demo-data", "--out", str(src), "--n-dribbling", "3", "--n-dunking", "2"]) == EXIT_OK
    common = ["--set", f"data_dir={tmp_path / 'data'}", "--set", f"annotations={src / 'annotations.csv'}",
              "--set", f"url_template=file://{src}/videos/{{youtube_id}}.mp4", "--set", "download.allow_file_urls=true"]
    ok = _vivit(["download", *common])
    assert ok.returncode == EXIT_OK, ok.stderr[-2000:]
    assert "== download: ok" in ok.stdout and "downloaded 5," in ok.stdout
    assert set(pd.read_csv(tmp_path / "data" / "reports" / "download.csv")["status"]) == {"downloaded"}
    # the flow run got only the download stage's part of the config
    assert set(_last_flow_run("download").parameters["config"]) == {
        "data_dir", "annotations", "classes", "splits", "max_per_class", "url_template", "download", "cluster"}
    assert "downloaded 0," in _vivit(["download", *common]).stdout  # all there: nothing to do
    again = _vivit(["download", *common, "--force"])
    assert again.returncode == EXIT_OK and "downloaded 5," in again.stdout, again.stderr[-2000:]
    # a misspelt class: a user error (exit 2), the summary suggests the real name, no traceback, and the flow
    # run ends Failed in Prefect (not a green Completed)
    bad = _vivit(["download", *common, "--set", "classes=[dribling basketball, dunking basketball]"])
    assert bad.returncode == EXIT_USAGE, bad.stderr[-2000:]
    assert "FAILED" in bad.stdout and "did you mean" in bad.stdout and "dribbling basketball" in bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr
    assert _last_flow_run_state("download") == "FAILED"


def _last_flow_run_state(flow_name: str) -> str:
    return _last_flow_run(flow_name).state.type.name


def _last_flow_run(flow_name: str):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    async def query():
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                               sort=FlowRunSort.START_TIME_DESC, limit=1)
            return runs[0]

    return asyncio.run(query())


def test_presets_are_priced_on_the_configs_own_clips(capsys):
    """`vivit presets` describes every preset on the clips the config trains on (it once printed 16x128x128 costs
    whatever the config said), marks the config's model, and says which presets do not fit other clips."""
    from model.presets import DEFAULT_PRESET, PRESETS, describe

    assert main(["presets"]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("forward GFLOPs per view: 16 positions at 64x64, input auto")
    assert len(lines) == 1 + len(PRESETS)
    default = next(line for line in lines if line.startswith(DEFAULT_PRESET + " "))
    assert default.endswith("<- train.model")
    assert f"GFLOPs/view={describe(DEFAULT_PRESET, 16, 64)['gflops']:6.2f}" in default

    assert main(["presets", "--set", "frames.size=56", "--set", "train.model=frame-mlp",
                 "--set", "train.input=rgb"]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert "at 56x56, input rgb" in lines[0]
    assert next(line for line in lines if line.startswith("frame-mlp ")).endswith("<- train.model")
    assert "vivit-fe-tiny      does not fit these clips: image_size 56 must be a multiple of patch_size 16" in lines
    assert main(["presets", "--set", "train.modl=x"]) == EXIT_USAGE


def test_flows_on_a_temporary_server_send_no_heartbeats():
    """A server that dies with the command cannot use flow-run heartbeats, and each one cost its flow run a wait of
    up to 1 s at the end (Prefect 3.8.8), so vivit's own server (and the tests' and benchmarks') runs without."""
    from prefect.settings import get_current_settings, temporary_settings

    from flows.server import temporary_server_settings

    with temporary_settings(temporary_server_settings("http://127.0.0.1:9/api")):
        settings = get_current_settings()
        assert settings.flows.heartbeat_frequency is None and settings.api.url == "http://127.0.0.1:9/api"
    with temporary_settings(temporary_server_settings()):
        assert get_current_settings().flows.heartbeat_frequency is None


# The bad-input table of docs/failures.md: each mistake, the one line a user sees, exit 2, before any Prefect server
# starts or any model loads. ``{d}`` is a fresh data_dir, ``{s}`` an MLflow store with models ``alpha`` and ``clf``.
BAD_INPUT = [
    ("download with a missing annotations file", ["download", "--set", "annotations={d}/nope.csv"],
     "annotations file not found: {d}/nope.csv"),
    ("filter before download", ["filter"], "no {d}/reports/download.csv and no {d}/raw/ (data_dir {d}): run "
                                           "`vivit download` with the same --config first"),
    ("frames before filter", ["frames"], "no {d}/reports/filter.csv (data_dir {d}): run `vivit filter`"),
    ("train without a dataset", ["train"], "no dataset in {d}/dataset (data_dir {d}): run `vivit frames`"),
    ("run from a stage whose input is missing", ["run", "--from", "train"], "no dataset in {d}/dataset"),
    ("ddp-spec without a dataset", ["ddp-spec", "--nnodes", "1", "--nproc-per-node", "2"],
     "has no manifest.parquet + dataset.json: run the frames stage first"),
    ("predict a file that does not exist", ["predict", "{d}/nope.mp4", "--tracking-uri", "sqlite:///{d}/no.db"],
     "nothing classified, 1 input(s) not found: {d}/nope.mp4: file not found"),
    ("predict a glob that matches nothing", ["predict", "{d}/*.webm"], "{d}/*.webm: no file matches this pattern"),
    ("predict with --stride but no --window", ["predict", "x.mp4", "--stride", "1"], "--stride needs --window"),
    ("predict into a file that is not .jsonl/.csv", ["predict", "x.mp4", "-o", "{d}/out.json"],
     "--output must end in .jsonl or .csv"),
    ("predict against a store that does not exist", ["predict", "{v}", "--tracking-uri", "sqlite:///{d}/no.db"],
     "no MLflow store at {d}/no.db"),
    ("predict with a model name that is not registered", ["predict", "{v}", "--model", "models:/clff@champion",
                                                          "--tracking-uri", "{s}"],
     "no registered model 'clff' in {s}: registered are alpha, clf"),
    ("predict with an alias the model does not have", ["predict", "{v}", "--model", "models:/clf@best",
                                                       "--tracking-uri", "{s}"], "clf has no alias @best"),
]


@pytest.fixture(scope="module")
def two_model_store(tmp_path_factory):
    """A SQLite store where models ``alpha`` and ``clf`` are registered (names only: no model needs loading)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    for name in ("clf", "alpha"):
        client.create_registered_model(name)
    return uri


@pytest.mark.parametrize("mistake,args,line", BAD_INPUT, ids=[m for m, _, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2(mistake, args, line, two_model_store, tmp_path, capsys, monkeypatch):
    d = tmp_path / "data"
    video = tmp_path / "v.mp4"
    video.write_bytes(b"not decoded: the model's name is checked first")
    fill = {"d": d, "s": two_model_store, "v": video}
    args = [a.format(**fill) for a in args]
    if args[0] != "predict":
        args += ["--config", str(ROOT / "configs" / "demo.yaml"), "--set", f"data_dir={d}"]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # a server would be started if a check came too late
    monkeypatch.chdir(tmp_path)
    assert main(args) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("vivit: ") and len(err.strip().splitlines()) == 1, err
    assert line.format(**fill) in err


def test_predictions_are_strict_json():
    """Every line ``vivit predict`` writes parses as JSON in any language: a non-finite score is null."""
    import json

    from tasks.lib.predicting import json_line

    res = {"path": "a.mp4", "label": "x", "probabilities": {"x": float("nan"), "y": 1.0},
           "segments": [{"start": 0.0, "p_positive": float("inf")}]}
    back = json.loads(json_line(res), parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))
    assert back["probabilities"] == {"x": None, "y": 1.0} and back["segments"][0]["p_positive"] is None
