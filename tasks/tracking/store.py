"""The tracking store: where it is (SQLite by default), its lock, the fast health check, experiments."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks.lib import locks
from tasks.lib.config import MlflowConfig
from tasks.lib.errors import ServiceUnavailable, UserError


DEFAULT_STORE = Path("mlruns")


def resolve_tracking_uri(cfg: MlflowConfig, *, create: bool = True) -> str:
    """Config first, then ``$MLFLOW_TRACKING_URI``, else an embedded SQLite store under ``./mlruns``.

    An absolute SQLite path needs four slashes (``sqlite:////abs/mlflow.db``); ``sqlite:///`` + an absolute
    path string gives exactly that. ``create=False`` (prediction) makes no folder."""
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if create:
        DEFAULT_STORE.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(DEFAULT_STORE / 'mlflow.db').resolve()}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative to the cwd with three slashes), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):]).resolve()


def store_lock(uri: str):
    """One writer per MLflow store: two trainings on one new SQLite store crashed the second in MLflow's schema
    migration, and two on an existing one registered two versions for one training key. A SQLite store is locked
    beside its file; a tracking server serialises its own writes (nothing to lock from here)."""
    db = sqlite_path(uri)
    if db is None:
        return contextlib.nullcontext()
    return locks.exclusive(f"{db}.lock", f"MLflow store {db}", command="vivit train")


def require_existing_store(uri: str) -> None:
    """Prediction reads a store; opening a missing SQLite file would create an empty database instead."""
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise UserError(f"no MLflow store at {db}: train a model first (vivit train), or point --tracking-uri / "
                        "mlflow.tracking_uri at the store that has it")


def check_store(uri: str, *, budget_s: float = 30.0, attempt_timeout_s: float = 5.0) -> None:
    """Fail fast and in one line when the store cannot work, instead of minutes of retries and tracebacks: a
    tracking server must answer ``/health`` (a few tries, ``budget_s`` in all); a SQLite store's folder must be
    writable."""
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        probe = db.parent / f".vivit-write-check-{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
            if db.exists() and not os.access(db, os.W_OK):
                raise PermissionError(f"{db} is read-only")
        except OSError as e:
            raise UserError(f"MLflow store {db} is not writable ({e.strerror or e}): fix its permissions or set "
                            "mlflow.tracking_uri to a writable store") from None
        return
    if not uri.startswith(("http://", "https://")):
        return
    import time
    import urllib.error
    import urllib.request

    deadline, tries, last = time.monotonic() + budget_s, 0, ""
    while True:
        tries += 1
        timeout = max(0.5, min(attempt_timeout_s, deadline - time.monotonic()))
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:  # noqa: S310 - http(s) only
                if r.status < 500:
                    return
                last = f"HTTP {r.status}"
        except urllib.error.HTTPError as e:
            if e.code < 500:
                return  # it answers (an auth proxy, an old server without /health)
            last = f"HTTP {e.code}"
        except (OSError, ValueError) as e:
            last = str(getattr(e, "reason", e))
        if time.monotonic() + 2.0 >= deadline or tries >= 3:
            break
        time.sleep(2.0)
    raise ServiceUnavailable(f"MLflow tracking server {uri} is not reachable ({last}; {tries} tries): start it "
                             "or fix mlflow.tracking_uri / $MLFLOW_TRACKING_URI")


def is_store_down(exc: BaseException) -> bool:
    """The tracking server stopped answering (connection refused/reset, retries exhausted, 5xx)."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ServiceUnavailable):
            return True
        name = type(e).__name__
        text = str(e)
        if name in {"ConnectionError", "MaxRetryError", "NewConnectionError", "ConnectTimeout", "ReadTimeout",
                    "ConnectionRefusedError", "RemoteDisconnected"}:
            return True
        if isinstance(e, MlflowException) and ("API request to" in text or "Max retries exceeded" in text):
            return True
        e = e.__cause__ or e.__context__
    return False


def _artifact_root(uri: str) -> str | None:
    """For an embedded SQLite store keep artifacts beside the database (not in whatever the cwd is)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "artifacts").resolve().as_uri()
    return None


def use_store(cfg: MlflowConfig) -> str:
    uri = resolve_tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


# MLflow 3's UI shows an experiment without this tag as a GenAI one (Traces, Latency, Token usage); this value opens
# it in the classic model-training view (runs, charts, models).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def ensure_experiment(name: str, uri: str) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        exp_id = mlflow.create_experiment(name, artifact_location=_artifact_root(uri),
                                          tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    else:
        exp_id = exp.experiment_id
        if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made by an older version, or by hand
            MlflowClient().set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp_id


def experiment_url(ui: str, experiment_id: str, charts: bool = False) -> str:
    """The experiment in the UI's classic model-training view. MLflow 3.17's UI opens every experiment in its GenAI
    view unless the browser was switched before (a per-browser setting) or the link says ``workflowType``; the
    experiment kind tag alone does not switch it yet (checked with a headless browser in tests/test_mlflow_ui.py)."""
    query = "workflowType=machine_learning" + ("&compareRunsMode=CHART" if charts else "")
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def experiment_id(name: str) -> str | None:
    exp = mlflow.get_experiment_by_name(name)
    return exp.experiment_id if exp else None



def latest_run_url(ui: str, experiment: str) -> str | None:
    """The most recent run of ``experiment`` in the UI (its page in the classic view), None without one."""
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = MlflowClient().search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    return f"{ui.rstrip('/')}/#/experiments/{exp.experiment_id}/runs/{runs[0].info.run_id}"
