"""Classify new videos with a registered model, sampling frames exactly as training did: the sampling
parameters (frame count, size) travel with the logged model, never from the caller. The logic is in
:mod:`tasks.lib.predicting`; this module adapts a loaded classifier to it and wraps it in Prefect tasks."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import numpy as np
from prefect import task

from tasks.lib.predicting import predict_stream


def classify_fn(classifier: Any) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 ``(B, T, S, S, 3)`` numpy -> probabilities ``(B, K)`` numpy, without autograd."""
    import torch

    def classify(frames: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return classifier(torch.from_numpy(np.ascontiguousarray(frames))).float().cpu().numpy()

    return classify


def stream_predictions(classifier: Any, inputs: Iterable[str], **options: Any) -> Iterator[dict[str, Any]]:
    """:func:`tasks.lib.predicting.predict_stream` with the classifier's own classes and sampling parameters."""
    return predict_stream(classify_fn(classifier), classifier.classes, inputs, num_frames=classifier.num_frames,
                          image_size=classifier.image_size, **options)


def classify_videos(classifier: Any, paths: list[str], batch_size: int = 8, **options: Any) -> list[dict[str, Any]]:
    """One result per video, in order: ``{"path", "label", "probabilities", ...}`` or ``{"path", "error"}``.
    An unreadable video is a result, never an exception, so one bad file does not sink a batch."""
    return list(stream_predictions(classifier, paths, batch_size=batch_size, **options))


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
