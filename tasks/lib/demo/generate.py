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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.lib.media import encode_video

DRIBBLING = "dribbling basketball"
DUNKING = "dunking basketball"
CLASSES: tuple[str, ...] = (DRIBBLING, DUNKING)
#: Optional classes for K>2 tests (``extra_classes=1`` adds the first, ...). Also motion-defined.
EXTRA_CLASSES: tuple[str, ...] = ("shooting basketball", "passing basketball")
FORMAT_VERSION = 2  # bump when the pictures change: a folder of an older version is regenerated
MANIFEST = ".demo-data.json"
CSV_NAME = "annotations.csv"
CSV_COLUMNS = ["label", "youtube_id", "time_start", "time_end", "split", "is_cc"]
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_GRAVITY = 5.0  # player heights per s^2 (a 1.9 m player: 9.5 m/s^2)


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


# --------------------------------------------------------------------------------------------------------------
# Planning: ids, splits, windows (no pixels yet)
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipSpec:
    label: str
    youtube_id: str
    split: str  # train / validate / test, as in K600/K700 CSVs
    is_cc: int
    time_start: int
    time_end: int
    n_frames: int  # frames in the source video
    fps: int
    width: int
    height: int
    seed: tuple[int, ...]  # SeedSequence entropy for this clip's pixels and motion


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
        s = "".join(_ID_ALPHABET[k] for k in rng.integers(0, 64, 11))
        if s.lower() not in seen:
            seen.add(s.lower())
            out.append(s)
    return out


# --------------------------------------------------------------------------------------------------------------
# Scene: everything that does not depend on the class
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Scene:
    """A side view of half a court, wider than the frame (``world_w`` px); a camera chooses the visible part."""

    W: int
    H: int
    world_w: int
    margin: int  # extra canvas on every side, for camera shake
    floor_y: float
    ph: float  # player height in px
    br: float  # ball radius
    side: int  # +1: hoop at the right end of the court, -1: at the left end
    rim_x: float
    rim_y: float
    rim_hw: float
    xl: float  # court limits for the player's feet
    xr: float
    colors: dict
    limb: float
    stride_hz: float
    stride_amp: float  # radians
    stride_phase: float
    bounce_period: float
    bounce_phase: float
    hand_h: float  # dribbling hand height above the floor, in player heights
    cam_tau: float  # how quickly a following camera catches up, seconds

    def cam_clip(self, c: float) -> float:
        return min(max(c, 0.0), float(self.world_w - self.W))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array([round(255 * c) for c in rgb], dtype=np.uint8)


def _make_scene(rng: np.random.Generator, W: int, H: int) -> Scene:
    world_w = int(round(W * rng.uniform(1.5, 1.9)))
    ph = H * rng.uniform(0.4, 0.5)
    floor_y = H * rng.uniform(0.82, 0.9)
    side = int(rng.choice([-1, 1]))
    rim_hw = ph * rng.uniform(0.13, 0.17)
    rim_y = floor_y - ph * rng.uniform(1.1, 1.25)
    edge = W * rng.uniform(0.06, 0.12)  # the backboard's distance from the end of the court
    rim_x = (world_w - edge - rim_hw - 0.05 * ph) if side > 0 else (edge + rim_hw + 0.05 * ph)
    colors = {
        "jersey": _hsv(rng.random(), rng.uniform(0.4, 0.9), rng.uniform(0.35, 0.95)),
        "shorts": _hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.2, 0.8)),
        "skin": _hsv(rng.uniform(0.03, 0.1), rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.9)),
        "ball": _hsv(rng.uniform(0.03, 0.09), rng.uniform(0.65, 0.95), rng.uniform(0.65, 0.95)),
        "seam": _hsv(0.05, 0.5, rng.uniform(0.1, 0.25)),
        "rim": _hsv(rng.uniform(0.98, 1.06) % 1, rng.uniform(0.7, 1.0), rng.uniform(0.7, 0.95)),
    }
    return Scene(
        W=W, H=H, world_w=world_w, margin=max(3, H // 60), floor_y=floor_y, ph=ph,
        br=ph * rng.uniform(0.075, 0.095), side=side, rim_x=rim_x, rim_y=rim_y, rim_hw=rim_hw,
        xl=0.12 * W, xr=world_w - 0.12 * W, colors=colors, limb=ph * rng.uniform(0.05, 0.07),
        stride_hz=rng.uniform(0.9, 2.0), stride_amp=rng.uniform(0.2, 0.5), stride_phase=rng.random(),
        bounce_period=rng.uniform(1.6, 3.0), bounce_phase=rng.random(), hand_h=rng.uniform(0.45, 0.55),
        cam_tau=rng.uniform(0.2, 0.4),
    )


def _bilinear_noise(rng: np.random.Generator, h: int, w: int, gh: int, gw: int, sigma: float) -> np.ndarray:
    """Smooth random field: a ``gh x gw`` grid of normal values, bilinearly upsampled to ``h x w`` (x3 channels)."""
    coarse = rng.normal(0, sigma, (gh, gw, 3)).astype(np.float32)
    ys, xs = np.linspace(0, gh - 1, h), np.linspace(0, gw - 1, w)
    y0, x0 = np.floor(ys).astype(int).clip(0, max(gh - 2, 0)), np.floor(xs).astype(int).clip(0, max(gw - 2, 0))
    y1, x1 = np.minimum(y0 + 1, gh - 1), np.minimum(x0 + 1, gw - 1)
    fy = (ys - y0)[:, None, None].astype(np.float32)
    fx = (xs - x0)[None, :, None].astype(np.float32)
    return (coarse[y0][:, x0] * (1 - fy) * (1 - fx) + coarse[y1][:, x0] * fy * (1 - fx)
            + coarse[y0][:, x1] * (1 - fy) * fx + coarse[y1][:, x1] * fy * fx)


def _background(rng: np.random.Generator, sc: Scene) -> np.ndarray:
    """The static world: textured wall, floor, pole, backboard and net; ``margin`` extra pixels on every side.

    The wall and floor carry texture at several horizontal scales so that a camera pan is visible everywhere."""
    m = sc.margin
    Hc, Wc = sc.H + 2 * m, sc.world_w + 2 * m
    yy = np.linspace(0, 1, Hc, dtype=np.float32)[:, None, None]
    xx = np.linspace(0, sc.world_w / sc.W, Wc, dtype=np.float32)[None, :, None]
    c1 = _hsv(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.3, 0.9)).astype(np.float32)
    c2 = _hsv(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.3, 0.9)).astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    g = np.cos(ang) * xx + np.sin(ang) * yy
    g = (g - g.min()) / max(float(g.max() - g.min()), 1e-6)
    img = c1 * (1 - g) + c2 * g
    per_w = sc.world_w / sc.W
    img += _bilinear_noise(rng, Hc, Wc, int(rng.integers(3, 7)), int(rng.integers(4, 9) * per_w), rng.uniform(6, 20))
    # the wall's pattern: bricks, tiles or panels, in strong contrast (a camera pan must show everywhere)
    _wall_pattern(rng, img[: int(round(sc.floor_y + m))], sc.H)
    # soft "crowd / poster" ellipses along the wall
    for _ in range(int(rng.integers(3, 8) * per_w)):
        cy, cx = rng.uniform(0, sc.floor_y + m), rng.uniform(0, Wc)
        ry, rx = rng.uniform(0.03, 0.15) * sc.H, rng.uniform(0.03, 0.2) * sc.H
        y0, y1 = max(int(cy - 1.3 * ry), 0), min(int(cy + 1.3 * ry) + 1, Hc)
        x0, x1 = max(int(cx - 1.3 * rx), 0), min(int(cx + 1.3 * rx) + 1, Wc)
        if y0 >= y1 or x0 >= x1:
            continue
        col = _hsv(rng.random(), rng.uniform(0, 0.7), rng.uniform(0.2, 0.9)).astype(np.float32)
        d = ((np.arange(y0, y1)[:, None] - cy) / ry) ** 2 + ((np.arange(x0, x1)[None, :] - cx) / rx) ** 2
        w = (rng.uniform(0.3, 0.8) * np.clip(1.5 - d, 0, 1))[:, :, None]
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - w) + col * w
    # floor: shaded, planks, board seams, a painted line or two
    fy0 = int(round(sc.floor_y + m))
    floor_col = _hsv(rng.uniform(0.0, 1.0), rng.uniform(0.1, 0.7), rng.uniform(0.3, 0.85)).astype(np.float32)
    shade = np.linspace(1.0, rng.uniform(0.75, 1.1), Hc - fy0, dtype=np.float32)[:, None, None]
    img[fy0:] = floor_col * shade + rng.normal(0, 4, (1, Wc, 3)).astype(np.float32)
    plank = max(2, int(rng.uniform(0.015, 0.04) * sc.H))
    img[fy0 + plank :: plank] *= 0.85
    for sx in rng.uniform(0, Wc, int(rng.integers(6, 16) * per_w)):
        img[fy0:, int(sx) : int(sx) + 1] *= 0.8
    line_col = _hsv(rng.random(), rng.uniform(0, 0.8), rng.uniform(0.7, 1.0)).astype(np.float32)
    for lx in rng.uniform(0, Wc, int(rng.integers(1, 3))):
        _rect(img, lx, fy0, lx + max(2, sc.H // 60), Hc, line_col)
    img[fy0 : fy0 + max(1, sc.H // 120)] *= 0.6
    # pole and backboard (side view), beyond the rim
    bx = sc.rim_x + m + sc.side * (sc.rim_hw + 0.05 * sc.ph)
    board_w = max(2.0, 0.035 * sc.ph)
    pole_x = bx + sc.side * rng.uniform(0.1, 0.2) * sc.ph
    pole_col = _hsv(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.15, 0.6)).astype(np.float32)
    rim_y = sc.rim_y + m
    _rect(img, pole_x - board_w * 0.8, rim_y - 0.25 * sc.ph, pole_x + board_w * 0.8, fy0 + 1, pole_col)
    _rect(img, min(bx, pole_x), rim_y - 0.22 * sc.ph, max(bx, pole_x), rim_y - 0.18 * sc.ph, pole_col)
    board_col = _hsv(rng.random(), rng.uniform(0, 0.2), rng.uniform(0.75, 1.0)).astype(np.float32)
    _rect(img, bx - board_w / 2, rim_y - 0.42 * sc.ph, bx + board_w / 2, rim_y + 0.12 * sc.ph, board_col)
    # net: lines from the rim ends narrowing below
    net_col = _hsv(0, 0, rng.uniform(0.8, 1.0)).astype(np.float32)
    nd, rx = 0.22 * sc.ph, sc.rim_x + m
    for a, b in ((-1, -0.55), (1, 0.55), (-0.4, -0.25), (0.4, 0.25)):
        _capsule(img, rx + a * sc.rim_hw, rim_y, rx + b * sc.rim_hw, rim_y + nd, 0.6, net_col)
    _capsule(img, rx - 0.55 * sc.rim_hw, rim_y + nd, rx + 0.55 * sc.rim_hw, rim_y + nd, 0.6, net_col)
    return np.clip(img, 0, 255)


def _wall_pattern(rng: np.random.Generator, wall: np.ndarray, H: int) -> None:
    """Bricks (staggered), tiles or vertical panels of random size and brightness, with dark or light joints, in
    place on ``wall`` ``(h, w, 3)`` float."""
    h, w = wall.shape[:2]
    kind = rng.choice(["bricks", "tiles", "panels"])
    contrast = rng.uniform(25, 60)
    cell_h = rng.uniform(0.05, 0.1) * H if kind != "panels" else float(h)
    cell_w = {"bricks": rng.uniform(1.8, 3.0) * cell_h, "tiles": cell_h}.get(kind, rng.uniform(0.1, 0.3) * H)
    ys, xs = np.arange(h)[:, None], np.arange(w)[None, :]
    row = np.floor(ys / cell_h).astype(int)
    shift = (row % 2) * cell_w / 2 if kind == "bricks" else 0.0
    col = np.floor((xs + shift) / cell_w).astype(int)
    levels = rng.uniform(-contrast, contrast, (int(row.max()) + 2, int(col.max()) + 2))
    wall += levels[row, col][:, :, None]
    joint = max(1.0, H / 150)
    mortar = ((xs + shift) % cell_w < joint) | ((ys % cell_h < joint) if kind != "panels" else False)
    tint = rng.uniform(-70, 70)
    wall[np.broadcast_to(mortar, (h, w))] += tint


def _rect(img: np.ndarray, x0, y0, x1, y1, col) -> None:
    h, w = img.shape[:2]
    a, b = int(round(max(0, min(x0, x1)))), int(round(min(w, max(x0, x1))))
    c, d = int(round(max(0, min(y0, y1)))), int(round(min(h, max(y0, y1))))
    if a < b and c < d:
        img[c:d, a:b] = col


def _disc(img: np.ndarray, cx: float, cy: float, r: float, col) -> None:
    h, w = img.shape[:2]
    x0, x1 = max(int(cx - r - 1), 0), min(int(cx + r + 2), w)
    y0, y1 = max(int(cy - r - 1), 0), min(int(cy + r + 2), h)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    m = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    img[y0:y1, x0:x1][m] = col


def _capsule(img: np.ndarray, ax: float, ay: float, bx: float, by: float, r: float, col) -> None:
    h, w = img.shape[:2]
    x0, x1 = max(int(min(ax, bx) - r - 1), 0), min(int(max(ax, bx) + r + 2), w)
    y0, y1 = max(int(min(ay, by) - r - 1), 0), min(int(max(ay, by) + r + 2), h)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    dx, dy = bx - ax, by - ay
    L2 = dx * dx + dy * dy
    t = 0.0 if L2 < 1e-9 else np.clip(((xx - ax) * dx + (yy - ay) * dy) / L2, 0.0, 1.0)
    m = (xx - ax - t * dx) ** 2 + (yy - ay - t * dy) ** 2 <= r * r
    img[y0:y1, x0:x1][m] = col


# --------------------------------------------------------------------------------------------------------------
# Motion: per-instant state of player and ball (world pixels) and the camera
# --------------------------------------------------------------------------------------------------------------
@dataclass
class State:
    x: float  # feet x
    lift: float  # feet height above the floor (jump)
    facing: int  # +1 right, -1 left
    bx: float  # ball centre
    by: float
    hands: tuple[tuple[float, float], tuple[float, float]]  # (front, back) hand positions
    legs: float  # leg swing angle (radians)


def _smoothstep(u: float) -> float:
    u = min(max(u, 0.0), 1.0)
    return u * u * (3 - 2 * u)


def _lerp(a: float, b: float, u: float) -> float:
    return a + (b - a) * u


def _pingpong(p0: float, direction: int, dist: float, a: float, b: float) -> tuple[float, int]:
    """Position and direction after walking ``dist`` from ``p0`` (heading ``direction``), turning at ``a``/``b``."""
    lo, hi = min(a, b), max(a, b)
    span = hi - lo
    if span <= 1e-6:
        return p0, direction
    p0 = min(max(p0, lo), hi)
    u0 = (p0 - lo) if direction > 0 else (2 * span - (p0 - lo))
    u = (u0 + dist) % (2 * span)
    return (lo + u, 1) if u < span else (lo + 2 * span - u, -1)


_CAM_DT = 0.02  # the following camera is integrated on this fixed grid, whatever the video's frame rate


class _Motion:
    """Shared pieces: the dribble (ball between hand and floor), the leg swing, a static camera."""

    cam0: float = 0.0

    def __init__(self, sc: Scene, rng: np.random.Generator):
        self.sc = sc
        self.sway = [(rng.uniform(0.01, 0.03) * sc.H, rng.uniform(6, 16), rng.uniform(0, 2 * np.pi)) for _ in range(2)]

    def state(self, t: float) -> State:  # pragma: no cover - abstract
        raise NotImplementedError

    def camera(self, times: np.ndarray) -> np.ndarray:
        """Left edge of the view in world pixels at ``times``; a tripod by default."""
        return np.full(len(times), self.sc.cam_clip(self.cam0))

    def legs(self, t: float) -> float:
        sc = self.sc
        return sc.stride_amp * math.sin(2 * math.pi * (sc.stride_hz * t + sc.stride_phase))

    def sway_dx(self, t: float) -> float:
        return sum(a * math.sin(2 * math.pi * t / p + ph) for a, p, ph in self.sway)

    def dribble(self, t: float, x: float, facing: int, phase0: float = 0.0):
        """Ball and hands while dribbling: |cos| bounce (a cusp at the floor, slow near the hand)."""
        sc = self.sc
        h = abs(math.cos(math.pi * (t / sc.bounce_period + sc.bounce_phase + phase0)))
        hand_y = sc.floor_y - sc.hand_h * sc.ph + (1 - h) * 0.06 * sc.ph
        hand_x = x + facing * 0.24 * sc.ph
        top = hand_y + sc.br * 0.9
        bottom = sc.floor_y - sc.br
        by = bottom - h * (bottom - top)
        bx = hand_x + facing * 0.15 * sc.br
        back = (x - facing * 0.1 * sc.ph, sc.floor_y - 0.45 * sc.ph)
        return bx, by, ((hand_x, hand_y), back)


class DribbleMotion(_Motion):
    """Dribbling in place with a slow sway, filmed from a tripod."""

    def __init__(self, sc: Scene, rng: np.random.Generator, x_c: float, facing: int, cam0: float):
        super().__init__(sc, rng)
        self.x_c, self.facing, self.cam0 = x_c, facing, cam0

    def state(self, t: float) -> State:
        x = float(np.clip(self.x_c + self.sway_dx(t), self.sc.xl, self.sc.xr))
        bx, by, hands = self.dribble(t, x, self.facing)
        return State(x, 0.0, self.facing, bx, by, hands, self.legs(t))


class DunkMotion(_Motion):
    """Walk out dribbling, turn, drive to the hoop dribbling, jump, slam, land, jog back dribbling; the camera
    follows the player the way a broadcast camera does."""

    def __init__(self, sc: Scene, rng: np.random.Generator, t_jump: float, t_end: float):
        super().__init__(sc, rng)
        s = sc.side
        self.t_jump, self.t_end = t_jump, t_end
        self.x_take = sc.rim_x - s * rng.uniform(0.3, 0.45) * sc.ph  # take-off point
        self.x_under = sc.rim_x - s * 0.12 * sc.ph  # where the feet are at the top of the jump
        self.x_start = float(np.clip(sc.rim_x - s * rng.uniform(0.45, 0.9) * sc.W, sc.xl, sc.xr))
        self.v = rng.uniform(0.6, 1.0) * sc.H  # px / s: a drive at 3-6 m/s for a 1.9 m player
        self.t_run = t_jump - abs(self.x_take - self.x_start) / self.v
        self.t_gather = 0.35
        self.t_up, self.t_hang = rng.uniform(0.45, 0.6), rng.uniform(0.15, 0.3)
        self.t_down = self.t_up
        self.t_land = t_jump + self.t_up + self.t_hang + self.t_down
        reach = sc.floor_y - sc.rim_y + 1.2 * sc.br  # ball height at the top, above the floor
        self.jump = float(np.clip(reach - 1.15 * sc.ph, 0.2 * sc.ph, 0.45 * sc.ph))
        self.v_back = self.v * rng.uniform(0.5, 0.8)
        self.t_turn = self.t_land + 0.35
        self.slam_vx = s * rng.uniform(-0.4, 0.1) * sc.ph
        self.back_phase = rng.random()
        self.v_pre = self.v * rng.uniform(0.5, 0.8)
        self.t_pause = rng.uniform(0.2, 0.5)
        self.lead = rng.uniform(0.0, 0.12) * sc.W  # the camera looks a little ahead of the player
        self._cam_grid: np.ndarray | None = None

    def _path(self, t: float) -> tuple[float, int]:
        """Feet x and facing. The player is on the move all the time: back and forth between the hoop and the
        far end before the drive, the drive and the dunk, then back and forth again."""
        sc, s = self.sc, self.sc.side
        far = sc.xl if s > 0 else sc.xr
        if t < self.t_run - self.t_pause:  # walking out, away from the hoop (run backwards in time)
            x, d = _pingpong(self.x_start, s, self.v_pre * (self.t_run - self.t_pause - t), self.x_start, self.x_take)
            return x, -d
        if t < self.t_run:  # turn around
            return self.x_start, (s if t >= self.t_run - 0.5 * self.t_pause else -s)
        if t < self.t_jump:
            return self.x_take - s * self.v * (self.t_jump - t), s
        if t < self.t_land:
            u = (t - self.t_jump) / (self.t_land - self.t_jump)
            return _lerp(self.x_take, self.x_under, _smoothstep(min(1.0, 2 * u))), s
        if t < self.t_turn:
            return self.x_under, s
        return _pingpong(self.x_under, -s, self.v_back * (t - self.t_turn), far, self.x_under)

    def _x(self, t: float) -> float:
        return self._path(t)[0]

    def _facing(self, t: float) -> int:
        return self._path(t)[1]

    def camera(self, times: np.ndarray) -> np.ndarray:
        if self._cam_grid is None:
            sc = self.sc
            grid = np.arange(0.0, self.t_end + 2 * _CAM_DT, _CAM_DT)
            k = 1 - math.exp(-_CAM_DT / sc.cam_tau)
            target = [sc.cam_clip(x + f * self.lead - sc.W / 2) for x, f in map(self._path, grid)]
            out = np.empty(len(grid))
            c = target[0]
            for i, tg in enumerate(target):
                c += (tg - c) * k
                out[i] = c
            self._cam_grid = out
        return np.interp(np.asarray(times, dtype=float), np.arange(len(self._cam_grid)) * _CAM_DT, self._cam_grid)

    def _lift(self, t: float) -> float:
        a = t - self.t_jump
        if a <= 0 or t >= self.t_land:
            return 0.0
        if a < self.t_up:
            return self.jump * math.sin(0.5 * math.pi * a / self.t_up)
        a -= self.t_up
        if a < self.t_hang:
            return self.jump
        a -= self.t_hang
        return self.jump * math.cos(0.5 * math.pi * a / self.t_down)

    def _free_ball(self, t: float) -> tuple[float, float]:
        """After the slam: through the net, then a falling, bouncing ball."""
        sc = self.sc
        t0 = self.t_jump + self.t_up + self.t_hang  # slam
        ts = 0.12
        top_y = sc.rim_y - 1.2 * sc.br
        if t < t0 + ts:
            return sc.rim_x, _lerp(top_y, sc.rim_y + 1.6 * sc.br, (t - t0) / ts)
        g = _GRAVITY * sc.ph
        y = sc.rim_y + 1.6 * sc.br
        vy = (sc.rim_y + 1.6 * sc.br - top_y) / ts
        x = sc.rim_x
        a = t - (t0 + ts)
        floor = sc.floor_y - sc.br
        for _ in range(8):  # piecewise parabolas between bounces
            s_hit = (-vy + math.sqrt(max(vy * vy + 2 * g * (floor - y), 0.0))) / g
            if a < s_hit:
                return x + self.slam_vx * a, y + vy * a + 0.5 * g * a * a
            a -= s_hit
            x += self.slam_vx * s_hit
            y, vy = floor, -0.6 * (vy + g * s_hit)
        return x, floor

    def state(self, t: float) -> State:
        sc = self.sc
        (x, facing), lift = self._path(t), self._lift(t)
        feet_y = sc.floor_y - lift
        chest = (x + facing * 0.12 * sc.ph, feet_y - 0.62 * sc.ph)
        top = (sc.rim_x, sc.rim_y - 1.2 * sc.br)
        t_slam = self.t_jump + self.t_up + self.t_hang
        if t < self.t_jump - self.t_gather:
            bx, by, hands = self.dribble(t, x, facing)
        elif t < self.t_jump:  # gather: ball from the dribble into both hands at the chest
            u = _smoothstep((t - (self.t_jump - self.t_gather)) / self.t_gather)
            dbx, dby, _ = self.dribble(self.t_jump - self.t_gather, x, facing)
            bx, by = _lerp(dbx, chest[0], u), _lerp(dby, chest[1], u)
            hands = ((bx + facing * 0.7 * sc.br, by), (bx - facing * 0.7 * sc.br, by))
        elif t < t_slam:  # up to the rim and hang
            u = _smoothstep((t - self.t_jump) / self.t_up)
            bx, by = _lerp(chest[0], top[0], u), _lerp(chest[1], top[1], u)
            hands = ((bx + facing * 0.6 * sc.br, by - 0.5 * sc.br), (bx - facing * 0.6 * sc.br, by - 0.5 * sc.br))
        else:
            bx, by = self._free_ball(t)
            u = _smoothstep((t - t_slam) / 0.5)  # arms come down from the rim
            hx, hy = _lerp(sc.rim_x, x + facing * 0.2 * sc.ph, u), _lerp(top[1] + sc.br, feet_y - 0.45 * sc.ph, u)
            hands = ((hx, hy), (hx - facing * 0.1 * sc.ph, hy + 0.05 * sc.ph))
            t_catch = self.t_land + 0.3
            if t >= t_catch:  # pick the dribble back up, blending from the loose ball
                dbx, dby, dhands = self.dribble(t, x, facing, self.back_phase)
                w = _smoothstep((t - t_catch) / 0.5)
                bx, by = _lerp(bx, dbx, w), _lerp(by, dby, w)
                hands = tuple((_lerp(a[0], b[0], w), _lerp(a[1], b[1], w)) for a, b in zip(hands, dhands))
        return State(x, lift, facing, bx, by, hands, self.legs(t))


class ShootMotion(_Motion):
    """Extra class: dribble in place, then a jump shot in an arc to the rim; the ball drops and is collected."""

    def __init__(self, sc: Scene, rng: np.random.Generator, t_shot: float):
        super().__init__(sc, rng)
        s = sc.side
        self.x = float(np.clip(sc.rim_x - s * rng.uniform(0.3, 0.55) * sc.W, sc.xl, sc.xr))
        self.t_shot, self.flight = t_shot, rng.uniform(0.9, 1.3)
        self.cam0 = (self.x + sc.rim_x) / 2 - sc.W / 2 + rng.uniform(-0.1, 0.1) * sc.W

    def state(self, t: float) -> State:
        sc, s = self.sc, self.sc.side
        x = self.x + 0.3 * self.sway_dx(t)
        a = t - self.t_shot
        lift = 0.12 * sc.ph * math.sin(math.pi * a / 0.5) if 0 < a < 0.5 else 0.0
        feet_y = sc.floor_y - lift
        release = (x + s * 0.1 * sc.ph, feet_y - 1.15 * sc.ph)
        if a < -0.4 or a > self.flight + 2.0:
            bx, by, hands = self.dribble(t, x, s)
        elif a < 0:
            bx, by = release[0], _lerp(feet_y - 0.6 * sc.ph, release[1], _smoothstep((a + 0.4) / 0.4))
            hands = ((bx, by + sc.br), (bx - s * sc.br, by + sc.br))
        elif a < self.flight:
            u = a / self.flight
            bx = _lerp(release[0], sc.rim_x, u)
            by = _lerp(release[1], sc.rim_y - sc.br, u) - 0.9 * sc.ph * 4 * u * (1 - u)
            hands = ((release[0], release[1] + sc.br), (release[0] - s * sc.br, release[1] + sc.br))
        else:
            u = _smoothstep((a - self.flight) / 2.0)
            bx = _lerp(sc.rim_x, x + s * 0.24 * sc.ph, u)
            by = _lerp(sc.rim_y, sc.floor_y - sc.br, min(1.0, 3 * u)) - (0.4 * sc.ph * u if u > 0.33 else 0.0)
            hands = self.dribble(t, x, s)[2]
        return State(x, lift, s, bx, by, hands, self.legs(t))


class PassMotion(_Motion):
    """Extra class: chest passes to a partner off screen and back, every 2.4-3.6 s."""

    def __init__(self, sc: Scene, rng: np.random.Generator):
        super().__init__(sc, rng)
        self.x = float(rng.uniform(sc.xl + 0.2 * sc.W, sc.xr - 0.2 * sc.W))
        self.facing = int(rng.choice([-1, 1]))
        self.period, self.phase = rng.uniform(2.4, 3.6), rng.random()
        self.cam0 = sc.cam_clip(self.x - sc.W / 2 - self.facing * rng.uniform(0.1, 0.25) * sc.W)

    def state(self, t: float) -> State:
        sc, f = self.sc, self.facing
        x = self.x + 0.3 * self.sway_dx(t)
        chest = (x + f * 0.2 * sc.ph, sc.floor_y - 0.62 * sc.ph)
        edge = self.cam0 + (sc.W + 2 * sc.br if f > 0 else -2 * sc.br)
        u = (t / self.period + self.phase) % 1.0
        k = max(0.0, 1 - abs(2 * u - 1) * 1.6)  # 0 at the chest, 1 off screen
        bx, by = _lerp(chest[0], edge, k), chest[1] - 0.1 * sc.ph * math.sin(math.pi * k)
        hands = ((chest[0] + f * 0.5 * sc.br * (1 - k), chest[1]), (chest[0] - f * 0.5 * sc.br, chest[1]))
        return State(x, 0.0, f, bx, by, hands, self.legs(t))


def _window_event_time(rng: np.random.Generator, spec: ClipSpec) -> float:
    clip_len = spec.time_end - spec.time_start
    return spec.time_start + rng.uniform(0.15, 0.8) * clip_len


def make_motion(spec: ClipSpec, sc: Scene, rng: np.random.Generator) -> _Motion:
    if spec.label == DUNKING:
        return DunkMotion(sc, rng, _window_event_time(rng, spec), spec.n_frames / spec.fps)
    if spec.label == DRIBBLING:
        # Stand where, face the way and frame the shot as a dunk of this very scene does at a random instant of
        # the window: single frames of both classes then show the same things in the same places.
        t = rng.uniform(spec.time_start, spec.time_end)
        ghost = DunkMotion(sc, np.random.default_rng(rng.integers(2**63)), _window_event_time(rng, spec), t)
        st = ghost.state(t)
        return DribbleMotion(sc, rng, st.x, st.facing, float(ghost.camera(np.array([t]))[0]))
    if spec.label == EXTRA_CLASSES[0]:
        return ShootMotion(sc, rng, _window_event_time(rng, spec))
    if spec.label == EXTRA_CLASSES[1]:
        return PassMotion(sc, rng)
    raise ValueError(f"no motion for label {spec.label!r}")


# --------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------
def _draw(img: np.ndarray, sc: Scene, st: State, ox: float, oy: float) -> None:
    """Draw the player, the ball and the rim onto ``img``; ``(ox, oy)`` maps world to image coordinates."""
    c, ph = sc.colors, sc.ph
    x, fy, f = st.x + ox, sc.floor_y - st.lift + oy, st.facing
    hip = (x, fy - 0.47 * ph)
    sho = (x + f * 0.02 * ph, fy - 0.8 * ph)
    leg = 0.47 * ph
    for sgn in (1, -1):
        a = sgn * st.legs
        foot = (hip[0] + leg * math.sin(a), hip[1] + leg * math.cos(a))
        _capsule(img, hip[0], hip[1], foot[0], foot[1], sc.limb * 1.1, c["shorts"])
    _capsule(img, hip[0], hip[1], sho[0], sho[1], sc.limb * 2.0, c["jersey"])
    _disc(img, sho[0] + f * 0.03 * ph, fy - 0.92 * ph, 0.085 * ph, c["skin"])
    back, front = st.hands[1], st.hands[0]
    _capsule(img, sho[0], sho[1], back[0] + ox, back[1] + oy, sc.limb, c["skin"])
    _disc(img, st.bx + ox, st.by + oy, sc.br, c["seam"])
    _disc(img, st.bx + ox, st.by + oy, sc.br * 0.8, c["ball"])
    _capsule(img, sho[0], sho[1], front[0] + ox, front[1] + oy, sc.limb, c["skin"])
    _capsule(img, sc.rim_x - sc.rim_hw + ox, sc.rim_y + oy, sc.rim_x + sc.rim_hw + ox, sc.rim_y + oy,
             max(1.0, 0.22 * sc.br), c["rim"])


class ClipRenderer:
    """Renders any frame of a clip's source video on its own (all per-frame randomness is drawn up front)."""

    def __init__(self, spec: ClipSpec):
        self.spec = spec
        ss = np.random.SeedSequence(list(spec.seed))
        r_scene, r_motion, r_cam = (np.random.default_rng(s) for s in ss.spawn(3))
        self.scene = sc = _make_scene(r_scene, spec.width, spec.height)
        bg = _background(r_scene, sc)
        sigma = r_cam.uniform(1.5, 4.0)
        self.noisy = [np.clip(bg + r_cam.normal(0, sigma, bg.shape), 0, 255).astype(np.uint8) for _ in range(4)]
        self.motion = make_motion(spec, sc, r_motion)
        m, n = sc.margin, spec.n_frames
        t = np.arange(n) / spec.fps
        amp = r_cam.uniform(0.2, 0.5) * m  # hand-held sway plus a little shake
        jit = np.zeros((n, 2))
        for axis in range(2):
            for _ in range(2):
                period, phase = r_cam.uniform(1.5, 7.0), r_cam.uniform(0, 2 * np.pi)
                jit[:, axis] += 0.5 * amp * np.sin(2 * np.pi * t / period + phase)
        jit += r_cam.normal(0, 0.15 * m, (n, 2))
        self.jitter = np.clip(np.round(jit), -m, m).astype(int)
        self.cam = np.round(self.motion.camera(t)).astype(int)
        self.bg_index = r_cam.integers(0, len(self.noisy), n)

    def frame(self, i: int) -> np.ndarray:
        sc, m = self.scene, self.scene.margin
        jx, jy = int(self.jitter[i, 0]) + int(self.cam[i]), int(self.jitter[i, 1])
        base = self.noisy[int(self.bg_index[i])]
        img = base[m + jy : m + jy + sc.H, m + jx : m + jx + sc.W].copy()
        _draw(img, sc, self.motion.state(i / self.spec.fps), -jx, -jy)
        return img


def render_frames(spec: ClipSpec):
    """Yield the source video's ``(H, W, 3)`` uint8 RGB frames (deterministic for ``spec``)."""
    r = ClipRenderer(spec)
    for i in range(spec.n_frames):
        yield r.frame(i)


def clip_states(spec: ClipSpec, times) -> dict[str, np.ndarray]:
    """Ground truth at ``times`` (seconds in the source video), in *screen* pixels (camera applied, no shake):
    player feet x, jump height, facing, ball x/y, rim x, camera. For analysis and tests."""
    ss = np.random.SeedSequence(list(spec.seed))
    r_scene, r_motion, _ = (np.random.default_rng(s) for s in ss.spawn(3))
    sc = _make_scene(r_scene, spec.width, spec.height)
    motion = make_motion(spec, sc, r_motion)
    times = np.asarray(times, dtype=float)
    cam = motion.camera(times)
    st = [motion.state(float(t)) for t in times]
    return {
        "player_x": np.array([s.x for s in st]) - cam, "lift": np.array([s.lift for s in st]),
        "facing": np.array([s.facing for s in st], dtype=float), "ball_x": np.array([s.bx for s in st]) - cam,
        "ball_y": np.array([s.by for s in st]), "rim_x": sc.rim_x - cam, "camera": cam,
        "player_height": np.full(len(times), sc.ph),
    }


def _render_job(job: tuple[ClipSpec, str]) -> None:
    spec, path = job
    encode_video(render_frames(spec), path, fps=spec.fps)
