"""The offline demo dataset: format, real videos, trimming windows, idempotence, determinism, and that its classes
differ in motion rather than in what a single frame shows.

The separability checks use real encoded videos decoded with PyAV (16 frames at the centres of 16 equal segments
of the annotated window, 32x32 grey): a logistic regression on one frame's pixels must stay near chance, while the
same classifier on simple temporal features (frame differences) must be clearly better. A ground-truth check on the
generator's own per-frame state (player/ball/camera positions) backs this up independently of pixels."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GroupKFold, StratifiedKFold, cross_val_predict, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tasks.lib.demo import generate as demo_data
from tasks.lib.demo.render import clip_states
from tasks.lib.annotations import parse_annotations, read_csv_source, select_clips
from tasks.lib.config import load_config
from tasks.lib.demo import CLASSES, DRIBBLING, DUNKING, EXTRA_CLASSES, generate_demo_dataset

ROOT = Path(__file__).resolve().parents[1]
NUM_FRAMES = 16
# Small but realistic: the real 10 s window inside 12-14 s sources, at a low resolution and frame rate.
SMALL = dict(n_dribbling=30, n_dunking=30, seed=3, width=160, height=120, fps=10, duration=12.0, clip_len=10.0)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "src"
    csv_path = generate_demo_dataset(out, **SMALL)
    assert csv_path == out / "annotations.csv"
    return out


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "annotations.csv", newline="") as f:
        return list(csv.DictReader(f))


def _sample(path: Path, t0: float, t1: float, size: int = 32) -> np.ndarray:
    """16 grey frames at the centres of 16 equal segments of [t0, t1] (frame-index based, as the frames stage)."""
    with av.open(str(path)) as c:
        fps = float(c.streams.video[0].average_rate)
        want = [int((t0 + (k + 0.5) * (t1 - t0) / NUM_FRAMES) * fps) for k in range(NUM_FRAMES)]
        got: dict[int, np.ndarray] = {}
        for i, frame in enumerate(c.decode(video=0)):
            if i in want:
                got[i] = frame.to_ndarray(format="gray", width=size, height=size).astype(np.float32) / 255
            if i >= want[-1]:
                break
    return np.stack([got[i] for i in want])


# ----------------------------------------------------------------------------------------------------------------
def test_csv_is_official_kinetics_format(small_set):
    text = (small_set / "annotations.csv").read_text()
    assert text.splitlines()[0] == "label,youtube_id,time_start,time_end,split,is_cc"
    rows = _rows(small_set)
    assert len(rows) == SMALL["n_dribbling"] + SMALL["n_dunking"]
    ids = [r["youtube_id"] for r in rows]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{11}", i) for i in ids)
    assert len({i.lower() for i in ids}) == len(ids)  # unique even on case-insensitive file systems
    assert {r["label"] for r in rows} == set(CLASSES)
    assert {r["is_cc"] for r in rows} <= {"0", "1"}
    for r in rows:
        assert re.fullmatch(r"\d+", r["time_start"]) and re.fullmatch(r"\d+", r["time_end"])
        assert int(r["time_end"]) - int(r["time_start"]) == int(SMALL["clip_len"])
    for label in CLASSES:  # train / validate / test like K600/K700, roughly 70/15/15 in every class
        splits = [r["split"] for r in rows if r["label"] == label]
        n = len(splits)
        assert set(splits) == {"train", "validate", "test"}
        assert abs(splits.count("validate") - 0.15 * n) <= 1 and abs(splits.count("test") - 0.15 * n) <= 1


def test_csv_goes_through_the_annotation_parser(small_set):
    df, problems = parse_annotations(read_csv_source(str(small_set / "annotations.csv")))
    assert problems == []
    clips = select_clips(df, list(CLASSES))
    assert len(clips) == SMALL["n_dribbling"] + SMALL["n_dunking"]
    assert {c.split for c in clips} == {"train", "val", "test"}  # "validate" normalised
    assert all((small_set / "videos" / f"{c.youtube_id}.mp4").is_file() for c in clips)


def test_videos_decode_at_the_declared_geometry_and_windows_fit(small_set):
    rows = _rows(small_set)
    assert sorted(p.name for p in (small_set / "videos").iterdir()) == sorted(f"{r['youtube_id']}.mp4" for r in rows)
    durations = []
    for r in rows[:: max(1, len(rows) // 8)]:  # a spread of clips; decoding all of them is the separability test
        path = small_set / "videos" / f"{r['youtube_id']}.mp4"
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            assert s.codec_context.name == "h264"
            assert (s.codec_context.width, s.codec_context.height) == (SMALL["width"], SMALL["height"])
            assert float(s.average_rate) == SMALL["fps"]
            n = sum(1 for _ in c.decode(video=0))
        duration = n / SMALL["fps"]
        durations.append(duration)
        assert SMALL["duration"] - 1e-6 <= duration <= SMALL["duration"] + 2.0
        # the window lies inside the source and starts after 0, so the downloader really has to trim
        assert 1 <= int(r["time_start"]) and int(r["time_end"]) <= duration + 1e-6
    assert max(durations) > min(durations)  # sources are not all the same length


def test_the_demo_encoder_writes_the_same_file_for_the_same_frames(tmp_path):
    """Default-size clips (320x240, 12+ s) encoded four times each as the generator encodes them: byte-identical
    files. With x264's default threads this build wrote another file for the same frames in about half the encodes
    (`make run` twice: 39 of 120 demo videos differed)."""
    import hashlib

    from tasks.lib.demo.generate import ENCODE_OPTIONS, _check_params, plan_clips
    from tasks.lib.demo.render import render_frames
    from tasks.lib.media import encode_video

    params = _check_params(n_dribbling=1, n_dunking=1, seed=0, width=320, height=240, fps=25, duration=12.0,
                           clip_len=10.0, extra_classes=0)
    for n, spec in enumerate(plan_clips(params)):
        frames = list(render_frames(spec))
        files = [encode_video(iter(frames), tmp_path / f"{n}-{i}.mp4", fps=spec.fps, extra=ENCODE_OPTIONS)
                 for i in range(4)]
        assert len({hashlib.sha256(f.read_bytes()).hexdigest() for f in files}) == 1, spec.youtube_id


def test_idempotent_and_deterministic(small_set, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in small_set.rglob("*")}
    assert generate_demo_dataset(small_set, **SMALL) == small_set / "annotations.csv"
    assert {p: p.stat().st_mtime_ns for p in small_set.rglob("*")} == before  # no work at all
    assert not [p for p in small_set.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers

    tiny = dict(n_dribbling=3, n_dunking=2, width=64, height=48, fps=5, duration=3.0, clip_len=2.0)
    a = generate_demo_dataset(tmp_path / "a", seed=7, **tiny)
    b = generate_demo_dataset(tmp_path / "b", seed=7, **tiny)
    c = generate_demo_dataset(tmp_path / "c", seed=8, **tiny)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    first = _rows(tmp_path / "a")[0]["youtube_id"]

    def first_frame(root: Path) -> bytes:
        with av.open(str(root / "videos" / f"{first}.mp4")) as ct:
            return next(ct.decode(video=0)).to_ndarray(format="rgb24").tobytes()

    assert first_frame(tmp_path / "a") == first_frame(tmp_path / "b")

    # other arguments replace a demo folder (atomically); a folder that is not ours is never overwritten
    d = generate_demo_dataset(tmp_path / "a", seed=7, **{**tiny, "n_dunking": 3})
    assert len(_rows(tmp_path / "a")) == 6 and d == a
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_demo_dataset(tmp_path / "mine", seed=7, **tiny)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    # an interrupted run (a video gone) is redone
    victim = next((tmp_path / "b" / "videos").iterdir())
    victim.unlink()
    generate_demo_dataset(tmp_path / "b", seed=7, **tiny)
    assert victim.is_file()


def test_defaults_and_extra_classes():
    plan = demo_data.plan_clips(demo_data._check_params(
        n_dribbling=80, n_dunking=40, seed=0, width=320, height=240, fps=25, duration=12.0, clip_len=10.0,
        extra_classes=2))
    labels = [s.label for s in plan]
    assert labels.count(DRIBBLING) == 80 and labels.count(DUNKING) == 40  # about 2:1, as the original project
    assert set(labels) == set(CLASSES) | set(EXTRA_CLASSES)
    for s in plan:
        assert 12.0 <= s.n_frames / s.fps <= 14.0
        assert 1 <= s.time_start <= 3 and s.time_end == s.time_start + 10
    with pytest.raises(ValueError):
        demo_data._check_params(n_dribbling=8, n_dunking=4, seed=0, width=320, height=240, fps=25, duration=12.0,
                                clip_len=10.5, extra_classes=0)


def test_demo_config_validates():
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    assert cfg.classes == list(CLASSES)
    assert cfg.download.allow_file_urls is True
    assert cfg.url_template.startswith("file:///") and cfg.url_template.endswith("{youtube_id}.mp4")
    assert cfg.frames.num_frames == 32 and cfg.frames.size == 64 and cfg.frames.split_mode == "official"
    assert cfg.train.epochs == 30 and cfg.train.min_epochs == 0


# ----------------------------------------------------------------------------------------------------------------
def _balanced_cv(features: np.ndarray, y: np.ndarray) -> float:
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000, class_weight="balanced"))
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(clf, features, y, cv=cv, scoring="balanced_accuracy").mean())


def test_classes_differ_in_motion_not_in_single_frames(small_set):
    rows = _rows(small_set)
    X = np.stack([
        _sample(small_set / "videos" / f"{r['youtube_id']}.mp4", float(r["time_start"]), float(r["time_end"]))
        for r in rows
    ])  # (N, 16, 32, 32)
    y = np.array([r["label"] == DUNKING for r in rows], dtype=int)
    n = len(X)

    middle = _balanced_cv(X[:, NUM_FRAMES // 2].reshape(n, -1), y)  # what a single-frame model sees
    # any frame: every frame is a sample, folds keep a clip's frames together
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000, class_weight="balanced"))
    groups = np.repeat(np.arange(n), NUM_FRAMES)
    pred = cross_val_predict(clf, X.reshape(n * NUM_FRAMES, -1), np.repeat(y, NUM_FRAMES), cv=GroupKFold(5),
                             groups=groups)
    any_frame = balanced_accuracy_score(np.repeat(y, NUM_FRAMES), pred)

    coarse = X.reshape(n, NUM_FRAMES, 8, 4, 8, 4).mean((3, 5))  # 8x8: camera shake and noise average out
    diffs = np.abs(np.diff(coarse, axis=1)).reshape(n, -1)  # frame-difference stack
    energy = np.abs(np.diff(X, axis=1)).mean((2, 3))  # motion energy per frame pair
    temporal_diffs, temporal_energy = _balanced_cv(diffs, y), _balanced_cv(energy, y)
    report = dict(middle=middle, any_frame=any_frame, diffs=temporal_diffs, energy=temporal_energy)
    assert middle < 0.7 and any_frame < 0.7, report
    assert temporal_diffs > 0.85 and temporal_energy > 0.85, report
    assert min(temporal_diffs, temporal_energy) - max(middle, any_frame) > 0.2, report


def test_ground_truth_states_carry_no_single_frame_class(tmp_path):
    """Independent of pixels: the generator's own per-frame state (player, ball, rim and camera positions, jump
    height, facing), in screen coordinates, barely tells the classes apart one frame at a time, while the
    sequence of states does."""
    params = demo_data._check_params(n_dribbling=60, n_dunking=60, seed=11, width=320, height=240, fps=25,
                                     duration=12.0, clip_len=10.0, extra_classes=0)
    feats, labels = [], []
    for spec in demo_data.plan_clips(params):
        times = spec.time_start + (np.arange(NUM_FRAMES) + 0.5) * (spec.time_end - spec.time_start) / NUM_FRAMES
        s = clip_states(spec, times)
        ph = s["player_height"]
        feats.append(np.stack([s["player_x"] / ph, s["rim_x"] / ph, s["lift"] / ph, s["ball_x"] / ph,
                               s["ball_y"] / ph, s["facing"]], axis=1))
        labels.append(int(spec.label == DUNKING))
    F, y = np.stack(feats), np.array(labels)  # (N, 16, 6)
    n = len(F)
    groups = np.repeat(np.arange(n), NUM_FRAMES)
    forest = RandomForestClassifier(n_estimators=100, min_samples_leaf=5, random_state=0, n_jobs=1)
    pred = cross_val_predict(forest, F.reshape(n * NUM_FRAMES, -1),
                             np.repeat(y, NUM_FRAMES), cv=GroupKFold(5), groups=groups)
    single = balanced_accuracy_score(np.repeat(y, NUM_FRAMES), pred)
    sequence = _balanced_cv(np.abs(np.diff(F, axis=1)).reshape(n, -1), y)
    assert single < 0.7, single
    assert sequence > 0.95, sequence
