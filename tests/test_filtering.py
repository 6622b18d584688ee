"""The filter's verdicts on files made broken on purpose, and its bookkeeping (inputs, quarantine, re-use of
earlier verdicts, the two-class rule)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tasks.lib import filtering
from tasks.lib.filtering import CheckResult, FilterItem, check_video
from tasks.lib.media import ffmpeg_exe
from tests.support.stages import write_download_report
from tests.support.videos import make_counter_video


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def scramble(src: Path, dst: Path, fraction: float, seed: int = 0) -> Path:
    """Random bytes over ``fraction`` of the file, from its middle on."""
    data = bytearray(src.read_bytes())
    n = int(len(data) * fraction)
    mid = len(data) // 2
    data[mid : mid + n] = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def break_packets(src: Path, dst: Path, indices: list[int]) -> Path:
    """Overwrite the NAL length prefix of the given video packets: the decoder rejects exactly those packets with
    "Invalid NAL unit size", the damage of the real corrupted__decord_corrupted.mp4."""
    import av

    with av.open(str(src)) as c:
        pos = [pk.pos for pk in c.demux(c.streams.video[0]) if pk.size]
    data = bytearray(src.read_bytes())
    for i in indices:
        data[pos[i] : pos[i] + 4] = b"\xff\xff\xff\xff"
    dst.write_bytes(bytes(data))
    return dst


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("filter")
    ok = make_counter_video(d / "ok.mp4", 60, width=160, height=120)
    fast = make_counter_video(d / "fast.mp4", 60, width=160, height=120, extra=["-movflags", "+faststart"])
    f = {"ok": ok}
    f["empty"] = d / "empty.mp4"
    f["empty"].write_bytes(b"")
    f["text"] = d / "text.mp4"
    f["text"].write_text("this is a text file renamed to .mp4\n" * 50)
    f["html"] = d / "page.mp4"
    f["html"].write_text("<!doctype html><html><body>Video unavailable</body></html>\n")
    data = ok.read_bytes()
    f["half"] = d / "half.mp4"  # moov (the index) is at the end: the first half is a header without an index
    f["half"].write_bytes(data[: len(data) // 2])
    data = fast.read_bytes()
    f["half_faststart"] = d / "half_faststart.mp4"  # index complete, half the frames missing
    f["half_faststart"].write_bytes(data[: len(data) // 2])
    f["audio"] = d / "audio.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac", str(f["audio"]))
    f["one_frame"] = make_counter_video(d / "one.mp4", 1, width=160, height=120)
    f["corrupt"] = scramble(fast, d / "corrupt.mp4", 0.10)
    gop = make_counter_video(d / "gop50.mp4", 150, width=160, height=120, gop=50)
    f["copied_cut"] = d / "copied_cut.mp4"  # starts between keyframes: an edit list hides the first frames
    ffmpeg("-ss", "1.3", "-i", str(gop), "-c", "copy", "-t", "2", str(f["copied_cut"]))
    f["one_bad_packet"] = break_packets(fast, d / "one_bad_packet.mp4", [30])
    f["bad_packets"] = break_packets(fast, d / "bad_packets.mp4", [10, 20, 30, 40])  # > 5% of 60
    return f


@pytest.mark.parametrize("name, reason", [
    ("empty", "empty_file"),
    ("text", "unreadable"),
    ("html", "unreadable"),
    ("half", "truncated"),
    ("half_faststart", "truncated"),
    ("audio", "no_video_stream"),
    ("one_frame", "zero_duration"),
    ("corrupt", "corrupt"),
    ("bad_packets", "corrupt"),
])
def test_unusable_files_get_their_reason(files, name, reason):
    r = check_video(files[name])
    assert not r.ok and r.reason == reason, r
    assert r.message and reason in filtering.REASONS


def test_a_good_file_is_kept_with_its_true_facts(files):
    r = check_video(files["ok"])
    assert r.ok and r.reason == "" and r.message == ""
    assert (r.frames, r.packets, r.width, r.height, r.codec) == (60, 60, 160, 120, "h264")
    assert r.duration == pytest.approx(2.4, abs=0.01) and r.fps == pytest.approx(25.0, abs=0.1)


def test_a_stream_copied_cut_is_a_good_file(files):
    """Frames before an MP4 edit list's start are decoded but never shown: they are not "missing frames"."""
    r = check_video(files["copied_cut"])
    assert r.ok and r.message == "", r
    assert r.frames == r.packets and 50 <= r.frames <= 55


def test_a_bad_packet_is_tolerated_and_noted(files):
    """Policy: a packet or two that fail to decode in an otherwise good file (as in the real
    corrupted__decord_corrupted.mp4) keep the file; the report says how many."""
    r = check_video(files["one_bad_packet"])
    assert r.ok, r
    assert (r.decode_errors, r.frames, r.packets) == (1, 59, 60)
    assert r.message == "1 of 60 packets gave no frame (tolerated)"


# -- inputs ---------------------------------------------------------------------------------------------------------
def _write_report(data_dir: Path, rows: list[dict]) -> None:
    cols = ["youtube_id", "label", "split", "status", "reason", "path", "message", "time_start", "time_end", "clip_id"]
    write_download_report(data_dir, rows, cols)


def _clip_file(data_dir: Path, slug: str, name: str) -> Path:
    p = data_dir / "raw" / slug / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_inputs_come_from_the_download_report(tmp_path):
    _clip_file(tmp_path, "aa", "id1_000000_000010.mp4")
    _clip_file(tmp_path, "bb", "id3_000000_000010.mp4")
    (tmp_path.parent / "outside.mp4").write_bytes(b"x")
    base = {"reason": "", "message": "", "time_start": "0", "time_end": "10"}
    _write_report(tmp_path, [
        {**base, "youtube_id": "id1", "label": "aa", "split": "train", "status": "downloaded",
         "path": "raw/aa/id1_000000_000010.mp4", "clip_id": "id1_000000_000010"},
        {**base, "youtube_id": "id2", "label": "aa", "split": "val", "status": "skipped",
         "path": "raw/aa/id2_000000_000010.mp4", "clip_id": "id2_000000_000010"},  # reported but not on disk
        {**base, "youtube_id": "id3", "label": "bb", "split": "train", "status": "failed", "path": ""},
        {**base, "youtube_id": "id4", "label": "zz", "split": "train", "status": "downloaded",
         "path": "raw/zz/id4_000000_000010.mp4"},  # class not in the config
        {**base, "youtube_id": "id5", "label": "bb", "split": "train", "status": "downloaded",
         "path": "../outside.mp4"},  # escapes data_dir: never touched
    ])
    got = filtering.filter_inputs(tmp_path, ["aa", "bb"])
    assert got.source == "download.csv"
    assert [(i.rel, i.label, i.split, i.clip_id) for i in got.items] == [
        ("raw/aa/id1_000000_000010.mp4", "aa", "train", "id1_000000_000010")]
    assert [i.clip_id for i in got.missing] == ["id2_000000_000010"]
    assert any("escapes" in n for n in got.notes) and any("not in the config" in n for n in got.notes)


def test_without_a_report_raw_is_scanned(tmp_path):
    _clip_file(tmp_path, "aa", "abc_000005_000015.mp4")
    _clip_file(tmp_path, "aa", "copied by hand.mkv")
    _clip_file(tmp_path, "aa", ".abc.part-1234.mp4")  # an interrupted download
    _clip_file(tmp_path, "aa", "notes.txt")
    _clip_file(tmp_path, "cc", "other_000000_000010.mp4")  # not a configured class
    got = filtering.filter_inputs(tmp_path, ["aa", "bb"])
    assert got.source == "raw/ scan" and got.notes
    assert [(i.rel, i.youtube_id, i.time_start) for i in got.items] == [
        ("raw/aa/abc_000005_000015.mp4", "abc", "5"), ("raw/aa/copied by hand.mkv", "", "")]


# -- acting on verdicts ------------------------------------------------------------------------------------------------
def test_quarantine_moves_never_deletes(tmp_path):
    first = _clip_file(tmp_path, "dunking_basketball", "a_000000_000010.mp4")
    dest = filtering.quarantine_file(tmp_path, first, "dunking basketball", "unreadable", "not a video")
    assert not first.exists() and dest == tmp_path / "quarantine" / "dunking_basketball" / "a_000000_000010.mp4"
    assert dest.read_bytes() == b"x"
    assert dest.with_name(dest.name + ".reason.txt").read_text() == "unreadable: not a video\n"
    again = _clip_file(tmp_path, "dunking_basketball", "a_000000_000010.mp4")  # downloaded again, still bad
    dest2 = filtering.quarantine_file(tmp_path, again, "dunking basketball", "truncated", "cut")
    assert dest2.name == "a_000000_000010.1.mp4" and dest.exists()
    assert filtering.remove_empty_dirs(tmp_path / "raw") == [tmp_path / "raw" / "dunking_basketball"]


def test_previous_verdicts_are_reused_only_while_the_file_is_unchanged(tmp_path, files):
    p = _clip_file(tmp_path, "aa", "k_000000_000010.mp4")
    item = FilterItem(p, "raw/aa/k_000000_000010.mp4", "aa", "train", "k_000000_000010")
    row = filtering.result_row(item, CheckResult(ok=True, frames=3), tmp_path, stamp=filtering.file_stamp(p))
    prev = {item.rel: {k: str(v) for k, v in row.items()}}
    assert filtering.reusable_row(item, prev, tmp_path)["status"] == "kept"
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))  # touched: e.g. downloaded again
    assert filtering.reusable_row(item, prev, tmp_path) is None
    prev[item.rel].update(size=str(p.stat().st_size), mtime_ns=str(p.stat().st_mtime_ns), check_version="0")
    assert filtering.reusable_row(item, prev, tmp_path) is None  # checked by an older check
    # quarantined earlier and not back in raw/: the verdict stands without looking at the file again
    dest = filtering.quarantine_file(tmp_path, p, "aa", "corrupt", "x")
    bad = filtering.result_row(item, CheckResult.bad("corrupt", "x"), tmp_path, stamp=(1, 1), moved_to=dest)
    prev = {item.rel: {k: str(v) for k, v in bad.items()}}
    assert filtering.reusable_row(item, prev, tmp_path)["path"] == "quarantine/aa/k_000000_000010.mp4"


def test_fewer_than_two_usable_classes_fail_with_counts():
    rows = [{"label": "aa", "status": "kept", "reason": ""}, {"label": "aa", "status": "kept", "reason": ""},
            {"label": "bb", "status": "quarantined", "reason": "corrupt"}]
    s = filtering.summarize(rows, ["aa", "bb"])
    assert s.failed and "'aa': 2" in s.message and "'bb': 0" in s.message
    assert s.counts["kept"] == 2 and s.counts["quarantined_corrupt"] == 1 and s.counts["kept[bb]"] == 0
    rows.append({"label": "bb", "status": "kept", "reason": ""})
    assert not filtering.summarize(rows, ["aa", "bb"]).failed


def test_huge_frames_are_refused_before_any_decoding(tmp_path):
    """One 2 s 8K clip took the frames stage to 1.51 GB RSS: frames above 4096x2304 are a recorded reason."""
    huge = tmp_path / "huge.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:size=4352x2448:rate=5", "-t", "0.4", "-c:v", "libx264",
           "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(huge))
    r = check_video(huge)
    assert not r.ok and r.reason == "too_large" and "4352x2448" in r.message, r
    four_k = tmp_path / "uhd.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:size=3840x2160:rate=5", "-t", "0.4", "-c:v", "libx264",
           "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(four_k))
    assert check_video(four_k).ok
