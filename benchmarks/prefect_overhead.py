"""Where Prefect's overhead on the Dask frames stage goes: the 1-worker frames stage run as the Prefect flow and
on plain ``dask.distributed`` (the shape ``scale.py`` compares: same LocalCluster, shards and per-clip function),
in turn for ``--rounds`` rounds, with a probe on the worker that records each clip's sampling (wall and thread-CPU
time) and, at the end, every worker thread's CPU time.

Each run's wall time splits into four parts that add up to it:

* ``before``: from the call to the first clip's start (flow run start, planning, cluster start, submits, the first
  shard's setup on the worker);
* ``clips``: the sampler calls themselves (``clips_cpu``: their thread CPU; wall beyond it is waiting, for the GIL
  or a core);
* ``gaps``: between consecutive clips (where a shard task run's setup shows);
* ``after``: from the last clip's end to the return (results back, cluster close, dataset writing, flow end).

The probe is installed with ``client.run`` as soon as the cluster is up, in both runs, so the worker imports the
stage's code at the same point in both. The first round warms caches and is left out of the means. Prints the
means, their standard errors and Prefect minus plain for each part, and ends with
``prefect_overhead_s=X share=Y before_s=A clips_s=B gaps_s=C after_s=D`` (the differences of the means).

Usage: ``python benchmarks/prefect_overhead.py [--clips 200] [--rounds 10] [--frames-job configs/surv_fight.yaml]``
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import scale  # noqa: E402  -- puts the project root on sys.path and the embedded Prefect defaults in place

PARTS = ("before", "clips", "gaps", "after")
FIGURES = ("total", *PARTS, "clips_cpu")  # what each run records and the summary compares


# -- on the worker (sent with client.run; self-contained) -----------------------------------------------------------
def _install_probe() -> None:
    """Time every sampler call on this worker: (start, end, thread CPU seconds)."""
    import time as _time

    from tasks.lib import sampling

    records: list[tuple[float, float, float]] = []
    inner = getattr(sampling.sample_clip_info, "probe_inner", sampling.sample_clip_info)

    def timed(*args, **kwargs):
        t, c = _time.time(), _time.thread_time()
        try:
            return inner(*args, **kwargs)
        finally:
            records.append((t, _time.time(), _time.thread_time() - c))

    timed.probe_inner = inner
    timed.records = records
    sampling.sample_clip_info = timed


def _collect_probe() -> dict:
    """The sampler calls recorded, and each thread's CPU seconds by name (Linux ``/proc``; empty elsewhere)."""
    import os
    import threading

    from tasks.lib import sampling

    probe = sampling.sample_clip_info
    records = list(getattr(probe, "records", []))
    sampling.sample_clip_info = getattr(probe, "probe_inner", probe)
    threads: dict[str, float] = {}
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for tid in (os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else []):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), "other")
        if "Dask-Default-Threads" in name:  # numbered per process and thread: keep the family name
            name = "Dask-Default-Threads"
        threads[name] = threads.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return {"clips": records, "threads": threads}


class Probe:
    """Installs the clip probe on every worker once the cluster is up, and collects it before the cluster closes."""

    def __init__(self) -> None:
        self.collected: dict = {"clips": [], "threads": {}}

    def start(self, client) -> None:
        client.run(_install_probe)

    def stop(self, client) -> None:
        for got in client.run(_collect_probe).values():
            self.collected["clips"] += got["clips"]
            for name, cpu in got["threads"].items():
                self.collected["threads"][name] = self.collected["threads"].get(name, 0.0) + cpu


@contextlib.contextmanager
def probed_prefect_runner(probe: Probe):
    """The frames flow's own ``DaskTaskRunner`` (``tasks.cluster.dask_runner``), with the probe around its work."""
    import tasks.cluster as cluster_tasks

    original = cluster_tasks.dask_runner

    @contextlib.contextmanager
    def runner(cluster):
        with original(cluster) as r:
            probe.start(r.client)
            yield r
            probe.stop(r.client)

    cluster_tasks.dask_runner = runner
    try:
        yield
    finally:
        cluster_tasks.dask_runner = original


def split(t0: float, t1: float, clips: list[tuple[float, float, float]]) -> dict:
    """One run's wall time, in the four parts that add up to it."""
    clips = sorted(clips)
    if not clips:
        raise ValueError("the probe recorded no clip: did the stage sample anything?")
    wall = sum(b - a for a, b, _ in clips)
    return {"total": t1 - t0, "before": clips[0][0] - t0, "clips": wall, "clips_cpu": sum(c for *_, c in clips),
            "gaps": (clips[-1][1] - clips[0][0]) - wall, "after": t1 - clips[-1][1], "n_clips": len(clips)}


def _mean_se(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else 0.0)


def measure(work: Path, clips: int, rounds: int, width: int = 320, height: int = 240, duration: float = 10.0,
            job: Path | None = None) -> dict:
    from flows.frames import frames_flow

    csv, url, classes = scale.kept_clips(work, clips, width, height, duration, job)
    cfg = scale.frames_config(work / "data", csv, url, "auto", classes, engine="dask", workers=1)

    def prefect_run(probe: Probe) -> None:
        with probed_prefect_runner(probe):
            frames_flow(cfg)

    def plain_run(probe: Probe) -> None:
        scale.plain_dask_stage_seconds(cfg, probe=probe)

    runs: dict[str, list[dict]] = {"prefect": [], "plain": []}
    for r in range(rounds):
        for name in (("prefect", "plain") if r % 2 == 0 else ("plain", "prefect")):
            scale._settle()
            shutil.rmtree(cfg.dataset_dir, ignore_errors=True)
            probe = Probe()
            t0 = time.time()
            (prefect_run if name == "prefect" else plain_run)(probe)
            parts = split(t0, time.time(), probe.collected["clips"])
            parts["worker_thread_cpu"] = probe.collected["threads"]
            runs[name].append(parts)
            print(f"round {r} {name}: " + " ".join(f"{k} {parts[k]:.2f}" for k in FIGURES),
                  flush=True)
    kept = runs if rounds < 2 else {k: v[1:] for k, v in runs.items()}  # the first round warms up
    out: dict = {"clips": runs["prefect"][0]["n_clips"], "rounds": rounds, "runs": runs, "means": {}}
    for name, rs in kept.items():
        out["means"][name] = {k: _mean_se([x[k] for x in rs]) for k in FIGURES}
    m = out["means"]
    out["prefect_minus_plain"] = {k: m["prefect"][k][0] - m["plain"][k][0] for k in FIGURES}
    out["share"] = out["prefect_minus_plain"]["total"] / m["prefect"]["total"][0]
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=10, help="Prefect and plain runs, in turn (the first is left out)")
    ap.add_argument("--frames-job", type=Path, default=None, help="this config's clips instead of generated ones")
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--json", type=Path, default=HERE / "out" / "prefect_overhead.json")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    with tempfile.TemporaryDirectory() as tmp, scale.prefect_server():
        result = measure(Path(tmp), args.clips, args.rounds, args.width, args.height, args.duration, args.frames_job)
    d = result["prefect_minus_plain"]
    for name in ("prefect", "plain"):
        print(name.ljust(8) + " ".join(f"{k} {v[0]:.2f}+-{v[1]:.2f}" for k, v in result["means"][name].items()))
    line = (f"prefect_overhead_s={d['total']:.2f} share={result['share']:.3f} "
            + " ".join(f"{k}_s={d[k]:.2f}" for k in PARTS))
    result["summary"] = line
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(line)
    return result


if __name__ == "__main__":
    main()
