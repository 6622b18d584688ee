"""Everything MLflow: the one module of the project that imports ``mlflow``.

The training loop knows nothing of tracking; it reports through a callback, and :class:`MlflowReporter` is the
callback the train stage plugs in. Models are saved in MLflow's *pickle* format with the ``model/`` package as
``code_paths``: MLflow 3's default ``torch.export`` format froze the batch size to 1 and wrote tens of MB of
example JSON in a trial here, while pickle loads for any batch size from any working directory.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import prefect  # noqa: F401  -- import before mlflow.pytorch, which otherwise spoils Prefect's log handlers

# MLflow's HTTP defaults (7 retries, doubling back-off, 120 s timeout) turned a dead tracking server into 246 s of
# silence and an MLflow server killed mid-training into a 499 s hang. These bound one request to ~30 s at worst;
# set the variables yourself for a slower link.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

import mlflow
import mlflow.pyfunc
import mlflow.pytorch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec
import numpy as np

from tasks.lib import locks
from tasks.lib.config import MlflowConfig
from tasks.lib.errors import ServiceUnavailable, UserError

CHAMPION, CHALLENGER = "champion", "challenger"
# The champion is decided on the smoothed validation score that selected the epoch (model/training.py TrainState),
# not on one epoch's raw val F1.
SELECTION_METRIC = "best_val_score"
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


# -- metric names: grouped by split in the UI (its chart sections follow the part before the first "/") --------
SPLITS = ("train", "val", "test")
_RENAMED = {"lr": "optim/lr", "best_epoch": "val/best_epoch", "challenger_score": "registry/challenger_score",
            "incumbent_score": "registry/incumbent_score"}
_UNRENAMED = {v: k for k, v in _RENAMED.items()}


def metric_name(key: str) -> str:
    """The training loop's flat names as MLflow shows them: ``train_loss`` -> ``train/loss``, ``best_val_f1`` ->
    ``val/best_f1``, ``epoch_seconds`` -> ``time/epoch_seconds``, ``lr`` -> ``optim/lr``."""
    if "/" in key:
        return key
    if key in _RENAMED:
        return _RENAMED[key]
    if key.endswith("_seconds"):
        return f"time/{key}"
    for split in SPLITS:
        if key.startswith(f"best_{split}_"):
            return f"{split}/best_{key[len(split) + 6:]}"
        if key.startswith(f"{split}_"):
            return f"{split}/{key[len(split) + 1:]}"
    return key


def internal_metric_name(name: str) -> str:
    """Inverse of :func:`metric_name`, so a reused run reports the same keys as a fresh training."""
    if name in _UNRENAMED:
        return _UNRENAMED[name]
    group, sep, rest = name.partition("/")
    if not sep:
        return name
    if group == "time":
        return rest
    if group in SPLITS:
        return f"best_{group}_{rest[5:]}" if rest.startswith("best_") else f"{group}_{rest}"
    return name


class MlflowReporter:
    """Training callback: per-epoch metrics into the active run (step = epoch).

    A tracking server that dies mid-training must not stop the training: the first failed call is said in one
    line, later epochs are not sent (no retry storm, no 30 tracebacks), and the checkpoints carry on; the stage
    then fails at registration and the next run resumes from the last checkpoint and registers."""

    def __init__(self, run_id: str, warn=None) -> None:
        self.run_id = run_id
        self.client = MlflowClient()
        self.broken: str | None = None
        self._warn = warn or (lambda msg: print(f"vivit: {msg}", flush=True))

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.broken:
            return
        clean = {metric_name(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and np.isfinite(v)}
        try:
            mlflow.log_metrics(clean, step=int(epoch), run_id=self.run_id)
        except Exception as e:  # noqa: BLE001 - the tracking store is not the training
            self.broken = f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
            self._warn(f"MLflow stopped answering at epoch {epoch} ({self.broken}); training goes on and keeps "
                       "its checkpoints; re-run the train stage once the store is back to register the model")


OWNER_TAGS = ("vivit.pid", "vivit.host", "vivit.proc_start")


def owner_tags() -> dict[str, str]:
    """Who runs a training, so a later run can tell a run left RUNNING by a killed process from a live one."""
    me = locks.this_owner()
    return {"vivit.pid": str(me.pid), "vivit.host": me.host, "vivit.proc_start": me.proc_start}


def reap_dead_runs(experiment_id: str) -> list[str]:
    """Runs left RUNNING by a dead process of this project (its pid tag, on this host, no longer runs) are
    marked KILLED: a kill -9 mid-training left them RUNNING forever. Runs of other hosts are left alone."""
    client = MlflowClient()
    reaped = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=500):
        t = run.data.tags
        if not t.get("vivit.pid", "").isdigit():
            continue
        if locks.owner_alive(t.get("vivit.host", ""), int(t["vivit.pid"]), t.get("vivit.proc_start", "")) is False:
            client.set_tag(run.info.run_id, "vivit.reaped", f"process {t['vivit.pid']} died with the run RUNNING")
            client.set_terminated(run.info.run_id, "KILLED")
            reaped.append(run.info.run_id)
    return reaped


def find_reusable_run(experiment: str, train_key: str, model_name: str) -> dict[str, Any] | None:
    """A run with the same training key whose model is registered: training again would give the same model,
    so the pipeline reuses it (``--force-train`` overrides). Runs of every status count: a training killed right
    after registering (its run KILLED) must not register the same model again; its aliases are completed."""
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    reap_dead_runs(exp.experiment_id)
    runs = mlflow.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.train_key = '{train_key}'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
        max_results=20,
    )
    client = MlflowClient()
    for run in runs:
        if run.info.status == "RUNNING":
            continue  # another host's live training
        try:
            versions = client.search_model_versions(f"name = '{model_name}' and run_id = '{run.info.run_id}'")
        except MlflowException:
            versions = []
        if versions:
            v = max(versions, key=lambda mv: int(mv.version))
            if "registry.decision" not in run.data.tags:  # killed between registering and the aliases
                score = run_score(run.data.metrics)
                promote(model_name, int(v.version), run.info.run_id, float("nan") if score is None else float(score))
            metrics = {internal_metric_name(k): m for k, m in run.data.metrics.items()}
            return {"run_id": run.info.run_id, "version": int(v.version), "metrics": metrics}
    return None


def code_version_tags(root: Path | None = None) -> dict[str, str]:
    """Which code trained the run: the git commit (and whether the tree had uncommitted changes) when the project is
    a git checkout, and always the package version. ``mlflow.source.git.commit`` is the tag the UI shows."""
    import importlib.metadata
    import subprocess

    root = root or Path(__file__).resolve().parents[1]
    try:
        tags = {"code.version": importlib.metadata.version("vivit-pipeline")}
    except importlib.metadata.PackageNotFoundError:
        tags = {"code.version": "unknown"}
    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode == 0 and commit.stdout.strip():
            dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                   text=True, timeout=10).stdout.strip()
            tags |= {"mlflow.source.git.commit": commit.stdout.strip(), "code.git_commit": commit.stdout.strip(),
                     "code.git_dirty": str(bool(dirty)).lower()}
    except (OSError, subprocess.SubprocessError):  # no git binary: the package version has to do
        pass
    return tags


@contextmanager
def training_run(experiment: str, run_name: str, tags: dict[str, str]) -> Iterator[str]:
    uri = mlflow.get_tracking_uri()
    exp_id = ensure_experiment(experiment, uri)
    reap_dead_runs(exp_id)
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name,
                          tags={**code_version_tags(), **tags, **owner_tags()}) as run:
        yield run.info.run_id


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def log_params(params: dict[str, Any]) -> None:
    flat = {k: ("" if v is None else str(v)[:6000]) for k, v in flatten(params).items()}
    mlflow.log_params(flat)


def log_config(config: Any, name: str = "config.yaml") -> None:
    """The whole config as a YAML artifact (params hold only what determines the model)."""
    import yaml

    mlflow.log_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), name)


def log_dataset(manifest_path: Path, fingerprint: str, name: str) -> None:
    import pandas as pd

    df = pd.read_parquet(manifest_path)
    ds = mlflow.data.from_pandas(df, source=str(manifest_path.resolve()), targets="label", name=name, digest=fingerprint)
    mlflow.log_input(ds, context="training")


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({metric_name(k): float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)},
                       step=step)


def log_artifacts(paths: list[Path], artifact_path: str | None = None) -> None:
    for p in paths:
        mlflow.log_artifact(str(p), artifact_path=artifact_path)


def log_dict(data: dict[str, Any], name: str) -> None:
    mlflow.log_dict(data, name)


def classifier_signature(num_frames: int, size: int, classes: list[str] | int) -> ModelSignature:
    """uint8 clips in (an *unnamed* tensor, -1 batch so any batch size is valid), one probability column per class
    out. A named input tensor makes pyfunc hand the model a dict, which MLflow's PyTorch flavour and the REST server
    then refuse ("PyTorch flavor does not support List or Dict input types")."""
    names = [f"class_{i}" for i in range(classes)] if isinstance(classes, int) else list(classes)
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, num_frames, size, size, 3))]),
        outputs=Schema([ColSpec("double", c) for c in names]),
    )


def video_signature(classes: list[str]) -> ModelSignature:
    """Video files in (a ``path`` on the server's disk, or the file's ``content``: base64 in JSON), the label, the
    error (empty when none) and one probability column per class out."""
    return ModelSignature(
        inputs=Schema([ColSpec("string", "path", required=False), ColSpec("binary", "content", required=False)]),
        outputs=Schema([ColSpec("string", "label"), ColSpec("string", "error"), *(ColSpec("double", c) for c in classes)]),
    )


def _frames_array(model_input: Any) -> np.ndarray:
    """What pyfunc may hand over for the tensor signature: the array itself, or a dict/DataFrame wrapping it."""
    if isinstance(model_input, dict) and len(model_input) == 1:
        model_input = next(iter(model_input.values()))
    arr = np.asarray(model_input)
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255 or not np.all(np.equal(np.mod(arr, 1), 0))):
            raise ValueError("frames must be uint8 RGB values 0..255")
        arr = arr.astype(np.uint8)
    return arr


# An input example of real clips would be megabytes of JSON: the explicit signatures below say it all.
warnings.filterwarnings("ignore", message=".*An input example was not provided")


class ClassifierPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc face of a :class:`model.predict.VideoClassifier`: uint8 ``(B, T, S, S, 3)`` in, a DataFrame of
    per-class probabilities (columns = class names) out. ``classifier`` stays reachable for PyTorch users through
    ``unwrap_python_model()``; :func:`load_classifier` does that."""

    # The explicit signatures validate inputs; MLflow's type-hint wrapper (and its warning) would only add a layer.
    _skip_type_hint_validation = True

    def __init__(self, classifier: Any) -> None:
        self.classifier = classifier

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - pyfunc's interface
        import pandas as pd
        import torch

        frames = _frames_array(model_input)
        with torch.inference_mode():
            probs = self.classifier(torch.from_numpy(np.ascontiguousarray(frames))).float().cpu().numpy()
        return pd.DataFrame(probs.astype(np.float64), columns=list(self.classifier.classes))


class VideoPyfunc(ClassifierPyfunc):
    """Videos in (``path`` or ``content`` column), frames sampled exactly as the frames stage does (and checked as
    the filter stage does), label + per-class probabilities out; a bad video gives a row with ``error`` set."""

    def predict(self, context, model_input, params=None):  # noqa: ANN001
        import pandas as pd

        from tasks.predict import classify_videos

        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        classes = list(self.classifier.classes)
        with tempfile.TemporaryDirectory(prefix="vivit-serve-") as tmp:
            paths = []
            for i, row in enumerate(df.to_dict("records")):
                content, path = row.get("content"), row.get("path")
                if content is not None and not (isinstance(content, float) and np.isnan(content)):
                    dest = Path(tmp) / f"video{i}"
                    dest.write_bytes(bytes(content))
                    paths.append(str(dest))
                else:
                    paths.append("" if path is None or (isinstance(path, float) and np.isnan(path)) else str(path))
            results = classify_videos(self.classifier, paths)
        rows = [{"label": r.get("label", ""), "error": r.get("error", ""),
                 **{c: float(r["probabilities"][c]) if "probabilities" in r else float("nan") for c in classes}}
                for r in results]
        return pd.DataFrame(rows, columns=["label", "error", *classes])


def _code_paths() -> list[str]:
    """The packages a served model imports: ``model`` (the network) and ``tasks`` (these pyfunc classes, sampling)."""
    import model as model_pkg
    import tasks as tasks_pkg

    return [str(Path(model_pkg.__file__).parent), str(Path(tasks_pkg.__file__).parent)]


REQUIREMENTS = ["torch==2.13.0", "einops==0.8.2", "numpy", "pandas", "av==18.1.0", "prefect==3.8.8", "pydantic",
                "pyyaml"]


def log_classifier(classifier, *, metadata: dict[str, Any]) -> str:
    """Log the classifier twice under the run: ``model`` (uint8 frames -> probabilities, the registered one) and
    ``video_model`` (video files -> label + probabilities). Returns the URI of ``model``."""
    import copy

    cpu = copy.deepcopy(classifier).cpu().eval()
    classes = list(metadata["classes"])
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=ClassifierPyfunc(cpu),
        signature=classifier_signature(metadata["num_frames"], metadata["image_size"], classes),
        code_paths=_code_paths(),
        metadata=metadata,
        pip_requirements=REQUIREMENTS,
    )
    mlflow.pyfunc.log_model(
        name="video_model",
        python_model=VideoPyfunc(cpu),
        signature=video_signature(classes),
        code_paths=_code_paths(),
        metadata={**metadata, "input": "video files: path or content (bytes)"},
        pip_requirements=REQUIREMENTS,
    )
    return info.model_uri


@dataclass
class Registration:
    name: str
    version: int
    champion_version: int | None
    decision: str  # promoted | kept_incumbent | first_champion
    challenger_score: float
    incumbent_score: float | None

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def register_and_promote(model_uri: str, name: str, run_id: str, score: float,
                         metric: str = SELECTION_METRIC) -> Registration:
    """New version + alias ``challenger``; ``champion`` moves only when the challenger's score is strictly higher
    (ties keep the incumbent). The decision and both scores go onto the run."""
    mv = mlflow.register_model(model_uri, name)
    return promote(name, int(mv.version), run_id, score, metric)


def run_score(metrics: dict[str, float], metric: str = SELECTION_METRIC) -> float | None:
    """A run's champion score: ``metric`` under its grouped or flat name; for runs logged before selection was
    smoothed, their raw best val F1 (grouped or flat)."""
    return next((metrics[k] for k in (metric_name(metric), metric, "val/best_f1", "best_val_f1") if k in metrics), None)


def promote(name: str, version: int, run_id: str, score: float, metric: str = SELECTION_METRIC) -> Registration:
    """Aliases for a registered ``version``: ``challenger``, and ``champion`` when it beats the incumbent."""
    client = MlflowClient()
    client.set_registered_model_alias(name, CHALLENGER, str(version))
    incumbent_score: float | None = None
    try:
        champ = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champ = None
    if champ is None:
        decision, champion_version = "first_champion", version
    else:
        incumbent_run = client.get_run(champ.run_id) if champ.run_id else None
        incumbent_score = run_score(incumbent_run.data.metrics if incumbent_run else {}, metric)
        if int(champ.version) == version:
            decision, champion_version = "kept_incumbent", version
        elif incumbent_score is None or score > incumbent_score:
            decision, champion_version = "promoted", version
        else:
            decision, champion_version = "kept_incumbent", int(champ.version)
    if champion_version == version:
        client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_model_version_tag(name, str(version), metric, f"{score:.6f}")
    with_run = {"registry.version": version, "registry.decision": decision,
                "registry.champion_version": champion_version}
    for k, v in with_run.items():
        client.set_tag(run_id, k, str(v))
    _register_video_model(run_id, f"{name}{VIDEO_SUFFIX}", promote=champion_version == version)
    client.log_metric(run_id, metric_name("challenger_score"), float(score))
    if incumbent_score is not None:
        client.log_metric(run_id, metric_name("incumbent_score"), float(incumbent_score))
    return Registration(name, version, champion_version, decision, float(score), incumbent_score)


VIDEO_SUFFIX = "-video"


def _register_video_model(run_id: str, name: str, *, promote: bool) -> int | None:
    """The run's ``video_model`` follows its frames model: a new version with alias ``challenger``, and
    ``champion`` exactly when the frames model became champion, so ``models:/NAME-video@champion`` is always the
    same network as ``models:/NAME@champion``."""
    experiment_id = MlflowClient().get_run(run_id).info.experiment_id
    found = mlflow.search_logged_models(experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = 'video_model'",
                                        output_format="list")
    if not found:
        return None
    client = MlflowClient()
    version = str(mlflow.register_model(found[0].model_uri, name).version)
    client.set_registered_model_alias(name, CHALLENGER, version)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    return int(version)


def aliases(name: str) -> dict[str, int]:
    client = MlflowClient()
    out = {}
    for alias in (CHAMPION, CHALLENGER):
        try:
            out[alias] = int(client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            pass
    return out


def load_classifier(model_uri: str, tracking_uri: str | None = None):
    """Load a registered classifier (``models:/NAME@champion``, ``runs:/...``) on CPU as a PyTorch module with
    ``classes``, ``num_frames`` and ``image_size``. Models logged in the PyTorch flavour (before the pyfunc
    wrapper) still load."""
    if tracking_uri:
        require_existing_store(tracking_uri)
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    flavors = mlflow.models.get_model_info(model_uri).flavors
    if "pytorch" in flavors:
        net = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    else:
        net = mlflow.pyfunc.load_model(model_uri).unwrap_python_model().classifier
    net.eval()
    return net


def default_model_uri(model_name: str, *, explicit: bool) -> str:
    """``models:/<model_name>@champion``. When the name only comes from the built-in default (no ``--config``) and
    the store has no such model, the one registered model with a champion is used: ``make run`` registers
    ``vivit-demo``, and ``vivit predict x.mp4`` right after it should just work."""
    wanted = f"models:/{model_name}@{CHAMPION}"
    if explicit:
        return wanted
    client = MlflowClient()
    try:
        client.get_model_version_by_alias(model_name, CHAMPION)
        return wanted
    except MlflowException:
        pass
    named = {m.name for m in client.search_registered_models() if CHAMPION in (m.aliases or {})}
    named = sorted(n for n in named if not (n.endswith(VIDEO_SUFFIX) and n[: -len(VIDEO_SUFFIX)] in named))
    if len(named) == 1:
        return f"models:/{named[0]}@{CHAMPION}"
    if not named:
        raise LookupError(f"no registered model has a {CHAMPION!r} alias in {mlflow.get_tracking_uri()}: "
                          "train one first (make run), or pass --model / --tracking-uri")
    raise LookupError(f"several registered models have a {CHAMPION!r} alias ({', '.join(named)}): "
                      "pass --model models:/NAME@champion or --config")
