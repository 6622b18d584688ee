"""Scaling out on real engines: download -> filter -> frames on a ``dask.distributed`` LocalCluster of 2 worker
processes gives the thread runner's manifest and fingerprint, its shard task runs report to the flow's Prefect API
(no temporary API per worker), and a worker killed mid-stage loses nothing after a re-run."""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import pandas as pd
import pytest
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.lib.cluster import api_url_mismatches, shard_size_for, shards, worker_environment
from tasks.lib.config import PipelineConfig
from tests.support.videos import demo_source_fixture


def test_shards_keep_order_and_cover_everything():
    items = list(range(7))
    parts = shards(items, 3)
    assert parts == [[0, 1, 2], [3, 4, 5], [6]] and [x for p in parts for x in p] == items
    assert shards([], 5) == [] and shards(items, 100) == [items]
    with pytest.raises(ValueError):
        shards(items, 0)


def test_auto_shards_are_about_two_per_worker_thread_within_bounds():
    assert shard_size_for(50, 10_000, 8) == 50  # a configured size is kept
    assert shard_size_for("auto", 260, 1) == 130 and shard_size_for("auto", 260, 3) == 44
    assert len(shards(list(range(260)), shard_size_for("auto", 260, 2))) == 4  # two per thread
    assert shard_size_for("auto", 12, 2) == 5  # small sets: at least 5 clips a shard
    assert shard_size_for("auto", 545_000, 100) == 500  # Kinetics-700 on 100 workers: at most 500
    assert shard_size_for("auto", 100, 0) == 50  # a scheduler with no worker yet counts as one thread


def test_workers_get_the_flows_api_and_settings():
    env = worker_environment("http://127.0.0.1:4321/api", {"PREFECT_HOME": "/x/.prefect", "PATH": "/bin",
                                                             "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    assert env == {"PREFECT_API_URL": "http://127.0.0.1:4321/api", "PREFECT_HOME": "/x/.prefect",
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "OMP_NUM_THREADS": "1"}
    with pytest.raises(ValueError, match="API URL"):
        worker_environment("", {})


def test_workers_without_the_flows_api_are_told_apart_from_workers_with_another_url():
    api = "http://prefect:4200/api"
    urls = {"tcp://a:1": api + "/", "tcp://b:1": None, "tcp://c:1": "", "tcp://d:1": "http://10.0.0.2:4200/api"}
    assert api_url_mismatches(urls, api) == (["tcp://b:1", "tcp://c:1"], ["http://10.0.0.2:4200/api"])
    assert api_url_mismatches({"tcp://a:1": api}, api) == ([], [])


def test_the_data_stages_import_without_torch():
    """What a Dask worker of download, filter or frames imports (the stage code, the config) does not pull in
    torch: it cost every worker process 1.3 s of start-up, and the data stages never build a network."""
    import pickle
    import subprocess
    import sys

    stage = pickle.dumps(PipelineConfig().stage("frames"))  # what a worker unpickles (it validates nothing)
    code = ("import pickle, sys, flows.cli, flows.download, flows.filter, flows.frames, tasks.cluster; "
            "assert pickle.loads(sys.stdin.buffer.read()).frames.num_frames > 0; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], input=stage, capture_output=True, check=True).stdout
    assert out.decode().strip() == "[]"


def test_cluster_section_validates():
    cfg = PipelineConfig.model_validate({"cluster": {"engine": "dask", "workers": 3, "shard_size": 10}})
    assert (cfg.cluster.engine, cfg.cluster.address, cfg.cluster.workers, cfg.cluster.shard_size) == ("dask", None, 3, 10)
    assert PipelineConfig().cluster.engine == "threads" and PipelineConfig().cluster.shard_size == "auto"
    for bad in ({"engine": "ray"}, {"shard_size": 0}, {"shard_size": "big"}, {"workers": 0}, {"shards": 3}):
        with pytest.raises(ValueError):
            PipelineConfig.model_validate({"cluster": bad})


# -- real engines ---------------------------------------------------------------------------------------------------
demo_source = demo_source_fixture(per_class=6, seed=4)


def _config(data_dir, demo_source, **cluster) -> PipelineConfig:
    src, csv = demo_source
    return PipelineConfig.model_validate({
        "data_dir": str(data_dir), "annotations": [str(csv)], "url_template": f"file://{src}/videos/{{youtube_id}}.mp4",
        "download": {"allow_file_urls": True, "workers": 2, "retries": 0},
        "frames": {"num_frames": 5, "size": 32, "workers": 2}, "train": {"view_frames": 4},
        "cluster": cluster or {"engine": "threads"},
    })


def _stages(cfg: PipelineConfig) -> None:
    from flows.download import download_flow
    from flows.filter import filter_flow
    from flows.frames import frames_flow

    download_flow(cfg)
    filter_flow(cfg)
    frames_flow(cfg)


def _manifest(cfg: PipelineConfig) -> pd.DataFrame:
    """The manifest without the one column that records when a file was written."""
    return pd.read_parquet(cfg.dataset_dir / "manifest.parquet").drop(columns=["frames_mtime_ns"])


def _fingerprint(cfg: PipelineConfig) -> str:
    return json.loads((cfg.dataset_dir / "dataset.json").read_text())["fingerprint"]


def _report(cfg: PipelineConfig, name: str) -> pd.DataFrame:
    df = pd.read_csv(cfg.reports_dir / name, dtype=str, keep_default_na=False)
    return df.drop(columns=[c for c in df.columns if "mtime" in c or c in ("attempts", "seconds")])


@pytest.fixture(scope="module")
def threads_run(prefect_harness, demo_source, tmp_path_factory):
    cfg = _config(tmp_path_factory.mktemp("threads") / "data", demo_source)
    _stages(cfg)
    return cfg


@pytest.fixture(scope="module")
def local_cluster(prefect_harness):
    """One LocalCluster of 2 single-threaded worker processes for this module (starting one costs seconds), its
    workers started with the flow's Prefect API URL as docs/scaling.md tells users to start theirs."""
    from distributed import Client, LocalCluster

    from tasks.cluster import flow_api_url

    env = worker_environment(flow_api_url(), dict(os.environ))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, env=env) as lc, \
            Client(lc) as client:
        yield lc, client


@pytest.mark.slow
def test_dask_local_cluster_gives_the_thread_runners_dataset(threads_run, local_cluster, demo_source, tmp_path):
    """Two worker processes, ``auto`` shards (12 clips on 2 threads: 5 a shard, the minimum): the same
    download/filter/frames reports, manifest and fingerprint;
    the shard task runs are in the flow's Prefect API, so the workers reported there (not to temporary servers),
    and both worker processes did some of the work."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    lc, client = local_cluster
    cfg = _config(tmp_path / "data", demo_source, engine="dask", address=lc.scheduler_address)
    _stages(cfg)
    pd.testing.assert_frame_equal(_manifest(cfg), _manifest(threads_run))
    assert _fingerprint(cfg) == _fingerprint(threads_run)
    assert len(_manifest(cfg)) == 12
    for name in ("download.csv", "filter.csv", "frames.csv"):
        pd.testing.assert_frame_equal(_report(cfg, name), _report(threads_run, name))

    with get_client(sync_client=True) as api:
        runs = api.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="-shard-")))
    names = {r.name for r in runs if r.state and r.state.is_completed()}
    # 12 clips in shards of 5: 3 shards per stage, all completed and recorded by the flow's own API
    assert {f"{stage}-shard-{i}" for stage in ("download", "filter", "frames") for i in range(3)} <= names

    # an unchanged re-run on Dask does nothing and keeps the dataset
    from flows.frames import frames_flow

    again = frames_flow(cfg)
    assert again["counts"]["sampled"] == 0 and again["counts"]["already_done"] == 12
    assert _fingerprint(cfg) == _fingerprint(threads_run)


@pytest.mark.slow
def test_killing_a_dask_worker_mid_stage_then_rerunning_loses_nothing(threads_run, local_cluster, demo_source,
                                                                       tmp_path):
    """An existing scheduler (``cluster.address``); one worker is killed (SIGKILL) as soon as the first clip's
    frames appear. Dask re-runs its shard elsewhere (the nanny restarts the worker), or the stage fails; either way
    a re-run completes with every clip, identical to threads."""
    from flows.frames import frames_flow

    lc, client = local_cluster
    data = tmp_path / "data"
    for part in ("raw", "reports"):
        shutil.copytree(threads_run.data_dir / part, data / part)
    (data / "reports" / "frames.csv").unlink()
    cfg = _config(data, demo_source, engine="dask", address=lc.scheduler_address, shard_size=1)
    outcome: dict = {}

    def first_run() -> None:
        try:
            outcome["summary"] = frames_flow(cfg)
        except Exception as e:  # noqa: BLE001 - a failed first run is one allowed outcome
            outcome["error"] = e

    runner = threading.Thread(target=first_run)
    runner.start()
    frames_dir = cfg.dataset_dir / "frames"
    deadline = time.monotonic() + 300
    while not (frames_dir.is_dir() and any(frames_dir.rglob("*.npy"))) and time.monotonic() < deadline:
        time.sleep(0.02)
    victim = sorted(client.run(os.getpid).values())[0]
    os.kill(victim, signal.SIGKILL)
    at_kill = len(list(frames_dir.rglob("*.npy")))
    runner.join(300)
    assert not runner.is_alive() and outcome
    second = frames_flow(cfg)
    assert 0 < at_kill < 12, "the worker was killed mid-stage"
    assert second["counts"]["clips"] == 12 and second["counts"]["failed"] == 0
    assert second["counts"]["sampled"] + second["counts"]["already_done"] == 12
    pd.testing.assert_frame_equal(_manifest(cfg), _manifest(threads_run))
    assert _fingerprint(cfg) == _fingerprint(threads_run)


# -- the Dask task runner (prefect-dask's, as shipped): shards are Prefect task runs --------------------------------


@task(cache_policy=NO_CACHE)
def _setup_probe(i: int) -> dict:
    """What this task run got on its worker: its process, one setting and its task run."""
    from prefect.context import get_run_context
    from prefect.settings import PREFECT_TASKS_DEFAULT_RETRY_DELAY_SECONDS

    get_run_logger().warning("probe %d on pid %d", i, os.getpid())  # the tests log warnings and up
    return {"i": i, "pid": os.getpid(), "delay": PREFECT_TASKS_DEFAULT_RETRY_DELAY_SECONDS.value(),
            "task_run_id": get_run_context().task_run.id}


@task(cache_policy=NO_CACHE)
def _double(x: dict) -> int:
    return 2 * x["i"]


@task(cache_policy=NO_CACHE)
def _raises() -> None:
    raise ValueError("a shard went wrong")


@flow
def _probe_flow(address: str) -> dict:
    from prefect.context import get_run_context
    from prefect.settings import PREFECT_TASKS_DEFAULT_RETRY_DELAY_SECONDS, temporary_settings

    from tasks.cluster import dask_runner
    from tasks.lib.config import ClusterConfig

    out: dict = {"flow_run_id": get_run_context().flow_run.id, "plain": []}
    with dask_runner(ClusterConfig(engine="dask", address=address)) as runner:
        for i in range(6):  # one at a time: each worker thread gets several in turn
            out["plain"].append(runner.submit(_setup_probe, {"i": i}).result())
        with temporary_settings({PREFECT_TASKS_DEFAULT_RETRY_DELAY_SECONDS: 7}):
            changed = runner.submit(_setup_probe, {"i": 21})
            out["changed"] = changed.result()
        out["after"] = runner.submit(_setup_probe, {"i": 22}).result()
        doubled = runner.submit(_double, {"x": changed})
        out["doubled"], out["doubled_id"] = doubled.result(), doubled.task_run_id
        failing = runner.submit(_raises, {})
        failing.wait()
        error = failing.state.result(raise_on_failure=False)
        out["failed"] = f"{type(error).__name__}: {error}"
    return out


@pytest.mark.slow
def test_dask_task_runs_are_prefect_task_runs(local_cluster):
    """Through ``tasks.cluster.dask_runner``: task runs on the workers run under the settings their flow submitted
    them with (a changed setting reaches the worker, and the next task run is back on the flow's own); each is a
    real Prefect task run in the flow's API (completed, its log line there, an upstream future recorded as its
    input), and a task that raises ends Failed with its exception."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterTaskRunId

    lc, _ = local_cluster
    out = _probe_flow(lc.scheduler_address)
    plain = out["plain"]
    assert len({r["pid"] for r in plain}) < len(plain)  # 6 runs on 2 single-threaded workers: some ran several
    assert {r["delay"] for r in plain} == {0} and out["changed"]["delay"] == 7 and out["after"]["delay"] == 0
    assert out["doubled"] == 42
    assert out["failed"] == "ValueError: a shard went wrong"

    def recorded():  # task run states arrive as events and logs in batches: the API may lag the flow a little
        with get_client(sync_client=True) as api:
            runs = {r.id: r for r in api.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[out["flow_run_id"]])))}
            logs = api.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[plain[0]["task_run_id"]])))
        return runs, [log.message for log in logs]

    deadline = time.monotonic() + 30
    while True:
        runs, logs = recorded()
        ours = [runs.get(r["task_run_id"]) for r in [*plain, out["changed"], out["after"]]]
        failed = [r for r in runs.values() if r.name.startswith("_raises") and r.state.is_failed()]
        done = all(r is not None and r.state.is_completed() for r in ours) and failed and logs
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert all(r is not None and r.state.is_completed() for r in ours)
    assert len(failed) == 1
    assert [i.id for i in runs[out["doubled_id"]].task_inputs["x"]] == [out["changed"]["task_run_id"]]
    assert f"probe 0 on pid {plain[0]['pid']}" in logs
