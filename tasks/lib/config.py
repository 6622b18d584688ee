"""One YAML config drives every stage; these Pydantic models validate it and are the flows' parameters.

Unknown keys are errors (``extra="forbid"``), so a typo such as ``frames.num_frame`` fails loudly instead of
silently running with the default.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from model.options import PRETRAIN_INIT, PRETRAINABLE_PRESETS, PretrainOptions, TrainOptions, own_pretraining
from .errors import UserError
from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
    model_validator,
)

DEFAULT_CLASSES = ["dribbling basketball", "dunking basketball"]
YOUTUBE_URL_TEMPLATE = "https://www.youtube.com/watch?v={youtube_id}"

# Official annotation CSVs (CVDF mirror used by the kinetics-dataset downloaders). ``annotations`` may name
# these by alias, e.g. ``annotations: [k400:train, k400:val]``.
KINETICS_ANNOTATIONS: dict[str, str] = {
    f"{ver}:{split}": f"https://s3.amazonaws.com/kinetics/{path}/annotations/{split}.csv"
    for ver, path in (("k400", "400"), ("k600", "600"), ("k700", "700_2020"))
    for split in ("train", "val", "test")
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DownloadConfig(_Strict):
    workers: int = Field(4, ge=1, le=64, description="clips downloaded at once")
    retries: int = Field(3, ge=0, le=20, description="extra attempts for transient errors (network, timeout, 5xx)")
    retry_backoff: float = Field(2.0, ge=0, description="seconds before the first retry; doubles each time")
    timeout: float = Field(30.0, gt=0, description="socket timeout in seconds")
    cookies: Path | None = Field(None, description="Netscape cookies.txt for YouTube's bot checks")
    cookies_from_browser: str | None = Field(None, description="e.g. 'firefox' (yt-dlp --cookies-from-browser)")
    max_height: int = Field(360, ge=64, le=4320, description="best format no taller than this")
    allow_file_urls: bool = Field(False, description="allow file:// sources (offline demo, tests)")
    rate_limit: str | None = Field(None, description="yt-dlp rate limit such as '2M' (bytes/s)")
    sleep_interval: float = Field(0.0, ge=0, description="seconds to sleep before each download (rate limits)")
    format: str | None = Field(None, description="override the yt-dlp format selector")

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, v: str | None) -> str | None:
        if v is None:
            return v
        import re

        if not re.fullmatch(r"\d+(\.\d+)?[KMG]?", v.strip(), re.I):
            raise ValueError(f"rate_limit {v!r} must look like 500K, 2M or 1.5M")
        return v.strip()


class SplitFractions(_Strict):
    train: float = Field(0.7, ge=0, le=1, description="fraction of each class for training (random mode)")
    val: float = Field(0.15, ge=0, le=1, description="fraction for validation (model selection, early stopping)")
    test: float = Field(0.15, ge=0, le=1, description="fraction held out for the final evaluation")

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            if len(v) != 3:
                raise ValueError("frames.split needs three fractions: train, val, test")
            return {"train": v[0], "val": v[1], "test": v[2]}
        return v

    @model_validator(mode="after")
    def _sum(self) -> "SplitFractions":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"frames.split fractions must sum to 1, got {total:.4f}")
        if self.train <= 0:
            raise ValueError("frames.split.train must be > 0")
        return self


class FramesConfig(_Strict):
    num_frames: int = Field(32, ge=1, le=512, description="frames stored per clip: centre of each of N equal segments "
                            "(training draws its views from them)")
    size: int = Field(64, ge=16, le=1024, description="square side: short-side resize, then centre crop")
    split: SplitFractions = Field(default_factory=SplitFractions, description="train/val/test fractions (random mode)")
    split_mode: Literal["random", "official"] = Field(
        "random", description="random: stratified by class, seeded; official: the CSV's own split column"
    )
    workers: int = Field(2, ge=1, le=64, description="clips sampled at once")
    # Not a sampling parameter (the .npy files do not depend on it); `drop` changes the manifest's rows and splits,
    # and so the dataset fingerprint, exactly when it drops or moves a clip.
    leakage: Literal["report", "drop"] = Field(
        "report", description="clips in different splits that are the same footage (reports/leakage.csv): "
        "report: only report them; drop: keep each in train only (its val/test copies leave the dataset)"
    )


class ClusterConfig(_Strict):
    """Where the per-clip work of download, filter and frames runs. ``threads``: one Prefect task run per clip on
    this process's thread pool (about 20 ms of Prefect overhead per task). ``dask``: one task run per *shard* of
    ``shard_size`` clips on a ``dask.distributed`` cluster, because a Prefect task run per clip (10-30 ms on a
    warm worker thread, and the server recording each) would rival per-clip work; ``auto`` sizes shards from the
    clips to do and the cluster's threads (:func:`tasks.lib.cluster.shard_size_for`). Results, reports and
    fingerprints are the same either way."""

    engine: Literal["threads", "dask"] = Field("threads", description="threads: this process; dask: a Dask cluster")
    address: str | None = Field(None, description="an existing dask.distributed scheduler (tcp://host:8786); "
                                "null: a LocalCluster of `workers` processes on this machine")
    workers: int = Field(2, ge=1, le=1024, description="LocalCluster worker processes (one thread each)")
    shard_size: Annotated[int, Field(ge=1, le=100_000)] | Literal["auto"] = Field(
        "auto", description="clips per Dask task; auto: about 2 shards per worker thread, 5 to 500 clips each")


class FilterConfig(_Strict):
    workers: int = Field(2, ge=1, le=64, description="clips checked at once (a full decode each, one thread per clip)")


class MlflowConfig(_Strict):
    tracking_uri: str | None = Field(
        None, description="null: $MLFLOW_TRACKING_URI, else an embedded SQLite store under the work dir"
    )
    experiment: str = Field("vivit-kinetics", description="MLflow experiment name")
    model_name: str = Field("vivit-kinetics", description="registered model name (aliases challenger/champion)")


def _one_or_many(v: Any) -> Any:
    return [v] if isinstance(v, (str, Path)) else v


def _resolve_aliases(v: list[str]) -> list[str]:
    if not v:
        raise ValueError("annotations needs at least one CSV path or URL")
    return [KINETICS_ANNOTATIONS.get(str(a), str(a)) for a in v]


def _check_classes(v: list[str]) -> list[str]:
    v = [c.strip() for c in v]
    if len(v) < 2:
        raise ValueError("classes needs at least two class names")
    if len(set(v)) != len(v):
        raise ValueError(f"classes has duplicates: {v}")
    return v


def _check_splits(v: list[str] | None) -> list[str] | None:
    if v is None:
        return v
    out = [normalise_split(s) for s in v]
    bad = [s for s in out if s not in {"train", "val", "test"}]
    if bad:
        raise ValueError(f"unknown splits {bad}; use train, val (or validate), test")
    return out


def _check_template(v: str) -> str:
    if "{youtube_id}" not in v:
        raise ValueError("url_template must contain '{youtube_id}'")
    # ``file://data/x/{youtube_id}.mp4`` (no third slash) means a path relative to the working directory,
    # which yt-dlp cannot take: make it absolute here, once, where the cwd is the user's.
    if v.startswith("file://") and not v.startswith("file:///"):
        v = "file://" + str(Path.cwd() / v[len("file://"):])
    return v


# -- every top-level key, defined once: PipelineConfig has them all, each stage's config the ones it uses -----------
DataDir = Annotated[Path, Field(Path("data"), description="everything the stages write lives under here")]
Annotations = Annotated[list[str], BeforeValidator(_one_or_many), AfterValidator(_resolve_aliases), Field(
    default_factory=lambda: [KINETICS_ANNOTATIONS["k400:train"], KINETICS_ANNOTATIONS["k400:val"]],
    description="Kinetics CSV paths or URLs, or aliases such as k400:train, k700:val")]
Classes = Annotated[list[str], AfterValidator(_check_classes),
                    Field(default_factory=lambda: list(DEFAULT_CLASSES), description="Kinetics label names")]
Splits = Annotated[list[str] | None, AfterValidator(_check_splits),
                   Field(None, description="CSV splits to take (train/val/test); null = all")]
MaxPerClass = Annotated[int | None, Field(None, ge=1, description="cap per class (first rows of the CSVs)")]
UrlTemplate = Annotated[str, AfterValidator(_check_template),
                        Field(YOUTUBE_URL_TEMPLATE, description="where a youtube_id is fetched from")]
Seed = Annotated[int, Field(0, description="splits, initialisation, shuffling, augmentation")]
Download = Annotated[DownloadConfig, Field(default_factory=DownloadConfig)]
Filter = Annotated[FilterConfig, Field(default_factory=FilterConfig)]
Frames = Annotated[FramesConfig, Field(default_factory=FramesConfig)]
Train = Annotated[TrainOptions, Field(default_factory=TrainOptions)]
Pretrain = Annotated[PretrainOptions, Field(default_factory=PretrainOptions)]
Mlflow = Annotated[MlflowConfig, Field(default_factory=MlflowConfig)]
Cluster = Annotated[ClusterConfig, Field(default_factory=ClusterConfig)]


class _Locations:
    """Derived locations: every stage reads and writes under ``data_dir`` only."""

    data_dir: Path

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @property
    def dataset_dir(self) -> Path:
        return self.data_dir / "dataset"


class PipelineConfig(_Locations, _Strict):
    """The whole YAML file: what ``vivit run`` and the pipeline flow take. Each stage flow takes only its part
    (:meth:`stage`)."""

    data_dir: DataDir
    annotations: Annotations
    classes: Classes
    splits: Splits
    max_per_class: MaxPerClass
    url_template: UrlTemplate
    seed: Seed
    download: Download
    filter: Filter
    frames: Frames
    pretrain: Pretrain
    train: Train
    mlflow: Mlflow
    cluster: Cluster

    @model_validator(mode="after")
    def _views_fit_the_frames(self) -> "PipelineConfig":
        check_pretrainable(self.train, self.pretrain)
        if self.train.init and not own_pretraining(self.train.init):
            follow_the_checkpoint(self)
        try:
            self.train.view.check_stored(self.frames.num_frames)
        except ValueError as e:
            raise ValueError(f"frames.num_frames / train.view_frames: {e}") from None
        return self

    def stage(self, name: str) -> "StageConfig":
        """The sections stage ``name`` uses, sharing this config's values."""
        try:
            # the checkpoint was followed when this config was validated: the stage need not read it again
            return STAGE_CONFIGS[name].model_validate(self, context={"checkpoint_followed": True})
        except KeyError:
            raise ValueError(f"unknown stage {name!r}; stages are {list(STAGE_CONFIGS)}") from None


class StageConfig(_Locations, _Strict):
    """One stage's parameters: only the top-level keys it uses (the Prefect form of its deployment shows just
    those). A whole :class:`PipelineConfig` is accepted too, and narrowed to them."""

    data_dir: DataDir

    @model_validator(mode="before")
    @classmethod
    def _narrow(cls, v: Any) -> Any:
        if isinstance(v, PipelineConfig):
            return {k: getattr(v, k) for k in cls.model_fields}
        return v


class DownloadStage(StageConfig):
    annotations: Annotations
    classes: Classes
    splits: Splits
    max_per_class: MaxPerClass
    url_template: UrlTemplate
    download: Download
    cluster: Cluster


class FilterStage(StageConfig):
    classes: Classes
    filter: Filter
    cluster: Cluster


class FramesStage(StageConfig):
    classes: Classes
    seed: Seed
    frames: Frames
    cluster: Cluster


class PretrainStage(StageConfig):
    seed: Seed
    train: Train
    pretrain: Pretrain
    mlflow: Mlflow

    @model_validator(mode="after")
    def _pretrainable(self) -> "PretrainStage":
        check_pretrainable(self.train, self.pretrain, running=True)
        return self


class TrainStage(StageConfig):
    seed: Seed
    train: Train
    pretrain: Pretrain  # train.init pretrain (or pretrain.enabled) finds the pretrain stage's output by its options
    mlflow: Mlflow

    @model_validator(mode="after")
    def _view_follows_the_checkpoint(self, info: ValidationInfo) -> "TrainStage":
        check_pretrainable(self.train, self.pretrain)
        # run alone (a deployment's form), the view still follows the checkpoint, or agrees with it
        if self.train.init and not own_pretraining(self.train.init) and not (info.context or {}).get("checkpoint_followed"):
            from model.pretrained import checkpoint_input

            _train_follows(self.train, checkpoint_input(self.train.init))
        return self


STAGE_CONFIGS: dict[str, type[StageConfig]] = {
    "download": DownloadStage, "filter": FilterStage, "frames": FramesStage, "pretrain": PretrainStage,
    "train": TrainStage,
}


def check_pretrainable(train: TrainOptions, pretrain: PretrainOptions, *, running: bool = False) -> None:
    """Pretraining (``pretrain.enabled``, ``train.init: pretrain`` or the stage run by name) needs a
    factorised-encoder preset."""
    if (running or pretrain.enabled or train.init == PRETRAIN_INIT) and train.model not in PRETRAINABLE_PRESETS:
        raise ValueError(f"the pretrain stage pretrains the factorised-encoder presets {list(PRETRAINABLE_PRESETS)}, "
                         f"not train.model {train.model!r}")


def follow_the_checkpoint(cfg: PipelineConfig) -> None:
    """With ``train.init`` the checkpoint decides the data: ``frames.num_frames``, ``train.view_frames`` and
    ``frames.size`` the user left out take the checkpoint's frames and size, so the frames stage stores what the
    network was trained to see. Values the user did set must agree (an image ViT takes any size: its position grid
    is interpolated; more stored frames than a view's are fine: training draws its views from them). Only config
    files are read; a hub id fetches just those (``model.pretrained.checkpoint_input``)."""
    from model.pretrained import checkpoint_input

    src = checkpoint_input(cfg.train.init)
    what = _trained_on(cfg.train.init, src)
    given_frames = cfg.frames.model_fields_set
    if src.frames is not None:
        _train_follows(cfg.train, src)
        if "num_frames" in given_frames and cfg.frames.num_frames < src.frames:
            raise ValueError(f"{what} {src.frames} frames per clip, but frames.num_frames is {cfg.frames.num_frames}: "
                             f"store at least {src.frames} or leave it out (it then follows the checkpoint)")
        if "num_frames" not in given_frames:
            cfg.frames.num_frames = src.frames
    if "size" not in given_frames:
        cfg.frames.size = src.size
    elif src.size_fixed and cfg.frames.size != src.size:
        raise ValueError(f"{what} {src.size}x{src.size} frames, but frames.size is {cfg.frames.size}: set it to "
                         f"{src.size} or leave it out (it then follows the checkpoint)")


def _trained_on(init: str, src: Any) -> str:
    return f"checkpoint {init} ({src.kind}) was trained on"


def _train_follows(train: TrainOptions, src: Any) -> None:
    """``train.view_frames``: the checkpoint's frames per clip unless the user set it (then it must agree)."""
    if src.frames is None:
        return
    if "view_frames" in train.model_fields_set and train.view_frames != src.frames:
        raise ValueError(f"{_trained_on(train.init, src)} {src.frames} frames per clip, but train.view_frames is "
                         f"{train.view_frames}: "
                         f"set it to {src.frames} or leave it out (it then follows the checkpoint)")
    train.view_frames = src.frames


def normalise_split(s: str) -> str:
    """Kinetics 600/700 say ``validate``, 400 says ``val``; we use ``val`` everywhere."""
    s = str(s).strip().lower()
    return {"validate": "val", "validation": "val"}.get(s, s)


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be used, with a message that names the key."""


def _parse_value(text: str) -> Any:
    """``--set`` values are YAML scalars/lists: ``8``, ``true``, ``[a, b]``, ``null``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a raw config dict (before validation)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, _, raw = item.partition("=")
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set has an empty key in {item!r}")
        node = data
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = _parse_value(raw)
    return data


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read YAML, apply ``--set`` overrides, validate. Relative ``data_dir``/``annotations``/``cookies`` are
    taken relative to the current directory (where the user runs ``vivit``), as a shell user expects."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of keys, got {type(loaded).__name__}")
        data = loaded
    data = apply_overrides(data, overrides)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; see docs/config.md)"
            lines.append(f"  {loc}: {msg}")
        where = f" in {path}" if path else ""
        if len(lines) == 1:  # the usual case: one line naming the key and the fix
            raise ConfigError(f"invalid config{where}: {lines[0].strip()}") from None
        raise ConfigError(f"invalid config{where}:\n" + "\n".join(lines)) from None
