"""Where the per-clip work of download, filter and frames runs (``cluster:`` in the config).

``threads`` maps the per-clip task over this process's thread pool: one Prefect task run per clip, about 20 ms of
overhead each. ``dask`` maps a *shard* task over a ``dask.distributed`` cluster through ``prefect-dask``: each
shard runs the same per-clip function for ``cluster.shard_size`` clips (``auto``: about 2 shards per worker
thread), because a Prefect task run per clip would rival the work itself: 130-360 ms each on prefect-dask's
runner, and the Prefect server records every task run's states and logs besides. Either way the caller gets one
row per clip, in input order, so reports, manifests and fingerprints do not depend on the engine.

Workers report to the flow's Prefect API. A Dask worker that has no ``PREFECT_API_URL`` starts a temporary API
server of its own (18.8 s for 6 tasks measured), and its task runs never show up in the flow's server: a
``LocalCluster`` started here gets the flow's API URL in its workers' environment; workers of an existing
scheduler (``cluster.address``) must be started with it (docs/scaling.md), and a stage refuses those that
were not (:func:`check_workers_report_here`).
"""
from __future__ import annotations

import contextvars
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from prefect import get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.lib.cluster import api_url_mismatches, shard_size_for, shards, worker_environment
from tasks.lib.config import ClusterConfig
from tasks.lib.errors import ServiceUnavailable, UserError
from tasks.progress import PER_ITEM, gather


def flow_api_url() -> str:
    """The Prefect API this process talks to: the configured one, or the temporary server it started itself."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or str(get_client(sync_client=True).api_url)


def dask_runner(cluster: ClusterConfig):
    """prefect-dask's ``DaskTaskRunner``, as shipped (docs/scaling.md: what a subclass saved was not worth
    patching its internals), on ``cluster.address``, or on a LocalCluster of ``cluster.workers`` single-threaded
    processes (frames and filter decode with one thread per clip, so one process per core) that reach the
    flow's Prefect API."""
    from prefect_dask import DaskTaskRunner

    if cluster.address:
        return DaskTaskRunner(address=cluster.address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": cluster.workers, "threads_per_worker": 1, "processes": True,
                        "dashboard_address": None, "env": worker_environment(flow_api_url(), dict(os.environ))},
    )


def connect(runner, cluster: ClusterConfig):
    """The runner's Dask client. An existing scheduler (``cluster.address``) that is malformed or does not answer
    within Dask's connect timeout (``distributed.comm.timeouts.connect``, 30 s) fails the stage with one line that
    names the setting and the fix, before any clip is touched, instead of a bare OSError or ValueError."""
    if not cluster.address:  # a LocalCluster of ours: a failure to start it is not about the user's address
        return runner.client
    try:
        return runner.client
    except ValueError as e:  # distributed's address parsing: a scheme it does not know, no port, ...
        raise UserError(f"cluster.address {cluster.address!r} is not a Dask scheduler address like "
                        f"tcp://host:8786 ({e})") from None
    except OSError as e:
        raise ServiceUnavailable(f"the Dask scheduler at {cluster.address} (cluster.address) is not reachable ({e}): "
                                 "start it (`dask scheduler`, docs/scaling.md) or fix cluster.address") from None


def _prefect_api_url() -> str | None:
    """Run on each worker: the Prefect API its task runs will report to (environment or profile)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def check_workers_report_here(client, api_url: str) -> None:
    """Workers of an existing scheduler must be started with the flow's Prefect API (docs/scaling.md): one
    without any would start a temporary Prefect server of its own for its task runs (6 tasks took 18.8 s), which
    this flow's UI never sees, so that is refused in one line. One with another URL may name the same server by
    another host name: a warning. Checked for the workers there when the stage starts."""
    missing, other = api_url_mismatches(client.run(_prefect_api_url), api_url)
    if missing:
        raise UserError(f"Dask worker(s) {', '.join(missing)} have no PREFECT_API_URL: each would start a temporary "
                        f"Prefect server of its own, and their task runs would not reach this flow's API; start the "
                        f"workers with PREFECT_API_URL={api_url} (docs/scaling.md)")
    if other:
        get_run_logger().warning("Dask workers report to %s, this flow to %s: the same server under another name, "
                                 "or their task runs go elsewhere", ", ".join(other), api_url)


class Shard:
    """One shard's items, as one plain object: Prefect walks a task's list and dict parameters looking for futures
    (twice, on the worker: 28 ms of each shard task run's ~180 ms for 50 clips, measured), and a plain object is a
    leaf to it. (Prefect's own ``opaque`` annotation reaches a task mapped through prefect-dask 0.3.7 as a plain
    tuple: tried.)"""

    __slots__ = ("items",)

    def __init__(self, items: list[Any]):
        self.items = items


def _shard_name() -> str:
    from prefect.runtime import task_run

    p = task_run.parameters
    return f"{p.get('stage', 'clips')}-shard-{p.get('index', 0)}"


@task(name="shard", cache_policy=NO_CACHE, task_run_name=_shard_name)
def run_shard(stage: str, index: int, per_clip: Any, key: str, shard: Shard, kwargs: dict[str, Any],
              threads: int) -> list[Any]:
    """The per-clip task's own function over one shard, ``threads`` clips at a time (downloads wait on the
    network, so they overlap within a worker; decoding does not). No retries: the per-clip functions never raise
    for a clip, and a shard lost with its worker is run again by Dask on another worker."""
    def one(item: Any, ctx: contextvars.Context) -> Any:
        return ctx.run(per_clip.fn, **{key: item}, **kwargs)  # the run context (logger) follows into the thread

    items = shard.items
    if threads <= 1 or len(items) <= 1:
        rows = [per_clip.fn(**{key: item}, **kwargs) for item in items]
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            rows = list(pool.map(one, items, [contextvars.copy_context() for _ in items]))
    get_run_logger().info("%s shard %d: %d clip(s) done on pid %d", stage, index, len(rows), os.getpid(),
                          extra={PER_ITEM: True})
    return rows


def map_clips(cluster: ClusterConfig, stage: str, per_clip: Any, key: str, items: Sequence[Any],
              kwargs: dict[str, Any], threads: int) -> list[Any]:
    """``per_clip(key=item, **kwargs)`` for every item, rows in input order, on the configured engine.
    ``threads``: clips at once on the thread engine, and within one Dask shard."""
    items = list(items)
    if not items:
        return []
    if cluster.engine == "threads":
        with ThreadPoolTaskRunner(max_workers=threads) as runner:
            futures = runner.map(per_clip, {key: items, **{k: unmapped(v) for k, v in kwargs.items()}})
            return gather(futures, stage)
    with dask_runner(cluster) as runner:
        client = connect(runner, cluster)
        if cluster.address:  # a LocalCluster of ours has the flow's API in its workers' environment
            check_workers_report_here(client, flow_api_url())
        threads_on_cluster = sum(client.nthreads().values())  # an existing scheduler's, or our LocalCluster's
        parts = shards(items, shard_size_for(cluster.shard_size, len(items), threads_on_cluster))
        futures = runner.map(run_shard, {
            "stage": unmapped(stage), "index": list(range(len(parts))), "per_clip": unmapped(per_clip),
            "key": unmapped(key), "shard": [Shard(p) for p in parts], "kwargs": unmapped(kwargs),
            "threads": unmapped(threads)})
        return [row for part in gather(futures, stage, unit="shards") for row in part]
