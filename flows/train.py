"""Train stage: dataset -> trained, registered model. Reuses the registered model when nothing that determines
it (dataset fingerprint, training options, seed) has changed, unless ``force``.

One writer at a time: the stage holds its ``data_dir`` lock and the MLflow store's lock from the reuse check to
the registration, so two trainings of one key register one version. A failure raises StageFailed (the flow run
ends Failed) with a one-line message: store unreachable, disk full, server lost during training."""
from __future__ import annotations

import time

from prefect import flow, get_run_logger

from tasks import tracking
from tasks.lib.config import TrainStage
from tasks.lib.errors import StageFailed, failed_summary, is_disk_full, disk_full_message
from tasks.lib.locks import data_dir_lock
from tasks.lib.results import StageResult
from tasks.guards import check_space_for_training, check_tracking_store, check_training_device
from tasks.train import (
    I3D_INIT, DatasetMissingError, PretrainMissingError, PretrainedUnavailable, link_pretraining, use_pretraining, WeightsIntegrityError, find_reusable_run, obtain_i3d_weights, fit_baseline, log_training, read_dataset_info, register_model, run_tags,
    summary_message,
    train_key, train_model, training_summary,
)


@flow(name="train", log_prints=True)
def train_flow(config: TrainStage, force: bool = False) -> StageResult:
    uri = tracking.resolve_tracking_uri(config.mlflow)
    check_tracking_store(uri)
    with data_dir_lock(config.data_dir, "train"), tracking.store_lock(uri):
        return _train(config, force, uri)


def _train(config: TrainStage, force: bool, uri: str) -> StageResult:
    logger = get_run_logger()
    try:
        info = read_dataset_info(config.dataset_dir)
    except DatasetMissingError as e:
        raise StageFailed(failed_summary("train", str(e)), user_error=True) from None
    try:
        config, pretrained = use_pretraining(config, info)  # train.init pretrain: the pretrain stage's encoder
    except PretrainMissingError as e:
        raise StageFailed(failed_summary("train", str(e)), user_error=True) from None
    key = train_key(config, info)
    res = None if force else find_reusable_run(config, key)
    if res:
        logger.info("unchanged dataset and options: reusing run %s (model v%s)", res["run_id"], res["registry"]["version"])
    else:
        check_space_for_training(config, info.image_size)
        check_training_device(config)
        if config.train.init == I3D_INIT:
            try:
                obtain_i3d_weights()
            except (PretrainedUnavailable, WeightsIntegrityError) as e:
                raise StageFailed(failed_summary("train", str(e))) from None
        try:
            res = _train_and_register(config, info, key, pretrained)
        except Exception as e:  # noqa: BLE001 - two known outages get one line each; anything else is a bug
            if tracking.is_store_down(e):
                raise StageFailed(failed_summary(
                    "train", f"MLflow at {uri} stopped answering ({type(e).__name__}); the training's checkpoints "
                             f"are kept in {config.data_dir / 'runs' / key}: re-run the train stage when the store is "
                             "back to register the model without training again")) from None
            if is_disk_full(e):
                raise StageFailed(failed_summary("train", disk_full_message(e, config.data_dir / "runs"))) from None
            raise
    counts = {f"{split}_clips": info.split_counts.get(split, 0) for split in ("train", "val", "test")}
    msg = summary_message(config, res)
    return StageResult(stage="train", counts=counts, outputs=[res["tracking_uri"]], message=msg, result=res)


def _train_and_register(config: TrainStage, info, key: str, pretrained: dict | None = None) -> dict:
    """One MLflow run around four tasks: the baseline, train (no retries), log, register (retried when the store is
    down; champion only above the baseline)."""
    uri = tracking.use_store(config.mlflow)
    started = time.time()
    with tracking.training_run(config.mlflow.experiment, f"{config.train.model}-{key[:6]}",
                               run_tags(config, info, key, pretrained)) as run_id:
        reference = fit_baseline(info)
        result = train_model(config, info, key, run_id)
        final, model_uri = log_training(config, info, key, result, started, reference)
        reg = register_model(config, model_uri, run_id, float(result.best_val_score), reference.get("baseline/val_f1"))
        if pretrained:
            link_pretraining(config, pretrained, reg)
    return training_summary(config, info, run_id, uri, final, reg, result)
