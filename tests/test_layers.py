"""The layers of ARCHITECTURE.md (flows -> tasks -> tasks/lib -> model) and no import circles, read from the source.

Every import counts, at module level or inside a function: a lazy import is still a dependency (it only moves the
failure to the first call), so moving an import into a function hides nothing from these tests."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERED = ("flows", "tasks", "model")
ORCHESTRATORS = ("prefect", "prefect_dask", "dask", "distributed")


def _modules(root: Path) -> dict[str, Path]:
    """``{"tasks.lib.sampling": path, "tasks.lib": .../__init__.py, ...}`` for every module of the layered packages."""
    mods = {}
    for top in LAYERED:
        for path in sorted((root / top).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _imported(name: str, path: Path) -> set[str]:
    """The absolute dotted names a module imports; ``from X import y`` gives ``X`` and ``X.y`` (y may be a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if a.name != "*"}
    return found


def _imports(root: Path) -> dict[str, set[str]]:
    return {m: _imported(m, p) for m, p in _modules(root).items()}


def _graph(root: Path) -> dict[str, set[str]]:
    """Project module -> the project modules it imports: for each imported name, the longest prefix that is a module
    (``from tasks import tracking``: ``tasks`` and ``tasks.tracking``; ``from tasks.lib.paths import is_partial``:
    ``tasks.lib.paths``)."""
    imports = _imports(root)
    graph = {}
    for m, names in imports.items():
        targets = set()
        for n in names:
            parts = n.split(".")
            hit = next((".".join(parts[:k]) for k in range(len(parts), 0, -1) if ".".join(parts[:k]) in imports), None)
            if hit and hit != m:
                targets.add(hit)
        graph[m] = targets
    return graph


def _top(name: str) -> str:
    return name.split(".")[0]


def _layer_violations(root: Path) -> list[str]:
    """The rules of ARCHITECTURE.md's layer table, one line per import that breaks one."""
    rules = [  # (modules under, what they must not import, why)
        ("model", lambda n: _top(n) in ("tasks", "flows"), "model/ is shipped alone and imports nothing of tasks/ or flows/"),
        ("tasks.lib", lambda n: _top(n) in ("flows", "prefect", "mlflow") or n.startswith("tasks.") and not n.startswith("tasks.lib"),
         "tasks/lib/ is plain library code: model/ only, no Prefect, no MLflow"),
        ("tasks", lambda n: _top(n) == "flows", "tasks/ never imports flows/"),
        ("flows", lambda n: _top(n) == "model", "flows/ reach model/ through tasks/"),
        ("tasks.serving", lambda n: _top(n) in ORCHESTRATORS or n.startswith("tasks.") and not n.startswith(("tasks.lib", "tasks.serving")),
         "a served model imports model/, mlflow and tasks/lib's decoding, no orchestrator"),
    ]
    found = []
    for m, names in sorted(_imports(root).items()):
        for under, bad, why in rules:
            if m == under or m.startswith(under + "."):
                hits = {n for n in names if bad(n)}  # ``from X import y`` once, as X
                found += [f"{m} imports {n}: {why}" for n in sorted(hits) if n.rpartition(".")[0] not in hits]
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected group of modules (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for group in groups:  # the shortest way from the group's first module back to it (breadth first)
        start = min(group)
        paths, queue = {start: [start]}, [start]
        for v in queue:
            if start in graph[v]:
                cycles.append(paths[v] + [start])
                break
            for w in sorted(graph[v] & group):
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    queue.append(w)
    return sorted(cycles)


def test_imports_follow_the_layers():
    found = _layer_violations(ROOT)
    assert not found, "imports against ARCHITECTURE.md's layers:\n" + "\n".join(found)


def test_no_import_circles():
    cycles = _cycles(_graph(ROOT))
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checks_catch_a_violation_and_a_circle(tmp_path):
    """Against a deliberately broken tree: a lazy import of the layer above, and a circle through a function."""
    for rel, text in {
        "model/__init__.py": "", "model/a.py": "def f():\n    from tasks.lib import b\n",
        "tasks/__init__.py": "", "tasks/lib/__init__.py": "",
        "tasks/lib/b.py": "from . import c\n", "tasks/lib/c.py": "def g():\n    from tasks.lib.b import h\n",
        "flows/__init__.py": "", "flows/d.py": "import model.a\n",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert _layer_violations(tmp_path) == [
        "flows.d imports model.a: flows/ reach model/ through tasks/",
        "model.a imports tasks.lib: model/ is shipped alone and imports nothing of tasks/ or flows/",
    ]
    assert _cycles(_graph(tmp_path)) == [["tasks.lib.b", "tasks.lib.c", "tasks.lib.b"]]


def test_a_served_model_carries_every_module_its_package_imports():
    """What ``tasks/serving/`` imports, and what those import in turn, is all in ``CODE`` (the files a logged model
    carries), and none of it imports an orchestrator."""
    from tasks.serving import CODE

    graph, imports = _graph(ROOT), _imports(ROOT)
    todo = [m for m in graph if m == "tasks.serving" or m.startswith("tasks.serving.")]
    needed = set(todo)
    while todo:
        for w in graph[todo.pop()] - needed:
            needed.add(w)
            todo.append(w)
    files = {p.relative_to(ROOT).as_posix() for m, p in _modules(ROOT).items() if m in needed}
    missing = [f for f in sorted(files) if not any(f == c or f.startswith(c + "/") for c in CODE)]
    assert not missing, f"tasks/serving/__init__.py CODE lacks {missing}"
    assert not [(m, n) for m in needed for n in imports[m] if _top(n) in ORCHESTRATORS]


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
    found = {_modules(ROOT)[m].relative_to(ROOT).parent.as_posix()
             for m, names in _imports(ROOT).items() if any(_top(n) == "mlflow" for n in names)}
    assert found == {"tasks/tracking", "tasks/serving"}, found
