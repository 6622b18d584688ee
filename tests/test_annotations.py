"""Kinetics annotation CSVs: the three official layouts, validation of untrusted rows, selection, sources."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tasks.lib.annotations import AnnotationError, Clip, closest_labels, load_clips, parse_annotations, read_csv_source
from tasks.lib.paths import UnsafePathError, safe_join
from tests.support.http_server import serve_directory

K400 = """label,youtube_id,time_start,time_end,split,is_cc
dribbling basketball,aaaaaaaaaaa,10,20,train,0
dribbling basketball,bbbbbbbbbbb,0,10,train,1
dunking basketball,ccccccccccc,31,41,train,0
dunking basketball,ddddddddddd,5,15,val,0
playing cards,eeeeeeeeeee,1,11,train,0
"""
K700 = """label,youtube_id,time_start,time_end,split
dribbling basketball,fffffffffff,3,13,validate
dunking basketball,ggggggggggg,7,17,validate
"""
K400_TEST = """youtube_id,time_start,time_end,split
hhhhhhhhhhh,0,10,test
"""


def _csv(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_reads_k400_and_k700_layouts_and_normalises_splits(tmp_path):
    clips, problems = load_clips([_csv(tmp_path, "k400.csv", K400), _csv(tmp_path, "k700.csv", K700)],
                                 ["dribbling basketball", "dunking basketball"])
    assert problems == []
    assert [c.youtube_id for c in clips] == ["aaaaaaaaaaa", "bbbbbbbbbbb", "ccccccccccc", "ddddddddddd",
                                             "fffffffffff", "ggggggggggg"]
    assert {c.split for c in clips} == {"train", "val"}  # K700's "validate" is our "val"
    c = clips[0]
    assert isinstance(c, Clip) and (c.time_start, c.time_end) == (10.0, 20.0)
    assert c.clip_id == "aaaaaaaaaaa_000010_000020" and c.slug == "dribbling_basketball"


def test_k400_test_file_has_no_label(tmp_path):
    df, problems = parse_annotations(pd.read_csv(_csv(tmp_path, "t.csv", K400_TEST), dtype=str), "t.csv")
    assert problems == [] and list(df["label"]) == [""] and list(df["split"]) == ["test"]
    with pytest.raises(AnnotationError, match="unknown class"):
        load_clips([_csv(tmp_path, "t.csv", K400_TEST)], ["dribbling basketball", "dunking basketball"])


def test_splits_and_max_per_class_keep_file_order(tmp_path):
    src = [_csv(tmp_path, "k400.csv", K400), _csv(tmp_path, "k700.csv", K700)]
    clips, _ = load_clips(src, ["dribbling basketball", "dunking basketball"], splits=["train"])
    assert [c.youtube_id for c in clips] == ["aaaaaaaaaaa", "bbbbbbbbbbb", "ccccccccccc"]
    clips, _ = load_clips(src, ["dribbling basketball", "dunking basketball"], max_per_class=1)
    assert [c.youtube_id for c in clips] == ["aaaaaaaaaaa", "ccccccccccc"]


def test_duplicate_rows_are_requested_once(tmp_path):
    text = K400 + "dribbling basketball,aaaaaaaaaaa,10,20,train,0\n"
    clips, _ = load_clips([_csv(tmp_path, "k.csv", text)], ["dribbling basketball", "dunking basketball"])
    assert [c.youtube_id for c in clips].count("aaaaaaaaaaa") == 1


def test_unknown_class_lists_the_closest_real_names(tmp_path):
    with pytest.raises(AnnotationError) as e:
        load_clips([_csv(tmp_path, "k400.csv", K400)], ["dribling basketbal", "dunking basketball"])
    msg = str(e.value)
    assert "'dribling basketbal'" in msg and "dribbling basketball" in msg
    assert closest_labels("dunkin basketball", ["dunking basketball", "playing cards"])[0] == "dunking basketball"


def test_missing_columns_is_an_error(tmp_path):
    with pytest.raises(AnnotationError, match="missing columns"):
        load_clips([_csv(tmp_path, "bad.csv", "label,youtube_id,start,end\nx,abc,0,1\n")], ["x", "y"])


def test_header_only_csv_is_an_error(tmp_path):
    with pytest.raises(AnnotationError, match="no usable rows"):
        load_clips([_csv(tmp_path, "empty.csv", "label,youtube_id,time_start,time_end,split\n")], ["a", "b"])


def test_bad_rows_are_dropped_with_a_reason_never_turned_into_paths(tmp_path):
    text = (
        "label,youtube_id,time_start,time_end,split\n"
        "dribbling basketball,aaaaaaaaaaa,0,10,train\n"
        "../../etc,bbbbbbbbbbb,0,10,train\n"            # path traversal in the label
        "dribbling basketball,../../etc/pw,0,10,train\n"  # and in the id
        "dribbling basketball,x;rm -rf /,0,10,train\n"
        "dribbling basketball,ccccccccccc,10,5,train\n"   # end before start
        "dribbling basketball,ddddddddddd,abc,10,train\n"  # not a number
        "dunking basketball,eeeeeeeeeee,0,10,train\n"
    )
    df, problems = parse_annotations(pd.read_csv(_csv(tmp_path, "k.csv", text), dtype=str, keep_default_na=False),
                                     "k.csv")
    assert list(df["youtube_id"]) == ["aaaaaaaaaaa", "eeeeeeeeeee"]
    assert len(problems) == 5
    assert any("k.csv:3" in p and "unsafe label" in p for p in problems)
    assert any("k.csv:4" in p and "unsafe youtube_id" in p for p in problems)
    # a config that asks for the traversal label gets "unknown class", not a folder outside data_dir
    with pytest.raises(AnnotationError, match="unknown class"):
        load_clips([_csv(tmp_path, "k.csv", text)], ["../../etc", "dunking basketball"])


def test_a_traversal_clip_built_by_hand_cannot_make_a_path(tmp_path):
    clip = Clip("aaaaaaaaaaa", "../../etc", 0, 10, "train")
    with pytest.raises(UnsafePathError):
        _ = clip.slug
    with pytest.raises(UnsafePathError):
        _ = Clip("../../x", "ok", 0, 10, "train").clip_id
    with pytest.raises(UnsafePathError):
        safe_join(tmp_path, "raw", "..", "..", "etc")


def test_csv_over_http_and_refused_schemes(tmp_path):
    (tmp_path / "k400.csv").write_text(K400)
    with serve_directory(tmp_path) as srv:
        clips, _ = load_clips([srv.url("k400.csv")], ["dribbling basketball", "dunking basketball"])
        assert len(clips) == 4
        with pytest.raises(AnnotationError, match="cannot fetch"):
            read_csv_source(srv.url("k400.csv", route="404"))
    with pytest.raises(AnnotationError, match="local path or http"):
        read_csv_source(f"file://{tmp_path / 'k400.csv'}")
    with pytest.raises(AnnotationError, match="not found"):
        read_csv_source(str(tmp_path / "missing.csv"))


@pytest.mark.parametrize("start,end,why", [
    ("0", "inf", "finite"), ("0", "99999999", "beyond"), ("1e300", "1e301", "beyond"), ("nan", "3", "finite"),
    ("0", "700", "longer than"), ("-1", "3", "greater than"), ("4", "4", "greater than"), ("x", "3", "numbers"),
])
def test_bad_times_are_reported_rows(start, end, why):
    import pandas as pd

    from tasks.lib.annotations import parse_annotations

    df = pd.DataFrame([{"label": "a b", "youtube_id": "abc", "time_start": start, "time_end": end, "split": "train"},
                       {"label": "a b", "youtube_id": "abd", "time_start": "1", "time_end": "11", "split": "train"}])
    rows, problems = parse_annotations(df, source="x.csv")
    assert list(rows["youtube_id"]) == ["abd"]
    assert len(problems) == 1 and problems[0].startswith("x.csv:2:") and why in problems[0], problems


@pytest.mark.parametrize("content,words", [
    (b"", "empty"), (b"<!DOCTYPE html><html><body>Sign in</body></html>", "HTML"),
    ("label,youtube_id,time_start,time_end,split\ncaf\xe9,abc,0,1,train\n".encode("latin-1"), "not UTF-8"),
])
def test_unusable_csv_files_are_one_line_naming_the_file(tmp_path, content, words):
    from tasks.lib.annotations import AnnotationError, read_csv_source

    p = tmp_path / "bad.csv"
    p.write_bytes(content)
    with pytest.raises(AnnotationError) as info:
        read_csv_source(str(p))
    assert str(p) in str(info.value) and words in str(info.value) and "\n" not in str(info.value)
