"""Fast versions of the fault trials of benchmarks/faults.py: one writer at a time, cleanup after kill -9,
truthful Failed states, and one-line failures for services down, full disks and user errors. Everything real:
processes killed with SIGKILL, OS file locks, a real MLflow SQLite store, real Prefect flow runs."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from tasks.lib import locks
from tasks.lib.errors import DiskFullError, StageFailed, check_free_space, disk_full_message, is_disk_full
from tests.support.ports import free_port
from tests.support.videos import demo_source_fixture

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _python(code: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, env=env or ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _gone(pid: int) -> bool:
    """Dead or a zombie (a container's init may not reap orphans)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def _wait_gone(pid: int, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return False


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[-1].split()[1])
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append((int(d.name), cmd))
    return out


HOLD = """
import os, sys, time
from tasks.lib.locks import exclusive
with exclusive(sys.argv[1], "data_dir X", command="holder"):
    print("held", flush=True)
    end = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end and not (len(sys.argv) > 3 and os.path.exists(sys.argv[3])):
        time.sleep(0.05)
"""


def _holder(path: Path, seconds: float, release: Path | None = None) -> subprocess.Popen:
    """Holds the lock for ``seconds``, or until the file ``release`` exists."""
    p = _python(HOLD, str(path), str(seconds), *([str(release)] if release else []))
    assert p.stdout.readline().strip() == "held", p.stderr.read()
    return p


# -- one writer at a time ------------------------------------------------------------------------------------
def test_a_second_writer_refuses_or_waits_and_a_dead_owner_is_taken_over(tmp_path):
    lock = tmp_path / ".vivit.lock"
    holder = _holder(lock, 60)
    try:
        with pytest.raises(locks.LockBusy) as info:
            with locks.exclusive(lock, "data_dir X", wait=False):
                pass
        assert f"pid {holder.pid}" in str(info.value) and "(holder)" in str(info.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    said: list[str] = []
    with locks.exclusive(lock, "data_dir X", notify=said.append) as previous:
        assert previous is not None and previous.pid == holder.pid
        assert locks.held(lock)
        with locks.exclusive(lock, "data_dir X", wait=False):  # re-entrant in one process
            pass
    assert any("took over" in s and str(holder.pid) in s for s in said), said
    assert not locks.held(lock)

    short = _holder(lock, 1.5)
    said.clear()
    t0 = time.monotonic()
    with locks.exclusive(lock, "data_dir X", notify=said.append):
        waited = time.monotonic() - t0
    short.wait()
    assert waited > 0.5 and any("waiting" in s and str(short.pid) in s for s in said), said


def test_temporary_files_of_a_live_writer_are_not_cleaned(tmp_path):
    from tasks.lib.download import clean_partials

    raw = tmp_path / "raw" / "x"
    raw.mkdir(parents=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mine = raw / f".a_000001_000002.part-{live.pid}-0123abcd.mp4"
        dead = raw / ".b_000001_000002.part-999999999-0123abcd.mp4"
        for p in (mine, dead):
            p.write_bytes(b"x")
        assert clean_partials(tmp_path / "raw") == [dead] and mine.is_file()
    finally:
        live.kill()
        live.wait()
    assert clean_partials(tmp_path / "raw") == [mine]


demo_source = demo_source_fixture(per_class=3, seed=2)


def _vivit(args: list[str], *, api: bool = True, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    env = {**ENV, **(env or {})}
    if api:
        from prefect.settings import PREFECT_API_URL

        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    else:
        env.pop("PREFECT_API_URL", None)
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _collect(proc: subprocess.Popen) -> tuple[list[str], list[str]]:
    """stdout and stderr lines as they come, and the threads that drain both pipes (so a chatty process never
    blocks on a full pipe)."""
    import threading

    out: list[str] = []
    err: list[str] = []
    threads = [threading.Thread(target=lambda s=stream, acc=acc: acc.extend(iter(s.readline, "")), daemon=True)
               for stream, acc in ((proc.stdout, out), (proc.stderr, err))]
    for t in threads:
        t.start()
    return out, err, threads


def _common(tmp_path: Path, demo_source) -> list[str]:
    src, csv = demo_source
    return ["--set", f"data_dir={tmp_path / 'data'}", "--set", f"annotations={csv}",
            "--set", f"url_template=file://{src}/videos/{{youtube_id}}.mp4", "--set", "download.allow_file_urls=true",
            "--set", "download.workers=2"]


def test_two_concurrent_downloads_end_cleanly_and_a_third_redoes_nothing(prefect_harness, tmp_path, demo_source):
    common = _common(tmp_path, demo_source)
    (tmp_path / "data").mkdir()
    # a third process holds the data_dir until both downloads wait for it, so that they surely overlap (on an idle
    # machine one download can otherwise end before the other asks for the lock; on a loaded one both can start
    # after a fixed hold)
    release = tmp_path / "release"
    gate = _holder(tmp_path / "data" / ".vivit.lock", 240, release)
    a, b = _vivit(["download", *common]), _vivit(["download", *common])
    streams = [_collect(p) for p in (a, b)]
    deadline = time.monotonic() + 240
    while not all("waiting for it to finish" in "".join(err) for _, err, _ in streams) and time.monotonic() < deadline:
        time.sleep(0.1)
    release.touch()
    gate.wait(timeout=30)
    for p in (a, b):
        p.wait(timeout=300)
    for *_, threads in streams:
        for t in threads:
            t.join(timeout=30)
    outs = [("".join(out), "".join(err)) for out, err, _ in streams]
    assert [a.returncode, b.returncode] == [0, 0], [o[1][-2000:] for o in outs]
    assert all("waiting for it to finish" in err for _, err in outs), [(o[-3000:], err[-1000:]) for o, err in outs]
    # the summary's counts line: "requested 6, downloaded 6, skipped 0, ..."
    downloaded = [int(m.group(1)) for out, _ in outs for line in out.splitlines()
                  if (m := re.match(r"\s*requested \d+, downloaded (\d+)\b", line))]
    assert sorted(downloaded) == [0, 6], downloaded  # every clip fetched once, by one of them
    raw = tmp_path / "data" / "raw"
    before = {p: p.stat().st_mtime_ns for p in raw.rglob("*") if p.is_file()}
    assert len(before) == 6 and not any(p.name.startswith(".") for p in before)
    c = _vivit(["download", *common])
    out, err = c.communicate(timeout=300)
    assert c.returncode == 0, err[-2000:]
    assert set(pd.read_csv(tmp_path / "data" / "reports" / "download.csv")["status"]) == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in raw.rglob("*") if p.is_file()} == before


def test_no_wait_refuses_in_one_line_and_debug_shows_the_traceback(prefect_harness, tmp_path, demo_source):
    common = _common(tmp_path, demo_source)
    holder = _holder(tmp_path / "data" / ".vivit.lock", 120)
    try:
        p = _vivit(["download", *common, "--no-wait"])
        out, err = p.communicate(timeout=300)
        assert p.returncode == 2, err[-2000:]
        assert f"in use by pid {holder.pid}" in err and "Traceback" not in out + err
        lines = [ln for ln in err.splitlines() if ln.startswith("vivit:")]
        assert len(lines) == 1, err[-2000:]
        p = _vivit(["download", *common, "--no-wait", "--debug"])
        out, err = p.communicate(timeout=300)
        assert p.returncode != 0 and "Traceback" in err and "LockBusy" in err
    finally:
        holder.kill()
        holder.wait()


# -- cleanup after kill -9 -----------------------------------------------------------------------------------
KILLED_TRAINING = """
import os, signal, sys
import mlflow
from mlflow import MlflowClient
from tasks import tracking
uri, mode = sys.argv[1], sys.argv[2]
mlflow.set_tracking_uri(uri); mlflow.set_registry_uri(uri)
with tracking.training_run("exp", "r", {"train_key": "k1"}) as run_id:
    mlflow.log_metric("best_val_f1", 0.75)
    if mode == "registered":
        client = MlflowClient()
        client.create_registered_model("m")
        client.create_model_version("m", f"runs:/{run_id}/model", run_id=run_id)
    print(run_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("mode", ["training", "registered"])
def test_a_killed_training_is_marked_killed_and_a_registered_one_is_reused(tmp_path, mode):
    import mlflow
    from mlflow import MlflowClient

    from tasks import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    p = _python(KILLED_TRAINING, uri, mode)
    out, err = p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL, err[-2000:]
    run_id = out.split()[-1]
    client = MlflowClient(uri, registry_uri=uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # what a kill leaves behind

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    found = tracking.find_reusable_run("exp", "k1", "m")
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and "died" in run.data.tags["vivit.reaped"]
    if mode == "training":
        assert found is None
    else:  # reused, not registered a second time; the aliases the kill prevented are set
        assert found["run_id"] == run_id and found["version"] == 1
        assert len(client.search_model_versions("name = 'm'")) == 1
        assert tracking.aliases("m") == {"champion": 1, "challenger": 1}


CHILDREN = """
import subprocess, sys, time
from tasks.lib.media import ffmpeg_exe
from tasks.lib.procs import die_with_parent_kwargs, patch_ytdlp_popen
cmd = [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=5",
       "-t", "600", "-f", "null", "-"]
ours = subprocess.Popen(cmd, **die_with_parent_kwargs())
patch_ytdlp_popen()
from yt_dlp.utils import Popen
theirs = Popen(cmd)
print(ours.pid, theirs.pid, flush=True)
time.sleep(120)
"""


def test_ffmpeg_children_die_with_a_killed_parent():
    p = _python(CHILDREN)
    pids = [int(x) for x in p.stdout.readline().split()]
    time.sleep(0.5)
    assert len(pids) == 2 and not any(_gone(x) for x in pids)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert all(_wait_gone(x) for x in pids)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_the_temporary_prefect_server_dies_with_the_command(tmp_path, demo_source, sig):
    """Without PREFECT_API_URL the command runs its own temporary server: kill -9 or SIGTERM of the command
    must not leave it running (it outlived kill -9 in 26 of 32 trials)."""
    p = _vivit(["download", *_common(tmp_path, demo_source)], api=False)
    server = None
    end = time.monotonic() + 120
    while server is None and time.monotonic() < end and p.poll() is None:
        server = next((pid for pid, cmd in _children(p.pid) if "uvicorn" in cmd), None)
        time.sleep(0.05)
    assert server is not None, "no temporary server child seen"
    p.send_signal(sig)
    p.communicate(timeout=60)
    assert _wait_gone(server, 15), f"server {server} outlived the command ({sig!r})"


UNTESTED_PREFECT = """
import subprocess, sys
import httpx
import flows, prefect
prefect.__version__ = "9.9.9"  # a Prefect whose server internals were never read
from prefect.server.api import server as prefect_server
from flows.server import own_prefect_server
with own_prefect_server() as server:
    assert prefect_server.subprocess is subprocess  # nothing wrapped
    print(httpx.get(server.api_url + "/health").status_code, server.server_process.pid, flush=True)
"""


@pytest.mark.slow
def test_an_untested_prefect_gets_an_unwrapped_temporary_server_and_a_warning():
    """The fence around the one Prefect internal ``vivit`` wraps (``flows/server.py`` ``server_popen_problem``)."""
    import types

    from flows.server import server_popen_problem

    assert "starts its server differently" in server_popen_problem(types.SimpleNamespace())
    env = {k: v for k, v in ENV.items() if k != "PREFECT_API_URL"}
    p = _python(UNTESTED_PREFECT, env=env)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    status, pid = out.split()
    assert status == "200" and _wait_gone(int(pid))  # it served, and stopped with the block
    assert "vivit: warning: Prefect 9.9.9 is not a tested release (3.8.x), so its temporary Prefect server may " \
           "outlive a killed vivit" in err, err[-3000:]


# -- truthful states -----------------------------------------------------------------------------------------
def test_a_failed_stage_fails_its_flow_run_and_the_pipeline(prefect_harness, tmp_path, demo_source):
    from flows.pipeline import pipeline_flow
    from tasks.lib.config import PipelineConfig
    from tests.test_cli import _last_flow_run_state

    src, csv = demo_source
    cfg = PipelineConfig(data_dir=tmp_path / "data", annotations=[str(csv)], classes=["dribling basketball",
                         "dunking basketball"], url_template=f"file://{src}/videos/{{youtube_id}}.mp4",
                         download={"allow_file_urls": True})
    with pytest.raises(StageFailed) as info:
        pipeline_flow(cfg)
    assert [s["stage"] for s in info.value.summaries] == ["download"] and info.value.user_error
    assert "did you mean" in info.value.summary["message"]
    assert _last_flow_run_state("download") == "FAILED" and _last_flow_run_state("pipeline") == "FAILED"


def test_a_killed_filter_keeps_its_quarantine_verdicts(prefect_harness, tmp_path):
    """Killed after quarantining a file and before writing filter.csv: the re-run rebuilds the row from
    quarantine/<class>/<file>.reason.txt instead of listing the file as missing."""
    from flows.filter import filter_flow
    from tasks.lib.filtering import quarantine_file
    from tests.test_frames_flow import config, make_data_dir

    data = make_data_dir(tmp_path / "data", {"dribbling basketball": 3, "dunking basketball": 3}, bad=False)
    victim = next((data / "raw" / "dunking_basketball").glob("*.mp4"))
    quarantine_file(data, victim, "dunking basketball", "corrupt", "3 of 12 packets gave no frame")
    s = filter_flow(config(data))
    assert "missing_files" not in s["counts"] and s["counts"]["quarantined"] == 1
    rows = pd.read_csv(data / "reports" / "filter.csv").set_index("original_path")
    row = rows.loc[victim.relative_to(data).as_posix()]
    assert (row["status"], row["reason"]) == ("quarantined", "corrupt")
    assert row["path"] == f"quarantine/dunking_basketball/{victim.name}"


# -- fast, one-line failures ---------------------------------------------------------------------------------
def test_an_unreachable_tracking_server_fails_in_seconds_in_one_line(prefect_harness, tmp_path):
    from tests.support.tiny_dataset import noise_dataset

    noise_dataset(tmp_path / "dataset", counts={"train": [2, 2], "val": [1, 1], "test": [1, 1]})  # past the input check
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    p = _vivit(["train", "--set", f"data_dir={tmp_path}", "--set", f"mlflow.tracking_uri={uri}"])
    out, err = p.communicate(timeout=120)
    took = time.monotonic() - t0
    assert p.returncode == 1, err[-2000:]
    assert f"MLflow tracking server {uri} is not reachable" in out and "Traceback" not in out + err
    assert took < 60  # the check itself is bounded by 30 s; the rest is starting Python and Prefect


@pytest.mark.parametrize("address, code, line", [
    (None, 1, "the Dask scheduler at {a} (cluster.address) is not reachable (Timed out trying to connect"),
    ("127.0.0.1", 2, "cluster.address '127.0.0.1' is not a Dask scheduler address like tcp://host:8786 (missing port"),
])
def test_a_dask_scheduler_that_is_down_or_misspelt_fails_in_one_line(prefect_harness, tmp_path, demo_source,
                                                                     address, code, line):
    """``cluster.address`` naming no scheduler (a closed port; Dask's connect timeout cut to 2 s with Dask's own
    environment variable) or one Dask cannot parse (no port): the stage fails with one line naming the setting and
    the fix, before any clip is downloaded."""
    a = address or f"tcp://127.0.0.1:{free_port()}"
    p = _vivit(["download", *_common(tmp_path, demo_source), "--set", "cluster.engine=dask",
                "--set", f"cluster.address={a}"], env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"})
    out, err = p.communicate(timeout=180)
    assert p.returncode == code, err[-2000:]
    assert f"vivit: {line.format(a=a)}" in err and "Traceback" not in out + err, err[-2000:]
    assert not [f for f in (tmp_path / "data" / "raw").rglob("*") if f.is_file()]


def test_dask_workers_without_the_flows_prefect_api_are_refused_in_one_line(prefect_harness, tmp_path, demo_source):
    """Workers of an existing scheduler started without PREFECT_API_URL would each start a temporary Prefect server
    that the flow's UI never sees: the stage refuses them, naming the worker and the URL to give them, before any
    clip is downloaded."""
    from distributed import LocalCluster
    from prefect.settings import PREFECT_API_URL

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      env={"PREFECT_API_URL": ""}) as lc:
        worker = next(iter(lc.scheduler_info["workers"]))
        p = _vivit(["download", *_common(tmp_path, demo_source), "--set", "cluster.engine=dask",
                    "--set", f"cluster.address={lc.scheduler_address}"])
        out, err = p.communicate(timeout=180)
    assert p.returncode == 2, err[-2000:]
    assert (f"vivit: Dask worker(s) {worker} have no PREFECT_API_URL" in err
            and f"start the workers with PREFECT_API_URL={PREFECT_API_URL.value()}" in err), err[-2000:]
    assert "Traceback" not in out + err and not [f for f in (tmp_path / "data" / "raw").rglob("*") if f.is_file()]


def test_a_tracking_server_lost_mid_training_is_one_line_and_training_goes_on():
    from tasks.tracking import MlflowReporter

    said: list[str] = []
    import mlflow

    mlflow.set_tracking_uri(f"http://127.0.0.1:{free_port()}")
    try:
        rep = MlflowReporter("0" * 32, warn=said.append)
        t0 = time.monotonic()
        for epoch in (1, 2, 3):
            rep.on_epoch_end(epoch, {"train_loss": 1.0})
        assert time.monotonic() - t0 < 30
    finally:
        mlflow.set_tracking_uri(None)
    assert len(said) == 1 and "epoch 1" in said[0] and "training goes on" in said[0]


def test_predict_never_creates_a_missing_store(tmp_path, capsys):
    from flows.cli import EXIT_USAGE, main

    db = tmp_path / "none.db"
    (tmp_path / "a.mp4").write_bytes(b"")  # an input that exists: predict checks its inputs before the store
    assert main(["predict", str(tmp_path / "a.mp4"), "--tracking-uri", f"sqlite:///{db}"]) == EXIT_USAGE
    assert not db.exists()
    err = capsys.readouterr().err
    assert f"no MLflow store at {db}" in err and len(err.strip().splitlines()) == 1


def test_a_misspelt_preset_fails_at_config_load_with_did_you_mean(capsys):
    from flows.cli import EXIT_USAGE, main

    assert main(["train", "--set", "train.model=vivit-fe-tnyi"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "train.model: unknown preset 'vivit-fe-tnyi': did you mean ['vivit-fe-tiny'" in err


def test_a_batch_that_does_not_split_across_processes_fails_at_config_load(capsys):
    from flows.cli import EXIT_USAGE, main

    assert main(["train", "--nproc", "2", "--set", "train.batch_size=3"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "train.batch_size=3 must be a multiple of train.processes=2" in err and "Traceback" not in err


@pytest.mark.parametrize("device, line", [
    ("cuda", "train.device 'cuda': CUDA is not available on this machine"),
    ("gpu0", "train.device 'gpu0' is not a device: use auto, cpu, cuda or cuda:N"),
])
def test_a_device_this_machine_lacks_fails_before_training_in_one_line(prefect_harness, tmp_path, device, line):
    """Before the check: an 'unexpected RuntimeError' (exit 1) from inside training, with an MLflow run opened and
    failed for it. Now: exit 2, the setting named, and no run in the store."""
    from mlflow import MlflowClient

    from tests.support.tiny_dataset import noise_dataset

    noise_dataset(tmp_path / "data" / "dataset", counts={"train": [2, 2], "val": [1, 1], "test": [1, 1]})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    p = _vivit(["train", "--set", f"data_dir={tmp_path / 'data'}", "--set", f"mlflow.tracking_uri={uri}",
                "--set", f"train.device={device}"])
    out, err = p.communicate(timeout=180)
    assert p.returncode == 2, err[-2000:]
    assert line in out and "Traceback" not in out + err, out[-2000:] + err[-2000:]
    assert not MlflowClient(uri).search_runs(
        [e.experiment_id for e in MlflowClient(uri).search_experiments()])


def test_disk_full_names_the_place_and_the_size(tmp_path):
    import errno

    with pytest.raises(DiskFullError) as info:
        check_free_space(tmp_path, 300_000_000, free=100_000_000)
    assert str(info.value) == f"disk full at {tmp_path} (needed ~300 MB, 100 MB free)"
    check_free_space(tmp_path, 1_000, free=100_000_000)
    e = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.npy"))
    assert is_disk_full(e) and disk_full_message(e, "/").startswith(f"disk full at {tmp_path} (")
    torch_text = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4480 vs 4374")
    assert is_disk_full(torch_text) and is_disk_full(OSError("786432 requested and 688000 written"))
    assert not is_disk_full(ValueError("bad value"))
