"""Leakage across splits: clips in different splits that are the same footage, and what ``frames.leakage: drop``
keeps of them.

Combined Kinetics CSVs (400/600/700-2020) list the same YouTube video in more than one split, and the same footage
is re-uploaded under other ids; a model then scores on val/test clips it has trained on. Two clips in different
splits are reported as one pair when

* ``same_video_overlap``: they share a ``youtube_id`` and their time windows overlap (an unknown window counts as
  overlapping: it cannot be shown apart). Windows that only touch, or are disjoint, are different footage.
* ``near_duplicate_frames``: their stored frames look the same. Each clip gets a perceptual hash of
  :data:`HASH_FRAMES` uniformly spaced stored frames: luma, area-resized to 32x32, 2-D DCT, the 8x8
  lowest-frequency coefficients against their median, 64 bits a frame (imagehash's pHash). Two clips are
  duplicates when the mean Hamming distance of their aligned frames is at most :data:`THRESHOLD` bits. The low
  frequencies survive re-encoding, rescaling and small crops; unrelated frames differ in about half the bits.
  Pairs are compared on the hashes alone (``N x N`` XOR + popcount in row blocks), never by reloading frames.
  Frames are aligned by position, so a copy trimmed to another time span, or mirrored, is not caught; a clip
  whose hashed frames are all flat (black, one colour) is not hashed, since every flat frame has the same hash.
  A fixed camera filmed at other moments hashes as the same footage too (surv_fight's nofi088-091): for a
  classifier that is the same scene in two splits, which is leakage of its own.

Pure functions (numpy and the standard library): the frames stage (``tasks/frames.py``) reads the ``.npy`` files,
calls :func:`scan_leaks` and :func:`drop_decisions`, and writes ``reports/leakage.csv``.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

REASON_OVERLAP = "same_video_overlap"
REASON_FRAMES = "near_duplicate_frames"
REPORT_COLUMNS = ["clip_id_a", "label_a", "split_a", "clip_id_b", "label_b", "split_b", "reason", "distance",
                  "action_a", "action_b"]
HASH_FRAMES = 4  # stored frames hashed per clip, uniformly spaced
HASH_GRID = 32  # the luma image the DCT sees
HASH_BLOCK = 8  # the low-frequency DCT block kept: 8x8 = 64 bits a frame
# Mean per-frame Hamming distance (bits of 64) at or below which two clips are near duplicates. Measured with
# benchmarks/leakage.py on the three real sets (docs/data.md): ffmpeg copies re-encoded at crf 40, at half
# size or brighter stay within 4.5 bits, and 33 of 36 copies at 15 fps or with a 5 % centre crop within 10; every
# clip's nearest clip in another split is at 15.5 or more (unrelated frames: about 32), except four surv_fight
# clips of one fixed camera (3.5-7.5, real leaks). 10 keeps a margin of 5 bits to the nearest different clip, since
# a false pair under `drop` costs a val/test clip; a 10 % crop (2.5-19.5 bits) is caught only 14 times in 36.
THRESHOLD = 10.0
FLAT_STD = 2.0  # a 32x32 luma image with less spread than this (grey levels) is a flat frame
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_BLOCK_BYTES = 64 << 20  # one XOR block of the distance matrix (rows x N x 8 bytes), computed a frame at a time

# actions, per clip of a pair, in reports/leakage.csv
NONE, KEPT, DROPPED, MOVED = "none", "kept", "dropped", "moved_to_train"


@dataclass(frozen=True)
class LeakClip:
    """One clip of the dataset as the check sees it (the manifest's columns)."""

    clip_id: str
    split: str
    label: str = ""
    youtube_id: str = ""
    time_start: float = math.nan
    time_end: float = math.nan


@dataclass(frozen=True)
class LeakPair:
    """Two clips in different splits that are the same footage. ``distance``: the mean per-frame Hamming distance
    of their hashes (nan when either clip has none)."""

    a: LeakClip
    b: LeakClip
    reason: str
    distance: float = math.nan


# -- hashing ----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of an area (box) resize: each output pixel averages the input span it covers."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    w = np.zeros((n_out, n_in), np.float32)
    for o in range(n_out):
        lo, hi = edges[o], edges[o + 1]
        for i in range(int(math.floor(lo)), min(n_in, int(math.ceil(hi)))):
            w[o, i] = max(0.0, min(hi, i + 1) - max(lo, i))
        w[o] /= w[o].sum()
    return w


@functools.lru_cache(maxsize=4)
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II: ``D @ x`` transforms the columns of ``x``."""
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    d = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    d[0] /= np.sqrt(2.0)
    return d.astype(np.float32)


def hash_positions(num_frames: int, count: int = HASH_FRAMES) -> np.ndarray:
    """The stored frames hashed: the centres of ``count`` equal segments of the clip's ``num_frames``."""
    count = max(1, min(count, num_frames))
    return ((np.arange(count) + 0.5) * num_frames / count).astype(int)


def frame_hashes(frames: np.ndarray, count: int = HASH_FRAMES) -> np.ndarray | None:
    """64-bit perceptual hashes of ``count`` uniformly spaced frames of one clip ``(F, H, W, 3)`` uint8: a
    ``(count,)`` uint64 array, or None when every hashed frame is flat (nothing to tell clips apart by)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"expected (frames, height, width, 3), got {frames.shape}")
    picked = np.asarray(frames[hash_positions(frames.shape[0], count)], np.float32)
    luma = picked @ _LUMA  # (n, H, W)
    rows, cols = _area_matrix(luma.shape[1], HASH_GRID), _area_matrix(luma.shape[2], HASH_GRID)
    small = rows @ luma @ cols.T  # (n, 32, 32)
    if (small.std(axis=(1, 2)) < FLAT_STD).all():
        return None
    d = _dct_matrix(HASH_GRID)
    low = (d @ small @ d.T)[:, :HASH_BLOCK, :HASH_BLOCK].reshape(len(small), -1)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64).reshape(-1)


def npy_hashes(path: str | os.PathLike, count: int = HASH_FRAMES) -> np.ndarray | None:
    """:func:`frame_hashes` of a stored ``.npy``, reading only the hashed frames (memory-mapped)."""
    frames = np.load(path, mmap_mode="r")
    return frame_hashes(frames[hash_positions(frames.shape[0], count)], count)


def _stack(hashes: Sequence[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """``(N, n)`` uint64 and a validity mask; clips without a hash (or with another frame count) are invalid."""
    lengths = [len(h) for h in hashes if h is not None]
    n = max(set(lengths), key=lengths.count) if lengths else 1
    valid = np.array([h is not None and len(h) == n for h in hashes], bool)
    out = np.zeros((len(hashes), n), np.uint64)
    for i, h in enumerate(hashes):
        if valid[i]:
            out[i] = h
    return out, valid


_FAR = np.iinfo(np.uint16).max  # a masked entry of the bit-count matrix


def _cross_split_blocks(splits: Sequence[str], hashes: Sequence[np.ndarray | None]):
    """Yield ``(start, bits, frames)``: rows ``start..`` of the matrix of Hamming distances summed over the
    ``frames`` hashed frames (uint16), :data:`_FAR` where the two clips share a split or either has no hash."""
    h, valid = _stack(hashes)
    codes: dict[str, int] = {}
    split_codes = np.array([codes.setdefault(s, len(codes)) for s in splits], np.int64)
    frames = h.shape[1]
    block = max(1, min(len(h), _BLOCK_BYTES // max(1, len(h) * 8)))
    columns = [np.ascontiguousarray(h[:, k]) for k in range(frames)]
    for start in range(0, len(h), block):
        stop = min(len(h), start + block)
        bits = np.zeros((stop - start, len(h)), np.uint16)
        for col in columns:
            bits += np.bitwise_count(col[start:stop, None] ^ col[None, :])
        bits[split_codes[start:stop, None] == split_codes[None, :]] = _FAR
        bits[~valid[start:stop]] = _FAR
        bits[:, ~valid] = _FAR
        yield start, bits, frames


def nearest_cross_split(splits: Sequence[str], hashes: Sequence[np.ndarray | None]) -> np.ndarray:
    """Per clip, the distance to its nearest clip in another split (inf when there is none, or no hash): how far
    the threshold is from flagging real, different clips."""
    out = np.full(len(hashes), np.inf)
    for start, bits, frames in _cross_split_blocks(splits, hashes):
        _nearest_into(out, start, bits, frames)
    return out


def _nearest_into(out: np.ndarray, start: int, bits: np.ndarray, frames: int) -> None:
    if bits.shape[1]:
        low = bits.min(axis=1)
        out[start : start + len(bits)] = np.where(low == _FAR, np.inf, low / frames)


# -- finding pairs ----------------------------------------------------------------------------------------------
def windows_overlap(a: LeakClip, b: LeakClip) -> bool:
    """Whether two windows of one video share footage: ``[start, end)`` intervals that intersect; an unknown
    (nan) time cannot be shown apart, so it overlaps."""
    times = (a.time_start, a.time_end, b.time_start, b.time_end)
    if any(t is None or (isinstance(t, float) and math.isnan(t)) for t in times):
        return True
    return max(a.time_start, b.time_start) < min(a.time_end, b.time_end)


@dataclass(frozen=True)
class LeakScan:
    """What one pass over all pairs found: the pairs, and per clip the distance to its nearest clip in another
    split (inf without a hash or another split), which tells how far the threshold is from flagging real clips."""

    pairs: list[LeakPair]
    nearest: np.ndarray


def find_leaks(clips: Sequence[LeakClip], hashes: Sequence[np.ndarray | None] | None = None,
               threshold: float = THRESHOLD) -> list[LeakPair]:
    """Every pair of clips in different splits that is the same footage (:func:`scan_leaks`' pairs)."""
    return scan_leaks(clips, hashes, threshold).pairs


def scan_leaks(clips: Sequence[LeakClip], hashes: Sequence[np.ndarray | None] | None = None,
               threshold: float = THRESHOLD) -> LeakScan:
    """Every pair of clips in different splits that is the same footage, once, with its first reason
    (``same_video_overlap`` before ``near_duplicate_frames``); ``hashes`` (one per clip, None for none) enables
    the frames check. Pairs sorted by (clip_id_a, clip_id_b), ``a`` the smaller id. One pass over the hashes
    (quadratic in clips: about 2 s for 10,000 on one core)."""
    clips = list(clips)
    if hashes is not None and len(hashes) != len(clips):
        raise ValueError(f"{len(hashes)} hashes for {len(clips)} clips")
    found: dict[tuple[int, int], LeakPair] = {}

    def add(i: int, j: int, reason: str, distance: float) -> None:
        i, j = sorted((i, j), key=lambda k: (clips[k].clip_id, k))
        found.setdefault((i, j), LeakPair(clips[i], clips[j], reason, distance))

    distances: dict[tuple[int, int], float] = {}
    nearest = np.full(len(clips), np.inf)
    if hashes is not None:
        for start, bits, frames in _cross_split_blocks([c.split for c in clips], hashes):
            _nearest_into(nearest, start, bits, frames)
            for r, j in zip(*np.nonzero(bits <= threshold * frames)):
                i = start + int(r)
                if i < j:
                    distances[(i, int(j))] = float(bits[r, j]) / frames

    by_video: dict[str, list[int]] = {}
    for i, c in enumerate(clips):
        if c.youtube_id:
            by_video.setdefault(c.youtube_id, []).append(i)
    for members in by_video.values():
        for x, i in enumerate(members):
            for j in members[x + 1 :]:
                if clips[i].split != clips[j].split and windows_overlap(clips[i], clips[j]):
                    add(i, j, REASON_OVERLAP, _pair_distance(i, j, hashes, distances))
    for (i, j), d in sorted(distances.items()):
        add(i, j, REASON_FRAMES, d)
    return LeakScan(sorted(found.values(), key=lambda p: (p.a.clip_id, p.b.clip_id)), nearest)


def _pair_distance(i: int, j: int, hashes: Sequence[np.ndarray | None] | None,
                   known: dict[tuple[int, int], float]) -> float:
    if (min(i, j), max(i, j)) in known:
        return known[(min(i, j), max(i, j))]
    if hashes is None or hashes[i] is None or hashes[j] is None or len(hashes[i]) != len(hashes[j]):
        return math.nan
    return float(np.bitwise_count(hashes[i] ^ hashes[j]).mean())


# -- the drop policy --------------------------------------------------------------------------------------------
_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


def leak_groups(pairs: Iterable[LeakPair]) -> list[list[LeakClip]]:
    """Clips joined by pairs (transitively: a val and a test copy of one train clip are one group), each group
    sorted by (split, clip_id)."""
    parent: dict[str, str] = {}
    clip_of: dict[str, LeakClip] = {}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p in pairs:
        for c in (p.a, p.b):
            parent.setdefault(c.clip_id, c.clip_id)
            clip_of[c.clip_id] = c
        ra, rb = root(p.a.clip_id), root(p.b.clip_id)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[str, list[LeakClip]] = {}
    for cid, c in clip_of.items():
        groups.setdefault(root(cid), []).append(c)
    key = lambda c: (_SPLIT_ORDER.get(c.split, 3), c.clip_id)  # noqa: E731
    return sorted((sorted(g, key=key) for g in groups.values()), key=lambda g: key(g[0]))


def drop_decisions(pairs: Iterable[LeakPair]) -> dict[str, str]:
    """What ``frames.leakage: drop`` does to each clip of a leaking group: ``kept`` (a train copy stays),
    ``dropped`` (leaves the dataset) or ``moved_to_train`` (a group with no train copy keeps one, in train).

    Each piece of footage is kept once, in train only, rather than dropped everywhere or kept in val/test: a
    val/test score must come from footage the model never saw, and train is where a copy still earns its keep
    (more examples) without distorting any measurement. Train copies of one footage all stay: duplicates within
    one split bias nothing that is measured. A group with no train copy (a val and a test upload of one video)
    keeps its first copy by (split, clip_id), so the choice is the same on every run."""
    out: dict[str, str] = {}
    for group in leak_groups(pairs):
        train = [c for c in group if c.split == "train"]
        for c in group:
            out[c.clip_id] = KEPT if c.split == "train" else DROPPED
        if not train:
            out[group[0].clip_id] = MOVED
    return out


def report_rows(pairs: Iterable[LeakPair], decisions: dict[str, str] | None = None) -> list[dict[str, object]]:
    """``reports/leakage.csv`` rows (:data:`REPORT_COLUMNS`); splits are those the pair was found in, actions
    ``none`` under the report policy."""
    decisions = decisions or {}
    rows = []
    for p in pairs:
        rows.append({
            "clip_id_a": p.a.clip_id, "label_a": p.a.label, "split_a": p.a.split,
            "clip_id_b": p.b.clip_id, "label_b": p.b.label, "split_b": p.b.split, "reason": p.reason,
            "distance": "" if math.isnan(p.distance) else f"{p.distance:.2f}",
            "action_a": decisions.get(p.a.clip_id, NONE), "action_b": decisions.get(p.b.clip_id, NONE),
        })
    return rows
