"""The filter and frames flows end to end on a data folder made here (real Prefect, real ffmpeg/PyAV): reports,
quarantine, the dataset contract, and re-running (nothing redone; one deleted .npy redone alone; new sampling
parameters redo all; clips that leave the filter report leave the dataset)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.support.stages import failed_summary, write_download_report
from tests.support.videos import make_counter_video

from tasks.lib.config import PipelineConfig

CLASSES = ["dribbling basketball", "dunking basketball"]
SLUGS = {"dribbling basketball": "dribbling_basketball", "dunking basketball": "dunking_basketball"}
COLUMNS = ["youtube_id", "label", "split", "status", "reason", "path", "message", "time_start", "time_end", "clip_id"]


def make_data_dir(root: Path, per_class: dict[str, int], *, bad: bool = True, report: bool = True) -> Path:
    """raw/<slug>/<id>_<s>_<e>.mp4 counter clips + reports/download.csv as the download stage writes them."""
    rows = []
    for c, (label, n) in enumerate(per_class.items()):
        for i in range(n):
            yid = f"c{c}clip{i:03d}"
            cid = f"{yid}_000002_000004"
            p = root / "raw" / SLUGS[label] / f"{cid}.mp4"
            p.parent.mkdir(parents=True, exist_ok=True)
            make_counter_video(p, 12 + i, width=80, height=60, seed=i)
            rows.append({"youtube_id": yid, "label": label, "split": "val" if i % 4 == 3 else "train",
                         "status": "downloaded" if i % 2 else "skipped", "reason": "", "message": "",
                         "path": p.relative_to(root).as_posix(), "time_start": 2, "time_end": 4, "clip_id": cid})
    if bad:
        broken = root / "raw" / "dunking_basketball" / "badbadbad_000000_000010.mp4"
        broken.parent.mkdir(parents=True, exist_ok=True)
        broken.write_text("<html>This video is unavailable</html>")
        rows.append({"youtube_id": "badbadbad", "label": "dunking basketball", "split": "train",
                     "status": "downloaded", "reason": "", "message": "", "path": broken.relative_to(root).as_posix(),
                     "time_start": 0, "time_end": 10, "clip_id": "badbadbad_000000_000010"})
        rows.append({"youtube_id": "gone", "label": "dunking basketball", "split": "train", "status": "failed",
                     "reason": "unavailable", "message": "Video unavailable", "path": "", "time_start": 0,
                     "time_end": 10, "clip_id": "gone_000000_000010"})
    if report:
        write_download_report(root, rows, COLUMNS)
    return root


def config(data_dir: Path, **frames) -> PipelineConfig:
    return PipelineConfig(data_dir=data_dir, classes=CLASSES, seed=3, train={"view_frames": 2},
                          frames={"num_frames": 4, "size": 32, "workers": 2, **frames})


def npy_mtimes(data_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (data_dir / "dataset" / "frames").rglob("*.npy")}


def test_filter_then_frames_and_re_runs(tmp_path, prefect_harness):
    from flows.filter import filter_flow
    from flows.frames import frames_flow

    data = make_data_dir(tmp_path / "data", {"dribbling basketball": 6, "dunking basketball": 5})
    cfg = config(data)

    # -- filter: the HTML page is quarantined with its reason, everything else kept --------------------------------
    s = filter_flow(cfg)
    assert not s["failed"], s["message"]
    assert s["counts"]["kept"] == 11 and s["counts"]["quarantined_unreadable"] == 1
    assert s["counts"]["kept[dunking basketball]"] == 5
    moved = data / "quarantine" / "dunking_basketball" / "badbadbad_000000_000010.mp4"
    assert moved.is_file() and not (data / "raw" / "dunking_basketball" / moved.name).exists()
    assert moved.with_name(moved.name + ".reason.txt").read_text().startswith("unreadable:")
    report = pd.read_csv(data / "reports" / "filter.csv", dtype=str, keep_default_na=False)
    assert list(report.columns[:4]) == ["path", "label", "status", "reason"]
    bad = report[report.status == "quarantined"].iloc[0]
    assert (bad.path, bad.original_path, bad.split) == (
        "quarantine/dunking_basketball/badbadbad_000000_000010.mp4",
        "raw/dunking_basketball/badbadbad_000000_000010.mp4", "train")
    assert set(report[report.status == "kept"].frames.astype(int)) == set(range(12, 18))

    # -- frames: the dataset contract -----------------------------------------------------------------------------
    s = frames_flow(cfg)
    assert not s["failed"], s["message"]
    assert s["counts"]["clips"] == 11 and s["counts"]["sampled"] == 11 and s["counts"]["failed"] == 0
    ds = data / "dataset"
    man = pd.read_parquet(ds / "manifest.parquet")
    for col in ["clip_id", "label", "label_index", "split", "frames_path", "num_frames", "source_path", "fps",
                "duration", "height", "width", "youtube_id", "time_start", "time_end"]:
        assert col in man.columns
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["classes"] == CLASSES and (meta["num_frames"], meta["size"]) == (4, 32) and meta["fingerprint"]
    assert (man.label_index == man.label.map(CLASSES.index)).all()
    assert set(man.split) <= {"train", "val", "test"}
    by = man.groupby(["label", "split"]).size().to_dict()
    # 6 clips -> 4/1/1, 5 -> 3/1/1
    assert by[("dribbling basketball", "train")] == 4 and by[("dunking basketball", "val")] == 1
    for r in man.itertuples():
        assert not Path(r.frames_path).is_absolute() and not Path(r.source_path).is_absolute()
        arr = np.load(ds / r.frames_path, mmap_mode="r")
        assert arr.shape == (4, 32, 32, 3) and arr.dtype == np.uint8
        assert (ds / r.source_path).resolve() == (data / "raw" / SLUGS[r.label] / f"{r.clip_id}.mp4").resolve()
    row = man[man.clip_id == "c0clip003_000002_000004"].iloc[0]
    assert (row.youtube_id, row.time_start, row.official_split, row.source_frames) == ("c0clip003", 2.0, "val", 15)
    assert row.duration == pytest.approx(15 / 25) and row.fps == pytest.approx(25.0)
    frames_report = pd.read_csv(data / "reports" / "frames.csv")
    assert len(frames_report) == 11 and set(frames_report.status) == {"sampled"}

    # -- re-running both does no work ----------------------------------------------------------------------------
    before = npy_mtimes(data)
    assert filter_flow(cfg)["counts"]["checked"] == 0
    s = frames_flow(cfg)
    assert (s["counts"]["sampled"], s["counts"]["already_done"]) == (0, 11)
    assert npy_mtimes(data) == before
    assert json.loads((ds / "dataset.json").read_text())["fingerprint"] == meta["fingerprint"]

    # -- force redoes one stage's work and nothing else: every file checked, then every clip sampled -------------
    s = filter_flow(cfg.stage("filter"), force=True)
    assert (s["counts"]["checked"], s["counts"]["kept"], s["counts"]["quarantined"]) == (11, 11, 1)
    assert npy_mtimes(data) == before
    s = frames_flow(cfg.stage("frames"), force=True)
    assert (s["counts"]["sampled"], s["counts"]["already_done"]) == (11, 0)
    assert npy_mtimes(data).keys() == before.keys() and all(npy_mtimes(data)[k] != v for k, v in before.items())
    assert json.loads((ds / "dataset.json").read_text())["fingerprint"] == meta["fingerprint"]  # same pixels
    before = npy_mtimes(data)

    # -- deleting one .npy redoes only that clip -----------------------------------------------------------------
    victim = ds / man.frames_path.iloc[0]
    victim.unlink()
    s = frames_flow(cfg)
    assert (s["counts"]["sampled"], s["counts"]["already_done"]) == (1, 10)
    after = npy_mtimes(data)
    assert victim.is_file() and after.pop(victim.name) != before[victim.name]
    assert after == {k: v for k, v in before.items() if k != victim.name}
    assert json.loads((ds / "dataset.json").read_text())["fingerprint"] == meta["fingerprint"]  # same pixels

    # -- the dataset folder can be moved --------------------------------------------------------------------------
    moved_ds = shutil.copytree(ds, tmp_path / "elsewhere")
    from model.dataset import load_dataset

    info = load_dataset(moved_ds)
    assert info.classes == CLASSES and len(info.manifest) == 11
    assert np.load(moved_ds / info.manifest.frames_path.iloc[0]).shape == (4, 32, 32, 3)

    # -- a file that goes bad leaves the dataset; its .npy is removed --------------------------------------------
    spoiled = data / "raw" / "dribbling_basketball" / "c0clip000_000002_000004.mp4"
    spoiled.write_bytes(b"\0" * 100)  # new size and mtime: checked again
    s = filter_flow(cfg)
    assert s["counts"]["checked"] == 1 and s["counts"]["quarantined"] == 2
    s = frames_flow(cfg)
    assert s["counts"]["clips"] == 10 and s["counts"]["removed_stale"] == 1 and s["counts"]["sampled"] == 0
    assert not (ds / "frames" / "dribbling_basketball" / "c0clip000_000002_000004.npy").exists()
    assert json.loads((ds / "dataset.json").read_text())["fingerprint"] != meta["fingerprint"]

    # -- new sampling parameters redo every clip; official splits follow the CSV ---------------------------------
    s = frames_flow(config(data, num_frames=6, split_mode="official"))
    assert (s["counts"]["sampled"], s["counts"]["already_done"]) == (10, 0)
    man = pd.read_parquet(ds / "manifest.parquet")
    assert (man.split == man.official_split).all()
    assert all(np.load(ds / p, mmap_mode="r").shape == (6, 32, 32, 3) for p in man.frames_path)
    assert "no test clips" in s["message"]  # official Kinetics selections have no labelled test split


def test_too_few_usable_classes_fail_the_filter(tmp_path, prefect_harness):
    from flows.filter import filter_flow

    data = make_data_dir(tmp_path / "data", {"dribbling basketball": 2, "dunking basketball": 0})
    s = failed_summary(filter_flow, config(data))
    assert "'dribbling basketball': 2" in s["message"] and "'dunking basketball': 0" in s["message"]
    assert (data / "reports" / "filter.csv").is_file()  # the report is written all the same


def test_copied_in_files_without_a_report_and_frames_before_filter(tmp_path, prefect_harness):
    from flows.filter import filter_flow
    from flows.frames import frames_flow

    data = make_data_dir(tmp_path / "data", {"dribbling basketball": 2, "dunking basketball": 2}, bad=False,
                         report=False)
    cfg = config(data)
    s = failed_summary(frames_flow, cfg)
    assert "vivit filter" in s["message"]
    s = filter_flow(cfg)
    assert not s["failed"] and s["counts"]["kept"] == 4
    s = frames_flow(cfg)
    assert not s["failed"] and s["counts"]["clips"] == 4
    assert "val" in s["message"]  # 2 clips per class cannot fill three splits: warned
    fingerprint = json.loads((data / "dataset" / "dataset.json").read_text())["fingerprint"]
    os.remove(data / "dataset" / "manifest.parquet")  # lost: the .npy files are still recognised as done
    s = frames_flow(cfg)
    assert (s["counts"]["sampled"], s["counts"]["already_done"]) == (0, 4)
    assert json.loads((data / "dataset" / "dataset.json").read_text())["fingerprint"] == fingerprint
    os.remove(data / "reports" / "filter.csv")
    failed_summary(frames_flow, cfg)
