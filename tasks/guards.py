"""Checks a stage makes before it starts, so that what would fail half-way with an opaque message (a full disk,
an unreachable MLflow server) fails at once, in one line that names the thing and the fix. Each raises
:class:`~tasks.lib.errors.StageFailed`, so the flow run ends Failed with that line as its message."""
from __future__ import annotations

from tasks.lib.config import FramesStage, TrainStage
from tasks.lib.errors import DiskFullError, ServiceUnavailable, StageFailed, UserError, check_free_space, failed_summary


def check_space_for_frames(config: FramesStage, clips_todo: int) -> None:
    """Each sampled clip is a ``(T, S, S, 3)`` uint8 array (the frames stage crashed with ``786432 requested and
    688000 written`` on a full disk and wrote no manifest)."""
    per_clip = config.frames.num_frames * config.frames.size ** 2 * 3 + 4096
    try:
        check_free_space(config.dataset_dir, clips_todo * per_clip + 1_000_000)
    except DiskFullError as e:
        raise StageFailed(failed_summary("frames", f"{e}: free some space or move data_dir")) from None


def checkpoint_bytes(params: int) -> int:
    """``last.pt`` and ``best.pt``: weights, AdamW's two moments and the temporary copy of an atomic save."""
    return params * 4 * 5 + 5_000_000


def check_space_for_training(config: TrainStage, image_size: int) -> None:
    """Room for the checkpoints of the network ``train.model`` builds for clips of ``image_size``."""
    from tasks.lib.costs import view_cost  # torch: only the train stage builds networks

    params = view_cost(config.train, image_size).get("params")
    if not params:
        return
    try:
        check_free_space(config.data_dir / "runs", checkpoint_bytes(params))
    except DiskFullError as e:
        raise StageFailed(failed_summary("train", f"{e}: free some space or move data_dir")) from None


def check_training_device(config: TrainStage) -> None:
    """A device this machine lacks (``train.device: cuda`` without CUDA), or more CUDA processes than GPUs, is a
    setting to change: refused before the MLflow run opens and the ranks start, not as an error from inside them."""
    import torch

    from model.distributed import check_gpus
    from model.training import resolve_device

    try:
        device = resolve_device(config.train.device)
        check_gpus(config.train.processes, device, torch.cuda.device_count())
    except (RuntimeError, ValueError) as e:
        raise StageFailed(failed_summary("train", str(e)), user_error=True) from None


def check_tracking_store(uri: str) -> None:
    from tasks import tracking

    try:
        tracking.check_store(uri)
    except UserError as e:
        raise StageFailed(failed_summary("train", str(e)), user_error=True) from None
    except ServiceUnavailable as e:
        raise StageFailed(failed_summary("train", str(e))) from None


# what each stage reads, and the command that makes it: (path under data_dir, or None for the CSV, the maker)
_INPUT_MAKERS = {"filter": "download", "frames": "filter", "pretrain": "frames", "train": "frames"}


def missing_stage_input(stage: str, config) -> str | None:
    """The one line for a stage started without what the stage before it writes (``vivit train`` on a data_dir
    without a dataset), None when its input is there. Checked by the CLI before Prefect starts, so such a user
    error costs no server start and shows no traceback; what is *in* the input the stage still judges itself."""
    from pathlib import Path

    from model.dataset import MANIFEST_NAME, META_NAME

    data_dir = Path(config.data_dir)
    maker = _INPUT_MAKERS.get(stage)
    if stage == "download":
        local = [a for a in config.annotations if "://" not in str(a)]
        gone = [str(a) for a in local if not Path(a).is_file()]
        return f"annotations file not found: {', '.join(gone)} (the config's `annotations`)" if gone else None
    if stage == "filter":
        if (config.reports_dir / "download.csv").is_file() or config.raw_dir.is_dir():
            return None
        what = f"no {config.reports_dir / 'download.csv'} and no {config.raw_dir}/"
    elif stage == "frames":
        if (config.reports_dir / "filter.csv").is_file():
            return None
        what = f"no {config.reports_dir / 'filter.csv'}"
    elif stage in ("pretrain", "train"):
        if (config.dataset_dir / MANIFEST_NAME).is_file() and (config.dataset_dir / META_NAME).is_file():
            return None
        what = f"no dataset in {config.dataset_dir}"
    else:
        return None
    return (f"{what} (data_dir {data_dir}): run `vivit {maker}` with the same --config first, "
            f"or `vivit run` for the whole pipeline")
