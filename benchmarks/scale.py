"""Scaling out, measured in one run: the frames stage on threads vs Dask (1 and 2 workers), DDP 1 vs 2 processes,
and fp32 vs bf16 training steps.

* **frames**: ``--clips`` generated Kinetics-format clips (``tasks/lib/demo/``, ``--width``x``--height``,
  ``--duration`` s) go through the real download and filter stages once (threads); then the frames stage samples
  them from scratch on each engine: threads (``frames.workers`` 2), Dask LocalCluster with 1 worker, with 2 workers
  (``cluster.shard_size`` ``--shard-size``, by default the project's :class:`ClusterConfig` default).
  ``dask_speedup_2w`` = stage time on 1 Dask worker / on 2.
  ``overhead_share`` = **Prefect's** overhead: the 1-worker Dask stage run as the Prefect flow against the same
  stage on plain ``dask.distributed`` (``plain_dask_1w_seconds``: the same LocalCluster shape started and closed
  inside the timing, the same shards, the same per-clip function, planning and manifest writing; no flow, task
  runs, states, logs or artifacts), as a share of the Prefect stage's time. The four engines (threads, Dask 1
  worker, plain Dask 1 worker, Dask 2 workers) take turns ``--repeats`` times, each after the machine has settled
  (the Prefect server idle again), the compared pair last and in alternating order, and each keeps its fastest
  run; ``overhead_share_paired_mean`` is the mean of the per-round differences (Prefect minus plain, unclipped)
  over the mean Prefect time (a check that the fastest runs are not a lucky pair); where the difference falls
  (before the first clip, in the clips, between them, after them) is ``benchmarks/prefect_overhead.py``'s
  question. ``clips_per_shard``: what ``shard_size`` gives for 1 and 2 worker threads. Flows run with the
  settings ``vivit`` uses for its own temporary server (:func:`flows.server.temporary_server_settings`) unless
  ``PREFECT_API_URL`` names a server.
  Also recorded: ``bare_seconds``, the whole stage's own work in this process, one thread, no Prefect, no Dask
  (lock, ``plan_frames.fn``, the space check, every clip's ``sample_clip_task.fn`` (sampler, ``.npy`` save,
  digest), ``write_dataset.fn``); ``bare_sampler_seconds``, the sampler alone; ``engine_overhead_share``, what
  the 1-worker Dask stage adds to ``bare_seconds`` beyond the start and close of an empty LocalCluster
  (``cluster_start_seconds``): Prefect's and Dask's costs together (workers importing the stage's code, result
  transfer); ``overhead_share_incl_cluster_start`` keeps the cluster start in.
* **dataset format** (``dataset_reads``): the stored clips read back whole in a random order, a ``.npy`` per clip
  (as training reads them) against the same arrays packed into one file, page cache warm: what a file per clip
  costs on this filesystem (the sharded-format question).
* **DDP**: the default preset on a synthetic frames dataset (``--ddp-clips`` training clips), fp32, the same
  options with ``train.processes`` 1 and 2; ``ddp_speedup_2p`` = mean epoch seconds of 1 process / of 2 (epochs
  after the first, so torchrun's start and the first DDP construction are left out; evaluation included).
* **bf16**: fastest training step (alternating, :func:`model.precision.compare_steps`) (forward + backward + fused AdamW, batch 8, the default view: 16 frame
  differences at 64x64) in fp32 and under bf16 autocast, for the default preset and a 4x wider one (dim 512);
  ``bf16_speedup`` = fp32 step time / bf16 step time for the default preset.
* ``--quality CONFIG`` (optional, long): the default recipe trained on CONFIG's stored dataset with
  ``precision`` fp32 and bf16, same seed(s), test macro F1 of each.

Timings on a shared machine are noisy: the JSON keeps every figure, and ``uptime``'s load at start and end.
Ends with one line: ``dask_speedup_2w=X overhead_share=Y ddp_speedup_2p=Z bf16_speedup=W``.

Usage: ``python benchmarks/scale.py [--clips 200] [--frames-job configs/surv_fight.yaml] [--json benchmarks/out/scale.json]``
(``--frames-job``: the frames comparison on that job's real clips instead of generated ones).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import flows  # noqa: E402,F401  -- the embedded Prefect defaults

from tasks.lib.config import ClusterConfig, PipelineConfig  # noqa: E402


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- frames stage --------------------------------------------------------------------------------------------------
def frames_config(data_dir: Path, csv: Path, url_template: str, shard_size: int | str, classes: list[str] | None = None,
                  **cluster) -> PipelineConfig:
    """The frames stage as a job with no ``frames.*`` overrides runs it (what `vivit run` stores, as many clips at
    once on threads), but on the CSV's own splits."""
    return PipelineConfig.model_validate({
        "data_dir": str(data_dir), "annotations": [str(csv)], "url_template": url_template,
        **({"classes": classes} if classes else {}),
        "download": {"allow_file_urls": True, "workers": 4, "retries": 0},
        "frames": {"split_mode": "official"}, "cluster": {"shard_size": shard_size, **cluster},
    })


def _settle(quiet_cpu_s: float = 0.05, window_s: float = 1.0, limit_s: float = 60.0) -> float:
    """Wait until this process's children (the Prefect server, leftover workers) used under ``quiet_cpu_s`` of
    CPU in the last ``window_s``; returns the seconds waited."""
    import psutil

    me, t0 = psutil.Process(), time.perf_counter()

    def cpu() -> float:
        total = 0.0
        for p in me.children(recursive=True):
            try:
                c = p.cpu_times()
                total += c.user + c.system
            except psutil.Error:
                pass
        return total

    before = cpu()
    while time.perf_counter() - t0 < limit_s:
        time.sleep(window_s)
        now = cpu()
        if now - before < quiet_cpu_s:
            break
        before = now
    return time.perf_counter() - t0


def _stage_without_prefect(cfg: PipelineConfig, run_clips) -> tuple[float, int, str]:
    """The frames stage's own work with no Prefect in it, from a fresh dataset folder (as each engine gets it):
    lock, plan, space check, ``run_clips(jobs)`` (every clip's sample-and-save), manifest/dataset.json/report,
    summary. Returns (seconds, clips sampled, dataset fingerprint)."""
    from tasks.frames import frames_summary, plan_frames, write_dataset
    from tasks.guards import check_space_for_frames
    from tasks.lib.locks import data_dir_lock

    shutil.rmtree(cfg.dataset_dir, ignore_errors=True)
    t0 = time.perf_counter()
    with data_dir_lock(cfg.data_dir, "frames"):
        plan = plan_frames.fn(cfg)
        check_space_for_frames(cfg, len(plan.todo))
        results = run_clips(plan.todo)
        ds = write_dataset.fn(cfg, plan, results)
        summary = frames_summary(cfg, plan, results, ds)
    seconds = time.perf_counter() - t0
    assert not summary.failed, summary
    return seconds, summary.counts["sampled"], ds.fingerprint


def _sample_jobs(jobs: list, num_frames: int, size: int) -> list[dict]:
    """The per-clip function of the frames stage's task (``sample_clip_task.fn``) over jobs, one thread: what a
    Dask shard runs, without the Prefect task around it."""
    from tasks.frames import sample_clip_task

    return [sample_clip_task.fn(job=job, num_frames=num_frames, size=size, threads=1) for job in jobs]


def bare_stage_seconds(cfg: PipelineConfig) -> tuple[float, int, str]:
    """The whole stage in this process, one thread, no Prefect, no Dask."""
    return _stage_without_prefect(cfg, lambda jobs: _sample_jobs(jobs, cfg.frames.num_frames, cfg.frames.size))


def plain_dask_stage_seconds(cfg: PipelineConfig, probe=None) -> tuple[float, int, str]:
    """The same stage on plain ``dask.distributed``: a LocalCluster of the shape the stage starts
    (``cluster.workers`` single-threaded processes, started and closed inside the timing), the same shards of
    ``cluster.shard_size`` clips, the same per-clip function. Only Prefect is missing, so the Prefect stage's
    time beyond this is Prefect's own overhead. ``probe``: ``start(client)`` once the cluster is up,
    ``stop(client)`` before it closes (``benchmarks/prefect_overhead.py``)."""
    from distributed import Client, LocalCluster

    from tasks.lib.cluster import shard_size_for, shards

    def on_dask(jobs: list) -> list[dict]:
        with LocalCluster(n_workers=cfg.cluster.workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            if probe is not None:
                probe.start(client)
            size = shard_size_for(cfg.cluster.shard_size, len(jobs), sum(client.nthreads().values()))
            futures = client.map(_sample_jobs, shards(jobs, size), num_frames=cfg.frames.num_frames,
                                 size=cfg.frames.size, pure=False)
            rows = [row for part in client.gather(futures) for row in part]
            if probe is not None:
                probe.stop(client)
            return rows

    return _stage_without_prefect(cfg, on_dask)


def bare_sampling_seconds(cfg: PipelineConfig) -> tuple[float, int]:
    """The frames stage's per-clip sampler alone over every kept clip, one thread, no Prefect (no .npy save,
    digest, planning or manifest: a lower bound of the stage's work)."""
    from tasks.lib import reports, sampling

    rows = [r for r in reports.read_csv_rows(cfg.reports_dir / "filter.csv") if r.get("status") == "kept"]
    t0 = time.perf_counter()
    for r in rows:
        sampling.sample_clip_info(cfg.data_dir / r["path"], cfg.frames.num_frames, cfg.frames.size, threads=1)
    return time.perf_counter() - t0, len(rows)


def kept_clips(work: Path, clips: int, width: int, height: int, duration: float,
               job: Path | None = None) -> tuple[Path, str, list[str] | None]:
    """The clips the frames comparisons sample: ``clips`` generated ones, or ``job``'s (its annotations and
    ``file://`` URL template), downloaded and filtered once under ``work/data`` (threads). Returns the
    annotations CSV, the URL template and the classes (None: the default ones)."""
    from flows.download import download_flow
    from flows.filter import filter_flow
    from tasks.lib.config import load_config
    from tasks.lib.demo import generate_demo_dataset

    if job is not None:
        real = load_config(job)
        csv, url, classes = real.annotations[0], real.url_template, list(real.classes)
    else:
        src = work / "src"
        csv = generate_demo_dataset(src, n_dribbling=clips - clips // 2, n_dunking=clips // 2, seed=0, width=width,
                                    height=height, duration=duration, clip_len=duration)
        url, classes = f"file://{src}/videos/{{youtube_id}}.mp4", None
    base = frames_config(work / "data", csv, url, "auto", classes)
    download_flow(base)
    filter_flow(base)
    return csv, url, classes


def frames_stage(work: Path, clips: int, width: int, height: int, duration: float, shard_size: int | str,
                 job: Path | None = None, repeats: int = 3) -> dict:
    """``job``: a pipeline config whose clips (its annotations and ``file://`` URL template) are used instead of
    generated ones, e.g. real footage: generated clips decode in tens of milliseconds, which makes any fixed cost
    look large."""
    from flows.frames import frames_flow

    csv, url, classes = kept_clips(work, clips, width, height, duration, job)
    base = frames_config(work / "data", csv, url, shard_size, classes)
    sampler, kept = bare_sampling_seconds(base)
    bare, sampled, fingerprint = bare_stage_seconds(base)
    assert sampled == kept, (sampled, kept)
    from tasks.lib.cluster import shard_size_for

    out: dict = {"clips": kept, "shard_size": shard_size,
                 "clips_per_shard": {f"{w}w": shard_size_for(shard_size, kept, w) for w in (1, 2)}, "bare_seconds": bare,
                 "bare_clips_per_s_per_core": kept / bare, "bare_sampler_seconds": sampler,
                 "bare_sampler_clips_per_s_per_core": kept / sampler}
    print(f"frames bare: {bare:.1f} s for {kept} clips (sampler alone {sampler:.1f} s)", flush=True)
    fingerprints = {fingerprint}

    def prefect_stage(name: str, **cluster) -> float:
        cfg = frames_config(work / "data", csv, url, shard_size, classes, **cluster)
        shutil.rmtree(cfg.dataset_dir, ignore_errors=True)
        t0 = time.perf_counter()
        summary = frames_flow(cfg)
        seconds = time.perf_counter() - t0
        assert summary.counts["sampled"] == kept, summary
        fingerprints.add(json.loads((cfg.dataset_dir / "dataset.json").read_text())["fingerprint"])
        print(f"frames {name}: {seconds:.1f} s for {kept} clips", flush=True)
        return seconds

    def plain_stage() -> float:
        cfg = frames_config(work / "data", csv, url, shard_size, classes, engine="dask", workers=1)
        seconds, sampled, fp = plain_dask_stage_seconds(cfg)
        assert sampled == kept, (sampled, kept)
        fingerprints.add(fp)
        print(f"frames plain dask_1w: {seconds:.1f} s for {kept} clips", flush=True)
        return seconds

    # Prefect's overhead is a difference of two ~20 s runs, so the engines take turns and each keeps its fastest run
    # (on a shared machine, noise only ever adds time). Before each run the machine settles: the Prefect server
    # goes on recording a flow run's events and logs for a while after it returns, which would otherwise slow
    # whichever run comes next.
    # The pair compared for Prefect's overhead runs back to back, in turn first and second, after the two other
    # engines: a threads run (200+ task runs) just before one of them slowed it by ~0.2 s in a test of orders.
    engines = {"threads": lambda: prefect_stage("threads", engine="threads"),
               "dask_2w": lambda: prefect_stage("dask_2w", engine="dask", workers=2),
               "dask_1w": lambda: prefect_stage("dask_1w", engine="dask", workers=1),
               "plain_dask_1w": plain_stage}
    runs: dict[str, list[float]] = {name: [] for name in engines}
    settled: list[float] = []
    for r in range(repeats):
        order = ["threads", "dask_2w"] + (["dask_1w", "plain_dask_1w"] if r % 2 == 0 else ["plain_dask_1w", "dask_1w"])
        for name in order:
            settled.append(_settle())
            runs[name].append(engines[name]())
    out["settle_seconds_max"] = max(settled)
    for name, times in runs.items():
        out[f"{name}_runs"], out[f"{name}_seconds"] = times, min(times)
    out["same_fingerprint"] = len(fingerprints) == 1
    out["dask_speedup_2w"] = out["dask_1w_seconds"] / out["dask_2w_seconds"]
    out["dask_2w_vs_threads"] = out["threads_seconds"] / out["dask_2w_seconds"]
    d1 = out["dask_1w_seconds"]
    out["overhead_share"] = max(0.0, d1 - out["plain_dask_1w_seconds"]) / d1
    # the same from the runs side by side: the mean of each pair's difference over the mean Prefect stage time
    pairs = list(zip(runs["dask_1w"], runs["plain_dask_1w"]))
    out["overhead_share_paired_mean"] = statistics.mean(d - p for d, p in pairs) / statistics.mean(runs["dask_1w"])
    out["cluster_start_seconds"] = local_cluster_seconds(workers=1)
    added = max(0.0, d1 - bare)
    out["overhead_share_incl_cluster_start"] = added / d1
    out["engine_overhead_share"] = max(0.0, added - out["cluster_start_seconds"]) / d1
    out["dataset_reads"] = dataset_reads(base.dataset_dir, work / "packed.npy")
    return out


def dataset_reads(dataset_dir: Path, packed_path: Path, repeats: int = 5) -> dict:
    """The sharded-format question, measured on this filesystem: every clip of the stored dataset read whole, in a
    random order, the way training reads it (``np.load(mmap_mode="r")`` per ``.npy``, then the pages copied), against
    the same arrays packed into one file (one memory map, a slice per clip). The page cache is warm for both (each
    read once first), so the difference is what a file per clip costs in opens and metadata, not disk speed."""
    import numpy as np

    from model.dataset import load_dataset

    paths = [dataset_dir / p for p in load_dataset(dataset_dir).manifest["frames_path"]]
    first = np.load(paths[0], mmap_mode="r")
    packed = np.lib.format.open_memmap(packed_path, mode="w+", dtype=first.dtype, shape=(len(paths),) + first.shape)
    for i, p in enumerate(paths):
        packed[i] = np.load(p)
    packed.flush()
    del packed
    order = np.random.default_rng(0).permutation(len(paths))

    def per_file() -> float:
        t0 = time.perf_counter()
        for i in order:
            np.array(np.load(paths[i], mmap_mode="r"))
        return time.perf_counter() - t0

    def one_file() -> float:
        t0 = time.perf_counter()
        arr = np.load(packed_path, mmap_mode="r")
        for i in order:
            np.array(arr[i])
        return time.perf_counter() - t0

    per_file(), one_file()  # warm the page cache
    times: dict[str, list[float]] = {"per_file": [], "one_file": []}
    for _ in range(repeats):
        times["per_file"].append(per_file())
        times["one_file"].append(one_file())
    packed_path.unlink()
    a, b = min(times["per_file"]), min(times["one_file"])
    return {"clips": len(paths), "clip_bytes": int(first.nbytes), "per_file_us_per_clip": 1e6 * a / len(paths),
            "one_file_us_per_clip": 1e6 * b / len(paths), "file_overhead_us_per_clip": 1e6 * (a - b) / len(paths),
            "one_file_speedup": a / b}


def local_cluster_seconds(workers: int) -> float:
    """Start and close a LocalCluster like the stage's (:func:`tasks.cluster.dask_runner`) with nothing to run:
    Dask's fixed cost per stage run, paid once whatever the clip count, and not Prefect's."""
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(workers)
    return time.perf_counter() - t0


# -- DDP -------------------------------------------------------------------------------------------------------------
def ddp(work: Path, clips: int, epochs: int) -> dict:
    from model.training import TrainOptions, fit
    from tests.support.tiny_dataset import noise_dataset

    ds = noise_dataset(work / "ddp-data", counts={"train": [clips // 2, clips - clips // 2], "val": [4, 4],
                                                   "test": [2, 2]}, num_frames=17, size=64)
    out: dict = {"train_clips": clips, "epochs": epochs}
    for n in (1, 2):
        opts = TrainOptions(epochs=epochs, min_epochs=0, patience=None, precision="fp32", processes=n, resume=False)
        t0 = time.perf_counter()
        r = fit(ds, opts, work_dir=work / f"ddp-{n}")
        steady = [h["epoch_seconds"] for h in r.history[1:]] or [h["epoch_seconds"] for h in r.history]
        out[f"p{n}_epoch_seconds"] = statistics.mean(steady)
        out[f"p{n}_wall_seconds"] = time.perf_counter() - t0
        out[f"p{n}_train_loss"] = [h["train_loss"] for h in r.history]
        print(f"ddp {n} process(es): {out[f'p{n}_epoch_seconds']:.2f} s/epoch", flush=True)
    out["ddp_speedup_2p"] = out["p1_epoch_seconds"] / out["p2_epoch_seconds"]
    out["max_train_loss_gap"] = max(abs(a - b) for a, b in zip(out["p1_train_loss"], out["p2_train_loss"]))
    return out


# -- bf16 -------------------------------------------------------------------------------------------------------------
def precision_steps(steps: int, batch: int = 8, num_frames: int = 16, size: int = 64) -> dict:
    # torch here, not at the top: Dask's worker processes re-import this script (their __main__), and a data
    # stage's worker never needs torch (1.3 s of start-up each), as with `vivit`
    import torch
    import torch.nn.functional as F

    from model.precision import compare_steps, cpu_has_bf16
    from model.presets import DEFAULT_PRESET, build_model
    from model.evaluation import autocast
    from model.optim import make_optimizer, param_groups
    from model.views import ViewSpec
    from model.predict import preprocess

    view = ViewSpec(num_frames=num_frames, input="diff", test_views=2)
    frames = torch.randint(0, 256, (batch, view.frames_per_view, size, size, 3), dtype=torch.uint8)
    y = torch.arange(batch) % 2
    out: dict = {"cpu_bf16": cpu_has_bf16(), "threads": torch.get_num_threads(), "batch": batch}
    for name, overrides in (("default", {}), ("wide4x", {"dim": 512})):
        torch.manual_seed(0)
        model = build_model(DEFAULT_PRESET, num_classes=2, num_frames=num_frames, image_size=size,
                            in_channels=view.channels,
                            **overrides).train()
        opt = make_optimizer(param_groups(model, 0.05), lr=1e-4)

        def step(dtype) -> None:
            with autocast(torch.device("cpu"), dtype):
                logits = model(preprocess(frames, view)).float()
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        fp32, bf16 = compare_steps(step, repeats=steps)
        out[name] = {"params": sum(p.numel() for p in model.parameters()), "fp32_clips_per_s": batch / fp32,
                     "bf16_clips_per_s": batch / bf16, "bf16_speedup": fp32 / bf16}
        print(f"{name}: fp32 {batch / fp32:.1f} clips/s, bf16 {batch / bf16:.1f} clips/s", flush=True)
    out["bf16_speedup"] = out["default"]["bf16_speedup"]
    return out


def quality(config: Path, seeds: list[int], work: Path, precisions: tuple[str, ...] = ("fp32", "bf16")) -> dict:
    """The default recipe, fp32 vs bf16, same seeds, on the config's stored dataset (run its data stages first)."""
    from model.training import fit
    from tasks.lib.config import load_config

    cfg = load_config(config)
    out: dict = {}
    for precision in precisions:
        runs = []
        for seed in seeds:
            t0 = time.perf_counter()
            r = fit(cfg.dataset_dir, cfg.train.model_copy(update={"precision": precision, "resume": False}),
                    seed=seed, work_dir=work / f"q-{precision}-{seed}")
            runs.append({"seed": seed, "test_f1": r.test_metrics.get("f1"), "test_accuracy": r.test_metrics.get("accuracy"),
                         "best_val_f1": r.best_val_f1, "epochs": len(r.history), "seconds": time.perf_counter() - t0})
            print(f"quality {precision} seed {seed}: {runs[-1]}", flush=True)
        out[precision] = runs
    return out


@contextlib.contextmanager
def prefect_server():
    """A throwaway Prefect server with the settings ``vivit`` uses for its own temporary one, unless
    ``PREFECT_API_URL`` names a server (a test's harness, a real server)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from flows.server import temporary_server_settings

    if PREFECT_API_URL.value():
        yield
        return
    with prefect_test_harness(server_startup_timeout=180), temporary_settings(temporary_server_settings()):
        yield


def _shard_size(v: str) -> int | str:
    return v if v == "auto" else int(v)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--frames-job", type=Path, default=None,
                    help="frames comparison on this config's clips (e.g. configs/surv_fight.yaml) instead of generated ones")
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--shard-size", type=_shard_size, default=ClusterConfig().shard_size,
                    help="clips per Dask task (default: the project's cluster.shard_size default)")
    ap.add_argument("--repeats", type=int, default=5, help="rounds of the four frames engines (fastest of each kept)")
    ap.add_argument("--ddp-clips", type=int, default=64)
    ap.add_argument("--ddp-epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=7, help="timed training steps per precision")
    ap.add_argument("--precision-shape", default="8,16,64", metavar="B,T,S",
                    help="the timed steps' batch, positions per view and frame size (a CPU without native bf16 "
                         "emulates it: minutes per step of the 4x wide preset at the default shape)")
    ap.add_argument("--quality", type=Path, default=None, help="also train CONFIG's default recipe fp32 vs bf16")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "scale.json")
    args = ap.parse_args(argv)

    result: dict = {"load_start": _load(), "cpus": len(os.sched_getaffinity(0))}
    with tempfile.TemporaryDirectory() as tmp, prefect_server():
        work = Path(tmp)
        result["frames"] = frames_stage(work, args.clips, args.width, args.height, args.duration, args.shard_size,
                                        args.frames_job, args.repeats)
        result["ddp"] = ddp(work, args.ddp_clips, args.ddp_epochs)
        b, t, s = (int(v) for v in args.precision_shape.split(","))
        result["precision"] = precision_steps(args.steps, batch=b, num_frames=t, size=s)
        if args.quality:
            result["quality"] = quality(args.quality, args.seeds, work)
    result["load_end"] = _load()
    f, d, p = result["frames"], result["ddp"], result["precision"]
    line = (f"dask_speedup_2w={f['dask_speedup_2w']:.2f} overhead_share={f['overhead_share']:.3f} "
            f"ddp_speedup_2p={d['ddp_speedup_2p']:.2f} bf16_speedup={p['bf16_speedup']:.2f}")
    result["summary"] = line
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "summary"}, indent=1))
    print(line)
    return result


if __name__ == "__main__":
    main()
