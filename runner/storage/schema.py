"""Creating and upgrading the schema: Alembic revisions in runner/storage/migrations/.

`ensure_schema` runs when a store opens for writing (`serve`, `run`, ...), and
`treadle db upgrade` runs it on its own. It holds the dialect's schema lock (an
advisory lock on PostgreSQL, a file lock beside a SQLite file) while it looks and
changes, so any number of processes may start at once on a new database: one
creates the tables, the others wait and then find them there.

- a new database: every revision is applied;
- a database made by Treadle 0.1 (its tables, no `alembic_version`): stamped at the
  baseline, which describes exactly those tables, then upgraded;
- a database at HEAD: nothing to do, and Alembic is not even imported (it is the
  common case and costs start-up time);
- a database newer than this Treadle: refused with a clear message.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect

from ..errors import DatabaseError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from .database import Dialect

HEAD = "0008_shared_lock"  # the newest revision; tests/test_storage_schema.py checks it against the scripts
BASELINE = "0001_baseline"
MIGRATIONS = Path(__file__).parent / "migrations"
_RELEASE_0_1_TABLES = {"run", "step_attempt", "log_chunk", "workflow_version", "workflow_state", "trigger_mark",
                       "approval", "api_token", "web_session", "audit"}


async def current_revision(conn: AsyncConnection) -> str | None:
    """The revision the database is at; None when it has no `alembic_version`."""
    return await conn.run_sync(_current)


def _current(sync_conn: Any) -> str | None:
    if not inspect(sync_conn).has_table("alembic_version"):
        return None
    row = sync_conn.exec_driver_sql("SELECT version_num FROM alembic_version").first()
    return row[0] if row else None


async def ensure_schema(engine: AsyncEngine, dialect: Dialect) -> str | None:
    """Bring the database to HEAD (see the module docstring); returns the revision it
    was at before (None: it was new or from Treadle 0.1)."""
    async with engine.connect() as conn, dialect.schema_lock(conn):
        before = await current_revision(conn)
        await conn.commit()  # end the read's transaction: the lock is per session, not per transaction
        if before == HEAD:
            return before
        if before is not None and before not in known_revisions():
            raise DatabaseError(
                f"the database {dialect.shown()} is at schema revision {before}, which this Treadle does not "
                "know (it was upgraded by a newer Treadle); run that version, or restore a backup")
        await conn.run_sync(_upgrade, before)
        await conn.commit()
    return before


def _upgrade(sync_conn: Any, before: str | None) -> None:
    from alembic import command

    config = alembic_config(sync_conn)
    if before is None and set(inspect(sync_conn).get_table_names()) >= _RELEASE_0_1_TABLES:
        command.stamp(config, BASELINE)  # made by Treadle 0.1: the baseline is already there
    command.upgrade(config, "head")


def alembic_config(connection: Any = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def script_head() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def describe(url: str) -> dict[str, Any]:
    """Where a database stands, without changing it: {backend, url, revision, head,
    state: current | behind | new | release-0.1 | ahead | missing}."""
    from .database import SQLite, dialect_for

    dialect = dialect_for(url)
    out: dict[str, Any] = {"backend": dialect.name, "url": dialect.shown(), "revision": None, "head": HEAD}
    if isinstance(dialect, SQLite) and not dialect.exists():
        return {**out, "state": "missing"}
    engine = dialect.engine()
    try:
        async with engine.connect() as conn:
            revision = await current_revision(conn)
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    except Exception as exc:
        raise DatabaseError(dialect.explain(exc)) from None
    finally:
        await engine.dispose()
    if revision is None:
        state = "release-0.1" if tables >= _RELEASE_0_1_TABLES else "new"
    elif revision == HEAD:
        state = "current"
    else:
        state = "behind" if revision in known_revisions() else "ahead"
    return {**out, "revision": revision, "state": state}
