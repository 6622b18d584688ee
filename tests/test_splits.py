"""Split assignment: deterministic, stratified, stable under small changes; official mode and its val carve-out;
warnings for classes too small for a split."""
from __future__ import annotations

from collections import Counter

import pytest

from tasks.lib.splits import SplitClip, apportion, assign_splits, hash_order, official_splits, random_splits

FR = (0.7, 0.15, 0.15)


def clips(label: str, n: int, official: str = "", prefix: str | None = None) -> list[SplitClip]:
    return [SplitClip(f"{prefix or label}{i:04d}", label, official) for i in range(n)]


def per_class(res, cs) -> dict[str, dict[str, int]]:
    return res.counts(cs)


def test_apportion_sums_exactly_and_stays_within_one():
    for n in range(0, 60):
        got = apportion(n, FR)
        assert sum(got) == n
        assert all(abs(g - n * f) < 1 for g, f in zip(got, FR))
    assert apportion(10, FR) == [7, 2, 1]  # the tie of the two .5 remainders goes to the earlier split


def test_random_is_stratified_per_class():
    cs = clips("a", 100) + clips("b", 40)
    res = random_splits(cs, FR, seed=0)
    assert per_class(res, cs) == {"a": {"train": 70, "val": 15, "test": 15}, "b": {"train": 28, "val": 6, "test": 6}}
    assert res.warnings == []


def test_random_is_deterministic_for_a_seed_and_changes_with_it():
    cs = clips("a", 50) + clips("b", 30)
    r1, r2 = random_splits(cs, FR, 7), random_splits(list(reversed(cs)), FR, 7)
    assert r1.assignment == r2.assignment  # input order does not matter either
    assert random_splits(cs, FR, 8).assignment != r1.assignment


def test_random_moves_few_clips_when_one_is_added():
    cs = clips("a", 200)
    before = random_splits(cs, FR, 0).assignment
    after = random_splits(cs + [SplitClip("new-clip", "a")], FR, 0).assignment
    moved = sum(before[c] != after[c] for c in before)
    assert moved <= 2  # only clips at the split boundaries; a reshuffle would move ~90


def test_small_classes_still_get_one_clip_per_split_when_possible_else_a_warning():
    cs = clips("four", 4) + clips("two", 2)
    res = random_splits(cs, FR, 0)
    assert per_class(res, cs)["four"] == {"train": 2, "val": 1, "test": 1}
    assert per_class(res, cs)["two"] == {"train": 2, "val": 0, "test": 0}
    assert len(res.warnings) == 1
    assert "'two'" in res.warnings[0] and "2 clip(s)" in res.warnings[0] and "val/test" in res.warnings[0]


def test_zero_fraction_split_stays_empty_without_warning():
    cs = clips("a", 10)
    res = random_splits(cs, (0.8, 0.2, 0.0), 0)
    assert Counter(res.assignment.values()) == {"train": 8, "val": 2}
    assert res.warnings == []


def test_official_keeps_the_csv_splits():
    cs = (clips("a", 6, "train") + clips("a", 2, "val", prefix="av")
          + clips("b", 5, "train") + clips("b", 3, "test", prefix="bt"))
    res = official_splits(cs, FR, 0)
    assert all(res.assignment[c.clip_id] == c.official for c in cs)
    # b has no val although val exists: warned; test exists only for b: a is warned too
    assert any("'b'" in w and "no val" in w for w in res.warnings)
    assert any("'a'" in w and "no test" in w for w in res.warnings)


def test_official_carves_val_out_of_train_when_there_is_none():
    cs = clips("a", 34, "train") + clips("b", 17, "train") + clips("b", 4, "test", prefix="bt")
    res = official_splits(cs, FR, 0)
    counts = per_class(res, cs)
    # val share of (train + val) = 0.15 / 0.85
    assert counts["a"] == {"train": 28, "val": 6, "test": 0}
    assert counts["b"] == {"train": 14, "val": 3, "test": 4}
    assert all(res.assignment[c.clip_id] == "test" for c in cs if c.official == "test")
    assert any("carving" in w for w in res.warnings)
    assert res.assignment == official_splits(list(reversed(cs)), FR, 0).assignment


def test_official_without_split_information_goes_to_train_with_a_warning():
    cs = clips("a", 3, "") + clips("b", 3, "val")
    res = official_splits(cs, FR, 0)
    assert {res.assignment[c.clip_id] for c in cs if c.label == "a"} == {"train"}
    assert any("no official split" in w for w in res.warnings)


def test_dispatch_and_errors():
    cs = clips("a", 5)
    assert assign_splits(cs, "random", FR, 0).assignment == random_splits(cs, FR, 0).assignment
    with pytest.raises(ValueError):
        assign_splits(cs, "alphabetical", FR, 0)
    with pytest.raises(ValueError):
        random_splits(cs + cs[:1], FR, 0)  # duplicate clip ids
    assert hash_order(["x", "y", "z"], 1) == hash_order(["z", "y", "x"], 1)
