"""Shared fixtures: a real SQLite file per test, an engine on it, a loopback HTTP server."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runner.dsl.loader import Definition, load_text
from runner.engine.engine import Engine
from runner.storage.store import Store


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'treadle.db'}"


@pytest.fixture
async def store(db_url: str):
    async with Store(db_url) as s:
        yield s


@pytest.fixture
async def engine(store: Store, tmp_path: Path):
    eng = Engine(store, definitions_dir=tmp_path)
    yield eng
    await eng.close()


def definition(yaml_text: str, tmp_path: Path | None = None, name: str = "wf") -> Definition:
    """Load a definition from (dedented) YAML text; fail the test if it is invalid."""
    d = load_text(textwrap.dedent(yaml_text), f"{name}.yaml", name=name, base_dir=tmp_path)
    assert d.valid, "\n".join(map(str, d.problems))
    return d
