"""The model card: what a registered version is, how good, on what data, and how to call it.

Written onto every registered version (its MLflow description, in Markdown, and ``card.*`` tags a search can use)
and onto the registered model (its description: what the model is, the champion rule, how to call it, which version
holds which alias). Everything comes from the store itself: the training run's params, metrics and tags (what the
train stage logs, ``tasks/train.py``) and the logged model's metadata, so a version registered again after a crash,
or reused, gets the same card. What a run did not record (a run without a test split, a hand-registered model) is
said to be missing, never invented.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

# The registry's names, passed in by :func:`tasks.tracking.registry.promote` (which imports this module): the
# metric names are the logged ones (tasks/tracking/runs.py metric_name of best_val_score, baseline/val_f1).
SCORE_METRIC, BASELINE_METRIC, BASELINE_TEST_METRIC = "val/best_score", "baseline/val_f1", "baseline/test_f1"

# MLflow's SQL store keeps at most 5000 characters of a description.
DESCRIPTION_LIMIT = 5000

# (label in the card, metric, interval metrics' stem): the scores a card reports, val first, then test.
SCORES = (
    ("val smoothed macro F1 (champion score)", SCORE_METRIC, None),
    ("val macro F1", "val/best_f1", "val/best_f1_ci"),
    ("val accuracy", "val/best_accuracy", "val/best_accuracy_ci"),
    ("test macro F1", "test/f1", "test/f1_ci"),
    ("test accuracy", "test/accuracy", "test/accuracy_ci"),
)


@dataclass
class Card:
    """One version's card: ``text`` (Markdown, the version's description) and ``tags`` (``card.*``)."""

    name: str
    version: int
    text: str
    tags: dict[str, str] = field(default_factory=dict)


def _param_json(params: dict[str, str], key: str) -> Any:
    try:
        return json.loads(params[key])
    except (KeyError, ValueError):
        return None


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _interval(metrics: dict[str, float], stem: str | None) -> str:
    if not stem or f"{stem}_low" not in metrics or f"{stem}_high" not in metrics:
        return ""
    return f"[{metrics[f'{stem}_low']:.3f}, {metrics[f'{stem}_high']:.3f}]"


def _model_metadata(client: MlflowClient, name: str, version: int) -> dict[str, Any]:
    """The logged model's metadata (classes, num_frames, image_size, view, preset), {} when unreadable."""
    try:
        source = client.get_model_version(name, str(version)).source
        return dict(mlflow.models.get_model_info(source).metadata or {})
    except (MlflowException, OSError, ValueError):
        return {}


def frames_name(name: str, video_suffix: str) -> str:
    """The frames model's name for either registered model (``NAME`` or ``NAME-video``)."""
    return name[: -len(video_suffix)] if name.endswith(video_suffix) else name


def how_to_call(name: str, version: int | str, tracking_uri: str, video_suffix: str, num_frames: Any = "F",
                size: Any = "S") -> str:
    """The three ways in (CLI, Python, REST), for version ``version`` of model ``name`` (frames) and its video
    twin, as Markdown."""
    base = frames_name(name, video_suffix)
    sep = "" if str(version).startswith("@") else "/"
    frames_uri, video_uri = f"models:/{base}{sep}{version}", f"models:/{base}{video_suffix}{sep}{version}"
    return "\n".join([
        "```bash",
        f"vivit predict clip.mp4 videos/ --model {frames_uri} --tracking-uri {tracking_uri}",
        f"vivit evaluate {frames_uri} --annotations labelled.csv --tracking-uri {tracking_uri}",
        "```",
        "```python",
        "import mlflow.pyfunc",
        f"mlflow.set_tracking_uri({tracking_uri!r})",
        f"mlflow.pyfunc.load_model({frames_uri!r}).predict(frames)  "
        f"# uint8 (B, {num_frames}, {size}, {size}, 3) -> one probability column per class",
        f"mlflow.pyfunc.load_model({video_uri!r}).predict(pandas.DataFrame({{'content': [open('clip.mp4', 'rb').read()]}}))",
        "```",
        "```bash",
        f"source .venv/bin/activate && export MLFLOW_TRACKING_URI={tracking_uri}",
        f"mlflow models serve -m {video_uri} --env-manager local --host 127.0.0.1 --port 5001 &",
        "curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\",
        "  -d \"{\\\"dataframe_split\\\": {\\\"columns\\\": [\\\"content\\\"], \\\"data\\\": [[\\\"$(base64 -w0 clip.mp4)\\\"]]}}\"",
        "```",
    ])


def build_card(name: str, version: int, run_id: str | None, *, rule: str, video_suffix: str,
               tracking_uri: str | None = None) -> Card:
    """The card of version ``version`` of registered model ``name`` (frames or video model), from its run."""
    client = MlflowClient()
    run = client.get_run(run_id) if run_id else None
    params = dict(run.data.params) if run else {}
    metrics = dict(run.data.metrics) if run else {}
    tags = dict(run.data.tags) if run else {}
    meta = _model_metadata(client, name, version)
    uri = tracking_uri or mlflow.get_tracking_uri()

    classes = _param_json(params, "classes") or meta.get("classes") or []
    num_frames = params.get("sampling.num_frames") or meta.get("num_frames")
    size = params.get("sampling.size") or meta.get("image_size")
    view = meta.get("view") or {}
    preset = params.get("preset") or meta.get("preset") or "n/a"
    fingerprint = params.get("dataset_fingerprint") or tags.get("dataset.fingerprint") or "n/a"
    splits = {s: params[f"split_counts.{s}"] for s in ("train", "val", "test") if f"split_counts.{s}" in params}
    input_used = params.get("input_chosen") or view.get("input") or params.get("view.input") or "n/a"
    if params.get("train.input") == "auto" and params.get("input_chosen"):
        input_used = f"{input_used} (chosen by train.input auto on validation)"
    init = params.get("train.init") or "none (from scratch)"
    if init in ("None", ""):
        init = "none (from scratch)"
    decision = tags.get("registry.decision", "n/a")
    reason = tags.get("registry.reason", "")
    base_val, base_test = metrics.get(BASELINE_METRIC), metrics.get(BASELINE_TEST_METRIC)
    kind = "video files in (`content`, or `path` under VIVIT_SERVE_ROOT)" if name.endswith(video_suffix) else "uint8 frames in"

    lines = [f"# {name} v{version}", "",
             f"Video classifier, {kind}; {len(classes)} classes: {', '.join(f'`{c}`' for c in classes) or 'n/a'}.",
             f"Training run `{run_id or 'n/a'}`; registry decision **{decision}**" + (f": {reason}" if reason else "."),
             "", "## Data", "",
             f"Dataset fingerprint `{fingerprint}`; clips per split: "
             + (", ".join(f"{s} {n}" for s, n in splits.items()) or "n/a") + ".",
             f"Frames: {num_frames or 'n/a'} per clip at {size or 'n/a'}x{size or 'n/a'} (uniform segment centres, "
             "short side resized and centre-cropped), exactly as `vivit predict` and the served models sample them.",
             "", "## Recipe", "",
             f"Preset `{preset}`, input `{input_used}`, init `{init}`"
             + (f", {view.get('num_frames')} positions per view, {view.get('test_views')} test views" if view else "")
             + (f", RGB mean {view.get('mean')} std {view.get('std')}" if view.get("mean") else "") + ".",
             "Options: " + (", ".join(f"{k.split('.', 1)[1]}={params[k]}" for k in (
                 "train.epochs", "train.batch_size", "train.lr", "train.selection", "train.selection_smoothing",
                 "train.augment", "train.class_balance") if k in params) or "n/a")
             + (f", seed={params['seed']}" if "seed" in params else "") + ".",
             "", "## Scores (95% intervals: Wilson for accuracy, bootstrap for macro F1)", "",
             "| score | value | 95% interval | baseline |", "|---|---:|---|---:|"]
    for label, metric, stem in SCORES:
        value = metrics.get(metric)
        ref = base_val if metric in (SCORE_METRIC, "val/best_f1") else base_test if metric == "test/f1" else None
        if value is None and ref is None:
            continue
        lines.append(f"| {label} | {_fmt(value)} | {_interval(metrics, stem)} | {_fmt(ref) if ref is not None else ''} |")
    lines += ["", "The baseline is the logistic regression on the mean frame and motion energy that every training "
              "fits on the same splits.", "", "## Champion rule", "", rule, "", "## How to call it", "",
              how_to_call(name, version, uri, video_suffix, num_frames or "F", size or "S")]
    text = "\n".join(lines)
    if len(text) > DESCRIPTION_LIMIT:
        text = text[: DESCRIPTION_LIMIT - 20] + "\n\n(card truncated)"

    card_tags = {
        "card.classes": json.dumps(classes),
        "card.dataset_fingerprint": str(fingerprint),
        **{f"card.clips_{s}": str(n) for s, n in splits.items()},
        "card.preset": str(preset),
        "card.input": str(input_used).split(" ")[0],
        "card.init": str(init),
        "card.frames": f"{num_frames}x{size}" if num_frames else "n/a",
        "card.decision": decision,
    }
    for label, metric, stem in SCORES:
        if metric in metrics:
            card_tags[f"card.{metric.replace('/', '_')}"] = f"{metrics[metric]:.4f}"
            if _interval(metrics, stem):
                card_tags[f"card.{metric.replace('/', '_')}_ci"] = _interval(metrics, stem)
    if base_val is not None:
        card_tags["card.baseline_val_f1"] = f"{base_val:.4f}"
    if base_test is not None:
        card_tags["card.baseline_test_f1"] = f"{base_test:.4f}"
    return Card(name, int(version), text, card_tags)


def model_description(name: str, *, rule: str, video_suffix: str, champion: str,
                      tracking_uri: str | None = None) -> str:
    """The registered model's description: what it is, where each alias points, the champion rule, how to call."""
    client = MlflowClient()
    aliases = client.get_registered_model(name).aliases or {}
    latest = max((int(v.version) for v in client.search_model_versions(f"name = '{name}'")), default=None)
    kind = ("video files in (a `content` column of file bytes; server paths only under VIVIT_SERVE_ROOT)"
            if name.endswith(video_suffix) else "uint8 clips (B, F, S, S, 3) in")
    where = ", ".join(f"`@{a}` = v{v}" for a, v in sorted(aliases.items())) or "no alias yet"
    version = f"@{champion}" if champion in aliases else (latest or 1)
    text = "\n".join([
        f"# {name}", "",
        f"Video classifier trained by the vivit pipeline: {kind}, one probability per class out. Latest version "
        f"v{latest}; {where}. Each version's description is its model card (classes, data, recipe, scores with "
        "95% intervals beside the baseline's).", "", "## Champion rule", "", rule, "", "## How to call it", "",
        how_to_call(name, version, tracking_uri or mlflow.get_tracking_uri(), video_suffix),
    ])
    return text[:DESCRIPTION_LIMIT]


def write_card(name: str, version: int, run_id: str | None, *, rule: str, video_suffix: str, champion: str) -> Card:
    """Build and write the card of ``name`` v``version``, and refresh the registered model's description."""
    client = MlflowClient()
    card = build_card(name, version, run_id, rule=rule, video_suffix=video_suffix)
    client.update_model_version(name, str(version), description=card.text)
    for k, v in card.tags.items():
        client.set_model_version_tag(name, str(version), k, v[:5000])
    client.update_registered_model(name, description=model_description(
        name, rule=rule, video_suffix=video_suffix, champion=champion))
    return card
