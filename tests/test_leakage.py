"""The leakage check (``tasks/lib/leakage.py``): the same footage in two splits, by youtube_id and time window or by
near-identical stored frames; the ``drop`` policy; and the frames stage writing ``reports/leakage.csv`` and
applying ``frames.leakage: drop`` for real (Prefect, ffmpeg, PyAV)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks.lib import leakage as L
from tasks.lib.media import encode_video, ffmpeg_command
from tests.support.stages import write_download_report
from tests.support.tiny_dataset import noise_dataset

CLASSES = ["dribbling basketball", "dunking basketball"]
SLUGS = {"dribbling basketball": "dribbling_basketball", "dunking basketball": "dunking_basketball"}


def scene(seed: int, n: int = 8, h: int = 64, w: int = 64, pan: int = 3) -> np.ndarray:
    """A natural-looking clip: a smooth random colour texture panning sideways, with a dark blob moving down (pure
    noise would be no test of a perceptual hash: its low frequencies are nearly empty)."""
    rng = np.random.default_rng(seed)
    coarse = (rng.random((h // 8 + 2, (w + pan * n) // 8 + 2, 3)) * 255).astype(np.uint8)
    texture = np.asarray(Image.fromarray(coarse).resize((w + pan * n, h), Image.BICUBIC), np.int16)
    y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(w // 4, 3 * w // 4))
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for t in range(n):
        f = texture[:, t * pan : t * pan + w].copy()
        blob = (yy - (y0 + 3 * t)) ** 2 + (xx - x0) ** 2 < (h // 6) ** 2
        f[blob] //= 4
        frames.append(f)
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in frames])


def distance(a: np.ndarray, b: np.ndarray) -> float:
    ha, hb = L.frame_hashes(a), L.frame_hashes(b)
    return float(np.bitwise_count(ha ^ hb).mean())


def clip(cid: str, split: str, yid: str = "", start: float = math.nan, end: float = math.nan, label: str = "x"):
    return L.LeakClip(cid, split, label, yid, start, end)


# -- same youtube_id, overlapping windows --------------------------------------------------------------------------
def test_windows_overlap_only_when_they_share_footage():
    a = clip("a", "train", "v", 0, 10)
    assert L.windows_overlap(a, clip("b", "val", "v", 5, 15))
    assert L.windows_overlap(a, clip("b", "val", "v", 2, 3))  # inside
    assert not L.windows_overlap(a, clip("b", "val", "v", 10, 20))  # touching: no shared second
    assert not L.windows_overlap(a, clip("b", "val", "v", 20, 30))
    assert L.windows_overlap(a, clip("b", "val", "v"))  # unknown window: cannot be shown apart


def test_same_video_pairs_across_splits_only():
    clips = [clip("v_0_10", "train", "v", 0, 10), clip("v_5_15", "val", "v", 5, 15),
             clip("v_20_30", "test", "v", 20, 30),  # same video, other footage: not a leak
             clip("v_8_12", "train", "v", 8, 12),  # overlaps v_0_10 but in the same split: not a leak
             clip("w_0_10", "test", "w", 0, 10), clip("nothing", "val", "", 0, 10), clip("nothing2", "test", "", 0, 10)]
    pairs = L.find_leaks(clips)
    assert [(p.a.clip_id, p.b.clip_id, p.reason) for p in pairs] == [
        ("v_0_10", "v_5_15", L.REASON_OVERLAP), ("v_5_15", "v_8_12", L.REASON_OVERLAP)]
    assert all(math.isnan(p.distance) for p in pairs)  # no hashes given


# -- near-identical frames -----------------------------------------------------------------------------------------
def test_hash_flags_transformed_copies_and_not_other_clips():
    original = scene(1)
    rng = np.random.default_rng(0)
    copies = {
        "rescaled": resize(resize(original, (40, 40)), (64, 64)),
        "re-encoded": np.clip((original // 8 * 8).astype(int) + rng.normal(0, 6, original.shape), 0, 255).astype(np.uint8),
        "brighter": np.clip(original.astype(int) + 15, 0, 255).astype(np.uint8),
        "cropped 5%": resize(original[:, 2:-1, 1:-2], (64, 64)),
        "stored larger": resize(original, (96, 96)),  # the other run stored frames.size 96: still the same footage
    }
    for name, copy in copies.items():
        assert distance(original, copy) <= L.THRESHOLD, name
    others = [scene(s) for s in range(2, 22)]
    assert min(distance(original, o) for o in others) > L.THRESHOLD
    assert L.frame_hashes(original).dtype == np.uint64 and L.frame_hashes(original).shape == (L.HASH_FRAMES,)


def test_flat_clips_are_not_hashed():
    black = np.zeros((8, 32, 32, 3), np.uint8)
    assert L.frame_hashes(black) is None
    assert L.frame_hashes(np.full((8, 32, 32, 3), 200, np.uint8)) is None
    pairs = L.find_leaks([clip("a", "train"), clip("b", "val")], [None, None])
    assert pairs == []


def test_find_leaks_on_hashes_marks_duplicates_across_splits_with_their_distance():
    a, b, c = scene(1), scene(2), scene(3)
    clips = [clip("a", "train"), clip("a_copy", "test"), clip("b", "val"), clip("b_copy", "val"), clip("c", "test")]
    arrays = [a, resize(resize(a, (48, 48)), (64, 64)), b, b.copy(), c]
    pairs = L.find_leaks(clips, [L.frame_hashes(x) for x in arrays])
    assert [(p.a.clip_id, p.b.clip_id, p.reason) for p in pairs] == [("a", "a_copy", L.REASON_FRAMES)]
    assert 0 <= pairs[0].distance <= L.THRESHOLD
    # one pair per two clips: an overlap that also looks the same is reported once, as an overlap, with its distance
    clips[1] = clip("a_copy", "test", "v", 0, 10)
    clips[0] = clip("a", "train", "v", 5, 15)
    pairs = L.find_leaks(clips, [L.frame_hashes(x) for x in arrays])
    assert [(p.reason, p.distance <= L.THRESHOLD) for p in pairs] == [(L.REASON_OVERLAP, True)]
    nearest = L.nearest_cross_split([c.split for c in clips], [L.frame_hashes(x) for x in arrays])
    assert nearest[0] <= L.THRESHOLD and nearest[2] > L.THRESHOLD  # b's copy is in its own split


def test_hash_flags_an_ffmpeg_reencoded_half_size_copy(tmp_path):
    """The real path: a source and its re-upload (half size, low quality) sampled by the frames stage's sampler."""
    from tasks.lib.sampling import sample_clip

    src = encode_video(scene(5, n=24, h=120, w=160), tmp_path / "src.mp4", fps=12)
    other = encode_video(scene(6, n=24, h=120, w=160), tmp_path / "other.mp4", fps=12)
    copy = tmp_path / "copy.mp4"
    import subprocess

    subprocess.run(ffmpeg_command(str(src), str(copy), output_options={
        "vf": "scale=80:60", "vcodec": "libx264", "crf": 38, "an": None}), check=True, capture_output=True)
    a, b, c = (sample_clip(p, 8, 32) for p in (src, copy, other))
    assert distance(a, b) <= L.THRESHOLD < distance(a, c)


# -- the drop policy -----------------------------------------------------------------------------------------------
def test_drop_keeps_each_footage_in_train_only():
    t1, v1, s1 = clip("t1", "train"), clip("v1", "val"), clip("s1", "test")
    t2 = clip("t2", "train")
    v3, s3, s4 = clip("v3", "val"), clip("s3", "test"), clip("s4", "test")
    pairs = [L.LeakPair(t1, v1, L.REASON_OVERLAP), L.LeakPair(v1, s1, L.REASON_FRAMES),  # one group via v1
             L.LeakPair(t2, s1, L.REASON_FRAMES),  # t2 joins it through s1: two train copies, both stay
             L.LeakPair(s3, v3, L.REASON_FRAMES), L.LeakPair(v3, s4, L.REASON_FRAMES)]  # no train copy
    decisions = L.drop_decisions(pairs)
    assert decisions == {"t1": L.KEPT, "t2": L.KEPT, "v1": L.DROPPED, "s1": L.DROPPED,
                         "v3": L.MOVED, "s3": L.DROPPED, "s4": L.DROPPED}
    assert [[c.clip_id for c in g] for g in L.leak_groups(pairs)] == [["t1", "t2", "v1", "s1"], ["v3", "s3", "s4"]]
    assert L.drop_decisions([]) == {}
    rows = L.report_rows(pairs[:1], decisions)
    assert list(rows[0]) == L.REPORT_COLUMNS
    assert (rows[0]["action_a"], rows[0]["action_b"], rows[0]["distance"]) == (L.KEPT, L.DROPPED, "")
    assert L.report_rows(pairs[:1])[0]["action_b"] == L.NONE  # report policy


def test_check_writes_a_header_only_report_when_nothing_leaks(tmp_path):
    from tasks.frames import check_leakage
    from tasks.lib.config import PipelineConfig

    data = tmp_path / "data"
    noise_dataset(data / "dataset", counts={"train": [3, 3], "val": [2, 2], "test": [2, 2]}, num_frames=8, size=32)
    rows = pd.read_parquet(data / "dataset" / "manifest.parquet").to_dict("records")
    cfg = PipelineConfig(data_dir=data, frames={"leakage": "drop"}).stage("frames")
    check = check_leakage(cfg, rows)
    assert check.pairs == [] and check.decisions == {} and len(check.nearest) == 14
    assert min(check.nearest) > L.THRESHOLD
    assert (data / "reports" / "leakage.csv").read_text() == ",".join(L.REPORT_COLUMNS) + "\n"


def test_leakage_is_not_a_sampling_parameter():
    """Switching the policy must not resample anything: only a changed manifest changes the fingerprint."""
    from tasks.lib.config import FramesConfig
    from tasks.lib.sampling import sampling_params

    assert FramesConfig().leakage == "report" and FramesConfig(leakage="drop").leakage == "drop"
    assert "leakage" not in sampling_params(8, 32)
    with pytest.raises(ValueError):
        FramesConfig(leakage="remove")


# -- the frames stage, for real --------------------------------------------------------------------------------------
DOWNLOAD_COLUMNS = ["youtube_id", "label", "split", "status", "reason", "path", "message", "time_start", "time_end",
                    "clip_id"]


def leaky_data_dir(root: Path) -> Path:
    """Eight distinct clips (2 train, 1 val, 1 test per class) and five that leak:

    * ``dupvid`` 0-10 s (train) and 5-15 s (val): one video, overlapping windows (distinct pixels, so only the
      youtube_id check can see it); ``dupvid`` 20-30 s (test) is other footage of it;
    * ``reupload`` (test): an ffmpeg half-size, low-quality copy of ``b0`` (train);
    * ``twin`` (val) and ``twin2`` (test, a re-encode of ``twin``): leaked footage with no train copy."""
    import subprocess

    rows = []

    def add(yid: str, label: str, split: str, frames: np.ndarray | None = None, *, copy_of: Path | None = None,
            start: int = 0, end: int = 10) -> Path:
        cid = f"{yid}_{start:06d}_{end:06d}"
        p = root / "raw" / SLUGS[label] / f"{cid}.mp4"
        p.parent.mkdir(parents=True, exist_ok=True)
        if copy_of is None:
            encode_video(frames, p, fps=12)
        else:
            subprocess.run(ffmpeg_command(str(copy_of), str(p), output_options={
                "vf": "scale=48:36", "vcodec": "libx264", "crf": 36, "an": None}), check=True, capture_output=True)
        rows.append({"youtube_id": yid, "label": label, "split": split, "status": "downloaded", "reason": "",
                     "message": "", "path": p.relative_to(root).as_posix(), "time_start": start, "time_end": end,
                     "clip_id": cid})
        return p

    seed = iter(range(100, 200))
    for c, label in enumerate(CLASSES):
        for i, split in enumerate(["train", "train", "val", "test"]):
            add(f"{'ab'[c]}{i}", label, split, scene(next(seed), n=12, h=72, w=96))
    add("dupvid", CLASSES[0], "train", scene(next(seed), n=12, h=72, w=96), start=0, end=10)
    add("dupvid", CLASSES[0], "val", scene(next(seed), n=12, h=72, w=96), start=5, end=15)
    add("dupvid", CLASSES[0], "test", scene(next(seed), n=12, h=72, w=96), start=20, end=30)
    add("reupload", CLASSES[1], "test", copy_of=root / "raw" / SLUGS[CLASSES[1]] / "b0_000000_000010.mp4")
    twin = add("twin", CLASSES[1], "val", scene(next(seed), n=12, h=72, w=96))
    add("twin2", CLASSES[1], "test", copy_of=twin)
    write_download_report(root, rows, DOWNLOAD_COLUMNS)
    return root


def test_frames_stage_reports_leaks_then_drops_them(tmp_path, prefect_harness):
    from flows.filter import filter_flow
    from flows.frames import frames_flow
    from tasks.lib.config import PipelineConfig

    data = leaky_data_dir(tmp_path / "data")

    def cfg(policy: str) -> PipelineConfig:
        return PipelineConfig(data_dir=data, classes=CLASSES, seed=1, train={"view_frames": 2}, frames={
            "num_frames": 8, "size": 32, "workers": 2, "split_mode": "official", "leakage": policy})

    assert filter_flow(cfg("report"))["counts"]["kept"] == 14
    ds, report = data / "dataset", data / "reports" / "leakage.csv"

    # -- report: three pairs found, nothing changed --------------------------------------------------------------
    s = frames_flow(cfg("report"))
    assert not s["failed"], s["message"]
    assert s["counts"]["clips"] == 14 and s["counts"]["leakage_pairs"] == 3 and "leakage_dropped" not in s["counts"]
    assert "leakage: 3 pair(s)" in s["message"] and "reports/leakage.csv" in s["message"]
    assert str(report) in s["outputs"]
    leaks = pd.read_csv(report, dtype=str, keep_default_na=False)
    assert list(leaks.columns) == L.REPORT_COLUMNS
    found = {(r.clip_id_a, r.split_a, r.clip_id_b, r.split_b, r.reason) for r in leaks.itertuples()}
    assert found == {
        ("dupvid_000000_000010", "train", "dupvid_000005_000015", "val", L.REASON_OVERLAP),
        ("b0_000000_000010", "train", "reupload_000000_000010", "test", L.REASON_FRAMES),
        ("twin2_000000_000010", "test", "twin_000000_000010", "val", L.REASON_FRAMES),
    }
    assert set(leaks.action_a) == set(leaks.action_b) == {L.NONE}
    assert all(float(d) <= L.THRESHOLD for d in leaks[leaks.reason == L.REASON_FRAMES].distance)
    man = pd.read_parquet(ds / "manifest.parquet")
    assert len(man) == 14 and (man.split == man.official_split).all()
    reported = json.loads((ds / "dataset.json").read_text())["fingerprint"]

    # -- drop: each footage in train only; nothing sampled again; a new fingerprint --------------------------------
    s = frames_flow(cfg("drop"))
    assert not s["failed"], s["message"]
    assert (s["counts"]["sampled"], s["counts"]["already_done"]) == (0, 14)
    assert (s["counts"]["leakage_pairs"], s["counts"]["leakage_dropped"], s["counts"]["leakage_moved"]) == (3, 3, 1)
    assert s["counts"]["clips"] == 11 and "3 val/test clip(s) dropped, 1 moved to train" in s["message"]
    man = pd.read_parquet(ds / "manifest.parquet").set_index("clip_id")
    dropped = {"dupvid_000005_000015", "reupload_000000_000010", "twin2_000000_000010"}
    assert not dropped & set(man.index)
    assert man.loc["twin_000000_000010", "split"] == "train"
    assert man.loc["dupvid_000020_000030", "split"] == "test"  # other footage of the same video stays
    leaks = pd.read_csv(report, dtype=str, keep_default_na=False).set_index("clip_id_b")
    assert (leaks.loc["dupvid_000005_000015", "action_a"], leaks.loc["dupvid_000005_000015", "action_b"]) == (
        L.KEPT, L.DROPPED)
    assert (leaks.loc["twin_000000_000010", "action_a"], leaks.loc["twin_000000_000010", "action_b"]) == (
        L.DROPPED, L.MOVED)
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["fingerprint"] != reported and meta["clips"] == 11
    # the dropped clips' frames stay on disk, so the next run samples nothing again
    assert all((ds / "frames" / SLUGS[CLASSES[i]] / f"{c}.npy").is_file()
               for c, i in [("dupvid_000005_000015", 0), ("reupload_000000_000010", 1), ("twin2_000000_000010", 1)])
    s = frames_flow(cfg("drop"))
    assert s["counts"]["sampled"] == 0 and json.loads((ds / "dataset.json").read_text())["fingerprint"] == meta[
        "fingerprint"]

    # -- back to report: the same dataset as the first run (the policy itself is not fingerprinted) ---------------
    s = frames_flow(cfg("report"))
    assert s["counts"]["sampled"] == 0 and s["counts"]["clips"] == 14
    assert json.loads((ds / "dataset.json").read_text())["fingerprint"] == reported


def test_benchmark_script_reports_the_distances(tmp_path, capsys):
    """``benchmarks/leakage.py`` keeps working (copies 0: no sources to rewrite in a generated dataset)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_leakage", Path(__file__).resolve().parents[1] / "benchmarks"
                                                  / "leakage.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ds = noise_dataset(tmp_path / "dataset", counts={"train": [3, 3], "val": [2, 2]}, num_frames=8, size=32)
    (res,) = bench.main([str(ds), "--copies", "0", "--out", str(tmp_path / "out.json")])
    assert res["clips"] == 10 and res["pairs"] == [] and res["nearest_other_split"]["n"] == 10
    assert res["nearest_other_split"]["min"] > L.THRESHOLD
    assert json.loads((tmp_path / "out.json").read_text())[0]["clips"] == 10
    assert "| nearest clip, other split | 10 |" in capsys.readouterr().out
