"""Everything MLflow but what a served model runs (:mod:`tasks.serving`, the other package that imports ``mlflow``).

The training loop knows nothing of tracking; it reports through a callback, and :class:`MlflowReporter` is the
callback the train stage plugs in. Models are pyfunc models from code (:mod:`tasks.serving`, which carries what
they run) with the ``model/`` package among their ``code_paths``: MLflow 3's default ``torch.export`` format froze
the batch size to 1 and wrote tens of MB of example JSON in a trial here, while these load for any batch size from
any working directory.

One module per responsibility: :mod:`.store` (where the store is, its lock and health, experiments), :mod:`.runs`
(metric names, the epoch callback, what a run logs), :mod:`.models` (logging and loading the pyfunc models),
:mod:`.registry` (versions, aliases, promotion, reuse of a finished run), :mod:`.card` (the model card on every
registered version), :mod:`.catalog` (reading the store for ``vivit runs`` / ``models``, resolving a model URI) and
:mod:`.evaluations` (``vivit evaluate``'s run). Callers use the names re-exported here.
"""
from __future__ import annotations

import os

import prefect  # noqa: F401  -- import before mlflow.pytorch, which otherwise spoils Prefect's log handlers

# MLflow's HTTP defaults (7 retries, doubling back-off, 120 s timeout) turned a dead tracking server into 246 s of
# silence and an MLflow server killed mid-training into a 499 s hang. These bound one request to ~30 s at worst;
# set the variables yourself for a slower link.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

from tasks.serving import REQUIREMENTS  # noqa: E402
from tasks.serving.pyfunc import ClassifierPyfunc, VideoPyfunc, classifier_signature, video_signature  # noqa: E402
from tasks.tracking.catalog import EVALUATION_TAG, ModelRef, recent_runs, registered_models, resolve_model  # noqa: E402
from tasks.tracking.evaluations import log_evaluation  # noqa: E402
from tasks.tracking.models import load_classifier, log_classifier, pyfunc_probabilities  # noqa: E402
from tasks.tracking.registry import (  # noqa: E402
    BASELINE_METRIC,
    CHALLENGER,
    CHAMPION,
    CHAMPION_RULE,
    SELECTION_METRIC,
    VIDEO_SUFFIX,
    Registration,
    aliases,
    default_model_uri,
    find_reusable_run,
    promote,
    register_and_promote,
    run_score,
    write_cards,
)
from tasks.tracking.runs import (  # noqa: E402
    OWNER_TAGS,
    MlflowReporter,
    code_version_tags,
    flatten,
    internal_metric_name,
    log_artifacts,
    log_config,
    log_dataset,
    log_dict,
    log_metrics,
    log_params,
    metric_name,
    owner_tags,
    reap_dead_runs,
    training_run,
)
from tasks.tracking.store import (  # noqa: E402
    DEFAULT_STORE,
    check_store,
    ensure_experiment,
    experiment_id,
    experiment_url,
    is_store_down,
    require_existing_store,
    resolve_tracking_uri,
    sqlite_path,
    store_lock,
    use_store,
)

__all__ = [
    "REQUIREMENTS", "ClassifierPyfunc", "VideoPyfunc", "classifier_signature", "load_classifier", "log_classifier",
    "pyfunc_probabilities", "EVALUATION_TAG", "ModelRef", "recent_runs", "registered_models", "resolve_model",
    "log_evaluation",
    "video_signature", "BASELINE_METRIC", "CHALLENGER", "CHAMPION", "CHAMPION_RULE", "SELECTION_METRIC", "VIDEO_SUFFIX", "Registration", "aliases",
    "default_model_uri", "find_reusable_run", "promote", "register_and_promote", "run_score", "write_cards", "OWNER_TAGS",
    "MlflowReporter", "code_version_tags", "flatten", "internal_metric_name", "log_artifacts", "log_config",
    "log_dataset", "log_dict", "log_metrics", "log_params", "metric_name", "owner_tags", "reap_dead_runs",
    "training_run", "DEFAULT_STORE", "check_store", "ensure_experiment", "experiment_id", "experiment_url",
    "is_store_down", "require_existing_store", "resolve_tracking_uri", "sqlite_path", "store_lock", "use_store",
]
