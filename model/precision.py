"""``train.precision``: fp32, bf16 autocast, or ``auto``.

Why ``auto`` measures instead of trusting the CPU flags: on a CPU with AVX512-BF16/AMX a bf16 matmul ran ~4x
faster than fp32, yet eager-mode autocast made a whole training step of ``vivit-fe-tiny`` *slower* (27.7 vs 34.3
clips/s) and only 1.13x faster at width 192, because at these widths the step is bound by elementwise work and
casts, not matmuls. So on CPU ``auto`` times a few training steps of the actual network and batch in both
precisions and takes bf16 only when it is clearly faster (:data:`MIN_GAIN`); the decision is cached per network,
batch, CPU model, thread count and torch version (in memory and in a JSON file beside the runs). On CUDA ``auto``
is bf16 autocast, as training always did there. Precision changes how a run executes, not what it computes
(``EXECUTION_ONLY``), like the device: a resumed run may use another.
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import Callable

import torch

from model.options import stable_hash

log = logging.getLogger(__name__)

MIN_GAIN = 1.10  # bf16 must be this much faster: below it, timing noise would flip the choice run to run
_DECIDED: dict[str, bool] = {}


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic (AVX512-BF16 or AMX); without it autocast emulates bf16 and is always slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in (" avx512_bf16", " amx_bf16"))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def autocast_dtype(precision: str, device: torch.device, *, step: Callable[[torch.dtype | None], None] | None = None,
                   what: dict | None = None, cache: Path | None = None) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32). For ``auto`` on CPU, ``step(dtype)``
    runs one training step of the real network and batch; ``what`` identifies them in the cache key."""
    if precision == "fp32":
        return None
    if precision == "bf16" or device.type == "cuda":
        return torch.bfloat16
    if device.type != "cpu" or not cpu_has_bf16() or step is None:
        return None
    key = stable_hash({"what": what, "cpu": _cpu_name(), "threads": torch.get_num_threads(),
                       "torch": torch.__version__})
    if key not in _DECIDED:
        known = _read(cache).get(key) if cache else None
        if known is None:
            fp32, bf16 = compare_steps(step)
            known = {"bf16": fp32 / bf16 >= MIN_GAIN, "fp32_s": fp32, "bf16_s": bf16}
            log.info("precision auto: a training step takes %.4f s in fp32, %.4f s in bf16 -> %s", fp32, bf16,
                     "bf16" if known["bf16"] else "fp32")
            if cache:
                _write(cache, {**_read(cache), key: known})
        _DECIDED[key] = bool(known["bf16"])
    return torch.bfloat16 if _DECIDED[key] else None


def compare_steps(step: Callable[[torch.dtype | None], None], *, warmup: int = 2,
                  repeats: int = 5) -> tuple[float, float]:
    """Fastest fp32 and bf16 step seconds, timed alternately after ``warmup`` untimed calls of each (first calls
    pay for kernel selection). Alternating and the minimum, because on a shared machine other processes only ever
    slow a step down, and a burst of them should not land on one precision only."""
    for _ in range(warmup):
        step(None)
        step(torch.bfloat16)
    best = {None: math.inf, torch.bfloat16: math.inf}
    for _ in range(repeats):
        for dtype in best:
            t0 = time.perf_counter()
            step(dtype)
            best[dtype] = min(best[dtype], time.perf_counter() - t0)
    return best[None], best[torch.bfloat16]


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write(path: Path, payload: dict) -> None:
    """Atomic: concurrent runs may both write, but never leave a torn file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part-{os.getpid()}")
        tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as e:  # a read-only runs folder only costs measuring again next time
        log.warning("cannot cache the precision decision in %s: %s", path, e)
