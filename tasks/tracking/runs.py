"""Training runs: metric names, the epoch callback, run ownership, and what a run logs."""
from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import mlflow
from mlflow import MlflowClient
import numpy as np

from model.dataset import SPLITS
from tasks.lib import locks
from tasks.tracking.store import ensure_experiment


# -- metric names: grouped by split in the UI (its chart sections follow the part before the first "/") --------


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
        self.logged: set[int] = set()
        self._warn = warn or (lambda msg: print(f"vivit: {msg}", flush=True))

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], probe: bool = False) -> None:
        if self.broken:
            return
        clean = {metric_name(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and np.isfinite(v)}
        try:
            mlflow.log_metrics(clean, step=int(epoch), run_id=self.run_id)
            if not probe:
                self.logged.add(int(epoch))
        except Exception as e:  # noqa: BLE001 - the tracking store is not the training
            self.broken = f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
            self._warn(f"MLflow stopped answering at epoch {epoch} ({self.broken}); training goes on and keeps "
                       "its checkpoints; re-run the train stage once the store is back to register the model")

    def on_probe_epoch(self, candidate: str, epoch: int, probe_epochs: int, metrics: dict[str, float]) -> None:
        """train.input auto: each candidate's probe curve beside the kept run's (whose own epochs are backfilled)."""
        keep = ("train_loss", "val_loss", "val_f1", "val_f1_smoothed")
        self.on_epoch_end(epoch, {f"input_{candidate}/{k}": metrics[k] for k in keep if k in metrics}, probe=True)

    def backfill(self, history: list[dict[str, float]]) -> None:
        """The epochs this run did not see: those trained before a resume, or all of them for a training that
        ranks on other machines ran (``vivit ddp-spec``). The registered run then carries the whole curve."""
        for row in history:
            epoch = int(row["epoch"])
            if epoch not in self.logged:
                self.on_epoch_end(epoch, {k: v for k, v in row.items() if k != "epoch"})


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


def log_dataset(info: Any, name: str) -> None:
    """The stored dataset (a :class:`model.dataset.DatasetInfo`, already read) as the run's training input."""
    with warnings.catch_warnings():
        # Two warnings about nothing, in every train stage's log: MLflow registers its local-file source twice
        # (schemes "" and "file"), then calls a local path ambiguous between the two; and it hints that integer
        # columns cannot hold missing values, which no manifest column has.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways: "
                                                  "LocalArtifactDatasetSource, LocalArtifactDatasetSource")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        ds = mlflow.data.from_pandas(info.manifest, source=str(Path(info.manifest_path).resolve()), targets="label",
                                     name=name, digest=str(info.fingerprint))
        mlflow.log_input(ds, context="training")


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({metric_name(k): float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)},
                       step=step)


def log_artifacts(paths: list[Path], artifact_path: str | None = None) -> None:
    for p in paths:
        mlflow.log_artifact(str(p), artifact_path=artifact_path)


def log_dict(data: dict[str, Any], name: str) -> None:
    mlflow.log_dict(data, name)

