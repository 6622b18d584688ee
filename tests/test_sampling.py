"""The frame sampler on videos made here: exact frame indices read back from a counter burned into each frame
(CFR, long GOP, VFR, no container duration, GIF, fewer frames than N, frames lost at the end), orientation
against the ffmpeg CLI's autorotation, and the errors it raises for things that are not videos."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from tasks.lib import sampling
from tasks.lib.media import encode_video, ffmpeg_exe, probe
from tasks.lib.sampling import SamplingError, sample_clip, sample_clip_info, segment_centres
from tests.support.videos import make_counter_video, read_counter

# 160 px wide: the counter's 10 blocks are exactly 16 px, so they stay readable after a square resize to 64
SIDE, SIZE = 160, 64


def ffmpeg(*args: str, stdout=None) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True, stdout=stdout)


def counters(frames: np.ndarray) -> list[int]:
    return [read_counter(f) for f in frames]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("sampling")
    v = {
        "cfr": make_counter_video(d / "cfr.mp4", 100, width=SIDE, height=SIDE),
        "long_gop": make_counter_video(d / "long_gop.mp4", 150, width=SIDE, height=SIDE, gop=250),
        "short": make_counter_video(d / "short.mp4", 5, width=SIDE, height=SIDE),
    }
    # VFR: 40 frames at 25 fps, then 60 frames at ~8.3 fps; timestamps rewritten, every frame kept
    ffmpeg("-i", str(v["cfr"]), "-vf", "setpts='if(lt(N,40),N*0.04,1.6+(N-40)*0.12)/TB'",
           "-fps_mode", "passthrough", "-c:v", "libx264", "-preset", "veryfast", str(d / "vfr.mp4"))
    v["vfr"] = d / "vfr.mp4"
    # Matroska written to a pipe cannot go back to write its duration or cues: a container without a duration
    with open(d / "nodur.mkv", "wb") as f:
        ffmpeg("-i", str(v["cfr"]), "-c:v", "libx264", "-preset", "veryfast", "-f", "matroska", "pipe:1", stdout=f)
    v["nodur"] = d / "nodur.mkv"
    ffmpeg("-i", str(v["cfr"]), "-c:v", "gif", str(d / "anim.gif"))
    v["gif"] = d / "anim.gif"
    fast = make_counter_video(d / "faststart.mp4", 60, width=SIDE, height=SIDE, extra=["-movflags", "+faststart"])
    data = fast.read_bytes()
    (d / "cut.mp4").write_bytes(data[: len(data) // 2])  # index complete, media data cut: trailing frames lost
    v["cut"] = d / "cut.mp4"
    # a stream-copied cut starting between keyframes (how trimmed downloads are often made): the MP4 edit list
    # hides the frames from the keyframe before the cut to the cut, which must be decoded but are not shown
    gop = make_counter_video(d / "gop50.mp4", 150, width=SIDE, height=SIDE, gop=50)
    ffmpeg("-ss", "1.3", "-i", str(gop), "-c", "copy", "-t", "2", str(d / "copied_cut.mp4"))
    v["copied_cut"] = d / "copied_cut.mp4"
    return v


# -- segment_centres -------------------------------------------------------------------------------------------------
def test_segment_centres_is_the_frame_under_each_segment_centre():
    assert segment_centres(100, 4) == [12, 37, 62, 87]
    assert segment_centres(250, 16)[:3] == [7, 23, 39]
    for n, k in [(100, 16), (7, 3), (301, 32), (16, 16), (17, 16)]:
        got = segment_centres(n, k)
        assert len(got) == k and got == sorted(got)
        for i, idx in enumerate(got):
            centre = (i + 0.5) * n / k
            assert idx <= centre < idx + 1  # the frame whose span contains the centre


def test_segment_centres_repeats_the_nearest_frame_when_too_few():
    assert segment_centres(3, 8) == [0, 0, 0, 1, 1, 2, 2, 2]
    assert segment_centres(1, 4) == [0, 0, 0, 0]
    assert segment_centres(16, 16) == list(range(16))


@pytest.mark.parametrize("n, k", [(0, 4), (10, 0), (-1, 2)])
def test_segment_centres_rejects_empty_input(n, k):
    with pytest.raises(ValueError):
        segment_centres(n, k)


# -- exact frames ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, n_frames",
                         [("cfr", 100), ("long_gop", 150), ("vfr", 100), ("nodur", 100), ("gif", 100)])
def test_exact_frame_indices(videos, name, n_frames):
    frames, info = sample_clip_info(videos[name], 8, SIZE, threads=1)
    assert frames.shape == (8, SIZE, SIZE, 3) and frames.dtype == np.uint8
    assert info.n_frames == n_frames
    assert counters(frames) == segment_centres(n_frames, 8) == info.indices


def test_vfr_file_is_really_variable_and_indexed_by_frame_not_time(videos):
    import av

    with av.open(str(videos["vfr"])) as c:
        s = c.streams.video[0]
        pts = sorted(p.pts for p in c.demux(s) if p.size)
    steps = {b - a for a, b in zip(pts, pts[1:])}
    assert len(steps) >= 2  # two frame durations
    _, info = sample_clip_info(videos["vfr"], 8, SIZE, threads=1)
    assert 1.6 + 59 * 0.12 < info.duration <= 1.6 + 60 * 0.12  # last timestamp + one frame duration
    # segments are equal in frames: 3 of 8 centres fall in the first 40 (fast) frames, where centres equal in
    # time would put only 1 of 8 (the first 1.6 s of 8.7 s)
    assert sum(i < 40 for i in info.indices) == 3


def test_no_duration_container_gets_its_duration_from_the_packets(videos):
    assert probe(videos["nodur"]).duration == 0.0  # the container does not know
    _, info = sample_clip_info(videos["nodur"], 4, SIZE, threads=1)
    assert info.duration == pytest.approx(4.0, abs=0.05) and info.fps == pytest.approx(25.0, abs=0.5)


def test_fewer_frames_than_requested_repeats_the_nearest(videos):
    frames = sample_clip(videos["short"], 8, SIZE, threads=1)
    assert counters(frames) == [0, 0, 1, 2, 2, 3, 4, 4] == segment_centres(5, 8)


def test_matches_ffmpeg_select_filter(videos):
    """The stack notes' other exact method, as an independent reference, on the long-GOP file."""
    idx = segment_centres(150, 6)
    expr = "+".join(f"eq(n\\,{i})" for i in idx)
    out = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", str(videos["long_gop"]), "-vf", f"select={expr}",
         "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True, capture_output=True).stdout
    ref = np.frombuffer(out, np.uint8).reshape(-1, SIDE, SIDE, 3)
    assert counters(ref) == idx == counters(sample_clip(videos["long_gop"], 6, SIZE, threads=1))


def test_lost_trailing_frames_are_handled_by_the_decoded_count(videos, monkeypatch):
    frames, info = sample_clip_info(videos["cut"], 8, SIZE, threads=1)
    assert info.n_frames < info.n_packets  # the last packet is cut off: its frame never comes
    assert counters(frames) == segment_centres(info.n_frames, 8) == info.indices
    assert info.decode_passes == 1  # the spare frames covered it
    monkeypatch.setattr(sampling, "LOST_FRAMES_COVERED", 0)
    frames2, info2 = sample_clip_info(videos["cut"], 8, SIZE, threads=1)
    assert info2.decode_passes == 2 and np.array_equal(frames, frames2)


def test_stream_copied_cut_counts_only_the_frames_it_shows(videos):
    import av

    with av.open(str(videos["copied_cut"])) as c:
        shown = [read_counter(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
        c.seek(0)
        hidden = sum(p.is_discard for p in c.demux(c.streams.video[0]) if p.size)
    assert hidden > 0 and shown[0] > 0  # the file really starts mid-GOP
    frames, info = sample_clip_info(videos["copied_cut"], 8, SIZE, threads=1)
    assert (info.n_frames, info.n_packets, info.decode_passes) == (len(shown), len(shown), 1)
    assert counters(frames) == [shown[i] for i in segment_centres(len(shown), 8)]


def test_big_files_are_read_twice_instead_of_buffered(videos, monkeypatch):
    ref = sample_clip(videos["long_gop"], 8, SIZE, threads=1)
    monkeypatch.setattr(sampling, "PACKET_BUFFER_BYTES", 0)
    assert np.array_equal(sample_clip(videos["long_gop"], 8, SIZE, threads=1), ref)


def test_threads_do_not_change_the_frames(videos):
    one, two = (sample_clip(videos["cfr"], 8, SIZE, threads=t) for t in (1, 2))
    assert np.array_equal(one, two)


# -- geometry ----------------------------------------------------------------------------------------------------------
def _quadrant_frames(n: int = 6, w: int = 128, h: int = 96):
    """Red top-left quadrant on blue: any rotation or flip moves the red to another quadrant."""
    for _ in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[..., 2] = 200
        f[: h // 2, : w // 2] = (220, 30, 30)
        yield f


def red_quadrant(img: np.ndarray) -> tuple[int, int]:
    h, w = img.shape[:2]
    q = {(r, c): img[r * h // 2 : (r + 1) * h // 2, c * w // 2 : (c + 1) * w // 2, 0].mean()
         for r in (0, 1) for c in (0, 1)}
    return max(q, key=q.get)


def test_resize_is_short_side_then_centre_crop(tmp_path):
    p = encode_video(_quadrant_frames(), tmp_path / "wide.mp4")  # 128x96 -> 85x64 -> crop 64x64
    frames, info = sample_clip_info(p, 2, 64, threads=1)
    assert frames.shape == (2, 64, 64, 3) and (info.width, info.height) == (128, 96)
    # the red quadrant spans x < 64 of 128: after the crop (x from 10 to 74 of 85) it covers x < ~32
    red_cols = np.flatnonzero(frames[0, 5, :, 0] > 128)
    assert red_cols.min() == 0 and 28 <= red_cols.max() <= 34


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_matches_ffmpeg_autorotate(tmp_path, rotation):
    src = encode_video(_quadrant_frames(), tmp_path / "src.mp4")
    rotated = tmp_path / f"rot{rotation}.mp4"
    ffmpeg("-display_rotation", str(rotation), "-i", str(src), "-c", "copy", str(rotated))
    assert probe(rotated).rotation == rotation
    # the ffmpeg CLI's picture (autorotate is on by default) at full size, first frame
    w, h = (96, 128) if rotation in (90, 270) else (128, 96)
    out = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(rotated), "-frames:v", "1", "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    ref = np.frombuffer(out, np.uint8).reshape(h, w, 3)
    frames, info = sample_clip_info(rotated, 2, 64, threads=1)
    assert (info.width, info.height) == (w, h) and info.rotation == rotation
    assert red_quadrant(frames[0]) == red_quadrant(ref) != (0, 0)


def test_non_square_pixels_are_stretched_to_display_shape(tmp_path):
    src = encode_video(_quadrant_frames(w=64, h=96), tmp_path / "anamorphic.mp4", extra=["-vf", "setsar=2"])
    _, info = sample_clip_info(src, 2, 32, threads=1)
    assert (info.width, info.height) == (128, 96)


# -- what is not a video ---------------------------------------------------------------------------------------------
def test_sampling_errors_have_reasons(tmp_path, videos):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "text.mp4"
    text.write_text("<html>not a video</html>\n" * 20)
    audio = tmp_path / "audio.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", str(audio))
    data = videos["cfr"].read_bytes()  # moov at the end: half a file has no index
    half = tmp_path / "half.mp4"
    half.write_bytes(data[: len(data) // 2])
    cases = {empty: "empty_file", text: "unreadable", audio: "no_video_stream", half: "truncated",
             tmp_path / "absent.mp4": "missing"}
    for path, reason in cases.items():
        with pytest.raises(SamplingError) as e:
            sample_clip(path, 4, 32)
        assert e.value.reason == reason, (path.name, e.value)
