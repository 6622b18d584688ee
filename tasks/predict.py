"""Classify new videos with a registered model, sampling frames exactly as training did: the sampling
parameters (frame count, size) travel with the logged model, never from the caller. The logic is in
:mod:`tasks.lib.predicting` (which the served video model runs too); this module wraps it in Prefect tasks."""
from __future__ import annotations

from typing import Any

from prefect import task

from tasks.lib.predicting import stream_predictions


@task(name="load-model", retries=2, retry_delay_seconds=2)
def load_model(model_uri: str | None, tracking_uri: str | None) -> Any:
    """``model_uri=None``: the one registered model with a champion (as ``vivit predict`` without ``--model``)."""
    from tasks import tracking
    from tasks.lib.config import MlflowConfig

    cfg = MlflowConfig(tracking_uri=tracking_uri)
    uri = tracking.use_store(cfg)
    return tracking.load_classifier(model_uri or tracking.default_model_uri(cfg.model_name, explicit=False), uri)


@task(name="classify-videos")
def classify_task(classifier: Any, videos: list[str], options: dict[str, Any], output: str | None = None) -> list[dict[str, Any]]:
    """Streams into ``output`` (``.jsonl``/``.csv``) as results arrive, with a progress artifact in the UI."""
    from prefect import get_run_logger
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    from tasks.lib.predicting import ResultWriter, expand_inputs

    items = list(expand_inputs(videos))
    logger = get_run_logger()
    artifact = create_progress_artifact(0.0, key="predict-progress", description="videos classified")
    writer = ResultWriter(output, classifier.classes, options.get("top_k")) if output else None
    results: list[dict[str, Any]] = []
    try:
        for res in stream_predictions(classifier, items, **options):
            results.append(res)
            if writer:
                writer.write(res)
            update_progress_artifact(artifact, 100.0 * len(results) / max(1, len(items)))
            logger.info("%d/%d %s: %s", len(results), len(items), res["path"], res.get("label") or res.get("error"))
    finally:
        if writer:
            writer.close()
    return results
