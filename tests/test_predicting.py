"""Prediction for real workloads on real files: inputs (folders, globs, lists), the filter's checks, frames identical
to training's, windows over long videos, streaming in input order in bounded batches, and the result files."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tasks.lib.predicting import (
    Item,
    ResultWriter,
    expand_inputs,
    iter_segment_frames,
    plan_segments,
    predict_stream,
)
from tasks.lib.sampling import sample_clip, segment_centres
from tests.support.videos import make_counter_video, read_counter

T, S = 4, 32
CLASSES = ["dark", "bright"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    (d / "in").mkdir()
    out = {f"v{i}": make_counter_video(d / "in" / f"v{i}.mp4", 30 + 10 * i, width=64, height=48, seed=i)
           for i in range(3)}
    (d / "in" / "sub").mkdir()
    out["deep"] = make_counter_video(d / "in" / "sub" / "deep.webm", 20, width=64, height=48, codec="libvpx-vp9")
    (d / "in" / "notes.md").write_text("not a video")
    (d / "in" / ".hidden.mp4").write_bytes(b"")
    import matplotlib.pyplot as plt

    plt.imsave(d / "picture.png", np.zeros((48, 64, 3), np.uint8) + 120)
    out["png"] = d / "bad" / "picture.mp4"  # a PNG renamed .mp4
    out["png"].parent.mkdir()
    out["png"].write_bytes((d / "picture.png").read_bytes())
    out["one_frame"] = make_counter_video(d / "bad" / "one.mp4", 1, width=64, height=48)
    data = out["v2"].read_bytes()
    out["truncated"] = d / "bad" / "truncated.mp4"  # moov is at the end: half a file has no index
    out["truncated"].write_bytes(data[: len(data) // 2])
    out["long"] = make_counter_video(d / "long.mp4", 260, fps=25, width=80, height=80, seed=7)
    out["dir"] = d
    return out


def test_inputs_expand_in_order(clips, tmp_path):
    d = clips["dir"]
    listed = tmp_path / "list.txt"
    listed.write_text(f"# a comment\n{clips['v1']}\n\n{clips['v0']}\n")
    table = d / "in" / "table.csv"  # relative entries are relative to the list's folder
    table.write_text('label,path\nx,v2.mp4\ny,"sub/deep.webm"\n')
    (tmp_path / "empty").mkdir()
    items = list(expand_inputs([str(d / "in"), str(listed), str(table), str(d / "in" / "v*.mp4"),
                                str(tmp_path / "nope.mp4"), str(tmp_path / "empty"), str(tmp_path / "*.webm"), ""]))
    paths = [i.path for i in items]
    folder = [str(clips[k]) for k in ("deep", "v0", "v1", "v2")]
    folder.sort()
    assert paths[:4] == folder  # recursive, video suffixes only, no hidden files, sorted
    assert paths[4:6] == [str(clips["v1"]), str(clips["v0"])]
    assert paths[6:8] == [str(d / "in" / "v2.mp4"), str(d / "in" / "sub/deep.webm")]
    assert paths[8:11] == [str(clips[k]) for k in ("v0", "v1", "v2")]
    assert [(i.path, i.error) for i in items[11:]] == [
        (str(tmp_path / "nope.mp4"), "file not found"),
        (str(tmp_path / "empty"), items[12].error),
        (str(tmp_path / "*.webm"), "no file matches this pattern"),
        ("", "empty path"),  # not the current folder
    ]
    assert "no video files" in items[12].error and all(i.error is None for i in items[:11])


def test_segments_cover_the_video():
    whole = plan_segments(250, 25.0, 8)
    assert [s.indices for s in whole] == [tuple(segment_centres(250, 8))] and whole[0].end == 10.0
    win = plan_segments(260, 25.0, 4, window=2.0, stride=1.0)
    starts = [s.indices[0] - segment_centres(50, 4)[0] for s in win]
    assert starts == [*range(0, 201, 25), 210]  # the last window is aligned to the end
    assert all(s.end - s.start == pytest.approx(2.0) for s in win) and win[-1].end == pytest.approx(10.4)
    assert all(s.indices == tuple(s.indices[0] - segment_centres(50, 4)[0] + c for c in segment_centres(50, 4))
               for s in win)
    assert len(plan_segments(30, 25.0, 4, window=2.0)) == 1  # shorter than a window: the whole video
    with pytest.raises(ValueError):
        plan_segments(30, 25.0, 4, window=-1.0)


def test_frames_are_exactly_trainings(clips):
    for key in ("v0", "v2", "deep"):
        from tasks.lib.filtering import check_video

        n = check_video(clips[key]).frames
        [(k, frames)] = list(iter_segment_frames(clips[key], plan_segments(n, 25.0, 8), 40))
        assert k == 0 and np.array_equal(frames, sample_clip(clips[key], 8, 40)), key


def test_window_frames_are_the_planned_ones(clips):
    segs = plan_segments(260, 25.0, 4, window=2.0, stride=1.0)
    got = list(iter_segment_frames(clips["long"], segs, 80))  # square: no crop
    assert [k for k, _ in got] == list(range(len(segs)))
    for (k, frames), seg in zip(got, segs):
        assert [read_counter(f) for f in frames] == list(seg.indices)


class Recorder:
    """A real (deterministic) classifier of uint8 clips: P(bright) grows with the mean pixel value. It records
    each batch size, and how many results had been consumed when each batch ran."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.seen_before: list[int] = []
        self.consumed = 0

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        assert frames.dtype == np.uint8 and frames.shape[1:] == (T, S, S, 3)
        self.batches.append(len(frames))
        self.seen_before.append(self.consumed)
        p = frames.reshape(len(frames), -1).mean(1) / 255.0
        return np.stack([1 - p, p], axis=1)


def test_stream_in_input_order_with_errors_in_place(clips):
    rec = Recorder()
    inputs = [clips["v0"], clips["png"], clips["v1"], clips["one_frame"], clips["truncated"], clips["v2"],
              Item("gone.mp4", "file not found"), clips["deep"]]
    results = []
    for r in predict_stream(rec, CLASSES, map(lambda x: x if isinstance(x, Item) else str(x), inputs),
                            num_frames=T, image_size=S, batch_size=2, top_k=1):
        results.append(r)
        rec.consumed += 1
    assert [r["path"] for r in results] == [x.path if isinstance(x, Item) else str(x) for x in inputs]
    errors = {r["path"].rsplit("/", 1)[-1]: r.get("error", "") for r in results}
    assert errors["picture.mp4"].startswith(("zero_duration", "unreadable"))
    assert errors["one.mp4"].startswith("zero_duration")
    assert errors["truncated.mp4"].startswith("truncated")
    assert errors["gone.mp4"] == "file not found"
    good = [r for r in results if "error" not in r]
    assert len(good) == 4 and rec.batches == [2, 2] and sum(rec.batches) == 4
    assert rec.seen_before[1] > 0, "results must stream out before the last batch runs"
    for r in good:
        p = r["probabilities"]
        assert r["label"] == max(p, key=p.get) and sum(p.values()) == pytest.approx(1.0)
        assert r["top_k"] == [{"label": r["label"], "p": p[r["label"]]}]
        assert r["p_positive"] == p["bright"] and "segments" not in r


def test_windows_give_segments_and_their_mean(clips):
    results = list(predict_stream(Recorder(), CLASSES, [str(clips["long"]), str(clips["v0"])], num_frames=T,
                                  image_size=S, batch_size=3, window=2.0, stride=1.0, top_k=2))
    long, short = results
    assert [(s["start"], s["end"]) for s in long["segments"]][:2] == [(0.0, 2.0), (1.0, 3.0)]
    assert len(long["segments"]) == 10 and long["segments"][-1]["end"] == pytest.approx(10.4)
    mean = np.mean([s["probabilities"]["bright"] for s in long["segments"]])
    assert long["probabilities"]["bright"] == pytest.approx(mean, abs=1e-6)
    assert [t["label"] for t in long["top_k"]] == sorted(CLASSES, key=lambda c: -long["probabilities"][c])
    assert len(short["segments"]) == 1  # 1.2 s: shorter than a window


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_result_files_appear_whole(clips, tmp_path, suffix):
    out = tmp_path / f"results{suffix}"
    results = list(predict_stream(Recorder(), CLASSES, [str(clips["long"]), str(clips["png"])], num_frames=T,
                                  image_size=S, window=4.0, top_k=2))
    w = ResultWriter(out, CLASSES, top_k=2)
    for r in results:
        w.write(r)
    assert not out.exists()  # written under a temporary name until closed
    w.close()
    if suffix == ".jsonl":
        assert [json.loads(line) for line in out.read_text().splitlines()] == results
    else:
        rows = list(csv.DictReader(out.open()))
        n_seg = len(results[0]["segments"])
        assert [r["segment"] for r in rows] == [*map(str, range(n_seg)), "all", ""]
        assert float(rows[n_seg]["p_bright"]) == results[0]["probabilities"]["bright"]
        assert rows[0]["top_k"].count(":") == 2 and rows[-1]["error"] and not rows[-1]["label"]
    with pytest.raises(ValueError, match="jsonl or .csv"):
        ResultWriter(tmp_path / "r.txt", CLASSES)
