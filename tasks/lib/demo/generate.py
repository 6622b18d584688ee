"""Offline demo dataset: a synthetic, Kinetics-format basketball set whose classes differ in *motion* only.

YouTube cannot be reached from every machine, so ``make run`` and the tests use this generator. It writes real
H.264 videos ``<out>/videos/<youtube_id>.mp4`` (longer than the annotated window, so trimming is exercised) and
``<out>/annotations.csv`` in the official format ``label,youtube_id,time_start,time_end,split,is_cc``.

Design: every clip is a side view of half a court, wider than the frame (a textured wall of bricks, tiles or panels,
a floor, a hoop on a pole, a stick-figure player and an orange ball), and every appearance parameter (colours,
texture, sizes, floor height, hoop side, camera framing, camera shake, noise, leg-swing rhythm, bounce period) is
drawn from one class-independent distribution. What differs is how things move:

* ``dribbling basketball``: the player stays put (a slow sway) and bounces the ball between hand and floor every
  1.6-3 s, filmed from a tripod. 16 frames spread over 10 s are 0.625 s apart: 2.5-4.8 samples per bounce, below
  the Nyquist limit, so the sampled clip still shows the rhythm rather than an alias of it.
* ``dunking basketball``: the player is on the move all the time, at 3-6 m/s (0.6-1.0 frame heights per second):
  out away from the hoop and back, a dribbling drive to the basket, a jump with the ball carried up to the rim, a
  slam through the net, a landing and a jog back. The camera follows the player as a
  broadcast camera does, so the whole background pans. The jump happens at a random time in the window.

A dribbling clip's position, facing and camera framing are copied from a dunk of the very same scene at a random
instant, so single frames of both classes show the same things in the same places; the only single-frame cue left
is the dunk's time in the air (about 1.2-1.6 s of a 10 s window). Across frames the difference is large: a panning
background against a still one, a player who travels, one big jump. ``tests/test_demo_data.py`` measures both.

Why so much motion: with ~80 training clips, a video transformer trained from scratch memorises backgrounds before
it discovers a subtle motion cue (a walking-speed player in front of a still camera was not learned at all); a
sprint with a panning camera is.

Generation is deterministic for a seed and atomic (built in a temporary folder beside ``out_dir`` and renamed);
calling it again with the same arguments on a complete output does no work.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from tasks.lib.media import encode_video
from tasks.lib.demo.render import render_frames
from tasks.lib.demo.spec import CSV_COLUMNS, CSV_NAME, ClipSpec, DRIBBLING, DUNKING, EXTRA_CLASSES, FORMAT_VERSION, MANIFEST, ID_ALPHABET


# --------------------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------------------
def generate_demo_dataset(
    out_dir: str | os.PathLike,
    *,
    n_dribbling: int = 80,
    n_dunking: int = 40,
    seed: int = 0,
    width: int = 320,
    height: int = 240,
    fps: int = 25,
    duration: float = 12.0,
    clip_len: float = 10.0,
    extra_classes: int = 0,
    workers: int | None = None,
) -> Path:
    """Write the demo dataset into ``out_dir`` and return the path of its ``annotations.csv``.

    ``duration`` is the shortest source video in seconds (each is ``duration`` + U[0, 2) s long); ``clip_len``
    (whole seconds) is the annotated window, which starts at an integer second (1-3 s when there is room).
    ``extra_classes`` adds that many classes from :data:`EXTRA_CLASSES`, ``n_dunking`` clips each.
    ``workers`` processes render and encode clips (default: up to 2).
    """
    out_dir = Path(out_dir)
    params = _check_params(
        n_dribbling=n_dribbling, n_dunking=n_dunking, seed=seed, width=width, height=height, fps=fps,
        duration=duration, clip_len=clip_len, extra_classes=extra_classes,
    )
    if _is_complete(out_dir, params):
        return out_dir / CSV_NAME
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise FileExistsError(f"{out_dir} exists and is not a demo dataset folder; refusing to overwrite it")

    specs = plan_clips(params)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    (tmp / "videos").mkdir(parents=True)
    try:
        n_workers = max(1, min(workers or min(2, os.cpu_count() or 1), len(specs)))
        jobs = [(s, str(tmp / "videos" / f"{s.youtube_id}.mp4")) for s in specs]
        if n_workers == 1:
            for job in jobs:
                _render_job(job)
        else:
            with ProcessPoolExecutor(max_workers=n_workers) as pool:
                list(pool.map(_render_job, jobs, chunksize=1))
        _write_csv(tmp / CSV_NAME, specs)
        files = sorted(f"videos/{s.youtube_id}.mp4" for s in specs)
        (tmp / MANIFEST).write_text(json.dumps({"params": params, "files": files, "clips": len(specs)}, indent=1))
        _install(tmp, out_dir, params)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir / CSV_NAME


def _check_params(**p) -> dict:
    for k in ("n_dribbling", "n_dunking"):
        if int(p[k]) < 1:
            raise ValueError(f"{k} must be >= 1, got {p[k]}")
    if not 0 <= int(p["extra_classes"]) <= len(EXTRA_CLASSES):
        raise ValueError(f"extra_classes must be in 0..{len(EXTRA_CLASSES)}, got {p['extra_classes']}")
    if p["width"] < 32 or p["height"] < 32 or p["width"] % 2 or p["height"] % 2:
        raise ValueError(f"width and height must be even and >= 32, got {p['width']}x{p['height']}")
    if not 1 <= p["fps"] <= 120:
        raise ValueError(f"fps must be in 1..120, got {p['fps']}")
    if float(p["clip_len"]) != int(p["clip_len"]) or p["clip_len"] < 1:
        raise ValueError(f"clip_len must be a whole number of seconds >= 1 (Kinetics windows are), got {p['clip_len']}")
    if p["duration"] < p["clip_len"]:
        raise ValueError(f"duration ({p['duration']}) must be at least clip_len ({p['clip_len']})")
    out = dict(p)
    out.update(duration=float(p["duration"]), clip_len=float(p["clip_len"]), version=FORMAT_VERSION)
    return out


def _is_complete(out_dir: Path, params: dict) -> bool:
    try:
        man = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if man.get("params") != params or not (out_dir / CSV_NAME).is_file():
        return False
    return all((out_dir / f).is_file() and (out_dir / f).stat().st_size > 0 for f in man.get("files", []))


def _install(tmp: Path, out_dir: Path, params: dict) -> None:
    """Rename the finished temporary folder into place; an older demo folder is swapped out and removed."""
    old = None
    if out_dir.exists():
        if _is_complete(out_dir, params):  # a concurrent run finished first
            return
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except OSError:
        if _is_complete(out_dir, params):
            return
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _write_csv(path: Path, specs: list["ClipSpec"]) -> None:
    rows = sorted(specs, key=lambda s: (s.label, s.youtube_id))
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for s in rows:
            w.writerow([s.label, s.youtube_id, s.time_start, s.time_end, s.split, s.is_cc])


def plan_clips(params: dict) -> list[ClipSpec]:
    """Deterministic list of clips for validated ``params`` (see :func:`generate_demo_dataset`)."""
    seed = int(params["seed"])
    labels = [DRIBBLING] * params["n_dribbling"] + [DUNKING] * params["n_dunking"]
    for name in EXTRA_CLASSES[: params["extra_classes"]]:
        labels += [name] * params["n_dunking"]
    ids = _youtube_ids(len(labels), seed)
    rng = np.random.default_rng([seed, 0x5EED])
    splits: list[str] = [""] * len(labels)
    for lab in dict.fromkeys(labels):
        idx = [i for i, x in enumerate(labels) if x == lab]
        n = len(idx)
        n_val = int(round(0.15 * n)) if n >= 3 else 0
        n_test = int(round(0.15 * n)) if n >= 3 else 0
        names = ["validate"] * n_val + ["test"] * n_test + ["train"] * (n - n_val - n_test)
        for i, j in zip(idx, rng.permutation(n)):
            splits[i] = names[j]
    fps, clip_len = int(params["fps"]), int(params["clip_len"])
    specs = []
    for i, lab in enumerate(labels):
        n_frames = int(round((params["duration"] + rng.uniform(0.0, 2.0)) * fps))
        room = int(math.floor(n_frames / fps - clip_len + 1e-9))  # latest integer start that still fits
        lo = 1 if room >= 1 else 0
        start = int(rng.integers(lo, min(3, room) + 1))
        specs.append(
            ClipSpec(
                label=lab, youtube_id=ids[i], split=splits[i], is_cc=int(rng.random() < 0.3),
                time_start=start, time_end=start + clip_len, n_frames=n_frames, fps=fps,
                width=int(params["width"]), height=int(params["height"]), seed=(seed, 0xC11B, i),
            )
        )
    return specs


def _youtube_ids(n: int, seed: int) -> list[str]:
    """11-character YouTube-like ids, unique even on case-insensitive file systems."""
    rng = np.random.default_rng([seed, 0x1D])
    out, seen = [], set()
    while len(out) < n:
        s = "".join(ID_ALPHABET[k] for k in rng.integers(0, 64, 11))
        if s.lower() not in seen:
            seen.add(s.lower())
            out.append(s)
    return out


# One x264 thread: with several, the same frames came out as a different file on every encode (4 encodes of one
# 320x240 clip, 4 different files, up to 32 grey levels apart), so a seed did not give the same dataset twice. The
# process pool encodes two clips at once anyway, so it costs no time.
ENCODE_OPTIONS = ["-threads", "1"]


def _render_job(job: tuple[ClipSpec, str]) -> None:
    spec, path = job
    encode_video(render_frames(spec), path, fps=spec.fps, extra=ENCODE_OPTIONS)
