"""Train stage: dataset -> trained, registered model. Reuses the registered model when nothing that determines
it (dataset fingerprint, training options, seed) has changed, unless ``force``."""
from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.core.config import PipelineConfig
from tasks.train import (
    DatasetMissingError, find_reusable_run, read_dataset_info, summary_message, train_and_register, train_key,
)


@flow(name="train", log_prints=True)
def train_flow(config: PipelineConfig, force: bool = False) -> dict:
    logger = get_run_logger()
    try:
        info = read_dataset_info(config.dataset_dir)
    except DatasetMissingError as e:
        return {"stage": "train", "counts": {}, "outputs": [], "failed": True, "message": str(e)}
    key = train_key(config, info)
    res = None if force else find_reusable_run(config, key)
    if res:
        logger.info("unchanged dataset and options: reusing run %s (model v%s)", res["run_id"], res["registry"]["version"])
    else:
        res = train_and_register(config, info, key)
    counts = {f"{split}_clips": info["split_counts"].get(split, 0) for split in ("train", "val", "test")}
    msg = summary_message(config, res)
    return {"stage": "train", "counts": counts, "outputs": [res["tracking_uri"]], "failed": False, "message": msg,
            "result": res}
