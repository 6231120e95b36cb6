"""The dependency rule of ``engine/__init__.py``, checked by walking every import (at the
top of a module or inside a function alike): the levels of the engine, the brokerage
reached only through ``engine.bootstrap``, no import circle, and no web framework or rq
worker inside the engine."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "api", "worklist_ui")
FORBIDDEN_IN_ENGINE = ("flask", "flask_smorest", "flask_login", "flask_wtf", "flask_babel", "marshmallow",
                       "webargs", "werkzeug", "jinja2", "api", "worklist_ui", "rq.worker")
# rq's worker classes, wherever they are imported from (``from rq import SimpleWorker``).
RQ_WORKERS = ("Worker", "SimpleWorker", "SpawnWorker", "WorkerPool")
# The engine's levels, lowest first; a module may import its own level and those below.
LEVELS = (
    ("engine.errors", "engine.clock", "engine.db", "engine.schema", "engine.config", "engine.models",
     "engine.calendars", "engine.audit", "engine.numbering", "engine.migrations"),
    ("engine.bpmn",),
    ("engine.access",),
    ("engine.sla",),
    ("engine.process",),
    ("engine.timers",),
    ("engine.brokerage",),
    ("engine.bootstrap", "engine.jobs"),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, modules: frozenset[str] = frozenset()) -> set[str]:
    """Every module the file imports, as dotted names. ``from engine.sla import clock`` is
    ``engine.sla.clock`` when that is one of ``modules``, else ``engine.sla`` (a name taken
    from a module); rq's worker classes count as ``rq.worker``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                names.add(submodule if submodule in modules else node.module)
            if node.module.split(".")[0] == "rq" and any(a.name in RQ_WORKERS for a in node.names):
                names.add("rq.worker")
    return names


def _project_modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))
            if "node_modules" not in p.parts}


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project's modules it imports (a name that is not a module, like a
    function imported from one, counts as its module)."""
    known = frozenset(modules)
    return {name: {m for m in _imports(path, known) if m in modules and m != name} for name, path in modules.items()}


def _level(module: str) -> int | None:
    if module == "engine":
        return 0  # the package's own __init__: its docstring only
    for index, prefixes in enumerate(LEVELS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _breaches(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(graph.items()):
        mine = _level(module)
        for target in sorted(targets):
            theirs = _level(target)
            if mine is None:
                continue  # the adapters (api, worklist_ui) may use any level
            if theirs is None:
                found.append(f"{module} imports the adapter {target}")
            elif theirs > mine:
                found.append(f"{module} (level {mine + 1}) imports {target} (level {theirs + 1})")
    return found


def test_every_engine_module_has_a_level():
    assert [m for m in _project_modules() if m.startswith("engine.") and _level(m) is None] == []


def test_engine_imports_no_web_framework_rq_worker_or_adapter():
    offenders = []
    for path in sorted((ROOT / "engine").rglob("*.py")):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IN_ENGINE):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_imports_point_down_the_levels_only():
    assert _breaches(_graph(_project_modules())) == []


def test_only_bootstrap_reaches_the_brokerage_from_the_engine():
    graph = _graph(_project_modules())
    outside = [f"{m} imports {t}" for m, targets in sorted(graph.items()) for t in sorted(targets)
               if m.startswith("engine.") and not m.startswith("engine.brokerage")
               and m != "engine.bootstrap" and t.startswith("engine.brokerage")]
    assert outside == []


def test_no_import_circles():
    assert _circles(_graph(_project_modules())) == []


# -- the checks above can fail: each finds what it is for ----------------------------------
def test_the_walker_sees_imports_at_any_depth(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("import flask\nfrom marshmallow import fields\nfrom rq import SimpleWorker\n"
                      "def f():\n    from engine.sla import clock\n", encoding="utf-8")
    known = frozenset({"engine.sla.clock"})
    assert {"flask", "marshmallow", "rq.worker", "engine.sla.clock"} <= _imports(sample, known)
    assert "engine.sla" in _imports(sample)


def test_the_level_check_finds_an_import_running_up():
    graph = {"engine.sla.clock": {"engine.process.runtime"}, "engine.process.runtime": {"engine.sla.clock"},
             "api.cli": {"engine.brokerage.demo"}, "engine.models": {"api.errors"}}
    assert _breaches(graph) == ["engine.models imports the adapter api.errors",
                                "engine.sla.clock (level 4) imports engine.process.runtime (level 5)"]


def test_the_circle_check_finds_a_loop():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]
