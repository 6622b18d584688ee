from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

# Configure Prefect's logging now, while sys.stderr is the real stream: its console handler keeps the stream it was
# created with, and one created inside a capsys test would write to a buffer pytest closes afterwards.
from prefect.logging.configuration import setup_logging  # noqa: E402

setup_logging()

ROOT = Path(__file__).resolve().parents[1]
SHARED_CLIPS = ROOT.parent / "shared" / "clips"


@pytest.fixture(autouse=True)
def _sys_path_restored():
    """A model loaded in-process (``mlflow.pyfunc.load_model``) puts its code folder (``model/`` and part of
    ``tasks/``) first on ``sys.path``; processes started later in the session (Dask workers) inherit that path and
    would import the partial copy. Each test leaves ``sys.path`` as it found it."""
    saved = list(sys.path)
    yield
    sys.path[:] = saved


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server + SQLite database for the whole session (~14 s to start), with the settings
    ``vivit`` uses for its own temporary server."""
    from prefect.settings import temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from flows.server import temporary_server_settings

    with prefect_test_harness(server_startup_timeout=180), temporary_settings(temporary_server_settings()):
        yield


@pytest.fixture(scope="session")
def shared_clips() -> Path:
    """``../shared/clips`` beside the checkout; absent on a user's machine, where these tests skip."""
    if not (SHARED_CLIPS / "MANIFEST.tsv").is_file():
        pytest.skip("../shared/clips is not present (only on the project's machines)")
    return SHARED_CLIPS


def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def torch_one_thread():
    """Tiny models gain nothing from a second thread, and lose a lot when other test processes share the cores."""
    yield from _torch_threads(1)


@pytest.fixture
def torch_two_threads():
    """Real-size networks (the Kinetics I3D), timed or run on real clips: both cores."""
    yield from _torch_threads(2)
