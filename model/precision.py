"""``train.precision``: fp32, bf16 autocast, or ``auto``.

``auto`` is bf16 autocast on CUDA (as training always did there) and fp32 on CPU. Why not bf16 on a CPU that has
AVX512-BF16/AMX: at the default preset's width a training step is bound by elementwise work and casts, not
matmuls, so bf16 buys little there, and it would make the same seed train a different model on CPUs with and
without native bf16. Wider networks gain more: their users opt in with ``precision: bf16`` (the measurements:
docs/scaling.md, "bf16"). Precision is an execution choice like the device (``EXECUTION_ONLY``): a resumed run may
use another.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic (AVX512-BF16 or AMX); without it autocast emulates bf16 and is always slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in (" avx512_bf16", " amx_bf16"))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


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
