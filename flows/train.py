"""Train stage: dataset -> trained, registered model. Reuses the registered model when nothing that determines
it (dataset fingerprint, training options, seed) has changed, unless ``force``."""
from __future__ import annotations

from prefect import flow, get_run_logger

from tasks import tracking
from tasks.core.config import PipelineConfig
from tasks.train import DatasetMissingError, find_reusable_run, read_dataset_info, train_and_register, train_key


@flow(name="train", log_prints=True)
def train_flow(config: PipelineConfig, force: bool = False) -> dict:
    logger = get_run_logger()
    try:
        info = read_dataset_info(config.dataset_dir)
    except DatasetMissingError as e:
        return {"stage": "train", "counts": {}, "outputs": [], "failed": True, "message": str(e)}
    key = train_key(config, info)
    reused = None if force else find_reusable_run(config, key)
    if reused:
        logger.info("unchanged dataset and options: reusing run %s (model v%s)", reused["run_id"], reused["version"])
        res = {"run_id": reused["run_id"], "metrics": reused["metrics"], "reused": True,
               "registry": {"name": config.mlflow.model_name, "version": reused["version"], "decision": "reused",
                            "aliases": tracking.aliases(config.mlflow.model_name)},
               "tracking_uri": tracking.resolve_tracking_uri(config.mlflow)}
    else:
        res = train_and_register(config, info, key)
        res["registry"]["aliases"] = tracking.aliases(config.mlflow.model_name)
    m = res["metrics"]
    counts = {k: v for k, v in {"train_clips": info["split_counts"].get("train", 0),
                                "val_clips": info["split_counts"].get("val", 0),
                                "test_clips": info["split_counts"].get("test", 0)}.items()}
    msg = (f"{'reused' if res['reused'] else 'trained'} {config.train.model}: "
           + ", ".join(f"{k}={m[k]:.3f}" for k in ("best_val_f1", "test_accuracy", "test_f1") if k in m)
           + f"; {res['registry']['name']} v{res['registry']['version']} aliases={res['registry']['aliases']}")
    return {"stage": "train", "counts": counts, "outputs": [res["tracking_uri"]], "failed": False, "message": msg,
            "result": res}
