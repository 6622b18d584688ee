"""Clips per second of the project's frame sampler against two references, in the same run on the same clips:

  (a) decode everything, then pick, with PyAV: every frame decoded *and converted to an RGB array*, stacked, then
      the N uniform indices picked and resized (what the Hugging Face / pytorchvideo PyAV examples do);
  (b) a bare full decode by the ffmpeg CLI: ``ffmpeg -threads 1 -i CLIP -f null -`` (decoding only, no pixel
      conversion, no output; the floor for any exact sampler that has to decode every frame).

One more row for the decoder choice, not part of the ratios: (c) the other exact method, ffmpeg's ``select``
filter (what ffmpeg-python builds), with the frame count from the same demux pass ours uses, scale + crop in the
filter graph, raw RGB out through a pipe.

Frames: the frames stage's defaults (``frames.num_frames`` at ``frames.size``; ``--num-frames``, ``--size``).
Clips: generated 10-second H.264 clips (30 fps, GOP 2 s, moving shapes over a panning textured background) at
340x256 and 640x360, written with tasks.lib.media.encode_video into a temporary folder.

Fairness: (b) is single-threaded, so our sampler and (a) run with one decoder thread and one swscale thread too
(``threads=1``); the frames stage itself runs ``frames.workers`` clips at once instead. Each clip is timed
``--repeats`` times per method, methods interleaved (so background load hits all three alike); the table shows
the median per-clip time. The last line is machine-readable:

    ratio_vs_pyav=X ratio_vs_ffmpeg=Y

X = our clips/s over (a)'s (target >= 1); Y = our time per clip over (b)'s (target <= 1.2).
Run: ``.venv/bin/python benchmarks/sampling.py`` (about a minute on 2 cores).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.lib.config import FramesConfig  # noqa: E402
from tasks.lib.media import encode_video, ffmpeg_command, ffmpeg_exe  # noqa: E402
from tasks.lib.sampling import (  # noqa: E402
    open_video,
    resized_dims,
    sample_clip,
    scan_packets,
    segment_centres,
)

RESOLUTIONS = [(340, 256), (640, 360)]
FPS, SECONDS, GOP = 30, 10, 60


def synthetic_frames(width: int, height: int, seed: int):
    """Moving, textured content so that P/B frames carry real work (a flat test pattern decodes unrealistically
    fast; pure noise unrealistically slowly)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    texture = rng.integers(0, 40, (height, width * 2, 3), dtype=np.uint8)
    base = np.stack([(xx * 200 // width), (yy * 200 // height), np.full_like(xx, 90)], -1).astype(np.uint8)
    shapes = [(rng.uniform(0, width), rng.uniform(0, height), rng.uniform(-6, 6), rng.uniform(-4, 4),
               int(rng.integers(10, max(12, height // 5))), rng.integers(0, 255, 3)) for _ in range(6)]
    for t in range(FPS * SECONDS):
        pan = (t * 2) % width
        frame = base + texture[:, pan : pan + width]
        for x, y, vx, vy, r, colour in shapes:
            cx, cy = int(x + vx * t) % width, int(y + vy * t) % height
            frame[max(0, cy - r) : cy + r, max(0, cx - r) : cx + r] = colour
        yield frame


def make_clips(folder: Path, per_resolution: int) -> dict[str, list[Path]]:
    clips: dict[str, list[Path]] = {}
    for w, h in RESOLUTIONS:
        key = f"{w}x{h}"
        clips[key] = []
        for i in range(per_resolution):
            p = folder / f"clip_{key}_{i}.mp4"
            encode_video(synthetic_frames(w, h, seed=i), p, fps=FPS, gop=GOP)
            clips[key].append(p)
    return clips


def pyav_decode_all_then_pick(path: Path, num_frames: int, size: int) -> np.ndarray:
    """Reference (a): decode + RGB-convert every frame, stack, pick the uniform indices, resize + crop those."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.thread_type = "SLICE"
        s.codec_context.thread_count = 1
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(s)])  # (N_all, H, W, 3)
    out = []
    for i in segment_centres(len(frames), num_frames):
        img = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
        nw, nh = resized_dims(img.width, img.height, size)
        small = img.reformat(width=nw, height=nh, interpolation="AREA", threads=1).to_ndarray()
        y0, x0 = (nh - size) // 2, (nw - size) // 2
        out.append(small[y0 : y0 + size, x0 : x0 + size])
    return np.stack(out)


def ffmpeg_full_decode(path: Path) -> None:
    """Reference (b): the ffmpeg CLI decoding every frame on one thread, writing nothing."""
    subprocess.run(ffmpeg_command(str(path), "-", input_options={"threads": 1}, output_options={"f": "null"}),
                   check=True, stdout=subprocess.DEVNULL)


def ffmpeg_select(path: Path, num_frames: int, size: int) -> np.ndarray:
    """Row (c): exact frames with ``select=eq(n,i)+...`` (``fps_mode passthrough``, or ffmpeg duplicates frames)."""
    with open_video(path) as (container, stream):
        n = scan_packets(container, stream, keep_bytes=0).count
    expr = "+".join(f"eq(n\\,{i})" for i in sorted(set(segment_centres(n, num_frames))))
    graph = (f"select={expr},scale={size}:{size}:force_original_aspect_ratio=increase:flags=area,"
             f"crop={size}:{size}")
    cmd = ffmpeg_command(str(path), "pipe:", input_options={"threads": 1}, output_options={
        "filter_threads": 1, "vf": graph, "fps_mode": "passthrough", "f": "rawvideo", "pix_fmt": "rgb24"})
    out = subprocess.run(cmd, check=True, capture_output=True).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, size, size, 3)


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=3, help="clips per resolution")
    ap.add_argument("--repeats", type=int, default=5)
    frames = FramesConfig()  # the frames stage's defaults: what `vivit frames` samples with no frames.* overrides
    ap.add_argument("--num-frames", type=int, default=frames.num_frames)
    ap.add_argument("--size", type=int, default=frames.size)
    args = ap.parse_args(argv)

    methods = {
        "ours (PyAV sequential, keep N)": lambda p: sample_clip(p, args.num_frames, args.size, threads=1),
        "(a) PyAV decode all -> RGB, pick": lambda p: pyav_decode_all_then_pick(p, args.num_frames, args.size),
        "(b) ffmpeg -threads 1 -f null": ffmpeg_full_decode,
        "(c) ffmpeg select filter, exact": lambda p: ffmpeg_select(p, args.num_frames, args.size),
    }
    with tempfile.TemporaryDirectory(prefix="vivit-bench-") as tmp:
        t0 = time.perf_counter()
        clips = make_clips(Path(tmp), args.clips)
        print(f"generated {sum(map(len, clips.values()))} clips of {SECONDS} s at {FPS} fps in "
              f"{time.perf_counter() - t0:.1f} s; {args.repeats} repeats, N={args.num_frames}, size={args.size}, "
              f"one decoder thread each; ffmpeg: {ffmpeg_exe()}")
        for paths in clips.values():  # warm-up: page cache, imports, first-call costs
            for fn in methods.values():
                fn(paths[0])
        # per method and resolution: per-clip median over repeats
        medians: dict[str, dict[str, list[float]]] = {m: {r: [] for r in clips} for m in methods}
        for res, paths in clips.items():
            for p in paths:
                samples: dict[str, list[float]] = {m: [] for m in methods}
                for _ in range(args.repeats):
                    for m, fn in methods.items():
                        samples[m].append(timed(fn, p))
                for m in methods:
                    medians[m][res].append(statistics.median(samples[m]))

    names = list(methods)
    print()
    print("| method | " + " | ".join(f"{r}: s/clip | clips/s" for r in clips) + " |")
    print("|---|" + "---|---|" * len(clips))
    for m in names:
        cells = []
        for r in clips:
            t = statistics.mean(medians[m][r])
            cells += [f"{t:.4f}", f"{1 / t:.1f}"]
        print(f"| {m} | " + " | ".join(cells) + " |")
    ours, a, b = (sum(sum(v) for v in medians[m].values()) for m in names[:3])
    print()
    for r in clips:
        o, ra, rb = (statistics.mean(medians[m][r]) for m in names[:3])
        print(f"{r}: ours vs (a) {ra / o:.2f}x faster; ours / (b) time {o / rb:.2f}")
    print(f"ratio_vs_pyav={a / ours:.2f} ratio_vs_ffmpeg={ours / b:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
