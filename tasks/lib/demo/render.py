"""Rendering: a clip's frames from its scene and motion, and the ground-truth states the tests check."""
from __future__ import annotations

import math

import numpy as np

from tasks.lib.demo.motion import State, make_motion
from tasks.lib.demo.scene import Scene, background, capsule, disc, make_scene
from tasks.lib.demo.spec import ClipSpec



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
        capsule(img, hip[0], hip[1], foot[0], foot[1], sc.limb * 1.1, c["shorts"])
    capsule(img, hip[0], hip[1], sho[0], sho[1], sc.limb * 2.0, c["jersey"])
    disc(img, sho[0] + f * 0.03 * ph, fy - 0.92 * ph, 0.085 * ph, c["skin"])
    back, front = st.hands[1], st.hands[0]
    capsule(img, sho[0], sho[1], back[0] + ox, back[1] + oy, sc.limb, c["skin"])
    disc(img, st.bx + ox, st.by + oy, sc.br, c["seam"])
    disc(img, st.bx + ox, st.by + oy, sc.br * 0.8, c["ball"])
    capsule(img, sho[0], sho[1], front[0] + ox, front[1] + oy, sc.limb, c["skin"])
    capsule(img, sc.rim_x - sc.rim_hw + ox, sc.rim_y + oy, sc.rim_x + sc.rim_hw + ox, sc.rim_y + oy,
             max(1.0, 0.22 * sc.br), c["rim"])


class ClipRenderer:
    """Renders any frame of a clip's source video on its own (all per-frame randomness is drawn up front)."""

    def __init__(self, spec: ClipSpec):
        self.spec = spec
        ss = np.random.SeedSequence(list(spec.seed))
        r_scene, r_motion, r_cam = (np.random.default_rng(s) for s in ss.spawn(3))
        self.scene = sc = make_scene(r_scene, spec.width, spec.height)
        bg = background(r_scene, sc)
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
    sc = make_scene(r_scene, spec.width, spec.height)
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
