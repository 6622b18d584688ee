"""Fault trials: what the pipeline guarantees after kill -9, with two runs at once, with MLflow down, on a full
disk and with hostile CSV rows. Long (minutes per trial kind); not part of ``make test`` (tests/test_faults.py
has fast versions of the key cases).

Every trial runs the real ``vivit`` command in its own process on a small generated dataset, with its own
temporary Prefect server (the default a user gets), a SQLite MLflow store and file:// sources.

* ``kill:<stage>`` (download, filter, frames, train; ``--n`` each): the stage starts from the state the previous
  stages left (a fresh copy each time), is killed with SIGKILL at a random moment of its reference duration, then
  the same command is run again. *survived*: the re-run exits 0 and leaves no temporary file; *identical*: its
  result equals an uninterrupted run's (clip files; filter verdicts; manifest clip ids and pixel digests; for
  training one registered version with the reference's metrics); *orphans*: processes the killed command had
  started (Prefect server, ffmpeg, ...) still alive 5 s after the kill; *running_left*: MLflow runs still
  RUNNING after the re-run; *duplicates*: registered versions beyond one per training key.
* ``concurrent``: two ``vivit run`` started together on one data_dir and one store, then a third: all exit 0,
  the third downloads, samples and trains nothing.
* ``mlflow_down``: a real ``mlflow server`` killed mid-training: the command ends with one line (no traceback)
  in bounded time, the checkpoints stay, and after the server is back the re-run registers one version.
* ``mlflow_unreachable``: a tracking URI nobody answers: one line, exit 1, within 30 s of checking.
* ``disk_full``: the frames stage on a 2 MB tmpfs (root only; skipped otherwise): one ``disk full at`` line.
* ``bad_rows``: inf / 99999999 / 1e300 / nan times next to good rows: exit 0, good clips downloaded, bad rows
  skipped with a warning each.

The last line is machine-readable:

    faults_trials=N survived=M orphans=O running_left=R duplicates=D

Run: ``.venv/bin/python benchmarks/faults.py --n 2`` (about 10 minutes on 2 cores with ``--n 2``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STAGES = ["download", "filter", "frames", "train"]


@dataclass
class Row:
    kind: str
    trials: int = 0
    survived: int = 0
    identical: int = 0
    orphans: int = 0
    running_left: int = 0
    duplicates: int = 0
    notes: list[str] = field(default_factory=list)


# -- processes ------------------------------------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def descendants(pid: int) -> dict[int, str]:
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            st = _stat(int(d.name))
            if st:
                parent[int(d.name)] = int(st[1])
    out, frontier = {}, {pid}
    while frontier:
        nxt = {c for c, p in parent.items() if p in frontier and c not in out}
        for c in nxt:
            try:
                out[c] = (Path(f"/proc/{c}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))[:80]
            except OSError:
                out[c] = "?"
        frontier = nxt
    return out


def vivit(args: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def run(args: list[str], env: dict[str, str], timeout: float = 900) -> tuple[int, str, float]:
    t0 = time.monotonic()
    p = vivit(args, env)
    out, _ = p.communicate(timeout=timeout)
    return p.returncode, out, time.monotonic() - t0


def kill_at(args: list[str], env: dict[str, str], after: float) -> tuple[int, dict[int, str]]:
    """Start the command, SIGKILL it ``after`` seconds later (or when it ends); the processes it had started."""
    p = vivit(args, env)
    end = time.monotonic() + after
    kids: dict[int, str] = {}
    while time.monotonic() < end and p.poll() is None:
        kids.update(descendants(p.pid))
        time.sleep(0.05)
    kids.update(descendants(p.pid))
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    p.communicate()
    time.sleep(5.0)
    return p.returncode, {k: v for k, v in kids.items() if alive(k)}


# -- state and comparisons --------------------------------------------------------------------------------------
def config(root: Path, src: Path, csv: Path, uri: str | None = None, epochs: int = 4) -> Path:
    cfg = {
        "data_dir": str(root / "data"), "annotations": [str(csv)],
        "url_template": f"file://{src}/videos/{{youtube_id}}.mp4", "seed": 1,
        "download": {"allow_file_urls": True, "workers": 2, "retries": 0},
        "frames": {"num_frames": 8, "size": 48, "workers": 2},
        "train": {"epochs": epochs, "batch_size": 4, "patience": None, "view_frames": 6, "min_epochs": 0},
        "mlflow": {"tracking_uri": uri or f"sqlite:///{root / 'mlflow.db'}", "experiment": "faults",
                   "model_name": "faults"},
    }
    path = root / "config.json"  # JSON is YAML
    path.write_text(json.dumps(cfg))
    return path


def partials(data: Path) -> list[Path]:
    from tasks.lib.paths import is_partial

    return [p for p in data.rglob("*") if p.is_file() and is_partial(p)]


def outcome(stage: str, root: Path) -> object:
    import pandas as pd

    data = root / "data"
    if stage == "download":
        return sorted(p.relative_to(data).as_posix() for p in (data / "raw").rglob("*.mp4"))
    if stage == "filter":
        df = pd.read_csv(data / "reports" / "filter.csv", dtype=str, keep_default_na=False)
        return sorted(zip(df["original_path"], df["status"], df["reason"]))
    if stage == "frames":
        df = pd.read_parquet(data / "dataset" / "manifest.parquet")
        return sorted(zip(df["clip_id"], df["split"], df["frames_sha256"]))
    return registry(root)["metrics"]


def registry(root: Path) -> dict:
    db = root / "mlflow.db"
    if not db.is_file():
        return {"versions": 0, "running": 0, "duplicates": 0, "metrics": None}
    con = sqlite3.connect(db)
    try:
        # each training registers two models (NAME: frames in, NAME-video: files in): duplicates are counted per name
        versions = con.execute("select name, run_id from model_versions").fetchall()
        running = con.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0]
        keys = [(name, con.execute("select value from tags where run_uuid = ? and key = 'train_key'", (r,)).fetchone())
                for name, r in versions]
        metrics = None
        if versions:
            metrics = dict(con.execute("select key, value from latest_metrics where run_uuid = ? and key in "
                                       "('val/best_f1', 'test/accuracy', 'test/loss')", (versions[-1][1],)).fetchall())
            metrics = {k: round(v, 6) for k, v in sorted(metrics.items())}
    finally:
        con.close()
    per_name = [sum(1 for n, _ in versions if n == name) for name in {n for n, _ in versions}]
    return {"versions": max(per_name, default=0), "running": running, "duplicates": len(keys) - len(set(keys)),
            "metrics": metrics}


def copy_state(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns(".vivit.lock*"))


# -- trials ----------------------------------------------------------------------------------------------------
def kill_trials(work: Path, src: Path, csv: Path, env: dict[str, str], n: int, rng: random.Random) -> list[Row]:
    """Reference states before each stage, then n kill + re-run trials per stage."""
    rows = []
    before = work / "before-download"
    before.mkdir(parents=True)
    ref_outcome, ref_time = {}, {}
    state = before
    for stage in STAGES:
        nxt = work / f"after-{stage}"
        copy_state(state, nxt)
        cfg = config(nxt, src, csv)
        rc, out, took = run([stage, "--config", str(cfg)], env)
        if rc != 0:
            raise SystemExit(f"reference {stage} failed:\n{out[-3000:]}")
        ref_outcome[stage], ref_time[stage] = outcome(stage, nxt), took
        print(f"reference {stage}: {took:.1f} s", flush=True)
        state = nxt
    for stage in STAGES:
        row = Row(f"kill:{stage}")
        start_state = work / (f"after-{STAGES[STAGES.index(stage) - 1]}" if stage != "download" else "before-download")
        for i in range(n):
            trial = work / f"trial-{stage}-{i}"
            copy_state(start_state, trial)
            cfg = config(trial, src, csv)
            after = rng.uniform(0.25, 0.9) * ref_time[stage]
            rc, left = kill_at([stage, "--config", str(cfg)], env, after)
            rc2, out2, _ = run([stage, "--config", str(cfg)], env)
            reg = registry(trial)
            row.trials += 1
            ok = rc2 == 0 and not partials(trial / "data")
            row.survived += ok
            same = ok and outcome(stage, trial) == ref_outcome[stage]
            if stage == "train":
                same = same and reg["versions"] == 1
            row.identical += same
            row.orphans += len(left)
            row.running_left += reg["running"]
            row.duplicates += reg["duplicates"]
            note = f"killed at {after:.1f}s (rc {rc})"
            if left:
                note += f" orphans {sorted(left.values())}"
            if not ok:
                note += f" re-run rc {rc2}: {out2[-300:]!r}"
            row.notes.append(note)
            shutil.rmtree(trial, ignore_errors=True)
            print(f"{row.kind} trial {i}: {note}", flush=True)
        rows.append(row)
    return rows


def concurrent_trial(work: Path, src: Path, csv: Path, env: dict[str, str]) -> Row:
    row = Row("concurrent")
    root = work / "concurrent"
    root.mkdir()
    cfg = config(root, src, csv)
    procs = [vivit(["run", "--config", str(cfg)], env) for _ in range(2)]
    outs = [p.communicate(timeout=1800)[0] for p in procs]
    rc3, out3, _ = run(["run", "--config", str(cfg)], env)
    import pandas as pd

    statuses = set(pd.read_csv(root / "data" / "reports" / "download.csv")["status"])
    reg = registry(root)
    row.trials = 1
    ok = all(p.returncode == 0 for p in procs) and rc3 == 0
    redo_nothing = statuses == {"skipped"} and " 0 sampled now" in out3 and "reused" in out3
    row.survived = int(ok and redo_nothing and not partials(root / "data"))
    row.identical = int(reg["versions"] == 1)
    row.running_left, row.duplicates = reg["running"], reg["duplicates"]
    row.notes.append(f"exit codes {[p.returncode for p in procs]} + {rc3}; waited: "
                     f"{sum('waiting for it to finish' in o for o in outs)}; third redid nothing: {redo_nothing}")
    return row


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_server(db: Path, port: int, env: dict[str, str]) -> subprocess.Popen:
    p = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                          f"sqlite:///{db}", "--default-artifact-root", str(db.parent / "artifacts"),
                          "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                         env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no 7 huey workers
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    import urllib.request

    deadline = time.monotonic() + 600  # ~8 s on an idle machine; minutes on a loaded one
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return p
        except OSError:
            time.sleep(0.5)
    stop(p)
    raise RuntimeError("mlflow server did not start within 600 s")


def stop(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def mlflow_down_trial(work: Path, src: Path, csv: Path, env: dict[str, str]) -> Row:
    row = Row("mlflow_down")
    root = work / "mlflow-down"
    copy_state(work / "after-frames", root)
    (root / "mlflow.db").unlink(missing_ok=True)
    port = free_port()
    db = root / "server.db"
    cfg = config(root, src, csv, uri=f"http://127.0.0.1:{port}", epochs=12)
    server = mlflow_server(db, port, env)
    p = vivit(["train", "--config", str(cfg)], env)
    out = ""
    t_kill = None
    deadline = time.monotonic() + 900
    while p.poll() is None and time.monotonic() < deadline:
        line = p.stdout.readline()
        out += line
        if t_kill is None and "epoch 2/" in line:
            stop(server)
            t_kill = time.monotonic()
    out += p.stdout.read()
    p.wait()
    took = time.monotonic() - (t_kill or time.monotonic())
    one_line = "stopped answering" in out and "Traceback" not in out
    ckpt = list((root / "data" / "runs").rglob("last.pt"))
    server = mlflow_server(db, port, env)
    try:
        rc2, out2, _ = run(["train", "--config", str(cfg)], env)
        import mlflow
        from mlflow import MlflowClient

        client = MlflowClient(f"http://127.0.0.1:{port}", registry_uri=f"http://127.0.0.1:{port}")
        versions = client.search_model_versions("name = 'faults'")
        running = [r for r in client.search_runs([client.get_experiment_by_name("faults").experiment_id])
                   if r.info.status == "RUNNING"]
    finally:
        stop(server)
    row.trials = 1
    row.survived = int(p.returncode != 0 and one_line and bool(ckpt) and rc2 == 0 and len(versions) == 1)
    row.identical = row.survived
    row.running_left = len(running)
    row.duplicates = max(0, len(versions) - 1)
    row.notes.append(f"exit {p.returncode} {took:.1f} s after the server died; one line: {one_line}; "
                     f"checkpoint kept: {bool(ckpt)}; re-run exit {rc2}, versions {len(versions)}; "
                     f"tracebacks: {out.count('Traceback')}")
    return row


def unreachable_trial(work: Path, env: dict[str, str]) -> Row:
    row = Row("mlflow_unreachable")
    rc, out, took = run(["train", "--set", f"data_dir={work / 'nowhere'}",
                         "--set", f"mlflow.tracking_uri=http://127.0.0.1:{free_port()}"], env)
    row.trials = 1
    row.survived = row.identical = int(rc == 1 and "is not reachable" in out and "Traceback" not in out)
    row.notes.append(f"exit {rc} after {took:.1f} s (Python + Prefect start included)")
    return row


def disk_full_trial(work: Path, src: Path, csv: Path, env: dict[str, str]) -> Row | None:
    """The frames stage with its dataset folder on a 2 MB tmpfs (the clips stay on the big disk)."""
    if os.geteuid() != 0:
        return None
    root = work / "disk-full"
    copy_state(work / "after-filter", root)
    mnt = root / "data" / "dataset"
    mnt.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        return None  # no CAP_SYS_ADMIN (a container): skipped
    row = Row("disk_full")
    try:
        cfg = config(root, src, csv)
        spec = json.loads(cfg.read_text())
        spec["frames"]["size"] = 256
        cfg.write_text(json.dumps(spec))
        rc, out, _ = run(["frames", "--config", str(cfg)], env)
        said = [ln.strip() for ln in out.splitlines() if "disk full at" in ln]
        row.trials = 1
        row.survived = row.identical = int(rc != 0 and bool(said) and "Traceback" not in out)
        row.notes.append(f"exit {rc}: {said[:1]}")
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
    return row


def bad_rows_trial(work: Path, src: Path, csv: Path, env: dict[str, str]) -> Row:
    import pandas as pd

    row = Row("bad_rows")
    root = work / "bad-rows"
    root.mkdir()
    good = pd.read_csv(csv, dtype=str).groupby("label").head(2)
    bad = pd.DataFrame([{**good.iloc[0].to_dict(), "time_start": s, "time_end": e}
                        for s, e in [("0", "inf"), ("0", "99999999"), ("1e300", "1e301"), ("nan", "3"), ("-1", "2"),
                                     ("5", "5")]])
    bad_csv = root / "bad.csv"
    pd.concat([good, bad]).to_csv(bad_csv, index=False)
    cfg = config(root, src, bad_csv)
    rc, out, _ = run(["download", "--config", str(cfg)], env)
    report = pd.read_csv(root / "data" / "reports" / "download.csv") if rc == 0 else None
    warned = out.count("skipped annotation row")
    row.trials = 1
    row.survived = row.identical = int(rc == 0 and report is not None and len(report) == 4 and warned == 6)
    row.notes.append(f"exit {rc}; report rows {None if report is None else len(report)}; warnings {warned}")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2, help="kill trials per stage")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clips", type=int, default=8, help="demo clips (half per class)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--only", default="", help="comma list of trial kinds: kill,concurrent,mlflow,disk,bad")
    args = ap.parse_args()
    from tasks.lib.demo import generate_demo_dataset

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="vivit-faults-"))
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env.update(PYTHONPATH=str(ROOT), PREFECT_HOME=str(work / ".prefect"), PREFECT_LOGGING_LEVEL="INFO")
    only = set(filter(None, args.only.split(","))) or {"kill", "concurrent", "mlflow", "disk", "bad"}
    rows: list[Row] = []
    try:
        src = work / "src"
        csv = generate_demo_dataset(src, n_dribbling=args.clips // 2, n_dunking=args.clips - args.clips // 2,
                                    seed=1, width=96, height=72, duration=4.0, clip_len=3.0)
        if "kill" in only or "mlflow" in only or "disk" in only:
            kills = kill_trials(work, src, csv, env, args.n if "kill" in only else 0, rng)
            rows += kills if "kill" in only else []
        trials = [("concurrent", "concurrent", lambda: concurrent_trial(work, src, csv, env)),
                  ("mlflow", "mlflow_down", lambda: mlflow_down_trial(work, src, csv, env)),
                  ("mlflow", "mlflow_unreachable", lambda: unreachable_trial(work, env)),
                  ("disk", "disk_full", lambda: disk_full_trial(work, src, csv, env)),
                  ("bad", "bad_rows", lambda: bad_rows_trial(work, src, csv, env))]
        for group, kind, trial in trials:
            if group not in only:
                continue
            try:
                r = trial()
            except Exception as e:  # noqa: BLE001 - a trial that cannot run is a failed trial, not a lost table
                r = Row(kind, trials=1, notes=[f"could not run: {type(e).__name__}: {e}"])
            if r is None:
                print(f"{kind}: skipped (needs root and a tmpfs mount)")
            else:
                rows.append(r)
                print(f"{r.kind}: {r.survived}/{r.trials} survived", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder kept: {work}")

    print("\n| trial | trials | survived | identical | orphans | runs left RUNNING | duplicate versions |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.kind} | {r.trials} | {r.survived} | {r.identical} | {r.orphans} | {r.running_left} | "
              f"{r.duplicates} |")
    print()
    for r in rows:
        for note in r.notes:
            print(f"{r.kind}: {note}")
    total = lambda attr: sum(getattr(r, attr) for r in rows)  # noqa: E731
    print(f"faults_trials={total('trials')} survived={total('survived')} orphans={total('orphans')} "
          f"running_left={total('running_left')} duplicates={total('duplicates')}")


if __name__ == "__main__":
    main()
