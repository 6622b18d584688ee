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


def test_only_the_tracking_and_serving_packages_import_mlflow():
    """MLflow lives in ``tasks/tracking/`` (runs, registry) and ``tasks/serving/`` (what a registered model runs):
    production code elsewhere reaches it through them."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    found = set()
    for path in [*root.glob("flows/**/*.py"), *root.glob("tasks/**/*.py"), *root.glob("model/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
                found.add(path.relative_to(root).parent.as_posix())
    assert found == {"tasks/tracking", "tasks/serving"}, found
