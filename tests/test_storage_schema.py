"""The schema and its migrations, on both backends: a database made by Treadle 0.1
upgrades in place without loss, the models and the revisions agree, many processes
may open a new database at once, and `treadle db` says where a database stands."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from runner.storage.schema import HEAD, describe, script_head
from runner.storage.store import Store
from tests.db_support import query

RELEASE_0_1 = Path(__file__).parent / "data" / "release-0.1.db"  # made by `treadle run` of Treadle 0.1


def test_head_names_the_newest_revision_script():
    assert script_head() == HEAD


def _sync_url(db_url: str) -> str:
    return db_url if db_url.startswith("sqlite") else db_url.replace("postgresql://", "postgresql+asyncpg://")


async def test_the_models_and_the_migrations_describe_the_same_schema(store: Store):
    """A change to runner/storage/models.py without a revision fails here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    def diff(sync_conn):  # noqa: ANN001, ANN202
        return compare_metadata(MigrationContext.configure(sync_conn), SQLModel.metadata)

    async with store.engine.connect() as conn:
        found = await conn.run_sync(diff)
    assert found == [], f"models and migrations differ (write a revision): {found}"


async def test_a_database_of_release_0_1_upgrades_in_place_and_keeps_everything(tmp_path: Path):
    db = tmp_path / "old.db"
    shutil.copy(RELEASE_0_1, db)
    url = f"sqlite:///{db}"
    tables = ("run", "step_attempt", "log_chunk", "workflow_version", "api_token", "audit")
    before = {t: query(url, f"SELECT * FROM {t} ORDER BY 1") for t in tables}
    assert len(before["run"]) == 4 and len(before["step_attempt"]) == 17 and len(before["log_chunk"]) == 11
    assert (await describe(url))["state"] == "release-0.1"
    async with Store(url) as store:
        assert (await describe(url))["revision"] == HEAD
        runs, total = await store.list_runs()
        assert total == 4 and {r["workflow"] for r in runs} == {"hello", "data-pipeline", "error-handling", "fan-out"}
        hello = next(r for r in runs if r["workflow"] == "hello")
        [greet] = [s for s in await store.step_states(hello["id"]) if s["step_id"] == "greet"]
        assert greet["status"] == "succeeded" and greet["output"] == "hello, world"
        assert "".join(c["text"] for c in await store.logs(hello["id"], "greet")) == "hello, world\n"
    after = {t: query(url, f"SELECT * FROM {t} ORDER BY 1") for t in tables}
    for t in tables:  # every row of every table, column by column (new columns aside)
        assert [{k: row[k] for k in old} for row, old in zip(after[t], before[t], strict=True)] == before[t], t
    # and the server starts on it and shows the old runs
    done = subprocess.run([sys.executable, "-m", "runner", "runs", "--db", url], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.count("succeeded") == 4, done.stdout + done.stderr


def test_many_processes_opening_a_new_database_at_once_all_succeed(db_url: str, tmp_path: Path):
    """Creating the schema is safe for any number of processes starting together."""
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "w.yaml").write_text("steps: [{id: a, log: hi}]\n")
    procs = [subprocess.Popen([sys.executable, "-m", "runner", "run", "w", "--definitions", str(tmp_path / "defs"),
                               "--db", db_url, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(8)]
    results = [(p.wait(120), *p.communicate()) for p in procs]
    failures = [err for code, _, err in results if code != 0]
    assert failures == [], failures[0]
    assert {json.loads(out)["status"] for _, out, _ in results} == {"succeeded"}
    assert len(query(db_url, "SELECT id FROM run")) == 8
    assert query(db_url, "SELECT version_num FROM alembic_version") == [{"version_num": HEAD}]


def test_db_current_and_upgrade(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'new.db'}"

    def db(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "runner", "db", *args, "--db", url], capture_output=True, text=True)

    missing = db("current")
    assert missing.returncode == 0 and "no database file there yet" in missing.stdout
    assert not (tmp_path / "new.db").exists()  # reading never creates
    up = db("upgrade")
    assert up.returncode == 0 and f"upgraded from nothing to {HEAD}" in up.stdout, up.stderr
    again = db("upgrade")
    assert f"already at {HEAD}" in again.stdout
    now = json.loads(db("current", "--json").stdout)
    assert now == {"backend": "sqlite", "url": url, "revision": HEAD, "head": HEAD, "state": "current"}


def test_a_database_from_a_newer_treadle_is_refused_with_a_clear_message(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'future.db'}"
    asyncio.run(_open(url))
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    engine.dispose()
    done = subprocess.run([sys.executable, "-m", "runner", "runs", "--db", url], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"treadle: the database {url} is at schema revision 9999_from_the_future, which this Treadle does not "
        "know (it was upgraded by a newer Treadle); run that version, or restore a backup"]


async def _open(url: str) -> None:
    async with Store(url):
        pass


@pytest.mark.parametrize(("url", "message"), [
    ("mysql://u@h/db", "unsupported database 'mysql'"),
    ("sqlite:/relative.db", "is not understood"),
    ("postgresql://u@127.0.0.1:1/x", "cannot connect to PostgreSQL at postgresql://u@127.0.0.1:1/x"),
    ("postgresql://u@h:5432", "names no database"),
    ("postgresql+psycopg://u@h/db", "through asyncpg"),
])
def test_a_bad_database_url_is_one_clear_line_and_exit_2(url: str, message: str, tmp_path: Path):
    for command in (["runs"], ["run", "w", "--definitions", str(tmp_path)], ["db", "upgrade"]):
        (tmp_path / "w.yaml").write_text("steps: [{id: a, log: hi}]\n")
        done = subprocess.run([sys.executable, "-m", "runner", *command, "--db", url], capture_output=True, text=True)
        assert done.returncode == 2, (command, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("treadle: ") and message in lines[0], (command, lines)


def test_a_missing_postgres_database_says_how_to_create_it(postgres):
    url = postgres.url("no_such_db")
    done = subprocess.run([sys.executable, "-m", "runner", "runs", "--db", url], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"treadle: the PostgreSQL database 'no_such_db' does not exist on {url}; "
                                   "create it first (createdb no_such_db, or CREATE DATABASE no_such_db;)")


def test_serve_with_a_bad_url_stops_with_one_line(tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "runner", "serve", "--definitions", str(tmp_path), "--db",
                           "postgresql://u@127.0.0.1:1/x", "--port", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("treadle serve: cannot connect to PostgreSQL"), lines
    assert not any("Traceback" in line for line in lines)
