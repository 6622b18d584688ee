"""``vivit doctor`` on real things: the installed yt-dlp and ffmpeg, a tmp data_dir, a real MLflow SQLite store,
a loopback HTTP server standing in for a Prefect API, and a port nothing listens on."""
from __future__ import annotations

import datetime as dt
import http.server
import sqlite3
import threading
from pathlib import Path

import pytest

from flows.cli import main
from tasks import doctor as doc
from tasks.lib.config import PipelineConfig
from tests.support.ports import free_port

COOKIES = "# Netscape HTTP Cookie File\n.youtube.com\tTRUE\t/\tTRUE\t0\tPREF\tf1=50000000\n"


def _config(tmp_path: Path, **kw) -> PipelineConfig:
    base = dict(data_dir=tmp_path / "data", url_template="file:///videos/{youtube_id}.mp4",
                mlflow={"tracking_uri": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"})
    base.update(kw)
    return PipelineConfig(**base)


@pytest.fixture
def health_server():
    """Answers ``/api/health`` like a Prefect server."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/api/health" else 404)
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/api"
    srv.shutdown()


def test_yt_dlp_age_from_its_version():
    day = dt.date(2026, 12, 3)
    assert doc.ytdlp_check("2026.10.26", day).status == "ok"
    assert "38 days old" in doc.ytdlp_check("2026.10.26", day).detail
    old = doc.ytdlp_check("2026.09.01.234500", day)  # a nightly: date and time
    assert old.status == "warn" and "93 days old" in old.detail and old.fix == ".venv/bin/pip install -U yt-dlp"
    assert "-> .venv/bin/pip install -U yt-dlp" in old.line()
    assert doc.ytdlp_check(None, day).status == "fail"
    assert doc.ytdlp_check("2026.10.26", day, "no Popen").status == "warn"


def test_everything_in_place_passes(tmp_path, health_server, capsys):
    from mlflow import MlflowClient
    from prefect.settings import PREFECT_API_URL, temporary_settings

    cfg = _config(tmp_path, download={"cookies": tmp_path / "cookies.txt"})
    (tmp_path / "cookies.txt").write_text(COOKIES)
    (tmp_path / "mlruns").mkdir()
    MlflowClient(cfg.mlflow.tracking_uri).create_experiment("doctor")  # a real store: Default + this one
    with temporary_settings({PREFECT_API_URL: health_server}):
        code = doc.doctor(cfg)
    out = capsys.readouterr().out
    lines = {line.split()[1]: line for line in out.splitlines() if line.split()[0] in ("ok", "WARN", "FAIL")}
    assert code == 0, out
    assert lines["ffmpeg"].startswith("ok") and "ffmpeg version" in lines["ffmpeg"]
    assert lines["mlflow"].startswith("ok") and "(2 experiments)" in lines["mlflow"]
    assert lines["cookies"].startswith("ok") and str(tmp_path / "cookies.txt") in lines["cookies"]
    assert lines["disk"].startswith("ok") and f"GiB free at {tmp_path}" in lines["disk"]  # data_dir not made yet
    assert lines["prefect"].startswith("ok") and f"server {health_server} answers" in lines["prefect"]
    assert lines["js"].startswith("ok") and "not needed" in lines["js"]
    assert not (tmp_path / "data").exists()  # the doctor creates nothing
    assert out.splitlines()[-1] == f"{len(lines)} of {len(lines)} checks pass"


def test_what_is_missing_fails_with_its_fix(tmp_path, capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    not_mlflow = tmp_path / "other.db"
    with sqlite3.connect(not_mlflow) as con:
        con.execute("CREATE TABLE t (x)")
    cfg = _config(tmp_path, download={"cookies": tmp_path / "gone.txt"},
                  mlflow={"tracking_uri": f"sqlite:///{not_mlflow}"})
    down = f"http://127.0.0.1:{free_port()}/api"
    with temporary_settings({PREFECT_API_URL: down}):
        code = doc.doctor(cfg)
    out = capsys.readouterr().out
    assert code == 1
    assert f"FAIL  cookies       download.cookies {tmp_path / 'gone.txt'} does not exist -> export" in out
    assert f"FAIL  prefect       PREFECT_API_URL {down} does not answer" in out and "prefect server start" in out
    assert "FAIL  mlflow" in out and "is not an MLflow store" in out
    assert out.splitlines()[-1].endswith("failed: cookies, prefect, mlflow")
    assert doc.disk_check(tmp_path, fail_gib=1e9).status == "fail"
    youtube = doc.js_runtime_check(_config(tmp_path, url_template="https://www.youtube.com/watch?v={youtube_id}"))
    assert youtube.status == ("ok" if youtube.detail.startswith("deno at") else "fail")


def test_the_command_exits_0_or_1(tmp_path, capsys):
    common = ["--set", f"data_dir={tmp_path / 'data'}", "--set", "url_template=file:///v/{youtube_id}.mp4",
              "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    assert main(["doctor", *common]) == 0
    out = capsys.readouterr().out
    assert f"ok    mlflow        sqlite:///{tmp_path / 'mlflow.db'} (created by the first training)" in out
    assert not (tmp_path / "mlflow.db").exists()
    assert main(["doctor", *common, "--set", f"download.cookies={tmp_path / 'none.txt'}"]) == 1
    assert "FAIL  cookies" in capsys.readouterr().out
