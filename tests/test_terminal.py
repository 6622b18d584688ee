"""What ``vivit`` shows in the terminal while stages run (flows/terminal.py): the stages' own lines, warnings (a few
per stage), progress a quarter of the way in a pipe; not Prefect's engine lines nor one clip's lines, which go to
``DATA_DIR/logs/vivit.log`` (and the Prefect UI) only, unless ``--verbose``."""
from __future__ import annotations

import logging
import sys

from flows.terminal import TerminalHandler, print_summary, terminal_output
from tasks.lib.results import StageResult
from tasks.progress import PER_ITEM, PROGRESS


def _record(name: str, msg: str, level: int = logging.INFO, **extra) -> logging.LogRecord:
    rec = logging.LogRecord(name, level, __file__, 1, msg, None, None)
    rec.__dict__.update({"flow_name": "download", **extra})
    return rec


RUN = [  # what one small download stage logs, in order
    _record("prefect", "Starting temporary server on http://127.0.0.1:8123"),
    _record("prefect.flow_runs", "Beginning subflow run 'brave-fox' for flow 'download'"),
    _record("prefect.flow_runs", "View at http://127.0.0.1:8123/runs/flow-run/1"),
    _record("prefect.task_runs", "8 clips selected for 2 classes", task_run_name="select-clips-1"),
    *[_record("prefect.task_runs", f"clip{i}: downloaded", task_run_name=f"download-{i}", **{PER_ITEM: True})
      for i in range(8)],
    *[_record("prefect.task_runs", "Finished in state Completed()", task_run_name=f"download-{i}") for i in range(8)],
    *[_record("prefect.task_runs", f"clip{i}: failed (http_404)", logging.WARNING, task_run_name=f"download-{i}")
      for i in range(5)],
    *[_record("prefect.flow_runs", f"download: {d}/8 clips", **{PROGRESS: ("download", d, 8)}) for d in range(1, 9)],
    _record("prefect.flow_runs", "3 of 8 clips ready"),
    _record("prefect.flow_runs", "Finished in state Completed()"),
]


def _shown(verbose: bool) -> list[str]:
    handler = TerminalHandler(None, None, verbose, None)
    return [line for rec in RUN if (line := handler.line(rec)) is not None]


def test_the_terminal_shows_the_stage_not_every_clip():
    assert _shown(verbose=False) == [
        "-- download",
        "   8 clips selected for 2 classes",
        "warning: clip0: failed (http_404)",
        "warning: clip1: failed (http_404)",
        "warning: clip2: failed (http_404)",
        "   ... more warnings of download in the Prefect UI",
        "   download: 2/8 clips",  # a quarter, a half, three quarters; the stage's own line says the end
        "   download: 4/8 clips",
        "   download: 6/8 clips",
        "   3 of 8 clips ready",
    ]
    assert len(_shown(verbose=True)) == len(RUN)  # --verbose: every line, in Prefect's format


def test_every_line_goes_to_the_log_file_and_the_summary_is_short(tmp_path, capsys):
    logs = tmp_path / "logs"
    with terminal_output(logs, "download", verbose=False) as log_path:
        for rec in RUN:  # as they reach the root logger's handlers (Prefect's API handler sits below, unchanged)
            logging.getLogger().handle(rec)
        print("Successfully registered model 'clf'.", file=sys.stderr)  # what MLflow prints past logging
        print("Created version '1' of model 'clf'.", file=sys.stderr)
        print("a line of another library", file=sys.stderr)
    text = log_path.read_text()
    assert log_path == logs / "vivit.log" and "===== " in text and "vivit download" in text
    assert all(rec.getMessage() in text for rec in RUN)  # one clip's lines and Prefect's included
    err = capsys.readouterr().err
    assert "clip7: downloaded" not in err and "Finished in state" not in err and "3 of 8 clips ready" in err
    assert "registered model" not in err and "a line of another library" in err
    assert "Created version '1' of model 'clf'." in log_path.read_text()
    assert not [h for h in logging.getLogger().handlers if isinstance(h, TerminalHandler)]  # handlers restored

    print_summary(StageResult(stage="download", counts={"requested": 8, "downloaded": 3, "failed": 5},
                              outputs=[str(tmp_path / "reports" / "download.csv"), str(tmp_path / "raw")],
                              message="3 of 8 clips ready", failed=False))
    out = capsys.readouterr().out.strip().splitlines()
    assert out[:3] == ["== download: ok", "   3 of 8 clips ready", "   requested 8, downloaded 3, failed 5"]
    assert " ".join(x.strip() for x in out[3:]) == f"wrote {tmp_path / 'reports' / 'download.csv'}, {tmp_path / 'raw'}"
