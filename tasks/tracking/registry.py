"""The model registry: versions, the champion / challenger aliases, the promotion rule, reuse of a finished run."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks.tracking.card import write_card
from tasks.tracking.runs import internal_metric_name, metric_name, reap_dead_runs


CHAMPION, CHALLENGER = "champion", "challenger"


# The champion is decided on the smoothed validation score that selected the epoch (model/training.py TrainState),
# not on one epoch's raw val F1.
SELECTION_METRIC = "best_val_score"


@dataclass
class Registration:
    name: str
    version: int
    champion_version: int | None
    decision: str  # promoted | kept_incumbent | first_champion | below_baseline
    challenger_score: float
    incumbent_score: float | None
    baseline_score: float | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def register_and_promote(model_uri: str, name: str, run_id: str, score: float,
                         metric: str = SELECTION_METRIC, baseline: float | None = None) -> Registration:
    """New version + alias ``challenger``; ``champion`` moves only when the challenger's score is strictly higher
    than the baseline's validation F1 and than the incumbent's (ties keep the incumbent). The decision and the
    scores go onto the run. Idempotent per run: a retry after a lost connection promotes the version this run
    already has instead of registering a second one."""
    version = version_of_run(name, run_id) or int(mlflow.register_model(model_uri, name).version)
    return promote(name, version, run_id, score, metric, baseline=baseline)


def version_of_run(name: str, run_id: str) -> int | None:
    """The version of registered model ``name`` that run ``run_id`` created, if any."""
    found = MlflowClient().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return max((int(v.version) for v in found), default=None)


BASELINE_METRIC = "baseline/val_f1"  # the trivial reference's val macro F1 (tasks/lib/baseline.py), logged by the train stage

# The rule as :func:`promote` applies it, in words: the model card (:mod:`.card`) and the docs quote it.
CHAMPION_RULE = (
    "Every registered version gets the alias `challenger`. The alias `champion` moves to a version only when its "
    "smoothed validation macro F1 (`val/best_score`, the moving average that selected its epoch; the version tag "
    f"`{SELECTION_METRIC}`) is strictly above the baseline's validation macro F1 (`{BASELINE_METRIC}`, a logistic "
    "regression on the mean frame and motion energy fitted by the same training) and strictly above the current "
    "champion's smoothed score (a tie keeps the incumbent). The video model's aliases follow the frames model's."
)


def below_baseline(score: float, baseline: float | None) -> str:
    """Why a model may not be champion ("" when it may): the rule is stated here once, as the registry applies it.
    A model is champion only if its smoothed validation macro F1 (the score that selected its epoch) is strictly
    above the baseline's validation macro F1; a model that does not beat a logistic regression on the mean frame
    and motion energy has not learnt video."""
    if baseline is None or math.isnan(baseline):
        return ""
    if math.isnan(score) or score <= baseline:
        gap = baseline - score
        how = f"{gap:.3f} below" if gap > 0 else "only equal to"
        return (f"its smoothed val F1 {score:.3f} is {how} the baseline's {baseline:.3f} (logistic regression on mean "
                "frame + motion energy): registered as challenger only")
    return ""


def run_score(metrics: dict[str, float], metric: str = SELECTION_METRIC) -> float | None:
    """A run's champion score: ``metric`` under its grouped or flat name; for runs logged before selection was
    smoothed, their raw best val F1 (grouped or flat)."""
    return next((metrics[k] for k in (metric_name(metric), metric, "val/best_f1", "best_val_f1") if k in metrics), None)


def promote(name: str, version: int, run_id: str, score: float, metric: str = SELECTION_METRIC,
            baseline: float | None = None) -> Registration:
    """Aliases for a registered ``version``: ``challenger``, and ``champion`` when it beats the baseline and the
    incumbent."""
    client = MlflowClient()
    client.set_registered_model_alias(name, CHALLENGER, str(version))
    incumbent_score: float | None = None
    try:
        champ = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champ = None
    reason = below_baseline(score, baseline)
    if reason and (champ is None or int(champ.version) != version):
        decision, champion_version = "below_baseline", int(champ.version) if champ is not None else None
    elif champ is None:
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
    if baseline is not None:
        client.set_model_version_tag(name, str(version), BASELINE_METRIC, f"{baseline:.6f}")
    with_run = {"registry.version": version, "registry.decision": decision,
                "registry.champion_version": champion_version, **({"registry.reason": reason} if reason else {})}
    for k, v in with_run.items():
        client.set_tag(run_id, k, str(v))
    video_version = _register_video_model(run_id, f"{name}{VIDEO_SUFFIX}", promote=champion_version == version)
    client.log_metric(run_id, metric_name("challenger_score"), float(score))
    if incumbent_score is not None:
        client.log_metric(run_id, metric_name("incumbent_score"), float(incumbent_score))
    write_cards(name, version, run_id, video_version)
    return Registration(name, version, champion_version, decision, float(score), incumbent_score, baseline,
                        reason if decision == "below_baseline" else "")


def write_cards(name: str, version: int, run_id: str, video_version: int | None = None) -> None:
    """The model card (:mod:`.card`) on the version and on its video twin, and both registered models' descriptions,
    after the decision is on the run."""
    rule = {"rule": CHAMPION_RULE, "video_suffix": VIDEO_SUFFIX, "champion": CHAMPION}
    write_card(name, version, run_id, **rule)
    if video_version is not None:
        write_card(f"{name}{VIDEO_SUFFIX}", video_version, run_id, **rule)


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
    version = str(version_of_run(name, run_id) or mlflow.register_model(found[0].model_uri, name).version)
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
                promote(model_name, int(v.version), run.info.run_id, float("nan") if score is None else float(score),
                        baseline=run.data.metrics.get(BASELINE_METRIC))
            elif not v.description:  # registered before versions had a model card: it gets one now
                write_cards(model_name, int(v.version), run.info.run_id,
                            version_of_run(f"{model_name}{VIDEO_SUFFIX}", run.info.run_id))
            metrics = {internal_metric_name(k): m for k, m in run.data.metrics.items()}
            return {"run_id": run.info.run_id, "version": int(v.version), "metrics": metrics}
    return None


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
        waiting = sorted(m.name for m in client.search_registered_models()
                         if CHALLENGER in (m.aliases or {}) and not m.name.endswith(VIDEO_SUFFIX))
        if waiting:  # trained, but no version beat its baseline: say so, and how to use one all the same
            raise LookupError(f"no registered model has a {CHAMPION!r} alias in {mlflow.get_tracking_uri()}: "
                              f"{', '.join(waiting)} only has a {CHALLENGER!r}, which did not beat its baseline "
                              f"(the run's registry.reason says by how much); to use it anyway pass --model "
                              f"models:/{waiting[0]}@{CHALLENGER}")
        raise LookupError(f"no registered model has a {CHAMPION!r} alias in {mlflow.get_tracking_uri()}: "
                          "train one first (make run), or pass --model / --tracking-uri")
    raise LookupError(f"several registered models have a {CHAMPION!r} alias ({', '.join(named)}): "
                      "pass --model models:/NAME@champion or --config")

