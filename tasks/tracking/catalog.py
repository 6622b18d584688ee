"""Reading the store for a person: which registered model a URI names, recent training runs, registered models with
their versions and aliases (``vivit runs``, ``vivit models``, ``vivit evaluate``, ``vivit export``), and the
evaluation runs of a model version."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks.lib.errors import UserError
from tasks.tracking.registry import BASELINE_METRIC

EVALUATION_TAG = "vivit.evaluation"  # "true" on the runs `vivit evaluate` logs

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


@dataclass
class ModelRef:
    """A registered model version a ``models:/`` URI names (or None fields for a ``runs:/`` URI)."""

    uri: str
    name: str | None = None
    version: int | None = None
    run_id: str | None = None


def registered_names() -> list[str]:
    return sorted(m.name for m in MlflowClient().search_registered_models())


def resolve_model(uri: str) -> ModelRef:
    """The registered version behind ``models:/NAME/V`` or ``models:/NAME@ALIAS`` (``runs:/`` URIs pass through).
    An unknown name, version or alias is a :class:`UserError` listing what the store has."""
    m = _MODELS_URI.match(uri)
    if not m:
        if uri.startswith(("runs:/", "models:/m-")):
            return ModelRef(uri)
        raise UserError(f"{uri!r} is not a model URI: use models:/NAME@champion, models:/NAME/VERSION or "
                        "runs:/RUN_ID/model")
    client = MlflowClient()
    name = m["name"]
    try:
        client.get_registered_model(name)
    except MlflowException:
        known = registered_names()
        raise UserError(f"no registered model {name!r} in {mlflow.get_tracking_uri()}: registered are "
                        f"{', '.join(known) if known else 'none (train one first: vivit run)'}") from None
    try:
        mv = (client.get_model_version(name, m["version"]) if m["version"]
              else client.get_model_version_by_alias(name, m["alias"]))
    except MlflowException:
        aliases = client.get_registered_model(name).aliases or {}
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        raise UserError(f"{name} has no {'version ' + m['version'] if m['version'] else 'alias @' + m['alias']}: "
                        f"versions {', '.join(map(str, versions)) or 'none'}; aliases "
                        f"{', '.join(f'@{a}=v{v}' for a, v in sorted(aliases.items())) or 'none'}") from None
    return ModelRef(uri, name, int(mv.version), mv.run_id)


# -- vivit runs ---------------------------------------------------------------------------------------------------
RUN_METRICS = (("val", "val/best_score"), ("val_f1", "val/best_f1"), ("test_f1", "test/f1"),
               ("test_acc", "test/accuracy"), ("base_val", BASELINE_METRIC), ("base_test", "baseline/test_f1"))


def recent_runs(experiment: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """The most recent training runs (evaluation runs left out), newest first, of ``experiment`` or of every
    experiment: start time, name, status, preset, input, epochs, clips, val/test scores, the baseline, the registry
    decision and version."""
    import datetime as _dt

    client = MlflowClient()
    if experiment:
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is None:
            known = sorted(e.name for e in client.search_experiments())
            raise UserError(f"no experiment {experiment!r} in {mlflow.get_tracking_uri()}: there are "
                            f"{', '.join(known) or 'none'}")
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    # runs without the tag would not match a "!= 'true'" filter (SQL's null): evaluations are left out here
    runs = client.search_runs(ids, order_by=["attributes.start_time DESC"], max_results=min(1000, limit * 5))
    runs = [r for r in runs if r.data.tags.get(EVALUATION_TAG) != "true"][:limit]
    rows = []
    for r in runs:
        p, m, t = r.data.params, r.data.metrics, r.data.tags
        started = _dt.datetime.fromtimestamp(r.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
        row = {"started": started, "run": r.info.run_id[:8], "name": r.info.run_name or "", "status": r.info.status,
               "preset": p.get("preset", t.get("preset", "")),
               "input": p.get("input_chosen", p.get("train.input", "")),
               "epochs": p.get("train.epochs", ""),
               "clips": "/".join(p.get(f"split_counts.{s}", "-") for s in ("train", "val", "test")),
               **{k: m.get(name) for k, name in RUN_METRICS},
               "decision": t.get("registry.decision", ""), "version": t.get("registry.version", "")}
        rows.append(row)
    return rows


# -- vivit models -------------------------------------------------------------------------------------------------
@dataclass
class ModelRow:
    name: str
    description: str
    versions: list[dict[str, Any]] = field(default_factory=list)


def registered_models(name: str | None = None, versions: int = 5) -> list[ModelRow]:
    """Registered models (or the one named), each with its newest ``versions`` versions: aliases, the card's scores
    (version tags), the decision, the run and when it was registered."""
    import datetime as _dt

    client = MlflowClient()
    models = client.search_registered_models()
    if name is not None:
        models = [m for m in models if m.name == name]
        if not models:
            raise UserError(f"no registered model {name!r} in {mlflow.get_tracking_uri()}: registered are "
                            f"{', '.join(registered_names()) or 'none'}")
    out = []
    for m in sorted(models, key=lambda m: m.name):
        by_version: dict[str, list[str]] = {}
        for alias, v in (m.aliases or {}).items():
            by_version.setdefault(str(v), []).append(alias)
        found = sorted(client.search_model_versions(f"name = '{m.name}'"), key=lambda v: -int(v.version))[:versions]
        rows = []
        for v in found:
            t = v.tags or {}
            rows.append({"version": int(v.version), "aliases": ",".join(sorted(by_version.get(str(v.version), []))),
                         "registered": _dt.datetime.fromtimestamp(v.creation_timestamp / 1000).strftime("%Y-%m-%d %H:%M"),
                         "val": _float(t.get("card.val_best_score", t.get("best_val_score"))),
                         "test_f1": _float(t.get("card.test_f1")), "base_val": _float(t.get("card.baseline_val_f1",
                                                                                               t.get(BASELINE_METRIC))),
                         "decision": t.get("card.decision", ""), "run": (v.run_id or "")[:8]})
        out.append(ModelRow(m.name, (m.description or "").split("\n\n")[1] if m.description and "\n\n" in
                            m.description else "", rows))
    return out


def _float(x: Any) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None
