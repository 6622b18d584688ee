"""Classify new videos with a registered model, sampling frames exactly as training did: the sampling
parameters (frame count, size) travel with the logged model, never from the caller."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from prefect import task

from tasks.core.sampling import SamplingError, sample_clip


def classify_videos(classifier: Any, paths: list[str], batch_size: int = 8) -> list[dict[str, Any]]:
    """One result per path, in order: ``{"path", "label", "probabilities"}`` (plus ``positive_class`` and
    ``p_positive`` for a binary model) or ``{"path", "error"}``.
    An unreadable video is a result, never an exception, so one bad file does not sink a batch."""
    import torch

    results: list[dict[str, Any] | None] = [None] * len(paths)
    ok: list[tuple[int, np.ndarray]] = []
    for i, p in enumerate(paths):
        if not Path(p).is_file():
            results[i] = {"path": p, "error": "file not found"}
            continue
        try:
            ok.append((i, sample_clip(p, classifier.num_frames, classifier.image_size)))
        except SamplingError as e:
            results[i] = {"path": p, "error": str(e)}
    for start in range(0, len(ok), batch_size):
        chunk = ok[start : start + batch_size]
        batch = torch.from_numpy(np.stack([f for _, f in chunk]))  # (B, T, H, W, 3) uint8
        with torch.inference_mode():
            probs = classifier(batch).float().cpu().numpy()
        for (i, _), pr in zip(chunk, probs):
            top = int(pr.argmax())
            results[i] = {
                "path": paths[i],
                "label": classifier.classes[top],
                "probabilities": {c: round(float(x), 6) for c, x in zip(classifier.classes, pr)},
            }
            if len(classifier.classes) == 2:  # binary: the positive class is the second, as in training
                results[i] |= {"positive_class": classifier.classes[1], "p_positive": round(float(pr[1]), 6)}
    return [r for r in results if r is not None]


@task(name="load-model", retries=2, retry_delay_seconds=2)
def load_model(model_uri: str, tracking_uri: str | None) -> Any:
    from tasks.tracking import load_classifier

    return load_classifier(model_uri, tracking_uri)


@task(name="classify-videos")
def classify_task(classifier: Any, paths: list[str]) -> list[dict[str, Any]]:
    return classify_videos(classifier, paths)
