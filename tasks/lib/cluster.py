"""Plain pieces of running per-clip work on a cluster: cutting the clips into shards, and the environment a
Dask worker needs to report to the flow's Prefect API instead of starting a temporary server of its own."""
from __future__ import annotations

import math
from typing import Any, Literal, Mapping, Sequence

# Settings a worker must share with the flow: the API it reports to, and the embedded defaults of flows/__init__.py.
_PASSED_ON = ("PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_LOGGING_LEVEL", "PREFECT_API_KEY")


def shards(items: Sequence[Any], size: int) -> list[list[Any]]:
    """Consecutive shards of at most ``size`` items, in order (so flattening the results restores the order)."""
    if size < 1:
        raise ValueError(f"shard size must be >= 1, got {size}")
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


# ``shard_size: auto``. Two shards per thread, not four: every shard is a Prefect task run on its worker, and two
# cost Prefect less of the stage without slowing it (a worker that finishes early still takes the shards a slower
# one has not started); fewer would leave one thread's last shard as the stage's tail; a lost worker redoes its
# shard, hence the ceiling. The side-by-side measurement: docs/scaling.md ("shard_size: auto").
SHARDS_PER_THREAD = 2
AUTO_SHARD_CLIPS = (5, 500)


def shard_size_for(size: int | Literal["auto"], items: int, threads: int) -> int:
    """Clips per shard: ``size`` as configured, or for ``auto`` about SHARDS_PER_THREAD shards per worker thread
    (``threads``: the cluster's, at least 1), within AUTO_SHARD_CLIPS."""
    if size != "auto":
        return int(size)
    lo, hi = AUTO_SHARD_CLIPS
    return min(hi, max(lo, math.ceil(items / (SHARDS_PER_THREAD * max(1, threads)))))


def worker_environment(api_url: str, environ: Mapping[str, str]) -> dict[str, str]:
    """Environment variables for the worker processes of a LocalCluster: the flow's API URL, the Prefect settings
    the flow runs with, and one BLAS/OpenMP thread per worker (each worker is one core's worth of decoding)."""
    if not api_url:
        raise ValueError("the flow has no Prefect API URL to give its Dask workers")
    env = {k: environ[k] for k in _PASSED_ON if environ.get(k)}
    env.update({"PREFECT_API_URL": api_url, "OMP_NUM_THREADS": "1"})
    return env


def api_url_mismatches(worker_urls: Mapping[str, str | None], api_url: str) -> tuple[list[str], list[str]]:
    """(workers with no Prefect API URL, the other URLs some workers have) against the flow's ``api_url``."""
    missing = sorted(w for w, url in worker_urls.items() if not url)
    other = sorted({url for url in worker_urls.values() if url and url.rstrip("/") != api_url.rstrip("/")})
    return missing, other
