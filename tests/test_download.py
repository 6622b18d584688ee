"""Download stage with real yt-dlp, real ffmpeg and a real loopback HTTP server (Range support + fault routes).

The source video carries its frame index burned into every frame (tests/support/videos.py), so a trimmed clip
can be checked to start at exactly ``time_start * fps``.
"""
from __future__ import annotations

import csv
from pathlib import Path

import av
import pytest

from tasks.lib import download as dl
from tasks.lib.annotations import Clip
from tasks.lib.config import DownloadConfig, PipelineConfig
from tasks.lib.media import probe
from tasks.lib.paths import is_partial
from tests.support.http_server import serve_directory
from tests.support.stages import failed_summary
from tests.support.videos import make_counter_video, read_counter

FPS = 25.0
LABEL = "dribbling basketball"


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("src")
    # 10 s; keyframes every 1.6 s, so whole-second cuts fall inside a GOP and a keyframe-snapped cut would show
    make_counter_video(d / "vid00000001.mp4", 250, fps=FPS, width=192, height=144, gop=40)
    make_counter_video(d / "vid00000002.mp4", 250, fps=FPS, width=192, height=144, gop=40, seed=1)
    (d / "textvideo01.mp4").write_text("plain text, not a video\n" * 50)  # .mp4 -> served as video/mp4
    return d


@pytest.fixture(scope="module")
def server(source_dir):
    with serve_directory(source_dir, slow_seconds=4.0) as srv:
        yield srv


def cfg(**kw) -> DownloadConfig:
    base = dict(timeout=1.0, retries=2, retry_backoff=0.05, workers=2)
    base.update(kw)
    return DownloadConfig(**base)


def clip(yid: str = "vid00000001", start: float = 2.0, end: float = 5.0, label: str = LABEL) -> Clip:
    return Clip(yid, label, start, end, "train")


def counters(path: Path) -> list[int]:
    with av.open(str(path)) as c:
        return [read_counter(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def assert_exact_window(path: Path, start: float, end: float) -> None:
    """The clip holds the window's frames and nothing else: a keyframe-snapped stream copy would carry hidden
    pre-roll frames (header count > decoded count) that a packet-counting reader would show."""
    info = probe(path)
    assert info.has_video and info.duration == pytest.approx(end - start, abs=0.05)
    values = counters(path)
    assert abs(values[0] - start * FPS) <= 1, values[:5]
    assert abs(len(values) - (end - start) * FPS) <= 1
    assert values == list(range(values[0], values[0] + len(values)))  # consecutive source frames
    assert info.frames in (0, len(values)), (info.frames, len(values))


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and is_partial(p)]


# -- pure parts --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "message, reason",
    [
        # messages as yt-dlp words them (YouTube extractor, networking, downloader)
        ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable", "unavailable"),
        ("ERROR: [youtube] abcdefghijk: Private video. Sign in if you've been granted access to this video. "
         "Use --cookies-from-browser or --cookies for the authentication.", "private"),
        ("ERROR: [youtube] abcdefghijk: Video unavailable. This video is no longer available because the YouTube "
         "account associated with this video has been terminated.", "removed"),
        ("ERROR: [youtube] abcdefghijk: Video unavailable. This video has been removed by the uploader", "removed"),
        ("ERROR: [youtube] abcdefghijk: Video unavailable. This video is no longer available due to a copyright "
         "claim by Some Label", "removed"),
        ("ERROR: [youtube] abcdefghijk: This video has been removed for violating YouTube's Terms of Service",
         "removed"),
        ("ERROR: [youtube] abcdefghijk: Sign in to confirm your age. This video may be inappropriate for some "
         "users. Use --cookies-from-browser or --cookies for the authentication.", "age_restricted"),
        ("ERROR: [youtube] abcdefghijk: The uploader has not made this video available in your country. This "
         "video is available in US.", "geo_blocked"),
        ("ERROR: [youtube] abcdefghijk: Video unavailable. This video contains content from X, who has blocked it "
         "in your country on copyright grounds", "geo_blocked"),
        ("ERROR: [youtube] abcdefghijk: Sign in to confirm you’re not a bot. Use --cookies-from-browser or "
         "--cookies for the authentication.", "bot_check"),
        ("ERROR: [youtube] abcdefghijk: Sign in to confirm you're not a bot", "bot_check"),
        ("ERROR: [youtube] abcdefghijk: This content isn't available, try again later. The current session has been "
         "rate-limited by YouTube for up to an hour. See https://github.com/yt-dlp/yt-dlp/wiki/Extractors"
         "#this-content-isnt-available-try-again-later", "rate_limited"),
        ("ERROR: unable to download video data: HTTP Error 429: Too Many Requests", "rate_limited"),
        ("ERROR: unable to download video data: HTTP Error 403: Forbidden", "http_error"),
        ("ERROR: [generic] x: Unable to download webpage: HTTP Error 404: Not Found (caused by <HTTPError 404: "
         "Not Found>)", "http_error"),
        ("ERROR: [generic] x: Unable to download webpage: HTTP Error 503: Service Unavailable", "server_error"),
        ("ERROR: [generic] x: Unable to download webpage: HTTPConnectionPool(host='127.0.0.1', port=1): Read timed "
         "out. (read timeout=1.0)", "timeout"),
        ("ERROR: [download] Got error: (\"Connection broken: ConnectionResetError(104, 'Connection reset by "
         "peer')\")", "network"),
        ("ERROR: [generic] x: Unable to download webpage: [Errno 111] Connection refused", "network"),
        ("ERROR: Unsupported URL: https://example.com/private/copyright/page.html", "unsupported_url"),
        ("file:// URLs are disabled by default in yt-dlp for security reasons. Use --enable-file-urls to enable "
         "at your own risk.", "file_urls_disabled"),
        ("ERROR: Postprocessing: Conversion failed!", "ffmpeg_error"),
        # YouTube changed and this yt-dlp no longer follows it
        ("ERROR: [youtube] abcdefghijk: Unable to extract yt initial data; please report this issue on "
         "https://github.com/yt-dlp/yt-dlp/issues?q= , filling out the appropriate issue template. Confirm you are "
         "on the latest version using yt-dlp -U", "extractor_error"),
        ("ERROR: [youtube] abcdefghijk: Failed to extract any player response; please report this issue on "
         "https://github.com/yt-dlp/yt-dlp/issues?q= , filling out the appropriate issue template.", "extractor_error"),
        ("ERROR: [youtube] abcdefghijk: nsig extraction failed: Some formats may be missing", "extractor_error"),
        ("something nobody has seen before", "unknown"),
    ],
)
def test_classify_real_messages(message, reason):
    assert dl.classify_error(message) == reason


def test_only_transient_reasons_are_retried():
    assert dl.TRANSIENT == {"server_error", "timeout", "network"}
    assert all(r in dl.REASONS for r in dl.TRANSIENT)
    assert not dl.is_transient("http_error") and not dl.is_transient("rate_limited")
    assert dl.backoff_delays(3, 0.5) == [0.5, 1.0, 2.0]


def test_ydl_options(tmp_path):
    c = cfg(max_height=240, rate_limit="2M", sleep_interval=1.5)
    o = dl.build_ydl_options(c, "x.%(ext)s", section=(2.0, 5.0), ffmpeg="/bin/ffmpeg")
    assert "enable_file_urls" not in o and o["retries"] == 0 and o["socket_timeout"] == 1.0
    assert o["download_ranges"] == __import__("yt_dlp").utils.download_range_func(None, [(2.0, 5.0)])
    assert o["force_keyframes_at_cuts"] is True and o["ffmpeg_location"] == "/bin/ffmpeg"
    assert "height<=?240" in o["format"] and o["format_sort"][0] == "res:240"
    assert o["ratelimit"] == 2 * 1024 * 1024 and o["sleep_interval"] == 1.5
    whole = dl.build_ydl_options(cfg(allow_file_urls=True), "x", section=None, ffmpeg="f")
    assert whole["enable_file_urls"] is True and "download_ranges" not in whole
    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n")
    assert dl.build_ydl_options(cfg(cookies=cookies), "x", section=None, ffmpeg="f")["cookiefile"] == str(cookies)
    with pytest.raises(ValueError, match="download.cookies"):
        dl.check_options(cfg(cookies=tmp_path / "missing.txt"))
    assert dl.parse_cookies_from_browser("chrome+gnomekeyring:Profile 1") == ("chrome", "Profile 1", "GNOMEKEYRING", None)
    with pytest.raises(ValueError, match="unsupported browser"):
        dl.check_options(cfg(cookies_from_browser="netscape4"))


# -- real downloads over the loopback server --------------------------------------------------------------
def test_trimmed_http_download_is_frame_exact(server, tmp_path):
    data = tmp_path / "data"
    r = dl.download_clip(clip(start=2.0, end=5.0), data, server.template(), cfg())
    assert (r.status, r.reason, r.attempts) == ("downloaded", "", 1), r.message
    final = data / "raw" / "dribbling_basketball" / "vid00000001_000002_000005.mp4"
    assert r.path == "raw/dribbling_basketball/vid00000001_000002_000005.mp4" and final.is_file()
    assert_exact_window(final, 2.0, 5.0)
    assert leftovers(data) == []


def test_file_urls_fall_back_to_whole_download_and_local_cut(source_dir, tmp_path):
    data = tmp_path / "data"
    template = f"file://{source_dir}/{{youtube_id}}.mp4"
    refused = dl.download_clip(clip(), data, template, cfg(allow_file_urls=False))
    assert (refused.status, refused.reason, refused.attempts) == ("failed", "file_urls_disabled", 0)
    assert "allow_file_urls" in refused.message and not (data / "raw").exists()

    r = dl.download_clip(clip(start=3.0, end=7.0), data, template, cfg(allow_file_urls=True))
    assert r.status == "downloaded", r.message
    assert_exact_window(data / r.path, 3.0, 7.0)
    assert leftovers(data) == []  # the whole temporary download is gone


def test_window_past_the_end_is_out_of_range(server, tmp_path):
    r = dl.download_clip(clip(start=12, end=15), tmp_path, server.template(), cfg())
    assert (r.status, r.reason) == ("failed", "out_of_range") and "10 s long" in r.message
    assert not list(tmp_path.rglob("*.mp4")) and leftovers(tmp_path) == []


def test_404_is_not_retried(server, tmp_path):
    server.reset_hits()
    r = dl.download_clip(clip(), tmp_path, server.template("404"), cfg(retries=3))
    assert (r.status, r.reason, r.attempts) == ("failed", "http_error", 1)
    assert "404" in r.message and server.hits("/404/vid00000001.mp4") == 1


def test_500_is_retried_then_fails(server, tmp_path):
    server.reset_hits()
    slept: list[float] = []
    r = dl.download_clip(clip(), tmp_path, server.template("500"), cfg(retries=2, retry_backoff=0.05),
                         sleep=slept.append)
    assert (r.status, r.reason, r.attempts) == ("failed", "server_error", 3)
    assert server.hits("/500/vid00000001.mp4") == 3 and slept == [0.05, 0.1]


def test_slow_server_times_out(server, tmp_path):
    server.reset_hits()
    r = dl.download_clip(clip(), tmp_path, server.template("slow"), cfg(retries=1, retry_backoff=0.01))
    assert (r.status, r.reason, r.attempts) == ("failed", "timeout", 2)
    assert server.hits("/slow/vid00000001.mp4") == 2


def test_text_served_as_mp4_is_not_video(server, tmp_path):
    r = dl.download_clip(clip(), tmp_path, server.template("text"), cfg())
    assert (r.status, r.reason, r.attempts) == ("failed", "not_video", 1), r.message
    assert not any(p.suffix == ".mp4" for p in tmp_path.rglob("*")) and leftovers(tmp_path) == []


def test_html_page_is_unsupported(server, tmp_path):
    r = dl.download_clip(clip(), tmp_path, server.template("html"), cfg())
    assert (r.status, r.reason, r.attempts) == ("failed", "unsupported_url", 1)


def test_dropped_connection_is_network_and_retried(server, tmp_path):
    server.reset_hits()
    r = dl.download_clip(clip(), tmp_path, server.template("drop"), cfg(retries=1, retry_backoff=0.01))
    assert (r.status, r.reason, r.attempts) == ("failed", "network", 2), r.message
    assert leftovers(tmp_path) == [] and not list(tmp_path.rglob("*.mp4"))


def test_rerun_skips_and_deleting_one_clip_redoes_only_it(server, tmp_path):
    clips = [clip("vid00000001", 1, 3), clip("vid00000002", 4, 6)]
    first = [dl.download_clip(c, tmp_path, server.template(), cfg()) for c in clips]
    assert [r.status for r in first] == ["downloaded", "downloaded"]
    paths = [tmp_path / r.path for r in first]
    mtimes = [p.stat().st_mtime_ns for p in paths]
    server.reset_hits()
    again = [dl.download_clip(c, tmp_path, server.template(), cfg()) for c in clips]
    assert [r.status for r in again] == ["skipped", "skipped"] and server.hits("/files/vid00000001.mp4") == 0
    assert [p.stat().st_mtime_ns for p in paths] == mtimes
    paths[1].unlink()
    third = [dl.download_clip(c, tmp_path, server.template(), cfg()) for c in clips]
    assert [r.status for r in third] == ["skipped", "downloaded"]
    assert paths[0].stat().st_mtime_ns == mtimes[0] and server.hits("/files/vid00000001.mp4") == 0
    assert_exact_window(paths[1], 4.0, 6.0)


def test_force_downloads_again_and_keeps_the_copy_when_that_fails(server, tmp_path):
    c = clip("vid00000001", 1, 3)
    first = dl.download_clip(c, tmp_path, server.template(), cfg())
    path = tmp_path / first.path
    mtime = path.stat().st_mtime_ns
    server.reset_hits()
    again = dl.download_clip(c, tmp_path, server.template(), cfg(), force=True)
    assert again.status == "downloaded" and server.hits("/files/vid00000001.mp4") > 0
    assert path.stat().st_mtime_ns != mtime
    assert_exact_window(path, 1.0, 3.0)
    # the source is gone now: the forced download fails, and the valid copy stays, with the reason in the row
    before = path.read_bytes()
    lost = dl.download_clip(c, tmp_path, server.template("404"), cfg(), force=True)
    assert lost.status == "skipped" and lost.path == first.path, lost
    assert "kept the copy already here" in lost.message and "http_error" in lost.message
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_invalid_existing_file_is_replaced(server, tmp_path):
    final = dl.clip_path(tmp_path, clip())
    final.parent.mkdir(parents=True)
    final.write_bytes(b"\x00" * 100)  # e.g. a file copied in by hand, or a truncated leftover
    r = dl.download_clip(clip(), tmp_path, server.template(), cfg())
    assert r.status == "downloaded" and dl.video_problem(final) is None


def test_untrusted_labels_and_ids_never_leave_data_dir(server, tmp_path):
    data = tmp_path / "deep" / "data"
    data.mkdir(parents=True)
    before = {p for p in tmp_path.rglob("*")}
    bad = [clip(label="../../etc"), clip(label="a/../../b"), clip(yid="../../etc/x"), clip(yid="id;rm -rf")]
    for c in bad:
        r = dl.download_clip(c, data, server.template(), cfg())
        assert (r.status, r.reason, r.path) == ("failed", "unsafe_path", ""), c
    assert {p for p in tmp_path.rglob("*")} == before
    # the same holds for the path helper, whatever joins it is asked for
    assert dl.clip_path(data, clip(label="Tai Chi (x)")).is_relative_to(data.resolve())


def test_stale_partials_are_cleaned_but_clips_are_kept(tmp_path):
    raw = tmp_path / "raw" / "x"
    raw.mkdir(parents=True)
    keep = raw / "a_000001_000002.mp4"
    keep.write_bytes(b"clip")
    stale = [raw / ".a_000001_000002.part-1234abcd.mp4", raw / ".a_000001_000002.part-1234abcd-whole.mp4.part",
             raw / "b.mp4.part", raw / "b.mp4.ytdl"]
    for p in stale:
        p.write_bytes(b"x")
    removed = dl.clean_partials(tmp_path / "raw")
    assert sorted(removed) == sorted(stale) and keep.is_file() and not any(p.exists() for p in stale)
    assert dl.clean_partials(tmp_path / "missing") == []


def test_report_rows_and_summary(server, tmp_path):
    rows = [dl.download_clip(clip(), tmp_path, server.template(), cfg()).row(),
            dl.download_clip(clip(), tmp_path, server.template(), cfg()).row(),
            dl.download_clip(clip("nosuchvideo"), tmp_path, server.template(), cfg()).row()]
    report = dl.write_report(rows, tmp_path / "reports" / "download.csv")
    with open(report, newline="") as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == dl.REPORT_COLUMNS
    assert [(r["status"], r["reason"]) for r in got] == [("downloaded", ""), ("skipped", ""), ("failed", "http_error")]
    assert got[2]["clip_id"] == "nosuchvideo_000002_000005" and got[2]["path"] == "" and "404" in got[2]["message"]
    assert got[0]["path"] == got[1]["path"] == "raw/dribbling_basketball/vid00000001_000002_000005.mp4"
    counts = dl.summarize(rows)
    assert counts == {"requested": 3, "downloaded": 1, "skipped": 1, "failed": 1, "failed_http_error": 1}
    assert dl.summary_message(counts) == "2 of 3 clips ready (1 downloaded, 1 already there); 1 failed: 1 http_error"


def test_extractor_errors_say_yt_dlp_may_be_too_old_with_its_version_and_the_upgrade():
    from yt_dlp.version import __version__

    from tasks.lib.download.ytdlp import _failure

    failure = _failure("extractor_error", "[youtube] abcdefghijk: Unable to extract yt initial data")
    assert f"yt-dlp {__version__} may be too old" in failure.message and "pip install -U yt-dlp" in failure.message
    assert "may be too old" not in _failure("http_error", "HTTP Error 404").message
    counts = {"requested": 3, "downloaded": 1, "skipped": 0, "failed": 2, "failed_extractor_error": 2}
    line = dl.summary_message(counts)
    assert line.startswith("1 of 3 clips ready (1 downloaded, 0 already there); 2 failed: 2 extractor_error (yt-dlp ")
    assert f"yt-dlp {__version__} may be too old" in line and "pip install -U yt-dlp" in line


def test_a_yt_dlp_without_the_popen_it_had_still_downloads_and_warns_once(server, tmp_path, monkeypatch, caplog):
    """The fence around the one yt-dlp internal we wrap (tasks/lib/procs.py): a yt-dlp that dropped or reshaped
    ``yt_dlp.utils.Popen`` downloads as before, without the parent-death signal, and says so once."""
    import logging
    import subprocess

    import yt_dlp.utils

    from tasks.lib import procs

    # yt-dlp imports some of its modules lazily, each taking its own Popen reference: load them before ours goes
    assert dl.download_clip(clip(start=0.0, end=1.0), tmp_path, server.template(), cfg()).status == "downloaded"

    class Reshaped(subprocess.Popen):
        def __init__(self, args, env=None):  # no **kwargs: preexec_fn could not be passed on
            super().__init__(args, env=env)

    monkeypatch.setattr(yt_dlp.utils, "Popen", Reshaped)
    assert procs._ytdlp_popen()[0] is None and "**kwargs" in procs._ytdlp_popen()[1]
    monkeypatch.delattr(yt_dlp.utils, "Popen")

    def gone(name):  # yt_dlp.utils otherwise finds a removed name among its deprecated aliases
        raise AttributeError(name)

    monkeypatch.setattr(yt_dlp.utils, "__getattr__", gone)
    monkeypatch.setattr(procs, "_ytdlp_state", {"done": False, "warned": False, "problem": None})
    with caplog.at_level(logging.WARNING, logger="tasks.lib.procs"):
        first = dl.download_clip(clip(start=2.0, end=5.0), tmp_path, server.template(), cfg())
        second = dl.download_clip(clip("vid00000002", start=1.0, end=3.0), tmp_path, server.template(), cfg())
    assert (first.status, second.status) == ("downloaded", "downloaded"), (first.message, second.message)
    assert_exact_window(tmp_path / first.path, 2.0, 5.0)
    warned = [r.getMessage() for r in caplog.records if r.name == "tasks.lib.procs"]
    assert len(warned) == 1 and "no yt_dlp.utils.Popen" in warned[0] and "may outlive" in warned[0], warned
    assert procs.patch_ytdlp_popen() is not None  # the reason stays known (vivit doctor shows it)



def test_a_yt_dlp_without_its_ffmpeg_location_variable_still_trims_and_warns_once(server, tmp_path, monkeypatch,
                                                                                  caplog):
    """The fence around the other yt-dlp internal (tasks/lib/download/ytdlp.py ``_set_ffmpeg_for_sections``): with
    no ffmpeg on PATH and no ``FFmpegPostProcessor._ffmpeg_location``, clips still come out at their exact window
    (downloaded whole, cut afterwards), and the reason is logged once."""
    import contextvars
    import logging

    from tasks.lib.download import ytdlp

    monkeypatch.setenv("PATH", str(tmp_path / "no-ffmpeg-here"))
    # the name is looked up where yt-dlp keeps it: a missing one is a yt-dlp that renamed or dropped it (deleting
    # the real one would break yt-dlp's own postprocessors, which read it too)
    monkeypatch.setattr(ytdlp, "_LOCATION_VAR", "_ffmpeg_location_renamed")
    monkeypatch.setattr(ytdlp, "_sections_warned", [])
    fresh = contextvars.Context()  # as a new worker thread: no earlier test's value for yt-dlp's variable
    with caplog.at_level(logging.WARNING, logger="tasks.lib.download.ytdlp"):
        first = fresh.run(dl.download_clip, clip(start=2.0, end=5.0), tmp_path, server.template(), cfg())
        second = fresh.run(dl.download_clip, clip("vid00000002", start=1.0, end=3.0), tmp_path, server.template(),
                           cfg())
    assert (first.status, second.status) == ("downloaded", "downloaded"), (first.message, second.message)
    assert_exact_window(tmp_path / first.path, 2.0, 5.0)
    assert_exact_window(tmp_path / second.path, 1.0, 3.0)
    warned = [r.getMessage() for r in caplog.records if r.name == "tasks.lib.download.ytdlp"]
    assert len(warned) == 1 and "_ffmpeg_location_renamed" in warned[0] and "downloaded whole" in warned[0], warned


# -- the Prefect flow --------------------------------------------------------------------------------------
def _flow_config(tmp_path: Path, server, csv_text: str, **kw) -> PipelineConfig:
    ann = tmp_path / "ann.csv"
    ann.write_text(csv_text)
    return PipelineConfig(data_dir=tmp_path / "data", annotations=[str(ann)], url_template=server.template(),
                          download=cfg(retries=1, workers=3), **kw)


def test_download_flow_mixed_outcomes(prefect_harness, server, tmp_path):
    from flows.download import download_flow

    csv_text = (
        "label,youtube_id,time_start,time_end,split\n"
        "dribbling basketball,vid00000001,1,3,train\n"
        "dribbling basketball,nosuchvideo,0,2,train\n"       # 404
        "dunking basketball,vid00000002,5,8,validate\n"
        "dunking basketball,textvideo01,0,2,train\n"         # not a video
        "dunking basketball,../../etc,0,2,train\n"           # invalid id: dropped, never a path
        "playing cards,vid00000001,0,1,train\n"              # not a requested class
    )
    config = _flow_config(tmp_path, server, csv_text)
    stale = config.raw_dir / "dunking_basketball" / ".vid00000002_000005_000008.part-deadbeef.mp4"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a download")

    summary = download_flow(config)
    assert summary["stage"] == "download" and summary["failed"] is False
    assert summary["counts"] == {"requested": 4, "downloaded": 2, "skipped": 0, "failed": 2,
                                 "failed_http_error": 1, "failed_not_video": 1}
    report = config.reports_dir / "download.csv"
    assert str(report) in summary["outputs"] and not stale.exists()
    with open(report, newline="") as f:
        rows = {r["youtube_id"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"vid00000001", "nosuchvideo", "vid00000002", "textvideo01"}
    assert (rows["vid00000002"]["status"], rows["vid00000002"]["split"]) == ("downloaded", "val")
    assert (rows["nosuchvideo"]["reason"], rows["textvideo01"]["reason"]) == ("http_error", "not_video")
    assert_exact_window(config.data_dir / rows["vid00000002"]["path"], 5.0, 8.0)
    assert not any(p for p in tmp_path.rglob("*") if "etc" in p.name)

    again = download_flow(config)
    assert again["counts"]["skipped"] == 2 and again["counts"]["downloaded"] == 0 and again["failed"] is False


def test_download_flow_fails_only_when_nothing_is_usable(prefect_harness, server, tmp_path):
    from flows.download import download_flow

    header = "label,youtube_id,time_start,time_end,split\n"
    rows = "".join(f"{lab},missing{i:04d},0,2,train\n" for i, lab in enumerate([LABEL, "dunking basketball"] * 3))
    nothing = _flow_config(tmp_path, server, header + rows)
    nothing.url_template = server.template("wait404")  # every request waits 0.3 s, then 404
    nothing.download.workers = 2
    server.reset_hits()
    s = failed_summary(download_flow, nothing)
    assert s["counts"]["failed_http_error"] == 6 and "no clip" in s["message"]
    assert (nothing.reports_dir / "download.csv").is_file()
    assert server.max_in_flight() == 2  # parallel, and never more than download.workers

    typo = _flow_config(tmp_path, server, header + "dribbling basketball,vid00000001,0,2,train\n",
                        classes=["dribling basketball", "dunking basketball"])
    s = failed_summary(download_flow, typo)
    assert "did you mean" in s["message"] and "dribbling basketball" in s["message"]


def test_quarantined_clip_is_not_downloaded_again(server, tmp_path):
    """The filter moved an earlier copy to quarantine/: re-running download must not fetch it on every run."""
    final = dl.clip_path(tmp_path, clip())
    q = tmp_path / "quarantine" / final.parent.name / final.name
    q.parent.mkdir(parents=True)
    q.write_bytes(b"not a video")
    server.reset_hits()
    r = dl.download_clip(clip(), tmp_path, server.template(), cfg())
    assert (r.status, r.reason) == ("failed", "quarantined") and "quarantine/" in r.message
    assert server.hits("/files/vid00000001.mp4") == 0 and not final.exists()
    q.unlink()  # the user deletes the quarantined copy: the next run downloads it again
    assert dl.download_clip(clip(), tmp_path, server.template(), cfg()).status == "downloaded"


def test_bad_time_rows_are_skipped_and_the_stage_goes_on(prefect_harness, server, tmp_path, caplog):
    """inf, 99999999 and 1e300 crashed the whole stage (OverflowError, 'File name too long') before any report."""
    from flows.download import download_flow

    csv_text = (
        "label,youtube_id,time_start,time_end,split\n"
        "dribbling basketball,vid00000001,1,3,train\n"
        "dribbling basketball,vid00000001,0,inf,train\n"
        "dribbling basketball,vid00000001,0,99999999,train\n"
        "dunking basketball,vid00000002,1e300,1e301,train\n"
        "dunking basketball,vid00000002,nan,3,train\n"
        "dunking basketball,vid00000002,99999990,99999999,train\n"
        "dunking basketball,vid00000002,5,8,train\n"
    )
    with caplog.at_level("WARNING"):
        summary = download_flow(_flow_config(tmp_path, server, csv_text))
    assert summary["counts"]["requested"] == 2 and summary["counts"]["downloaded"] == 2
    warned = "\n".join(r.getMessage() for r in caplog.records if "skipped annotation row" in r.getMessage())
    for line in (3, 4, 5, 6, 7):
        assert f"ann.csv:{line}:" in warned, warned
    with open(tmp_path / "data" / "reports" / "download.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2


def test_ffmpeg_command_lines_are_built_by_ffmpeg_python_with_the_measured_arguments():
    from tasks.lib.download import trim_command
    from tasks.lib.media import encode_command, options_from_argv

    cut = trim_command(Path("in.webm"), Path("out.mp4"), 1.5, 2.25, exe="ffmpeg")
    assert cut[0] == "ffmpeg" and cut.index("-ss") < cut.index("-i") and cut[cut.index("-ss") + 1] == "1.500"
    pairs = {cut[i]: cut[i + 1] for i in range(len(cut) - 1) if cut[i].startswith("-")}
    assert pairs["-i"] == "in.webm" and pairs["-t"] == "2.250" and pairs["-map"] == "0:V:0"
    assert pairs["-c:v"] == "libx264" and pairs["-crf"] == "20" and pairs["-movflags"] == "+faststart"
    assert {"-an", "-sn", "-dn", "-y", "-nostdin"} <= set(cut) and cut.index("out.mp4") > cut.index("-i")
    threads = [i for i, a in enumerate(cut) if a == "-threads"]  # one decoder thread, one encoder thread
    assert len(threads) == 2 and threads[0] < cut.index("-i") < threads[1] and cut[threads[1] + 1] == "1"
    enc = encode_command("o.mkv", 64, 48, fps=10, codec="ffv1", pix_fmt="bgr0", gop=5, extra=["-movflags", "+faststart", "-an"],
                         exe="ffmpeg")
    assert enc[enc.index("-i") + 1] == "pipe:" and enc[enc.index("-s") + 1] == "64x48" and "-nostdin" not in enc
    assert enc.index("-f") < enc.index("-i") and enc[enc.index("-g") + 1] == "5" and "-crf" not in enc
    assert options_from_argv(["-vf", "setsar=2", "-an", "-itsoffset", "-1"]) == {"vf": "setsar=2", "an": None, "itsoffset": "-1"}
    with pytest.raises(ValueError, match="ffmpeg option"):
        options_from_argv(["setsar=2"])
