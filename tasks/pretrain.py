"""Prefect tasks of the pretrain stage: masked video modelling of the train preset's encoder on the dataset's train
and val clips (and ``pretrain.extra_clips``), in an MLflow run of its own; the train stage then starts from the
encoder (``train.init: pretrain``). What is pretrained and how: ``model/pretrain.py``; which clips, which input form
and the output's key: ``tasks/lib/pretraining.py``; docs/pretrain.md."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, runtime, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from model.atomic import atomic_write_text
from model.dataset import DatasetInfo
from model.options import PRETRAIN_META
from tasks import tracking
from tasks.lib import plots
from tasks.lib.config import PretrainStage
from tasks.lib.pretraining import decide_input, output_dir, pretrain_clips, pretrain_key

RUN_FILE = "run.json"  # the MLflow run that pretrained the folder's encoder (the train run links to it)


def stage_key(config: PretrainStage, info: DatasetInfo) -> str:
    return pretrain_key(info, config.train, config.pretrain, config.seed)


def read_output(folder: Path) -> dict[str, Any]:
    """``pretrain.json`` with the MLflow run that wrote it (``run_id``, None when it is not known)."""
    meta = json.loads((Path(folder) / PRETRAIN_META).read_text())
    run = Path(folder) / RUN_FILE
    meta["run_id"] = json.loads(run.read_text()).get("run_id") if run.is_file() else None
    return meta


def pretrained_on(meta: dict[str, Any]) -> str:
    """One line for the registry and the train run: what the encoder was pretrained on, and how."""
    extra = f" + {meta['extra_clips']}" if meta.get("extra_clips") else ""
    return (f"{meta.get('clips')} clips ({'+'.join(meta.get('splits') or [])} of dataset "
            f"{meta.get('dataset_fingerprint')}{extra}); masked {meta.get('input')} modelling, mask ratio "
            f"{meta.get('mask_ratio')}, {meta.get('epochs')} epochs, key {meta.get('key')}")


@task(name="decide-pretrain-input", cache_policy=NO_CACHE)
def decide_pretrain_input(config: PretrainStage, info: DatasetInfo) -> tuple[str, dict[str, Any]]:
    """The input form (rgb / diff) to pretrain and then train on, decided on train and val only."""
    form, why = decide_input(info, config.train)
    get_run_logger().info("pretraining on %s input (%s%s)", form, why["why"],
                          f": {why['val_f1']}" if "val_f1" in why else "")
    return form, why


@task(name="gather-pretrain-clips", cache_policy=NO_CACHE)
def gather_clips(config: PretrainStage, info: DatasetInfo) -> tuple[list[Path], list[str]]:
    clips, notes = pretrain_clips(info, config.pretrain, config.data_dir)
    get_run_logger().info("pretraining on %d clips: %s", len(clips), "; ".join(notes))
    return clips, notes


class _Progress:
    """Per epoch: the MLflow curve (``pretrain/loss``, ``optim/lr``, ``time/epoch_seconds``), a progress artifact
    and one log line."""

    def __init__(self, run_id: str, epochs: int) -> None:
        self.reporter = tracking.MlflowReporter(run_id)
        self.epochs = epochs
        self.logger = get_run_logger()
        self.artifact = create_progress_artifact(0.0, key="pretrain-progress", description="pretraining epochs done")

    @staticmethod
    def renamed(metrics: dict[str, float]) -> dict[str, float]:
        return {("pretrain/loss" if k == "loss" else k): v for k, v in metrics.items()}

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.reporter.on_epoch_end(epoch, self.renamed(metrics))
        update_progress_artifact(self.artifact, 100.0 * epoch / self.epochs)
        self.logger.info("pretrain epoch %d/%d loss=%.4f", epoch, self.epochs, metrics["loss"])

    def backfill(self, history: list[dict[str, float]]) -> None:
        self.reporter.backfill([self.renamed(h) for h in history])


@task(name="pretrain-encoder", cache_policy=NO_CACHE)
def pretrain_encoder(config: PretrainStage, info: DatasetInfo, key: str, form: str, why: dict[str, Any],
                     clips: list[Path], notes: list[str], run_id: str, force: bool) -> Any:
    """Log the inputs, then pretrain (resuming an interrupted identical run unless ``force``). No retries."""
    from model.pretrain import pretrain

    train = config.train.model_copy(update={"input": form})
    opts = config.pretrain.model_copy(update={"resume": config.pretrain.resume and not force})
    about = {"key": key, "dataset_fingerprint": info.fingerprint, "splits": list(opts.splits),
             "extra_clips": list(opts.extra_clips), "clip_notes": notes, "input_decision": why, "seed": config.seed}
    tracking.log_params({"pretrain": opts.determining(), "preset": train.model, "input": form,
                         "view_frames": train.view_frames, "seed": config.seed, "clips": len(clips),
                         "dataset_fingerprint": info.fingerprint, "pretrain_key": key})
    tracking.log_dict({"input_decision": why, "clips": notes}, "pretrain/inputs.json")
    tracking.log_dataset(info, "kinetics-frames")
    progress = _Progress(run_id, opts.epochs)
    result = pretrain(clips, train, opts, num_frames=info.num_frames, image_size=info.image_size,
                      work_dir=output_dir(config.data_dir, key), seed=config.seed, fingerprint=key, about=about,
                      callback=progress)
    progress.backfill(result.history)  # epochs trained before a resume
    return result


@task(name="log-pretraining", cache_policy=NO_CACHE)
def log_pretraining(config: PretrainStage, key: str, result: Any, run_id: str) -> dict[str, Any]:
    """Final metrics, the loss curve and the masked / reconstruction / target figure, ``pretrain.json``; then
    ``run.json`` beside the encoder, so the train run can link to this one."""
    folder = output_dir(config.data_dir, key)
    final = {"pretrain/final_loss": result.history[-1]["loss"], "pretrain/cpu_minutes": result.cpu_seconds / 60,
             "pretrain/resumed_from_epoch": result.resumed_from_epoch}
    tracking.log_metrics(final)
    figures = [plots.pretrain_loss(result.history, folder / "report" / "pretrain_loss.png")]
    if result.examples:
        figures.append(plots.reconstructions(result.examples, folder / "report" / "reconstructions.png"))
    tracking.log_artifacts(figures, "plots")
    tracking.log_dict(result.meta, f"pretrain/{PRETRAIN_META}")
    atomic_write_text(folder / RUN_FILE, json.dumps({"run_id": run_id, "key": key}))
    return final


def run_tags(config: PretrainStage, info: DatasetInfo, key: str) -> dict[str, str]:
    return {"pretrain_key": key, "stage": "pretrain", "preset": config.train.model,
            "dataset.fingerprint": str(info.fingerprint),
            "prefect.flow_run_id": str(runtime.flow_run.id or ""),
            "prefect.flow_run_name": str(runtime.flow_run.name or "")}


def summary_message(meta: dict[str, Any], reused: bool, folder: Path) -> str:
    loss = meta.get("final_loss")
    return (f"{'reused' if reused else 'pretrained'} {meta.get('preset')} on {meta.get('clips')} clips: masked "
            f"{meta.get('input')} modelling, {meta.get('epochs')} epochs, final loss "
            f"{loss if loss is None else round(loss, 4)}, {meta.get('cpu_seconds', 0) / 60:.1f} CPU min; "
            f"encoder {folder}")
