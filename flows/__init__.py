"""Prefect flows: one per stage plus the chained pipeline. Flows only wire tasks together."""
import os

# Embedded defaults, set before Prefect reads its settings: no telemetry (offline machines log errors for it) and
# a patient first start of the temporary local server (a fresh PREFECT_HOME took ~18 s of a 20 s default).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
