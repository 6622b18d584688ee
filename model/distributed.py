"""Training on several processes with DistributedDataParallel: ``train.processes: N`` (or ``vivit train --nproc N``).

How it fits :func:`model.training.fit`:

* ``fit`` with ``processes > 1``, called outside torchrun, :func:`launch`\\ es ``torchrun --standalone
  --nproc_per_node N -m model.ddp_rank SPEC`` and waits. Each rank runs ``fit`` again (inside torchrun it
  trains under DDP); rank 0 alone writes checkpoints and reports each epoch's metrics to an events file, which the
  launcher passes on to the caller's callback as they come. When the ranks are done, ``fit`` evaluates
  ``best.pt`` once in its own process (:func:`model.training.collect`) and returns the usual ``TrainResult``: so
  only the calling process logs to MLflow and registers, whatever the number of ranks.
* This module holds what ``fit`` calls (the hooks and the launcher) and imports nothing of
  :mod:`model.training`; the rank's entry point, which calls ``fit``, is :mod:`model.ddp_rank`.
* Same semantics as one process: every rank draws the same global order of training clips (the single-process
  sampler, same seed) and :class:`GlobalOrderSampler` hands rank ``r`` the items ``r, r+W, ...`` of it through a
  ``DistributedSampler``, so the W per-rank batches of ``batch_size / W`` clips together are exactly the
  single-process batch; the weighted loss is normalised by the whole global batch; on CUDA BatchNorm statistics
  are synchronised. Differences left: float summation order, the padding DistributedSampler adds to a last batch
  that does not split evenly, the stochastic-depth/dropout masks (each rank draws its own, from the same RNG
  state: ``last.pt`` keeps one RNG state, so a resumed run continues exactly), and on CPU BatchNorm (the conv
  stem's) over each rank's share of the batch.
* Validation runs on rank 0 alone with the unwrapped network (evaluation is a few percent of an epoch) and its
  decision (best epoch, early stop) is broadcast, so every rank leaves the loop together.
* Backend: gloo on CPU, nccl on CUDA (one GPU per rank, ``cuda:LOCAL_RANK``).
* Multi-node: ``vivit ddp-spec`` writes the spec (:func:`write_spec`) into the run's work dir and prints
  :func:`multinode_command`, which every node runs; ``vivit train`` afterwards finds the finished ``last.pt`` there
  and registers it (docs/scaling.md, "Training on several processes").

Imports neither Prefect nor MLflow: the launcher is plain ``subprocess`` (never a shell).
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

from model.atomic import atomic_write_text
from model.options import batch_share

EVENTS_FILE = "ddp-events.jsonl"
SPEC_FILE = "ddp-spec.json"
LOG_FILE = "ddp.log"
RANK_MODULE = "model.ddp_rank"  # what torchrun runs in each rank


@dataclass(frozen=True)
class Ranks:
    """This process's place in the process group; ``Ranks()`` is the single-process case."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def in_torchrun() -> bool:
    """torchrun (and every launcher following its contract) sets WORLD_SIZE for its ranks."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def check_gpus(ranks_per_node: int, device: torch.device, gpus: int) -> None:
    """nccl wants one GPU per rank: two ranks on one GPU fail inside NCCL, and a rank past the last GPU fails in
    ``set_device`` with "invalid device ordinal", both only after the ranks have started. Refuse before, naming
    the settings (ValueError)."""
    if device.type == "cuda" and ranks_per_node > gpus:
        raise ValueError(f"train.processes={ranks_per_node} on CUDA needs one GPU per process, and this machine has "
                         f"{gpus}: set train.processes to at most {gpus}, or train.device: cpu for CPU processes (gloo)")


def join(device_name: str) -> Ranks:
    """Join the process group torchrun describes: nccl when this rank has a GPU, gloo otherwise."""
    if not in_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return Ranks()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    gpu = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        if gpu:  # torchrun --nnodes by hand: --nproc_per_node is LOCAL_WORLD_SIZE
            check_gpus(int(os.environ.get("LOCAL_WORLD_SIZE", local + 1)), torch.device("cuda"),
                       torch.cuda.device_count())
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if gpu else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), local)


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """One GPU per rank on a node; CPU ranks share the machine."""
    if ranks.active and device.type == "cuda":
        return torch.device("cuda", ranks.local_rank)
    return device


def per_rank_batch(batch_size: int, ranks: Ranks) -> int:
    """This rank's share of the global batch (the world may be several nodes started by hand)."""
    return batch_share(batch_size, ranks.world, f"train.processes={ranks.world}")


class GlobalOrderSampler(Sampler[int]):
    """This rank's share of the order ``base`` draws (identically on every rank, from the same seed):
    DistributedSampler's interleaved split, without its own shuffle, so the ranks' batches of one step are together
    the single-process batch of that step."""

    def __init__(self, base: Sampler[int], ranks: Ranks) -> None:
        self.base, self.ranks = base, ranks

    def __iter__(self) -> Iterator[int]:
        order = list(self.base)
        share = DistributedSampler(order, num_replicas=self.ranks.world, rank=self.ranks.rank, shuffle=False)
        return iter([order[i] for i in share])

    def __len__(self) -> int:
        return math.ceil(len(self.base) / self.ranks.world)


def global_sum(value: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The sum over ranks (a no-op on one process)."""
    if ranks.active:
        value = value.clone()
        dist.all_reduce(value)
    return value


def gather(obj: Any, ranks: Ranks) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` on one process)."""
    if not ranks.active:
        return [obj]
    out: list[Any] = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out


def from_main(obj: Any, ranks: Ranks) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ranks.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(model: torch.nn.Module, device: torch.device, ranks: Ranks) -> torch.nn.Module:
    """DDP around ``model``. On CUDA BatchNorm is synchronised across ranks, as one process would compute it;
    torch's SyncBatchNorm refuses CPU tensors, so CPU ranks normalise over their own share of the batch (the conv
    stem's BatchNorm; the transformer's LayerNorms are per sample and unaffected)."""
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


class EventWriter:
    """Rank 0's callback inside torchrun: one JSON line per epoch, read by :func:`launch` in the parent."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"epoch": epoch, "metrics": metrics}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def write_spec(dataset_dir: Path, options: Any, *, seed: int, work_dir: Path) -> Path:
    """What every rank reads (``python -m model.ddp_rank SPEC``): the dataset, the options, the seed, where to
    checkpoint and where rank 0 reports its epochs. The ranks take their number from torchrun, not from
    ``options.processes``. Paths are absolute: on several nodes they must name the same shared filesystem
    (docs/scaling.md, "Storage contract")."""
    work_dir = Path(work_dir).resolve()
    spec, events = work_dir / SPEC_FILE, work_dir / EVENTS_FILE
    atomic_write_text(events, "")
    atomic_write_text(spec, json.dumps({
        "dataset_dir": str(Path(dataset_dir).resolve()), "work_dir": str(work_dir), "seed": seed,
        "options": options.model_dump(mode="json"), "events": str(events)}, indent=1))
    return spec


def torchrun_command(spec: Path, nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", RANK_MODULE, str(spec)]


def multinode_command(spec: Path, nnodes: int, nproc_per_node: int, endpoint: str, run_id: str) -> list[str]:
    """The command each of ``nnodes`` machines runs (the same on all: c10d rendezvous at ``endpoint`` numbers the
    nodes). One node: ``--standalone``, no rendezvous host to name."""
    if nnodes == 1:
        return ["torchrun", "--standalone", f"--nproc_per_node={nproc_per_node}", "-m", RANK_MODULE, str(spec)]
    return ["torchrun", f"--nnodes={nnodes}", f"--nproc_per_node={nproc_per_node}", "--rdzv_backend=c10d",
            f"--rdzv_endpoint={endpoint}", f"--rdzv_id={run_id}", "-m", RANK_MODULE, str(spec)]


def launch(dataset_dir: Path, options: Any, *, device: torch.device, seed: int, work_dir: Path,
           callback: Any = None) -> None:
    """Train with ``options.processes`` ranks under torchrun on this machine (``device``: ``train.device`` resolved
    here); the caller evaluates what they trained. Raises RuntimeError naming the first exception a rank printed
    (:func:`root_cause`) when torchrun fails."""
    check_gpus(options.processes, device, torch.cuda.device_count())
    spec = write_spec(dataset_dir, options, seed=seed, work_dir=work_dir)
    events, log_path = spec.with_name(EVENTS_FILE), spec.with_name(LOG_FILE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                      os.environ.get("PYTHONPATH")]))}
    seen = 0
    with open(log_path, "w") as log:
        proc = subprocess.Popen(torchrun_command(spec, options.processes), stdout=log, stderr=subprocess.STDOUT,
                                env=env)
        try:
            while True:
                finished = proc.poll() is not None
                seen = _relay(events, seen, callback)
                if finished:
                    break
                time.sleep(0.2)
        finally:
            if proc.poll() is None:  # the caller was interrupted: take the ranks down with it
                proc.terminate()
                proc.wait(30)
    if proc.returncode != 0:
        text = log_path.read_text(errors="replace")
        cause = root_cause(text) or " | ".join(text.strip().splitlines()[-12:])
        raise RuntimeError(f"torchrun with {options.processes} processes exited {proc.returncode}: {cause} "
                           f"(the ranks' output: {log_path})")


_EXCEPTION_LINE = re.compile(r"^(?:\[rank(\d+)\]:\s*)?([A-Za-z_][\w.]*(?:Error|Exception)\b.*)$")


def root_cause(log: str) -> str | None:
    """The first exception a rank printed, as ``rank N: Type: message``. torchrun's own summary ends the log and
    names only an exit code, and the other ranks then fail too, on the broken connection (gloo's "Connection
    closed by peer"): the first exception line is the one that explains the failure."""
    for line in log.splitlines():
        m = _EXCEPTION_LINE.match(line.strip())
        if m and not m.group(2).startswith(("torch.distributed.elastic", "ChildFailedError")):
            return f"rank {m.group(1)}: {m.group(2)}" if m.group(1) is not None else m.group(2)
    return None


def _relay(events: Path, seen: int, callback: Any) -> int:
    """Pass the epochs rank 0 reported since the last look to the caller's callback."""
    lines = events.read_text().splitlines()
    complete = [ln for ln in lines if ln.endswith("}")]
    for line in complete[seen:]:
        event = json.loads(line)
        fn = getattr(callback, "on_epoch_end", None) if callback is not None else None
        if fn is not None:
            fn(int(event["epoch"]), {k: float(v) for k, v in event["metrics"].items()})
    return len(complete)


def leave(finished: bool) -> None:
    """Tear the process group down before returning. With ``destroy_process_group`` alone, a rank sometimes died
    at interpreter exit, after training had finished ("terminate called without an active exception", SIGABRT,
    no Python frame left: gloo's C++ teardown): 3 of ~20 two-rank runs here. The ranks now wait for each other
    first (only when this one finished: a failed rank must not hang the other), so neither tears its end down
    while the other still uses the group, and collect garbage before destroying it (which alone also stopped it,
    15 of 15 runs; why is not pinned down). Both together: 0 of 30 runs."""
    import gc

    if not dist.is_initialized():
        return
    if finished:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()

