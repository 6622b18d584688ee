"""Pretrain stage: the stored dataset's train and val clips (and ``pretrain.extra_clips``) -> a pretrained encoder
in ``<data_dir>/pretrain/<key>/`` that the train stage starts from (``train.init: pretrain``, or ``pretrain.enabled``).

Skipped when the encoder for the same dataset, clips, options and seed is already there, unless ``force``; a killed
run resumes from its ``last.pt``. One MLflow run per pretraining (loss curve, the masked / reconstruction / target
figure, params, dataset fingerprint). Holds the data_dir and MLflow store locks like the train stage."""
from __future__ import annotations

from prefect import flow, get_run_logger

from tasks import tracking
from tasks.guards import check_tracking_store
from tasks.lib.config import PretrainStage
from tasks.lib.errors import StageFailed, disk_full_message, failed_summary, is_disk_full
from tasks.lib.locks import data_dir_lock
from tasks.lib.pretraining import finished, output_dir
from tasks.lib.results import StageResult
from tasks.pretrain import (
    decide_pretrain_input, gather_clips, log_pretraining, pretrain_encoder, read_output, run_tags, stage_key,
    summary_message,
)
from tasks.train import DatasetMissingError, read_dataset_info


@flow(name="pretrain", log_prints=True)
def pretrain_flow(config: PretrainStage, force: bool = False) -> StageResult:
    uri = tracking.resolve_tracking_uri(config.mlflow)
    check_tracking_store(uri)
    with data_dir_lock(config.data_dir, "pretrain"), tracking.store_lock(uri):
        return _pretrain(config, force)


def _pretrain(config: PretrainStage, force: bool) -> StageResult:
    try:
        info = read_dataset_info(config.dataset_dir)
    except DatasetMissingError as e:
        raise StageFailed(failed_summary("pretrain", str(e))) from None
    key = stage_key(config, info)
    folder = output_dir(config.data_dir, key)
    reused = finished(folder) and not force
    if reused:
        get_run_logger().info("unchanged dataset and options: reusing the encoder in %s", folder)
    else:
        try:
            form, why = decide_pretrain_input(config, info)
            clips, notes = gather_clips(config, info)
        except ValueError as e:  # an extra_clips folder that is missing or empty
            raise StageFailed(failed_summary("pretrain", str(e)), user_error=True) from None
        tracking.use_store(config.mlflow)
        try:
            with tracking.training_run(config.mlflow.experiment, f"pretrain-{key[:6]}",
                                       run_tags(config, info, key)) as run_id:
                result = pretrain_encoder(config, info, key, form, why, clips, notes, run_id, force)
                log_pretraining(config, key, result, run_id)
        except OSError as e:
            if is_disk_full(e):
                raise StageFailed(failed_summary("pretrain", disk_full_message(e, folder))) from None
            raise
    meta = read_output(folder)
    counts = {"clips": int(meta.get("clips", 0)), "epochs": int(meta.get("epochs", 0))}
    return StageResult(stage="pretrain", counts=counts, outputs=[str(folder)],
                       message=summary_message(meta, reused, folder),
                       result={"folder": str(folder), "key": key, "run_id": meta.get("run_id"), "reused": reused,
                               "input": meta.get("input")})
