"""The layout's rules, read from the code's own imports (docs/architecture.md):
SQL only in runner/storage/, runner/ never imports web/, no import circle in runner/."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
DATABASE_LIBRARIES = ("sqlalchemy", "sqlmodel", "aiosqlite", "asyncpg", "sqlite3", "alembic")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports (TYPE_CHECKING blocks and function bodies too)."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from . import x` names modules
    return found


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_only_runner_storage_speaks_to_the_database():
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in imports(path) if m.split(".")[0] in DATABASE_LIBRARIES)
        for folder in ("runner", "web") for path in _files(folder)
        if "runner/storage" not in str(path.relative_to(ROOT))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_engine_never_imports_the_web_layer():
    offenders = [str(p.relative_to(ROOT)) for p in _files("runner") if any(m.split(".")[0] == "web" for m in imports(p))]
    assert offenders == []


def test_there_is_no_import_circle_in_runner():
    files = _files("runner")
    modules = {_module(p) for p in files}
    graph = nx.DiGraph()
    for path in files:
        source = _module(path)
        graph.add_node(source)
        for target in imports(path):
            if target in modules and target != source and not source.startswith(target + "."):
                graph.add_edge(source, target)  # a module importing its own package's face is not a circle
    circles = [c for c in nx.simple_cycles(graph) if len(c) > 1]
    assert circles == [], circles[:5]
