"""The benchmark scripts keep working (they are run by hand, so nothing else would notice them break). Tiny
inputs: these check that the scripts run and report what they claim to, not any speed or quality figure."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_job(tmp_path: Path, train: dict) -> Path:
    """A Kinetics-format job of 12 generated clips served as file:// URLs, frames and training kept tiny."""
    import yaml

    from tasks.lib.demo import generate_demo_dataset

    src = tmp_path / "src"
    csv = generate_demo_dataset(src, n_dribbling=6, n_dunking=6, seed=2, width=96, height=72, duration=4.0,
                                clip_len=3.0)
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "tiny"), "annotations": [str(csv)],
        "url_template": f"file://{src}/videos/{{youtube_id}}.mp4", "frames": {"num_frames": 10, "size": 32},
        "download": {"allow_file_urls": True, "workers": 2, "retries": 0},
        "train": {"view_frames": 8, "epochs": 1, "batch_size": 4, **train},
    }))
    return cfg


@pytest.mark.slow
def test_quality_script_runs_the_real_stages_then_every_row_and_reference(prefect_harness, tmp_path, capsys):
    """The real-data benchmark on a tiny Kinetics-format job (generated clips served as file:// URLs): download,
    filter, frames through Prefect, then the default recipe, single frame, frame-mlp and the reference every
    training logs, per set, and the summary line over the sets."""
    cfg = _tiny_job(tmp_path, {"min_epochs": 0})
    out = tmp_path / "out"
    result = _script("quality").main(["--config", str(cfg), "--seeds", "0", "--out", str(out), "--compare"])
    assert list(result["sets"]) == ["tiny"]
    tiny = result["sets"]["tiny"]
    rows = tiny["rows"]
    assert list(rows) == ["default", "single frame (RGB)", "frame-mlp (RGB)"]
    assert rows["default"]["options"]["input"] == "auto" and rows["frame-mlp (RGB)"]["options"]["model"] == "frame-mlp"
    assert rows["default"]["runs"][0]["input"] in ("diff", "rgb") and rows["frame-mlp (RGB)"]["runs"][0]["input"] == "rgb"
    for r in rows.values():
        assert len(r["runs"]) == 1 and 0.0 <= r["test_f1_mean"] <= 1.0 and r["test_f1_std"] == 0.0
    ref = tiny["reference"]
    assert {"baseline/val_f1", "baseline/test_f1", "baseline/C"} <= set(ref) and 0.0 <= ref["baseline/test_f1"] <= 1.0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == result["summary"]
    margin = rows["default"]["test_f1_mean"] - ref["baseline/test_f1"]
    assert printed[-1] == (f"sets=1 mean_test_f1={rows['default']['test_f1_mean']:.3f} min_margin_vs_ref={margin:.3f} "
                           f"worst_seed_test_f1={rows['default']['test_f1_min']:.3f}")
    assert json.loads((out / "quality.json").read_text())["summary"] == printed[-1]
    assert "| reference: mean frame + motion energy (logistic regression" in (out / "quality.md").read_text()
    assert "### tiny" in (out / "quality.md").read_text()
    assert f"| default | {rows['default']['runs'][0]['input']} |" in (out / "quality.md").read_text()

    # --rows retrains only the recipe's row; the comparison rows come from the run above, marked, unchanged
    again = _script("quality").main(["--config", str(cfg), "--seeds", "0", "--out", str(out), "--skip-data",
                                     "--compare", "--rows", "default", "--work", str(tmp_path / "work")])
    again_rows = again["sets"]["tiny"]["rows"]
    assert list((tmp_path / "work").rglob("best.pt")), "--work keeps the trainings' folders for a rerun"
    assert again_rows["frame-mlp (RGB)"]["runs"] == rows["frame-mlp (RGB)"]["runs"]
    assert again_rows["frame-mlp (RGB)"]["reused_from"].startswith("quality.json")
    assert "reused_from" not in again_rows["default"] and "| frame-mlp (RGB) † |" in (out / "quality.md").read_text()
    saved = json.loads((out / "quality.json").read_text())
    assert saved["sets"]["tiny"]["dataset_fingerprint"]
    other = json.loads(json.dumps(saved))
    other["sets"]["tiny"]["dataset_fingerprint"] = "another"
    (out / "quality.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="another dataset"):  # rows of other data are never reused
        _script("quality").main(["--config", str(cfg), "--seeds", "0", "--out", str(out), "--skip-data", "--compare",
                                 "--rows", "default"])
    (out / "quality.json").write_text(json.dumps(saved))
    with pytest.raises(SystemExit, match="no row 'single frame \\(RGB\\)' of tiny with these options"):
        _script("quality").main(["--config", str(cfg), "--seeds", "0", "--out", str(out), "--skip-data", "--compare",
                                 "--rows", "default", "--set", "train.lr=0.002"])



@pytest.mark.slow
def test_quality_script_adds_the_i3d_rows_on_their_own_frames(prefect_harness, tmp_path, monkeypatch, capsys):
    """``--i3d``: the same job with train.init i3d-kinetics400 (a random stem here: the real one is test_i3d's) in
    DATA_DIR-i3d at 16 frames, the stem + transformer over the seeds and the linear probe on its stem cache, and the
    issue's line ``i3d_test_f1=... probe_test_f1=... scratch_test_f1=...`` per set, then the mean."""
    from tests.support.i3d import random_i3d_cache

    random_i3d_cache(tmp_path / "cache", monkeypatch)
    cfg = _tiny_job(tmp_path, {"input": "diff"})
    out = tmp_path / "out"
    result = _script("quality").main(["--config", str(cfg), "--seeds", "0", "--out", str(out), "--i3d",
                                      "--i3d-size", "32"])
    rows = result["sets"]["tiny"]["rows"]
    q = _script("quality")
    i3d, probe = rows[q.I3D_ROW], rows[q.PROBE_ROW]
    assert i3d["options"]["init"] == "i3d-kinetics400" and i3d["runs"][0]["input"] == "rgb"
    assert 0.0 <= i3d["test_f1_mean"] <= 1.0 and probe["runs"][0]["C"] in q.C_GRID
    assert (tmp_path / "tiny-i3d" / "dataset" / "manifest.parquet").is_file()  # its own frames, beside the default's
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-2] == result["i3d_summary"].splitlines()[-1]
    assert printed[-2] == (f"i3d_test_f1={i3d['test_f1_mean']:.3f} probe_test_f1={probe['test_f1_mean']:.3f} "
                           f"scratch_test_f1={rows['default']['test_f1_mean']:.3f}")
    assert result["i3d_summary"].splitlines()[0].startswith("tiny: i3d_test_f1=")

def test_quality_script_finds_every_shared_set(tmp_path):
    """Each folder with annotations.csv is a set: its configs/<name>.yaml when the project has one, else a config
    made from the folder (file:// URLs to its videos, the CSV's classes, the official split)."""
    import yaml

    quality = _script("quality")
    root = tmp_path / "datasets"
    for name, ext in (("surv_fight", ".mp4"), ("newset", ".avi")):
        (root / name / "videos").mkdir(parents=True)
        (root / name / "videos" / f"abcdefghijk{ext}").write_bytes(b"x")
        (root / name / "annotations.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                                     "b,abcdefghijk,0,1,train\na,abcdefghijk,0,1,test\n")
    (root / "notaset").mkdir()
    found = quality.shared_sets(root)
    assert [p.stem for p in found] == ["newset", "surv_fight"]
    assert found[1] == ROOT / "configs" / "surv_fight.yaml"
    made = yaml.safe_load(found[0].read_text())
    assert made["classes"] == ["a", "b"] and made["frames"]["split_mode"] == "official"
    assert made["url_template"] == f"file://{root / 'newset'}/videos/{{youtube_id}}.avi"
    assert made["data_dir"] == "data/newset"


def test_quality_script_says_what_is_missing(tmp_path):
    with pytest.raises(SystemExit, match="config file not found|no manifest|ConfigError"):
        _script("quality").main(["--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)])


@pytest.mark.slow
def test_scale_script_measures_every_engine_and_ends_with_its_line(prefect_harness, tmp_path, capsys):
    """Tiny sizes: 4 generated clips through the real stages, the frames stage on threads and on Dask LocalClusters
    of 1 and 2 workers, DDP with 1 and 2 torchrun processes, fp32 and bf16 steps; the figures are ratios of what
    was measured in this run (no speed is asserted)."""
    out = tmp_path / "scale.json"
    result = _script("scale").main(["--clips", "4", "--width", "64", "--height", "48", "--duration", "2",
                                    "--shard-size", "2", "--repeats", "1", "--ddp-clips", "8", "--ddp-epochs", "2",
                                    "--steps", "1", "--precision-shape", "2,4,32", "--json", str(out)])
    f, d, p = result["frames"], result["ddp"], result["precision"]
    assert f["clips"] == 4 and f["same_fingerprint"] is True
    assert f["dask_speedup_2w"] == pytest.approx(f["dask_1w_seconds"] / f["dask_2w_seconds"])
    # Prefect's overhead: the Prefect stage against the same shards on plain Dask (which made the same dataset)
    d1, plain = f["dask_1w_seconds"], f["plain_dask_1w_seconds"]
    assert f["overhead_share"] == pytest.approx(max(0.0, d1 - plain) / d1) and plain > 0
    assert 0.0 <= f["engine_overhead_share"] <= f["overhead_share_incl_cluster_start"] < 1.0
    # the whole bare stage and the sampler alone take ~0.05 s each for these 4 clips: which is longer is noise
    assert f["cluster_start_seconds"] > 0 and f["bare_seconds"] > 0 and f["bare_sampler_seconds"] > 0
    assert d["ddp_speedup_2p"] == pytest.approx(d["p1_epoch_seconds"] / d["p2_epoch_seconds"])
    assert len(d["p1_train_loss"]) == len(d["p2_train_loss"]) == 2
    assert p["bf16_speedup"] == pytest.approx(p["default"]["bf16_speedup"]) and p["wide4x"]["params"] > p["default"]["params"]
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == result["summary"] == json.loads(out.read_text())["summary"]
    assert printed[-1].startswith("dask_speedup_2w=") and " overhead_share=" in printed[-1]
    assert f" ddp_speedup_2p={d['ddp_speedup_2p']:.2f} bf16_speedup={p['bf16_speedup']:.2f}" in printed[-1]


@pytest.mark.slow
def test_scale_frames_comparison_runs_on_a_jobs_own_clips(prefect_harness, tmp_path):
    """``--frames-job``: the engines compared on the clips a pipeline config names (its CSV and file:// URLs), as
    on real footage, instead of generated ones."""
    from tasks.lib.demo import generate_demo_dataset

    src = tmp_path / "src"
    csv = generate_demo_dataset(src, n_dribbling=2, n_dunking=2, seed=1, width=64, height=48, duration=2, clip_len=2)
    job = tmp_path / "job.yaml"
    job.write_text(f"data_dir: {tmp_path / 'unused'}\nannotations: [{csv}]\n"
                   f"url_template: 'file://{src}/videos/{{youtube_id}}.mp4'\n"
                   "classes: [dribbling basketball, dunking basketball]\ndownload: {allow_file_urls: true}\n")
    f = _script("scale").frames_stage(tmp_path / "work", 0, 0, 0, 0.0, 2, job=job, repeats=2)
    assert f["clips"] == 4 and f["same_fingerprint"] is True
    # the four engines took turns twice; each keeps its fastest run
    for name in ("threads", "dask_1w", "plain_dask_1w", "dask_2w"):
        assert len(f[f"{name}_runs"]) == 2 and f[f"{name}_seconds"] == min(f[f"{name}_runs"])
    assert f["clips_per_shard"] == {"1w": 2, "2w": 2} and 0.0 <= f["settle_seconds_max"] <= 60.0
    r = f["dataset_reads"]  # a file per clip against one packed file: the stored clips, read back whole
    from tasks.lib.config import FramesConfig

    defaults = FramesConfig()  # the stage stored what a job with no frames.* overrides stores
    assert r["clips"] == 4 and r["clip_bytes"] == defaults.num_frames * defaults.size ** 2 * 3
    assert r["one_file_us_per_clip"] > 0
    assert r["one_file_speedup"] == pytest.approx(r["per_file_us_per_clip"] / r["one_file_us_per_clip"])
    assert not (tmp_path / "work" / "packed.npy").exists()
    assert 0.0 <= f["overhead_share"] < 1.0 and 0.0 <= f["engine_overhead_share"] < 1.0
    diffs = [d - p for d, p in zip(f["dask_1w_runs"], f["plain_dask_1w_runs"])]
    assert f["overhead_share_paired_mean"] == pytest.approx(sum(diffs) / sum(f["dask_1w_runs"]))


def test_prefect_overhead_split_adds_up_and_says_when_nothing_was_sampled():
    split = _script("prefect_overhead").split
    clips = [(12.0, 12.5, 0.4), (10.5, 11.0, 0.5), (11.2, 11.9, 0.6)]  # (start, end, thread CPU), any order
    parts = split(10.0, 13.0, clips)
    assert parts["before"] == pytest.approx(0.5) and parts["after"] == pytest.approx(0.5)
    assert parts["clips"] == pytest.approx(1.7) and parts["clips_cpu"] == pytest.approx(1.5)
    assert parts["gaps"] == pytest.approx(0.3) and parts["n_clips"] == 3
    assert sum(parts[k] for k in ("before", "clips", "gaps", "after")) == pytest.approx(parts["total"])
    with pytest.raises(ValueError, match="no clip"):
        split(0.0, 1.0, [])


@pytest.mark.slow
def test_prefect_overhead_script_splits_both_runs_and_ends_with_its_line(prefect_harness, tmp_path, capsys):
    """Tiny sizes: 4 generated clips, the 1-worker frames stage as the Prefect flow and on plain Dask, two rounds,
    each run's time split by the worker's probe into parts that add up to it (no speed is asserted)."""
    out = tmp_path / "po.json"
    result = _script("prefect_overhead").main(["--clips", "4", "--rounds", "2", "--width", "64", "--height", "48",
                                               "--duration", "2", "--json", str(out)])
    assert result["clips"] == 4
    for name in ("prefect", "plain"):
        assert len(result["runs"][name]) == 2
        for run in result["runs"][name]:
            assert run["n_clips"] == 4 and 0 < run["clips_cpu"] <= run["clips"] * 1.05 + 0.01
            assert sum(run[k] for k in ("before", "clips", "gaps", "after")) == pytest.approx(run["total"])
            assert run["worker_thread_cpu"]["Dask-Default-Threads"] > 0  # the thread that ran the shards
        # the first round is left out of the means
        assert result["means"][name]["total"][0] == pytest.approx(result["runs"][name][1]["total"])
    d = result["prefect_minus_plain"]
    assert d["total"] == pytest.approx(sum(d[k] for k in ("before", "clips", "gaps", "after")))
    assert result["share"] == pytest.approx(d["total"] / result["means"]["prefect"]["total"][0])
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == result["summary"] == json.loads(out.read_text())["summary"]
    assert printed[-1].startswith(f"prefect_overhead_s={d['total']:.2f} share=")


def test_training_script_times_the_default_against_hf_on_the_default_recipes_clips(tmp_path, monkeypatch, capsys):
    """Tiny common clips (4x32x32, batch 2, one timed step): every preset and HF's ViViT at vivit-joint-tiny's
    configuration (checked to be one function first), plus the default preset and HF on the clips the default
    recipe trains on, which is what ``ratio_vs_hf`` compares (it once compared HF with the previous default's
    tubelet, after the default had moved to the conv stem)."""
    from model.presets import DEFAULT_PRESET, PRESETS
    from tasks.lib.config import load_config

    bench = _script("training")
    for name, value in (("BATCH", 2), ("FRAMES", 4), ("SIZE", 32)):
        monkeypatch.setattr(bench, name, value)
    out = bench.main(["--steps", "1", "--warmup", "0", "--json", str(tmp_path / "training.json")])
    rows = out["rows"]
    assert set(rows) == set(PRESETS) | {f"{DEFAULT_PRESET}@default", "hf-vivit@joint-tiny", "hf-vivit@default"}
    assert out["hf_same_function_max_logit_diff"] < 1e-4
    cfg = load_config()
    assert out["default_view"] == [cfg.train.view_frames, cfg.frames.size]
    ours, hf = rows[f"{DEFAULT_PRESET}@default"], rows["hf-vivit@default"]
    assert ours["fwd_gflops_clip"] > rows[DEFAULT_PRESET]["fwd_gflops_clip"]  # 16x64x64 against 4x32x32
    assert ours["clip"] == hf["clip"] == [cfg.train.view_frames, 3, cfg.frames.size, cfg.frames.size]
    assert rows["hf-vivit@joint-tiny"]["clip"] == rows["vivit-joint-tiny"]["clip"] == [4, 3, 32, 32]
    assert out["ratio_vs_hf"] == pytest.approx(ours["clips_s"] / hf["clips_s"])
    assert json.loads((tmp_path / "training.json").read_text())["ratio_vs_hf"] == pytest.approx(out["ratio_vs_hf"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == f"ratio_vs_hf={out['ratio_vs_hf']:.2f} matmul_fraction={ours['matmul_fraction']:.2f}"


def test_sampling_script_samples_with_the_frames_stages_defaults_and_ends_with_its_line(capsys):
    """One clip per resolution, one repeat: the script runs every method on real encoded clips, at the frames
    stage's default frame count and size unless told otherwise (it once kept 16x128 after the defaults moved)."""
    from tasks.lib.config import FramesConfig

    assert _script("sampling").main(["--clips", "1", "--repeats", "1"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    defaults = FramesConfig()
    assert f"N={defaults.num_frames}, size={defaults.size}," in printed[0]
    assert sum(line.startswith(("| ours", "| (a)", "| (b)", "| (c)")) for line in printed) == 4
    assert printed[-1].startswith("ratio_vs_pyav=") and " ratio_vs_ffmpeg=" in printed[-1]
