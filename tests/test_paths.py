from __future__ import annotations

import os

import pytest

from model.atomic import atomic_path
from tasks.lib.paths import UnsafePathError, check_youtube_id, clip_stem, is_partial, label_slug, safe_join


@pytest.mark.parametrize("label, slug", [("dribbling basketball", "dribbling_basketball"), ("  Tai Chi!  ", "tai_chi"),
                                         ("playing cards (magic)", "playing_cards_magic")])
def test_label_slug(label, slug):
    assert label_slug(label) == slug


@pytest.mark.parametrize("label", ["../../etc", "a/b", "..", "", "!!!", "x\x00y", "c:\\windows"])
def test_unsafe_labels_are_refused(label):
    with pytest.raises(UnsafePathError):
        label_slug(label)


@pytest.mark.parametrize("yid", ["../etc/pw", "a b", "", "x" * 65, "id;rm -rf", "äbc"])
def test_unsafe_ids_are_refused(yid):
    with pytest.raises(UnsafePathError):
        check_youtube_id(yid)


def test_clip_stem_is_kinetics_style():
    assert clip_stem("abc-_DEF123", 3.0, 13.0) == "abc-_DEF123_000003_000013"


def test_safe_join_refuses_escape(tmp_path):
    assert safe_join(tmp_path, "raw", "x.mp4") == (tmp_path / "raw" / "x.mp4").resolve()
    with pytest.raises(UnsafePathError):
        safe_join(tmp_path, "..", "outside")
    with pytest.raises(UnsafePathError):
        safe_join(tmp_path, "/etc/passwd")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "sub" / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"half")
            assert is_partial(tmp)
            raise RuntimeError("crash")
    assert not final.exists() and os.listdir(final.parent) == []
    with atomic_path(final) as tmp:
        tmp.write_bytes(b"whole")
    assert final.read_bytes() == b"whole" and os.listdir(final.parent) == ["out.bin"]
