"""``vivit doctor``: what the pipeline depends on outside this repository, one line each, with the fix.

Most failures users report are not in the code: a yt-dlp too old for today's YouTube, no JavaScript runtime, a
cookies file that moved, a full disk, a Prefect or MLflow server that is down. Each stage finds them too, but
only when it gets there (a training run fails on its store after hours of download). This checks them all in a
few seconds and changes nothing: no folder, store or server is created.
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
import sqlite3
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tasks.lib.config import PipelineConfig

YTDLP_MAX_AGE_DAYS = 60  # YouTube breaks an old yt-dlp within weeks to months; yt-dlp releases every few weeks
DISK_FAIL_GIB, DISK_WARN_GIB = 1.0, 10.0
UPGRADE_YTDLP = ".venv/bin/pip install -U yt-dlp"


@dataclass(frozen=True)
class Check:
    """``fail`` is kept for what stops the pipeline; what only may hurt is ``warn``."""

    name: str
    status: str  # "ok", "warn" or "fail"
    detail: str
    fix: str = ""

    def line(self) -> str:
        tag = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}[self.status]
        return f"{tag:<5} {self.name:<13} {self.detail}" + (f" -> {self.fix}" if self.fix and self.status != "ok" else "")


def ytdlp_check(version: str | None, today: dt.date, popen_problem: str | None = None) -> Check:
    """yt-dlp's age from its version, which is its release date (``2026.10.26``, nightlies add a time)."""
    if version is None:
        return Check("yt-dlp", "fail", "not installed", ".venv/bin/pip install yt-dlp")
    try:
        released = dt.date(*(int(p) for p in version.split(".")[:3]))
    except (TypeError, ValueError):
        return Check("yt-dlp", "warn", f"{version}: not a dated version, its age is unknown", UPGRADE_YTDLP)
    age = (today - released).days
    if age > YTDLP_MAX_AGE_DAYS:
        return Check("yt-dlp", "warn", f"{version}, {age} days old: YouTube downloads may fail (extractor_error)",
                     UPGRADE_YTDLP)
    if popen_problem:
        return Check("yt-dlp", "warn", f"{version}, {age} days old; {popen_problem}: its ffmpeg children may "
                     "outlive a killed download", "pin the tested yt-dlp: .venv/bin/pip install -c constraints.txt yt-dlp")
    return Check("yt-dlp", "ok", f"{version}, {age} days old")


def _installed_ytdlp() -> str | None:
    try:
        from yt_dlp.version import __version__
    except ImportError:
        return None
    return __version__


def js_runtime_check(cfg: PipelineConfig) -> Check:
    """yt-dlp solves YouTube's challenges with deno, the runtime the download stage hands it (node is not used)."""
    from tasks.lib.download.ytdlp import find_js_runtime

    site = cfg.url_template.replace("{youtube_id}", "").lower()
    youtube = "youtube.com" in site or "youtu.be" in site
    found = find_js_runtime()
    if found:
        return Check("js runtime", "ok", f"deno at {found['deno']['path']}")
    node = shutil.which("node")
    also = f" (node at {node} is not used: yt-dlp enables deno only)" if node else ""
    if not youtube:
        return Check("js runtime", "ok", f"no deno, not needed for url_template {cfg.url_template}")
    return Check("js runtime", "fail", f"no deno: YouTube downloads fail with 'Requested format is not available'{also}",
                 '.venv/bin/pip install "yt-dlp[default]" deno')


def _first_line(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.splitlines()[0] if out.returncode == 0 and out.stdout else None


def ffmpeg_checks() -> list[Check]:
    """ffmpeg cuts every clip (the system's, else the imageio-ffmpeg wheel's); ffprobe is optional (PyAV probes)."""
    from tasks.lib.media import ffmpeg_exe

    try:
        exe = ffmpeg_exe()
    except FileNotFoundError as e:
        return [Check("ffmpeg", "fail", str(e), ".venv/bin/pip install imageio-ffmpeg (or install ffmpeg)")]
    version = _first_line([exe, "-hide_banner", "-version"])
    version = version and version.split(" Copyright")[0]
    checks = [Check("ffmpeg", "ok", f"{exe}: {version}") if version else
              Check("ffmpeg", "fail", f"{exe} does not run", "reinstall imageio-ffmpeg or install ffmpeg")]
    probe = shutil.which("ffprobe")
    if probe and (version := _first_line([probe, "-hide_banner", "-version"])):
        checks.append(Check("ffprobe", "ok", f"{probe}: {version.split(' Copyright')[0]}"))
    else:
        checks.append(Check("ffprobe", "warn", "not found: vivit probes with PyAV, yt-dlp skips some container fixes",
                            "install ffmpeg's ffprobe (apt-get install ffmpeg) if yt-dlp asks for it"))
    return checks


def cookies_check(cfg: PipelineConfig) -> Check:
    d = cfg.download
    if d.cookies is not None:
        p = Path(d.cookies)
        if not p.is_file():
            return Check("cookies", "fail", f"download.cookies {p} does not exist",
                         "export a signed-in browser's cookies.txt there, or unset download.cookies")
        try:
            head = p.read_text(errors="replace")[:4096]
        except OSError as e:
            return Check("cookies", "fail", f"download.cookies {p} cannot be read ({e.strerror})", "fix its permissions")
        if "\t" not in head and "Netscape" not in head:
            return Check("cookies", "warn", f"download.cookies {p} does not look like a Netscape cookies.txt",
                         "export it with a cookies.txt browser extension or yt-dlp --cookies-from-browser")
        return Check("cookies", "ok", f"download.cookies {p}")
    if d.cookies_from_browser:
        from tasks.lib.download.ytdlp import parse_cookies_from_browser

        try:
            parse_cookies_from_browser(d.cookies_from_browser)
        except ValueError as e:
            return Check("cookies", "fail", str(e), "fix download.cookies_from_browser")
        return Check("cookies", "ok", f"from the browser {d.cookies_from_browser!r} (read at download time)")
    return Check("cookies", "ok", "none configured (bot checks on YouTube: download.cookies, docs/data.md)")


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent: what a stage would create its folders in."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_check(data_dir: Path, fail_gib: float = DISK_FAIL_GIB, warn_gib: float = DISK_WARN_GIB) -> Check:
    where = _existing(Path(data_dir))
    if not os.access(where, os.W_OK):
        return Check("disk", "fail", f"{where} (data_dir {data_dir}) is not writable", "fix its permissions or data_dir")
    free = shutil.disk_usage(where).free / 2**30
    text = f"{free:.1f} GiB free at {where}" + ("" if where == Path(data_dir).absolute() else f" (data_dir {data_dir})")
    if free < fail_gib:
        return Check("disk", "fail", text, "free some space or move data_dir")
    if free < warn_gib:
        return Check("disk", "warn", text + ": a few thousand clips fit", "free some space or move data_dir")
    return Check("disk", "ok", text)


def _answers(url: str, timeout: float = 5.0) -> str | None:
    """None when ``url`` answers 200, else what went wrong."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return None if r.status == 200 else f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        return str(getattr(e, "reason", e))


def prefect_check() -> Check:
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    api, home = PREFECT_API_URL.value(), Path(PREFECT_HOME.value())
    if api:
        problem = _answers(f"{api.rstrip('/')}/health")
        if problem:
            return Check("prefect", "fail", f"PREFECT_API_URL {api} does not answer ({problem})",
                         "start that server (prefect server start) or unset PREFECT_API_URL for a temporary one")
        return Check("prefect", "ok", f"server {api} answers; PREFECT_HOME {home}")
    where = _existing(home)
    if not os.access(where, os.W_OK):
        return Check("prefect", "fail", f"PREFECT_HOME {home} is not writable (its database lives there)",
                     "fix its permissions or set PREFECT_HOME")
    return Check("prefect", "ok", f"a temporary server per command, PREFECT_HOME {home}")


def mlflow_check(cfg: PipelineConfig) -> Check:
    """The store the train stage will use: a SQLite file (or its folder) writable, or a server that answers."""
    from tasks.tracking import check_store, resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(cfg.mlflow, create=False)
    db = sqlite_path(uri)
    if db is not None:
        if db.is_file():
            if not os.access(db, os.W_OK) or not os.access(db.parent, os.W_OK):
                return Check("mlflow", "fail", f"{uri} is read-only", "fix its permissions or mlflow.tracking_uri")
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
                    n = con.execute("SELECT count(*) FROM experiments").fetchone()[0]
            except sqlite3.Error as e:
                return Check("mlflow", "fail", f"{uri} is not an MLflow store ({e})", "point mlflow.tracking_uri at one")
            return Check("mlflow", "ok", f"{uri} ({n} experiments)")
        where = _existing(db.parent)
        if not os.access(where, os.W_OK):
            return Check("mlflow", "fail", f"{uri}: {where} is not writable", "fix its permissions or mlflow.tracking_uri")
        return Check("mlflow", "ok", f"{uri} (created by the first training)")
    if uri.startswith(("http://", "https://")):
        try:
            check_store(uri, budget_s=5.0, attempt_timeout_s=3.0)
        except Exception as e:  # noqa: BLE001 - ServiceUnavailable and whatever the URL gives
            return Check("mlflow", "fail", f"{uri} does not answer ({e})", "start the tracking server or fix the URI")
        return Check("mlflow", "ok", f"{uri} answers")
    return Check("mlflow", "warn", f"{uri}: not checked (neither SQLite nor HTTP)")


def run_checks(cfg: PipelineConfig, today: dt.date | None = None) -> list[Check]:
    from tasks.lib.procs import ytdlp_popen_problem

    today = today or dt.date.today()
    return [ytdlp_check(_installed_ytdlp(), today, ytdlp_popen_problem()), js_runtime_check(cfg), *ffmpeg_checks(),
            cookies_check(cfg), disk_check(cfg.data_dir), prefect_check(), mlflow_check(cfg)]


def doctor(cfg: PipelineConfig) -> int:
    """Print one line per check; 0 when nothing failed (warnings allowed), 1 otherwise."""
    checks = run_checks(cfg)
    for c in checks:
        print(c.line())
    failed = [c.name for c in checks if c.status == "fail"]
    print(f"{len(checks) - len(failed)} of {len(checks)} checks pass" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
