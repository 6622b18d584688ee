"""Batch prediction as a flow (and a deployment): videos, folders, globs or list files in, one result per video
out (per-window results too for long videos), optionally written to a .jsonl/.csv file."""
from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from tasks.predict import classify_task, load_model


@flow(name="predict")
def predict_flow(videos: list[str], model_uri: str | None = None, tracking_uri: str | None = None,
                 top_k: int | None = None, window: float | None = None, stride: float | None = None,
                 batch_size: int = 8, output: str | None = None) -> list[dict]:
    classifier = load_model(model_uri, tracking_uri)
    options = {"top_k": top_k, "window": window, "stride": stride, "batch_size": batch_size}
    results = classify_task(classifier, videos, options, output)
    create_table_artifact(
        [{"path": r["path"], "label": r.get("label", ""), "error": r.get("error", ""),
          "p_max": max(r["probabilities"].values()) if "probabilities" in r else None,
          "segments": len(r.get("segments", []))} for r in results[:1000]],
        key="predictions",
        description=f"{len(results)} videos with {model_uri or 'the champion'}" + (f", written to {output}" if output else ""),
    )
    return results
