"""prefect-dask's ``DaskTaskRunner``, with what Prefect would build anew for every task run built once per worker
thread (or not at all).

A Prefect task run on a Dask worker (prefect-dask 0.3.7, Prefect 3.8.8) first rebuilds Prefect's ``Settings`` from
the flow's serialized settings, through every settings source again (36-65 ms measured), and creates two sync API
clients, each loading the CA bundle into a TLS context even for an ``http://`` API (16-65 ms each). In the flow,
each submit serializes those settings into the task's context (20-35 ms) and has Dask hash every argument, that
context included, for a key (prefect-dask submits with ``pure=True``), though every task run is new. Together
that was a task round trip of 0.13-0.21 s on a warm worker against ~0.01 s on plain Dask: paid once per shard, it
made Prefect's share of a short frames stage 5-8%.

Here the settings travel as pickled objects (0.6 ms to pickle, 0.3 ms to unpickle, no sources read), each worker
thread keeps one open sync API client per distinct flow settings (the caches Prefect's maintainers proposed for
their own process pool runner, PrefectHQ/prefect#20853), and a submit names its Dask key after the task run
instead of hashing. Measured: a task round trip of 0.01-0.03 s after a worker thread's first (0.06-0.08 s).
Everything else is Prefect's and prefect-dask's own: the cluster and Dask client, ``run_task_sync`` with the
flow's context (the task run, its states, logs, events, and its parameters' upstream links), futures and waiting.
"""
from __future__ import annotations

import asyncio
import hashlib
import pickle
import threading
from typing import Any
from uuid import uuid4

from distributed import Future
from prefect.client.orchestration import get_client
from prefect.context import SettingsContext, SyncClientContext, serialize_context
from prefect.settings import Profile, Settings
from prefect.task_engine import run_task_async, run_task_sync
from prefect.utilities.engine import collect_task_run_inputs_sync
from prefect_dask import DaskTaskRunner
from prefect_dask.task_runners import PrefectDaskFuture

_HELD = threading.local()  # per worker thread: (settings digest, its SettingsContext, an open sync API client)


def settings_digest(profile: Profile, settings: Settings) -> str:
    """What tells one flow's settings from another's on a shared worker."""
    return hashlib.sha256(pickle.dumps((profile, settings))).hexdigest()[:16]


def _held(digest: str, profile: Profile, settings: Settings) -> tuple[SettingsContext, Any]:
    held = getattr(_HELD, "value", None)
    if held is None or held[0] != digest:
        if held is not None:  # another flow's settings (a shared scheduler): its client is not needed any more
            held[2].__exit__(None, None, None)
        settings_ctx = SettingsContext(profile=profile, settings=settings)
        with settings_ctx:  # the client takes its API URL, key and options from these settings
            client = get_client(sync_client=True)
            client.__enter__()
            if settings_ctx.settings.client.server_version_check_enabled:
                client.raise_for_api_version_mismatch_once()
        held = _HELD.value = (digest, settings_ctx, client)
    return held[1], held[2]


def run_task_on_worker(task: Any, digest: str, profile: Profile, settings: Settings, **run_task_kwargs: Any) -> Any:
    """On a Dask worker thread: one Prefect task run, as prefect-dask runs it, under the flow's settings and the
    thread's held client (what ``SyncClientContext.get_or_create()`` and ``get_client(sync_client=True)`` find)."""
    settings_ctx, client = _held(digest, profile, settings)
    with settings_ctx:
        token = SyncClientContext.__var__.set(SyncClientContext.model_construct(client=client))
        try:
            if task.isasync:
                return asyncio.run(run_task_async(task=task, **run_task_kwargs))
            return run_task_sync(task=task, **run_task_kwargs)
        finally:
            SyncClientContext.__var__.reset(token)


class _SentSeparately(SettingsContext):
    """The flow's settings context while a submit serializes the rest of the context: the settings travel as their
    own arguments, pickled objects (0.6 ms, unpickled in 0.3 ms), not serialized into every task's context (20-35
    ms) and rebuilt from it on the worker (36-65 ms)."""

    def serialize(self, include_secrets: bool = True) -> dict[str, Any]:
        return {}


class ReusingDaskTaskRunner(DaskTaskRunner):
    """A ``DaskTaskRunner`` whose task runs go through :func:`run_task_on_worker` (the module's docstring says
    why). Configured, started, mapped and waited on exactly like prefect-dask's."""

    _sent: tuple[SettingsContext, str] | None = None

    def _settings(self) -> tuple[SettingsContext, str]:
        """The current settings context and its digest, once per runner and settings (a ``temporary_settings``
        block is another context)."""
        current = SettingsContext.get()
        if self._sent is None or self._sent[0] is not current:
            self._sent = (current, settings_digest(current.profile, current.settings))
        return self._sent

    def submit(self, task, parameters, wait_for=None, dependencies=None):
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        parameters = self._optimize_futures(parameters)
        wait_for = self._optimize_futures(wait_for) if wait_for else None
        task_run_id = uuid4()
        inputs = {k: collect_task_run_inputs_sync(v, future_cls=Future) for k, v in parameters.items()}
        if dependencies:
            inputs = {k: v.union(dependencies.get(k, set())) for k, v in inputs.items()}
        current, digest = self._settings()
        with _SentSeparately(profile=current.profile, settings=current.settings):
            # its "settings_context" is empty: run_task_on_worker enters the held one, hydrated_context builds none
            context = serialize_context(asset_ctx_kwargs={"task": task, "task_run_id": task_run_id,
                                                          "task_inputs": inputs, "copy_to_child_ctx": True})
        future = self.client.submit(
            run_task_on_worker, task, digest, current.profile, current.settings, key=f"{task.name}-{task_run_id}",
            pure=False, task_run_id=task_run_id, parameters=parameters, wait_for=wait_for, return_type="state",
            dependencies=inputs, context=context)
        return PrefectDaskFuture(wrapped_future=future, task_run_id=task_run_id)
