"""Train/val/test assignment for the dataset manifest.

Two modes (``frames.split_mode``):

* ``random`` (default): stratified per class with the ``frames.split`` fractions. Each clip's place in its
  class's order is a hash of ``(seed, clip_id)``, not a shuffle of the whole list, so the assignment is the same
  on every run and machine for a given seed, and adding or losing a few clips (a new download, a quarantined
  file) only moves clips at the split boundaries instead of reshuffling everything.
* ``official``: keep the CSV's own ``split`` column. When the selected rows have no ``val`` at all (e.g. only the
  train CSV was used), ``val`` is carved out of ``train``, per class, in the same hash order, with the share
  ``val / (train + val)`` of the configured fractions so the train:val ratio is the configured one.

Every class/split that ends up empty although its fraction is positive gets a warning that names the class and
its clip count; the flow logs them and returns them in its summary.
"""
from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from model.dataset import SPLITS


@dataclass(frozen=True)
class SplitClip:
    clip_id: str
    label: str
    official: str = ""  # the CSV's split (train/val/test), "" when unknown


@dataclass
class SplitResult:
    assignment: dict[str, str]  # clip_id -> split
    warnings: list[str] = field(default_factory=list)

    def counts(self, clips: Iterable[SplitClip]) -> dict[str, dict[str, int]]:
        """``{label: {split: n}}`` for reports."""
        out: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLITS, 0))
        for c in clips:
            out[c.label][self.assignment[c.clip_id]] += 1
        return dict(out)


def hash_order(clip_ids: Iterable[str], seed: int) -> list[str]:
    """A seed-dependent order in which each clip's rank depends only on its own id (ties broken by id)."""
    return sorted(clip_ids, key=lambda c: (hashlib.sha256(f"{seed}\x00{c}".encode()).hexdigest(), c))


def apportion(n: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n`` items by ``fractions`` with the largest-remainder method: counts sum to ``n`` exactly and
    each differs from ``n * f`` by less than one. Ties go to the earlier split (train, then val, then test)."""
    total = sum(fractions)
    if n < 0 or total <= 0:
        raise ValueError(f"cannot apportion {n} items by {fractions}")
    exact = [n * f / total for f in fractions]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(fractions)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _at_least_one_each(counts: list[int], fractions: Sequence[float]) -> list[int]:
    """A small class still gets one clip in every split with a positive fraction when it has enough clips
    (4 clips at 70/15/15: 2/1/1 rather than 3/1/0), so each class can be validated and tested."""
    counts = list(counts)
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if sum(counts) < len(wanted):
        return counts
    for i in wanted:
        if counts[i] == 0:
            donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
            counts[donor] -= 1
            counts[i] += 1
    return counts


def _by_label(clips: Iterable[SplitClip]) -> dict[str, list[SplitClip]]:
    groups: dict[str, list[SplitClip]] = defaultdict(list)
    seen: set[str] = set()
    for c in clips:
        if c.clip_id in seen:
            raise ValueError(f"duplicate clip_id {c.clip_id!r}")
        seen.add(c.clip_id)
        groups[c.label].append(c)
    return dict(sorted(groups.items()))


def random_splits(clips: Iterable[SplitClip], fractions: Sequence[float], seed: int) -> SplitResult:
    """Stratified: each class is apportioned train/val/test by ``fractions`` (train, val, test)."""
    res = SplitResult({})
    for label, group in _by_label(clips).items():
        ordered = hash_order([c.clip_id for c in group], seed)
        counts = _at_least_one_each(apportion(len(ordered), fractions), fractions)
        start = 0
        for split, k in zip(SPLITS, counts):
            for cid in ordered[start : start + k]:
                res.assignment[cid] = split
            start += k
        empty = [split for split, frac, k in zip(SPLITS, fractions, counts) if frac > 0 and k == 0]
        if empty:
            res.warnings.append(
                f"class {label!r} has only {len(ordered)} clip(s): none in {'/'.join(empty)} "
                f"(one clip in each split needs {sum(1 for f in fractions if f > 0)})"
            )
    return res


def official_splits(clips: Iterable[SplitClip], fractions: Sequence[float], seed: int) -> SplitResult:
    """The CSV's splits; ``val`` carved out of ``train`` (per class) when no selected clip is in ``val``."""
    clips = list(clips)
    res = SplitResult({})
    unknown = [c for c in clips if c.official not in SPLITS]
    if unknown:
        res.warnings.append(
            f"{len(unknown)} clip(s) have no official split (e.g. {unknown[0].clip_id!r}, files found in raw/ "
            "without a download report): they go to train"
        )
    for c in clips:
        res.assignment[c.clip_id] = c.official if c.official in SPLITS else "train"
    has_val = any(s == "val" for s in res.assignment.values())
    f_train, f_val, _ = fractions
    carve = not has_val and f_val > 0
    if carve:
        res.warnings.append(
            f"the selected rows have no val split: carving {f_val / (f_train + f_val):.0%} of each class's train "
            "clips out as val"
        )
    for label, group in _by_label(clips).items():
        train = [c.clip_id for c in group if res.assignment[c.clip_id] == "train"]
        if carve and train:
            _, n_val = apportion(len(train), [f_train, f_val])
            for cid in hash_order(train, seed)[len(train) - n_val :]:
                res.assignment[cid] = "val"
        present = {s: sum(1 for c in group if res.assignment[c.clip_id] == s) for s in SPLITS}
        others = {s for s in SPLITS if any(res.assignment[c.clip_id] == s for c in clips)}
        for split in SPLITS:
            if split in others and present[split] == 0:
                res.warnings.append(f"class {label!r} ({len(group)} clips) has no {split} clips in the official splits")
    if not any(s == "test" for s in res.assignment.values()) and clips:
        res.warnings.append("no test clips in the official splits (Kinetics test CSVs have no labels): "
                            "evaluate on val, or use split_mode: random")
    return res


def assign_splits(clips: Iterable[SplitClip], mode: str, fractions: Sequence[float], seed: int) -> SplitResult:
    if mode == "random":
        return random_splits(clips, fractions, seed)
    if mode == "official":
        return official_splits(clips, fractions, seed)
    raise ValueError(f"unknown split mode {mode!r}; use random or official")
