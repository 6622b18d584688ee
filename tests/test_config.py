from __future__ import annotations

from pathlib import Path

import pytest

from tasks.lib.config import KINETICS_ANNOTATIONS, STAGE_CONFIGS, ConfigError, PipelineConfig, StageConfig, load_config


def test_defaults_match_the_issue():
    cfg = load_config()
    assert cfg.classes == ["dribbling basketball", "dunking basketball"]
    assert cfg.url_template == "https://www.youtube.com/watch?v={youtube_id}"
    assert cfg.download.max_height == 360 and cfg.download.allow_file_urls is False
    assert cfg.frames.num_frames == 32 and cfg.frames.size == 64  # stored frames; a view takes 16 of them
    assert (cfg.train.model, cfg.train.input, cfg.train.view_frames) == ("vivit-fe-conv-tiny", "auto", 16)
    assert (cfg.frames.split.train, cfg.frames.split.val, cfg.frames.split.test) == (0.7, 0.15, 0.15)
    assert cfg.annotations == [KINETICS_ANNOTATIONS["k400:train"], KINETICS_ANNOTATIONS["k400:val"]]
    assert cfg.raw_dir == Path("data/raw") and cfg.dataset_dir == Path("data/dataset")


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data_dir: d\nannotations: k700:val\nclasses: [a, b, c]\nframes: {split: [0.8, 0.1, 0.1]}\n")
    cfg = load_config(p, ["download.workers=7", "frames.size=64", "splits=[train, validate]", "max_per_class=null"])
    assert cfg.annotations == [KINETICS_ANNOTATIONS["k700:val"]]
    assert cfg.download.workers == 7 and cfg.frames.size == 64
    assert cfg.splits == ["train", "val"]
    assert cfg.frames.split.train == pytest.approx(0.8)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["frames.num_frame=3"], "frames.num_frame: unknown key"),
        (["download.workers=0"], "download.workers"),
        (["classes=[only-one]"], "at least two"),
        (["frames.split=[0.5, 0.2, 0.2]"], "sum to 1"),
        (["url_template=https://x/{id}"], "{youtube_id}"),
        (["splits=[training]"], "unknown splits"),
        (["download.rate_limit=fast"], "rate_limit"),
        (["nokey"], "key=value"),
        (["train.diff_gap=1"], "train.diff_gap: unknown key"),  # removed (docs/config.md, "Removed keys")
        (["train.class_balance=sampler"], "train.class_balance"),
        (["train.input=rgb_diff"], "train.input"),
    ],
)
def test_bad_config_is_a_clear_error(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert needle in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_relative_file_template_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = PipelineConfig(url_template="file://src/{youtube_id}.mp4")
    assert cfg.url_template == f"file://{tmp_path}/src/{{youtube_id}}.mp4"
    assert PipelineConfig(url_template="file:///abs/{youtube_id}.mp4").url_template == "file:///abs/{youtube_id}.mp4"


def test_config_round_trips_as_flow_parameters():
    """Deployments pass the config as JSON: it must survive a dump/validate round trip unchanged."""
    cfg = load_config(None, ["train.epochs=3", "download.cookies=/tmp/c.txt"])
    again = PipelineConfig.model_validate(cfg.model_dump(mode="json"))
    assert again == cfg


def _leaf_keys(model, prefix=""):
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _leaf_keys(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def test_every_config_key_is_documented_in_the_readme_and_the_ui_form():
    """The config reference (docs/config.md) and the Prefect form (field descriptions) cover every key there is."""
    readme = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    keys = dict(_leaf_keys(PipelineConfig))
    assert len(keys) > 30
    assert [k for k in keys if f"| `{k}` |" not in readme] == []
    assert [k for k, f in keys.items() if not f.description] == []


def test_readme_rest_example_sends_clips_the_default_model_takes():
    """The REST example's clip has the shape of what `make run` registers (frames.num_frames x frames.size): it
    once kept 16x128x128 after the defaults moved, and MLflow's signature check answered it with HTTP 400."""
    import re

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text() + (root / "docs" / "prediction.md").read_text()  # README and its page
    shapes = re.findall(r"np\.zeros\(\((\d+), (\d+), (\d+), (\d+), 3\), np\.uint8\)", readme)
    frames = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").frames
    assert shapes
    assert [(int(t), int(h), int(w)) for _, t, h, w in shapes] == [(frames.num_frames, frames.size, frames.size)] * len(shapes)


def test_each_stage_takes_only_the_keys_it_reads():
    """Every key is defined once (PipelineConfig has them all); a stage's flow takes the subset it reads, with the
    same definition, and a whole config given to it is narrowed to that subset."""
    import typing

    from flows.pipeline import STAGES

    cfg = load_config(None, ["data_dir=d", "seed=5", "filter.workers=3", "cluster.engine=dask"])
    reads = {"download": {"annotations", "classes", "splits", "max_per_class", "url_template", "download", "cluster"},
             "filter": {"classes", "filter", "cluster"}, "frames": {"classes", "seed", "frames", "cluster"},
             "pretrain": {"seed", "train", "pretrain", "mlflow"}, "train": {"seed", "train", "pretrain", "mlflow"}}
    assert set(STAGE_CONFIGS) == set(STAGES) == set(reads)
    for name, stage in STAGE_CONFIGS.items():
        assert set(stage.model_fields) == {"data_dir"} | reads[name]
        for key, field in stage.model_fields.items():
            assert repr(field) == repr(PipelineConfig.model_fields[key]), (name, key)
        part = cfg.stage(name)
        assert type(part) is stage and part.model_dump() == cfg.model_dump(include=set(stage.model_fields))
        assert stage.model_validate(cfg) == part  # what a flow called with the whole config receives
        assert typing.get_type_hints(STAGES[name].fn)["config"] is stage
        assert list(typing.get_type_hints(STAGES[name].fn)) == ["config", "force", "return"]
    assert cfg.stage("filter").filter.workers == 3 and cfg.stage("train").seed == 5
    assert cfg.stage("download").raw_dir == cfg.raw_dir == Path("d/raw")
    with pytest.raises(ValueError, match="unknown stage 'fram'"):
        cfg.stage("fram")
    with pytest.raises(ValueError, match="frames"):  # a stage's config refuses keys it does not read
        STAGE_CONFIGS["train"].model_validate({"frames": {"num_frames": 8}})
    assert issubclass(STAGE_CONFIGS["train"], StageConfig)
