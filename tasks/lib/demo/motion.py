"""Motion: the per-instant state of player and ball (world pixels) and the following camera, one model per
class. The classes differ in motion only (docs/demo.md, "Why the classes differ in motion only")."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tasks.lib.demo.scene import Scene
from tasks.lib.demo.spec import ClipSpec, DRIBBLING, DUNKING, EXTRA_CLASSES, GRAVITY



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
        g = GRAVITY * sc.ph
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
