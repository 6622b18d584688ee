"""Batch prediction as a flow (and a deployment): videos in, one result per video out."""
from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from tasks.predict import classify_task, load_model


@flow(name="predict")
def predict_flow(videos: list[str], model_uri: str = "models:/vivit-kinetics@champion", tracking_uri: str | None = None) -> list[dict]:
    classifier = load_model(model_uri, tracking_uri)
    results = classify_task(classifier, videos)
    create_table_artifact(
        [{"path": r["path"], "label": r.get("label", ""), "error": r.get("error", ""),
          "p_max": max(r["probabilities"].values()) if "probabilities" in r else None} for r in results],
        key="predictions",
        description=f"{len(results)} videos with {model_uri}",
    )
    return results
