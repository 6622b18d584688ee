"""The `vivit` command as users meet it: exit codes and messages for bad input, and a stage run end to end."""
from __future__ import annotations

import pandas as pd
import pytest

from flows.cli import EXIT_OK, EXIT_STAGE_FAILED, EXIT_USAGE, main


def test_bad_config_key_exits_2_naming_the_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("frames: {num_frame: 8}\n")
    assert main(["frames", "--config", str(cfg)]) == EXIT_USAGE
    assert "frames.num_frame: unknown key" in capsys.readouterr().err


def test_unknown_stage_exits_2_before_any_work(tmp_path, capsys):
    assert main(["run", "--set", f"data_dir={tmp_path}", "--stages", "download,trian"]) == EXIT_USAGE
    assert "unknown stage(s) ['trian']" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_demo_data_then_download_and_an_unknown_class(prefect_harness, tmp_path, capsys):
    src = tmp_path / "src"
    assert main(["demo-data", "--out", str(src), "--n-dribbling", "3", "--n-dunking", "2"]) == EXIT_OK
    common = ["--set", f"data_dir={tmp_path / 'data'}", "--set", f"annotations={src / 'annotations.csv'}",
              "--set", f"url_template=file://{src}/videos/{{youtube_id}}.mp4", "--set", "download.allow_file_urls=true"]
    assert main(["download", *common]) == EXIT_OK
    out = capsys.readouterr().out
    assert "== download: ok" in out and "downloaded  5" in out
    assert set(pd.read_csv(tmp_path / "data" / "reports" / "download.csv")["status"]) == {"downloaded"}
    # a misspelt class: the stage as a whole fails (exit 1) and the message suggests the real name
    assert main(["download", *common, "--set", "classes=[dribling basketball, dunking basketball]"]) == EXIT_STAGE_FAILED
    out = capsys.readouterr().out
    assert "FAILED" in out and "did you mean" in out and "dribbling basketball" in out


@pytest.mark.parametrize("argv", [["presets"]])
def test_presets_lists_the_default(argv, capsys):
    assert main(argv) == EXIT_OK
    assert "vivit-fe-tiny" in capsys.readouterr().out
