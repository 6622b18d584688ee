"""Training options: one Pydantic model that is both the ``train:`` section of the pipeline's YAML config (and so
the Prefect parameter form) and what :func:`model.training.fit` takes. Defined once, here, because ``model/`` must
stand alone (MLflow ships it as the logged model's code) while ``tasks/`` may import it.

Defaults are the recipe measured on real clips (docs/quality.md): the conv-stem factorised encoder, its input
(frames or frame differences) chosen per run on the run's own validation split, random temporal views in training
and two averaged views at evaluation, model selection on a smoothed validation score.
"""
from __future__ import annotations

import difflib
import hashlib
import json
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from model.views import ViewSpec

# The presets' names and the one a run trains when the config names none (their networks: model/presets.py, which
# checks it builds exactly these). Here, not there, so that validating a config needs no torch: the data stages and
# their Dask workers import the config (tasks/lib/config.py -> TrainOptions) and never build a network; importing
# torch cost each worker 1.3 s.
PRESET_NAMES = ("frame-mlp", "vivit-fe-tiny", "vivit-fe-conv-tiny", "vivit-fe-small", "vivit-joint-tiny",
                "vivit-fsa-tiny")
DEFAULT_PRESET = "vivit-fe-conv-tiny"

# ``train.input: auto``'s candidates, in the order they train.
AUTO_INPUTS = ("diff", "rgb")

# Options that change how a run executes but not what it computes: they may differ when resuming, and they are not
# part of the training key.
# ``processes`` and ``precision`` are execution choices like ``device``: DDP keeps the global batch and the sample
# order of one process, and bf16 autocast (what CUDA training has always used) only changes rounding.
EXECUTION_ONLY = frozenset({"resume", "num_workers", "device", "compile", "processes", "precision"})


def stable_hash(payload: Any, length: int = 16) -> str:
    """sha256 of canonical JSON: the one fingerprint helper (cache keys, training keys, dataset fingerprints)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:length]


def batch_share(batch_size: int, processes: int, who: str) -> int:
    """Each process's share of the global batch (``batch_size`` stays the global batch, so a run means the same on
    any number of processes); ValueError when it does not split evenly. ``who`` names the processes for the
    message: the setting, or the nodes x processes of a multi-node run."""
    if batch_size % processes:
        raise ValueError(f"train.batch_size={batch_size} must be a multiple of {who} (it is the global batch, split "
                         "evenly across the processes)")
    return batch_size // processes


def own_pretraining(init: Any) -> bool:
    """``train.init`` names the pretrain stage's encoder, pretrained on this dataset in the train stage's own input
    form (RGB or differences), not an RGB checkpoint."""
    return init == PRETRAIN_INIT or is_pretrain_output(init)


class TrainOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = Field(DEFAULT_PRESET, description="preset name (`vivit presets` lists them)")
    # auto, not a constant: on validation, differences won on fixed surveillance cameras and frames on film footage
    # (docs/quality.md), so the footage decides, through the run's own validation split.
    input: Literal["auto", "rgb", "diff"] = Field(
        "auto", description="network input per position: the frame, its difference to the next stored frame, "
        "or auto (train rgb and diff for train.input_probe of the epochs, continue the one with the better smoothed "
        "val macro F1)"
    )
    input_probe: float = Field(0.2, gt=0, le=1, description="auto: the fraction of train.epochs both candidate "
                               "inputs train before one is chosen")
    view_frames: int = Field(16, ge=1, description="positions per view (the network's T); <= frames.num_frames "
                             "(- 1 for diff)")
    test_views: int = Field(2, ge=1, le=16, description="views averaged at evaluation and prediction")
    epochs: int = Field(80, ge=1, description="maximum epochs (early stopping may end sooner)")
    batch_size: int = Field(32, ge=1, description="clips per optimiser step")
    lr: float = Field(5e-4, gt=0, description="AdamW peak learning rate (cosine decay after warm-up)")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay")
    warmup_epochs: float = Field(2.0, ge=0, description="linear warm-up length in epochs")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="cross-entropy label smoothing")
    grad_clip: float | None = Field(1.0, gt=0, description="max gradient norm; null disables")
    class_balance: Literal["weighted_loss", "none"] = Field(
        "weighted_loss", description="class-imbalance handling: inverse-frequency loss weights, or none"
    )
    augment: bool = Field(True, description="random resized crop + flip, identical for every frame of a clip")
    crop_scale: float = Field(0.8, gt=0, le=1, description="smallest area fraction of the random resized crop")
    selection: Literal["best_val", "final"] = Field(
        "best_val", description="kept weights: best_val (the epoch with the best smoothed val macro F1, with "
        "min_epochs and patience) or final (the end of the cosine schedule; val only reports)")
    selection_smoothing: float = Field(
        0.8, ge=0, lt=1, description="EMA factor of the val macro F1: the selection score (best_val) and the "
        "champion score (both)")
    # 0: no floor. A floor of 40 (chosen on surv_fight's test split) scored lower on validation (docs/quality.md)
    # and kept a 49-clip set from its best epochs.
    min_epochs: int = Field(0, ge=0, description="best_val: epochs before a checkpoint can be selected or training "
                            "stop early (0: none)")
    patience: int | None = Field(20, ge=1, description="best_val: early stopping on the smoothed val score; null "
                                 "disables")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1 ...")
    compile: bool = Field(False, description="torch.compile the network")
    processes: int = Field(1, ge=1, le=256, description="DistributedDataParallel processes on this machine "
                           "(torchrun; gloo on CPU, nccl on CUDA); batch_size stays the global batch")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="autocast: auto = bf16 on CUDA, fp32 on CPU; fp32; bf16")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    resume: bool = Field(True, description="continue from the last checkpoint of an identical interrupted run")
    single_frame: bool = Field(False, description="ablation: feed only the middle position of each view")
    init: str | None = Field(None, description="pretrained start: a checkpoint folder or a Hugging Face hub id "
                             "(VideoMAE, ViViT -> joint model, image ViT -> factorised encoder), or i3d-kinetics400 "
                             "(Kinetics I3D from the package registry, frozen, under a new encoder); frames, size and "
                             "mean/std follow it; pretrain: the pretrain stage's encoder (docs/pretrain.md); null: "
                             "from scratch, or pretrain when pretrain.enabled")
    init_inflation: Literal["central", "filter"] = Field(
        "central", description="image ViT patch embedding into tubelets: central frame or filter (averaged) inflation")
    freeze: Literal["none", "backbone"] | int = Field(
        "none", description="keep weights fixed: none, backbone (linear probe: only the head learns) or the first N blocks")

    @field_validator("freeze")
    @classmethod
    def _freeze(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 0:
            raise ValueError("train.freeze must be none, backbone or a number of blocks >= 0")
        return v

    @field_validator("model")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        if v not in PRESET_NAMES:
            close = difflib.get_close_matches(v, list(PRESET_NAMES), n=3, cutoff=0.3)
            hint = f"did you mean {close}? " if close else ""
            raise ValueError(f"unknown preset {v!r}: {hint}presets are {sorted(PRESET_NAMES)} (vivit presets lists them)")
        return v

    @model_validator(mode="before")
    @classmethod
    def _pretrained_defaults_to_rgb(cls, data: Any) -> Any:
        """Checkpoints were trained on RGB frames: with ``init`` and no explicit input (or ``auto``), the input is RGB."""
        if (isinstance(data, dict) and data.get("init") and data.get("input", "auto") == "auto"
                and not own_pretraining(data.get("init"))):
            return {**data, "input": "rgb"}
        return data

    @model_validator(mode="after")
    def _pretrained_sees_rgb(self) -> "TrainOptions":
        if self.init and self.input != "rgb" and not own_pretraining(self.init):
            raise ValueError(f"a pretrained start (train.init) was trained on RGB frames, not on '{self.input}': "
                             "set train.input: rgb (and train.view_frames / frames.size to the checkpoint's)")
        return self

    @model_validator(mode="after")
    def _batch_splits_across_processes(self) -> "TrainOptions":
        batch_share(self.batch_size, self.processes, f"train.processes={self.processes}")
        return self

    @property
    def inputs(self) -> tuple[str, ...]:
        """The inputs a run trains: ``auto``'s candidates, or the one asked for."""
        return AUTO_INPUTS if self.input == "auto" else (self.input,)

    @property
    def probe_epochs(self) -> int:
        """``auto``: epochs each candidate trains before the choice (a share of the schedule, so it scales with it)."""
        return max(1, round(self.input_probe * self.epochs))

    @property
    def view(self) -> ViewSpec:
        """The view the network sees; for ``auto``, the differences' one, whose stored-frame needs are the
        stricter of the two candidates' (the trained model carries its chosen view)."""
        from model.views import ViewSpec  # torch, like the presets

        return ViewSpec(num_frames=self.view_frames, input="diff" if self.input == "auto" else self.input,
                        test_views=self.test_views)

    def determining(self) -> dict[str, Any]:
        """The options that decide what training computes (everything but :data:`EXECUTION_ONLY`; ``input_probe``
        only where there is a choice)."""
        unused = {"input_probe"} if self.input != "auto" else set()
        return self.model_dump(mode="json", exclude=set(EXECUTION_ONLY) | unused)


# -- the pretrain stage (model/pretrain.py) ------------------------------------------------------------------------
# ``train.init: pretrain``: start from the encoder the pretrain stage wrote for this dataset and these options.
PRETRAIN_INIT = "pretrain"
# What the pretrain stage writes in its output folder: the encoder's weights (torch, weights only) and a JSON
# description of them (read without torch: what the encoder sees, on what it was pretrained).
PRETRAIN_ENCODER = "encoder.pt"
PRETRAIN_META = "pretrain.json"
# Options of the pretrain stage that change how it runs, not what it computes.
PRETRAIN_EXECUTION_ONLY = frozenset({"enabled", "resume", "device", "precision", "num_workers", "figure_clips"})


# The presets the pretrain stage can pretrain: the factorised encoders (model/pretrain.py drives model 2's parts).
PRETRAINABLE_PRESETS = ("vivit-fe-conv-tiny", "vivit-fe-tiny", "vivit-fe-small")


def is_pretrain_output(init: str | None) -> bool:
    """True when ``init`` names a folder the pretrain stage wrote (its :data:`PRETRAIN_META` is there)."""
    if not init or init == PRETRAIN_INIT:
        return False
    from pathlib import Path

    return (Path(init).expanduser() / PRETRAIN_META).is_file()


class PretrainOptions(BaseModel):
    """The config's ``pretrain:`` section: masked video modelling of the train preset's encoder on the user's own
    clips (docs/pretrain.md). The network, its view (``train.view_frames``, ``train.input``) and
    the augmentation (``train.augment``, ``train.crop_scale``) are the train stage's, so that the pretrained encoder
    is exactly the one training starts from."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = Field(False, description="vivit run runs the pretrain stage before train, and train starts from "
                          "its encoder (train.init pretrain); vivit pretrain runs it regardless")
    mask_ratio: float = Field(0.9, gt=0, lt=1, description="fraction of the spatial patches hidden, the same ones in "
                              "every frame of a clip (tube masking)")
    epochs: int = Field(20, ge=1, description="passes over the pretraining clips (about 10 CPU minutes on surv_fight's 184 train+val clips, docs/pretrain.md)")
    batch_size: int = Field(16, ge=1, description="clips per optimiser step")
    lr: float = Field(1e-3, gt=0, description="AdamW peak learning rate (cosine decay after warm-up)")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay")
    warmup_epochs: float = Field(5.0, ge=0, description="linear warm-up length in epochs")
    decoder_dim: int = Field(64, ge=8, description="width of the light decoder (dropped after pretraining)")
    decoder_depth: int = Field(1, ge=1, le=8, description="transformer blocks of the decoder")
    splits: list[Literal["train", "val"]] = Field(
        default_factory=lambda: ["train", "val"],
        description="dataset splits whose clips are pretrained on (labels ignored); never test")
    extra_clips: list[str] = Field(
        default_factory=list, description="more unlabelled clips: folders of videos (sampled like the frames stage) "
        "or of another stored dataset (its dataset/ folder)")
    figure_clips: int = Field(4, ge=0, le=16, description="clips shown in the masked / reconstruction / target figure")
    resume: bool = Field(True, description="continue from last.pt of an identical interrupted run")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1 ...")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="autocast: auto = bf16 on CUDA, fp32 on CPU; fp32; bf16")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")

    @field_validator("splits")
    @classmethod
    def _some_split(cls, v: list[str]) -> list[str]:
        return sorted(set(v), key=v.index)

    def determining(self) -> dict[str, Any]:
        """The options that decide what pretraining computes."""
        return self.model_dump(mode="json", exclude=set(PRETRAIN_EXECUTION_ONLY))
