"""Shared fixtures: a real database per test (a SQLite file, and a PostgreSQL database
on a real server: tests that use `db_url` run on both), an engine on it."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.dsl.loader import Definition, load_text
from runner.engine.engine import Engine
from runner.storage.store import Store
from tests import pg_server as pg

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres() -> Iterator[pg.PgServer]:
    """The session's PostgreSQL server (see tests/pg_server.py)."""
    server = pg.start()
    if isinstance(server, str):
        if os.environ.get("TREADLE_REQUIRE_PG") == "1":
            pytest.fail(f"TREADLE_REQUIRE_PG=1 but {server}")
        pytest.skip(server)
    try:
        pg.prepare_template(server)
        yield server
    finally:
        server.stop()


def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A new, empty database of `backend` for one test (dropped after it)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'treadle.db'}"
    server = request.getfixturevalue("postgres")
    name = pg.new_database(server)
    request.addfinalizer(lambda: pg.drop_database(server, name))
    return server.url(name)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database for this test, once on each backend."""
    return database_url(request.param, tmp_path, request)


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
