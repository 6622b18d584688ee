"""Plain pieces of running per-clip work on a cluster: cutting the clips into shards, and the environment a
Dask worker needs to report to the flow's Prefect API instead of starting a temporary server of its own."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

# Settings a worker must share with the flow: the API it reports to, and the embedded defaults of flows/__init__.py.
_PASSED_ON = ("PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_LOGGING_LEVEL", "PREFECT_API_KEY")


def shards(items: Sequence[Any], size: int) -> list[list[Any]]:
    """Consecutive shards of at most ``size`` items, in order (so flattening the results restores the order)."""
    if size < 1:
        raise ValueError(f"shard size must be >= 1, got {size}")
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def worker_environment(api_url: str, environ: Mapping[str, str]) -> dict[str, str]:
    """Environment variables for the worker processes of a LocalCluster: the flow's API URL, the Prefect settings
    the flow runs with, and one BLAS/OpenMP thread per worker (each worker is one core's worth of decoding)."""
    if not api_url:
        raise ValueError("the flow has no Prefect API URL to give its Dask workers")
    env = {k: environ[k] for k in _PASSED_ON if environ.get(k)}
    env.update({"PREFECT_API_URL": api_url, "OMP_NUM_THREADS": "1"})
    return env
