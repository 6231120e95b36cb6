"""The dependency rule, checked by walking imports: ``engine`` imports no Flask,
marshmallow, webargs or rq worker code; ``engine`` never imports ``api`` or ``worklist_ui``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_IN_ENGINE = ("flask", "flask_smorest", "marshmallow", "webargs", "werkzeug", "api", "worklist_ui",
                       "rq.worker")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_engine_imports_no_web_framework_or_adapter():
    offenders = []
    for path in sorted((ROOT / "engine").rglob("*.py")):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IN_ENGINE):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_the_walker_sees_imports(tmp_path):
    # Guard against a walker that silently finds nothing.
    sample = tmp_path / "m.py"
    sample.write_text("import flask\nfrom marshmallow import fields\n", encoding="utf-8")
    assert {"flask", "marshmallow"} <= _imports(sample)
