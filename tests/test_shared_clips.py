"""Every real clip in ../shared/clips through the filter check and the sampler, with the outcome each should have
(skipped on machines without ../shared). Per the filter policy all of them are usable: the corrupted H.264 clip
loses one frame of 50 to a rejected packet and is kept; box.mp4's logged decode errors cost no frame."""
from __future__ import annotations

import csv
import subprocess

import numpy as np
import pytest

from tasks.lib.filtering import check_video
from tasks.lib.media import ffmpeg_exe, probe
from tasks.lib.sampling import resized_dims, sample_clip_info

pytestmark = pytest.mark.shared

N, SIZE = 8, 64


def manifest(shared_clips) -> list[dict[str, str]]:
    with open(shared_clips / "MANIFEST.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="module")
def results(shared_clips):
    """(check, frames, info) per clip, computed once."""
    out = {}
    for row in manifest(shared_clips):
        path = shared_clips / row["file"]
        out[row["file"]] = (check_video(path), *sample_clip_info(path, N, SIZE, threads=0))
    return out


def test_every_clip_is_kept_and_sampled(results):
    assert len(results) >= 30
    for name, (check, frames, info) in results.items():
        assert check.ok, (name, check)
        assert frames.shape == (N, SIZE, SIZE, 3) and frames.dtype == np.uint8, name
        assert info.n_frames == check.frames, name  # filter and sampler agree on the true frame count
        assert info.duration > 0 and info.fps > 0, name
        assert frames.std() > 1, name  # real pictures, not a blank


def test_damaged_clips_follow_the_policy(results):
    check, _, info = results["edge_cases/corrupted__decord_corrupted.mp4"]
    assert (check.decode_errors, check.frames, check.packets) == (1, 49, 50) and "tolerated" in check.message
    assert info.n_frames == 49
    # box.mp4 logs H.264 errors at its start ("A non-intra slice in an IDR NAL unit") yet loses no frame; its
    # last packet lies past the edit list's end (a discard packet) and is not a frame of the clip
    check, _, info = results["formats/box__opencv_box.mp4"]
    assert (check.frames, check.packets, check.message, info.n_frames) == (455, 455, "", 455)


def test_header_frame_counts_that_lie_are_not_used(results, shared_clips):
    cinepak = "formats/tree__opencv_cinepak.avi"
    assert probe(shared_clips / cinepak).frames == 444  # what the AVI header claims
    _, _, info = results[cinepak]
    assert info.n_frames == 68 and info.indices == [4, 12, 21, 29, 38, 46, 55, 63]


def test_containers_without_duration_and_gifs(results, shared_clips):
    webm = "edge_cases/no_duration__moviepy_vp9_opus.webm"
    assert probe(shared_clips / webm).duration == 0.0
    _, _, info = results[webm]
    assert info.n_frames == 74 and info.duration == pytest.approx(74 / 14.985, abs=0.1)
    for gif, n in [("action/cricket_shot__ucf101_v_CricketShot_g04_c01_rgb.gif", 79),
                   ("action/basketball_dribble__spacejam_true_dribble.gif", 170)]:
        assert results[gif][2].n_frames == n and results[gif][2].codec == "gif"


def _ffmpeg_picture(path, size: int) -> np.ndarray:
    """The ffmpeg CLI's autorotated first frame, short-side resized and centre-cropped like ours."""
    import av

    out = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "image2pipe",
                          "-c:v", "png", "-"], check=True, capture_output=True).stdout
    import io

    with av.open(io.BytesIO(out)) as c:
        frame = next(c.decode(video=0))
    nw, nh = resized_dims(frame.width, frame.height, size)
    rgb = frame.reformat(width=nw, height=nh, format="rgb24", interpolation="AREA").to_ndarray()
    y0, x0 = (nh - size) // 2, (nw - size) // 2
    return rgb[y0 : y0 + size, x0 : x0 + size]


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_rotated_clips_come_out_upright(results, shared_clips, rotation):
    name = f"edge_cases/rot{rotation}__decord_video_{rotation}.mov"
    _, frames, info = results[name]
    # the file's display matrix says -90 for "video_90": turned 90 degrees clockwise, i.e. 270 counter-clockwise
    portrait = rotation in (90, 270)
    assert (info.width < info.height) == portrait
    ref = _ffmpeg_picture(shared_clips / name, SIZE).astype(int)
    ours = frames[0].astype(int)
    err = np.abs(ours - ref).mean()
    wrong = min(np.abs(np.rot90(ours, k) - ref).mean() for k in (1, 2, 3))
    assert err < 6 and wrong > 3 * err, (err, wrong)
