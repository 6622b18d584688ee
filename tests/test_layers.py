"""The library layer (``tasks/lib``) is plain Python: flows and tasks orchestrate it, it orchestrates nothing."""
import subprocess
import sys


def test_library_layer_imports_neither_prefect_nor_mlflow():
    code = ("import sys, pkgutil, importlib, tasks.lib; "
            "mods = [m.name for m in pkgutil.walk_packages(tasks.lib.__path__, 'tasks.lib.')]; "
            "[importlib.import_module(m) for m in mods]; "
            "assert len(mods) >= 15, mods; "
            "bad = [m for m in ('prefect', 'mlflow') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=180)
