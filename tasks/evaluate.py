"""``vivit evaluate``: a registered model on a new labelled set of local videos.

The clips are sampled and classified exactly as ``vivit predict`` does (:func:`tasks.lib.predicting.stream_predictions`,
the model's own sampling parameters and views), scored with :func:`model.metrics.classification_report` (accuracy
with a Wilson interval, macro F1 with a bootstrap interval, per class, the confusion matrix), and logged as an
evaluation run of that model version (:func:`tasks.tracking.evaluations.log_evaluation`). A video that cannot be read
is listed and left out of the scores, as the filter stage would have left it out of a dataset.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks import tracking
from tasks.lib.config import MlflowConfig
from tasks.lib.labelled import check_labels, labelled_digest, read_labelled
from tasks.lib.errors import UserError
from tasks.lib.predicting import Item, stream_predictions


@dataclass
class Evaluation:
    model_uri: str
    name: str | None
    version: int | None
    source: str
    classes: list[str]
    report: dict[str, Any]
    misclassified: list[dict[str, Any]]
    unreadable: list[dict[str, str]] = field(default_factory=list)
    run_id: str | None = None
    tracking_uri: str = ""


def _predictions_csv(rows: list[dict[str, Any]], classes: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, ["path", "label", "predicted", "correct", *(f"p_{c}" for c in classes), "error"],
                       extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def evaluate(model_uri: str, annotations: str | Path, *, tracking_uri: str, batch_size: int = 8, log: bool = True,
             experiment: str = "vivit-evaluations", data_dir: str | Path | None = None, split: str | None = None,
             on_progress=None) -> Evaluation:
    """Classify every labelled clip with ``model_uri``, score, and (``log``) record it as an evaluation run. A
    Kinetics CSV names the clips the download stage stored under ``data_dir`` (``split``: one split's rows).
    User errors (no such file, unknown model, labels the model does not know, no readable video) raise
    :class:`UserError` before or instead of any logging."""
    clips = read_labelled(annotations, data_dir=data_dir, split=split)  # said before the model loads
    tracking.require_existing_store(tracking_uri)
    tracking.use_store(MlflowConfig(tracking_uri=tracking_uri))
    ref = tracking.resolve_model(model_uri)
    classifier = tracking.load_classifier(model_uri, tracking_uri)
    classes = list(classifier.classes)
    check_labels(clips, classes, annotations)
    index = {c: i for i, c in enumerate(classes)}

    rows, unreadable, y_true, probs = [], [], [], []
    for n, (clip, r) in enumerate(zip(clips, stream_predictions(classifier, [Item(c.path) for c in clips],
                                                                batch_size=batch_size)), start=1):
        if "error" in r:
            unreadable.append({"path": clip.path, "label": clip.label, "error": r["error"]})
            rows.append({"path": clip.path, "label": clip.label, "error": r["error"]})
        else:
            p = [r["probabilities"][c] for c in classes]
            y_true.append(index[clip.label])
            probs.append(p)
            rows.append({"path": clip.path, "label": clip.label, "predicted": r["label"],
                         "correct": r["label"] == clip.label, **{f"p_{c}": x for c, x in zip(classes, p)}})
        if on_progress:
            on_progress(n, len(clips))
    if not probs:
        raise UserError(f"none of the {len(clips)} videos of {annotations} could be read (first: "
                        f"{unreadable[0]['path']}: {unreadable[0]['error']})")
    from model.metrics import classification_report

    report = classification_report(np.asarray(y_true), np.asarray(probs), classes)
    wrong = sorted((r for r in rows if r.get("correct") is False), key=lambda r: -r[f"p_{r['predicted']}"])
    misclassified = [{"path": r["path"], "label": r["label"], "predicted": r["predicted"],
                      "confidence": round(float(r[f"p_{r['predicted']}"]), 4)} for r in wrong]
    result = Evaluation(model_uri, ref.name, ref.version, str(annotations), classes, report, misclassified,
                        unreadable, tracking_uri=tracking_uri)
    if log:
        from tasks.lib import plots
        import tempfile

        with tempfile.TemporaryDirectory(prefix="vivit-eval-") as tmp:
            png = plots.confusion_matrix(report["confusion_matrix"], classes, Path(tmp) / "confusion_matrix.png",
                                         title=f"confusion matrix: {Path(str(annotations)).name}")
            result.run_id = tracking.log_evaluation(ref, report, source=str(Path(annotations).resolve()),
                                           digest=labelled_digest(clips), classes=classes,
                                           predictions_csv=_predictions_csv(rows, classes),
                                           misclassified=misclassified, confusion_png=png, failed=len(unreadable),
                                           fallback_experiment=experiment)
    return result
