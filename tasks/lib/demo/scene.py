"""The scene of a demo clip: everything that does not depend on the class (court, wall, lighting, player and
ball looks), and the drawing primitives."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np



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


def make_scene(rng: np.random.Generator, W: int, H: int) -> Scene:
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


def background(rng: np.random.Generator, sc: Scene) -> np.ndarray:
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
        capsule(img, rx + a * sc.rim_hw, rim_y, rx + b * sc.rim_hw, rim_y + nd, 0.6, net_col)
    capsule(img, rx - 0.55 * sc.rim_hw, rim_y + nd, rx + 0.55 * sc.rim_hw, rim_y + nd, 0.6, net_col)
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


def disc(img: np.ndarray, cx: float, cy: float, r: float, col) -> None:
    h, w = img.shape[:2]
    x0, x1 = max(int(cx - r - 1), 0), min(int(cx + r + 2), w)
    y0, y1 = max(int(cy - r - 1), 0), min(int(cy + r + 2), h)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    m = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    img[y0:y1, x0:x1][m] = col


def capsule(img: np.ndarray, ax: float, ay: float, bx: float, by: float, r: float, col) -> None:
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
