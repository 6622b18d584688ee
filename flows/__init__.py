"""Prefect flows: one per stage plus the chained pipeline. Flows only wire tasks together."""
import os
from pathlib import Path

# Embedded defaults, set before Prefect reads its settings: no telemetry (offline machines log errors for it) and
# a patient first start of the temporary local server (a fresh PREFECT_HOME took ~18 s of a 20 s default).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# nor the client's usage data (Prefect's documented opt-out; its first-run notice was 4 of a first run's lines)
os.environ.setdefault("DO_NOT_TRACK", "1")


def project_prefect_home(cwd: Path | None = None) -> Path:
    """Where this project keeps Prefect's database (flow runs, logs, results) when ``PREFECT_HOME`` is unset: the
    ``.prefect/`` of the checkout this package runs from (the folder with ``pyproject.toml`` above ``flows/``), else
    of the working directory (an installed copy). ``make run``, ``vivit`` and ``vivit ui`` then share one history."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file():
        return root / ".prefect"
    return (cwd or Path.cwd()) / ".prefect"


# One history however vivit is started (make, .venv/bin/vivit, python -m flows.cli): not ~/.prefect for some and
# the project's for others. A PREFECT_HOME the user sets wins.
os.environ.setdefault("PREFECT_HOME", str(project_prefect_home()))
