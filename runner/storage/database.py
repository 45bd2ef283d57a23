"""Database URLs and the small part of the SQL that differs between SQLite and PostgreSQL.

Everything else in runner/storage/ is one SQLAlchemy implementation shared by both.
A `Dialect` holds what differs: how an URL becomes an async engine, the insert
statement with its `ON CONFLICT` clauses, the placeholders of the raw executemany on
the hot write path (`?` for sqlite3, `$n` for asyncpg), the database's clock, the
lock taken while the schema is created or migrated, and how a connection failure
reads to a person.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import event, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..errors import DatabaseError
from .models import Run

URL_HELP = "use sqlite:///PATH (the default, embedded) or postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
_SCHEMA_LOCK_ID = 0x7472_6561_646C_65  # "treadle": the advisory lock held while the schema changes



def dump_json(value: Any) -> str:
    """JSON for the database (SQLAlchemy's JSON columns); see json_for_database."""
    return json_for_database(json.dumps(value), value)


def json_for_database(text: str, value: Any) -> str:
    """`text` (the JSON of `value`), unless it holds a lone UTF-16 surrogate (a template
    can make one: `{{ '\\ud800' }}`): then the JSON again with U+FFFD in its place, as
    PostgreSQL refuses the whole row otherwise, and a record must not be lost over one
    character. Pairs (emoji) are kept."""
    if "\\ud" not in text:  # the ASCII JSON of a surrogate, lone or paired, is `\udXXX`
        return text
    whole = json.dumps(value, ensure_ascii=False, default=str)
    return whole.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class Dialect:
    name = ""
    driver = ""

    def __init__(self, url: str):
        self.url = url

    def engine(self) -> AsyncEngine:
        raise NotImplementedError

    def insert(self, table: Any) -> Any:
        """An INSERT with the dialect's `on_conflict_do_nothing/do_update`."""
        raise NotImplementedError

    def placeholders(self, count: int) -> str:
        raise NotImplementedError

    now_sql = ""  # the database clock as epoch seconds (float)

    def lock_runs(self, run_ids: list[str]) -> Any:
        """A statement that locks the rows of these runs for the rest of the transaction
        and returns (id, owner, lease_epoch) of each: the writer's fence."""
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def schema_lock(self, conn: AsyncConnection) -> AsyncIterator[None]:
        """Held while the schema is created or migrated: any number of processes may
        start at once, exactly one changes the schema, the others then find it done."""
        yield

    def shown(self) -> str:
        """The URL without its password, for messages, logs and /health."""
        return make_url(self.url).render_as_string(hide_password=True)

    def explain(self, exc: BaseException) -> str:
        """One line saying why the database cannot be used, and what to do."""
        return f"cannot use the database {self.shown()}: {type(exc).__name__}: {exc}"


class SQLite(Dialect):
    name, driver = "sqlite", "aiosqlite"
    now_sql = "((julianday('now') - 2440587.5) * 86400.0)"

    def __init__(self, url: str, path: str):
        super().__init__(url)
        self.path = path

    def engine(self) -> AsyncEngine:
        engine = create_async_engine("sqlite+aiosqlite:///" + self.path, json_serializer=dump_json)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine

    def insert(self, table: Any) -> Any:
        from sqlalchemy.dialects.sqlite import insert

        return insert(table)

    def placeholders(self, count: int) -> str:
        return ", ".join("?" * count)

    def lock_runs(self, run_ids: list[str]) -> Any:
        # a write first: it takes the database's write lock at once (a read first
        # could not upgrade if another connection wrote in between)
        return (update(Run).where(Run.id.in_(run_ids)).values(lease_epoch=Run.lease_epoch)
                .returning(Run.id, Run.owner, Run.lease_epoch))

    def exists(self) -> bool:
        return self.path == ":memory:" or Path(self.path).expanduser().exists()

    def prepare_location(self) -> None:
        """Create the folder of a new database file."""
        if self.path != ":memory:":
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)

    @contextlib.asynccontextmanager
    async def schema_lock(self, conn: AsyncConnection) -> AsyncIterator[None]:
        # SQLite lives on one machine: a file lock beside the database serialises
        # every process that opens it (sqlite's own locks do not cover DDL read-then-write)
        if self.path == ":memory:":
            yield
            return
        lock_path = Path(self.path).expanduser().with_name(Path(self.path).name + ".schema-lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def explain(self, exc: BaseException) -> str:
        return f"cannot open the SQLite database {self.path}: {exc}"


class Postgres(Dialect):
    name, driver = "postgresql", "asyncpg"
    now_sql = "extract(epoch from clock_timestamp())::float8"

    def engine(self) -> AsyncEngine:
        url = make_url(self.url).set(drivername="postgresql+asyncpg")
        # pool_pre_ping: a server restarted under us costs one failed checkout, not a crash
        return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True, json_serializer=dump_json,
                                   connect_args={"timeout": 10, "server_settings": {"application_name": "treadle"}})

    def insert(self, table: Any) -> Any:
        from sqlalchemy.dialects.postgresql import insert

        return insert(table)

    def placeholders(self, count: int) -> str:
        return ", ".join(f"${i}" for i in range(1, count + 1))

    def lock_runs(self, run_ids: list[str]) -> Any:
        # row locks: a claim of one of these runs waits until this batch commits, and
        # a batch after the claim sees the new owner
        return select(Run.id, Run.owner, Run.lease_epoch).where(Run.id.in_(run_ids)).with_for_update()

    @contextlib.asynccontextmanager
    async def schema_lock(self, conn: AsyncConnection) -> AsyncIterator[None]:
        await conn.exec_driver_sql(f"SELECT pg_advisory_lock({_SCHEMA_LOCK_ID})")
        try:
            yield
        finally:
            await conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_SCHEMA_LOCK_ID})")

    def explain(self, exc: BaseException) -> str:
        shown, text = self.shown(), f"{exc}"
        name = type(exc).__name__
        cause = exc
        while getattr(cause, "__cause__", None) is not None:  # SQLAlchemy wraps the driver's error
            cause = cause.__cause__  # type: ignore[assignment]
        name, text = type(cause).__name__, str(cause) or text
        if name == "InvalidCatalogNameError":
            db = make_url(self.url).database
            return (f"the PostgreSQL database '{db}' does not exist on {shown}; create it first "
                    f"(createdb {db}, or CREATE DATABASE {db};)")
        if name in ("InvalidPasswordError", "InvalidAuthorizationSpecificationError"):
            return f"PostgreSQL refused the login for {shown}: {text}; check the user and password in the URL"
        if isinstance(cause, ConnectionRefusedError | OSError) or "refused" in text.lower():
            return f"cannot connect to PostgreSQL at {shown}: {text or 'connection refused'}; is the server running there?"
        if isinstance(cause, TimeoutError):
            return f"cannot connect to PostgreSQL at {shown}: no answer within 10s"
        return f"cannot use the PostgreSQL database {shown}: {name}: {text}"


def dialect_for(url: str) -> Dialect:
    """The dialect of a database URL; DatabaseError (exit 2) for one Treadle cannot use."""
    text = (url or "").strip()
    if text.startswith("sqlite:///"):
        path = text.removeprefix("sqlite:///")
        if not path:
            raise DatabaseError(f"database URL '{url}' names no file; {URL_HELP}")
        return SQLite(text, path)
    if text.startswith("sqlite:"):
        raise DatabaseError(f"database URL '{url}' is not understood; {URL_HELP} (three slashes, then the path)")
    try:
        parsed = make_url(text)
    except ArgumentError:
        raise DatabaseError(f"database URL '{url}' is not understood; {URL_HELP}") from None
    if parsed.get_backend_name() in ("postgresql", "postgres"):
        if parsed.drivername not in ("postgresql", "postgres", "postgresql+asyncpg"):
            raise DatabaseError(f"database URL '{parsed.render_as_string()}': Treadle talks to PostgreSQL through "
                                f"asyncpg; write postgresql://... without a driver")
        if not parsed.database:
            raise DatabaseError(f"database URL '{parsed.render_as_string()}' names no database; {URL_HELP}")
        return Postgres(parsed.set(drivername="postgresql").render_as_string(hide_password=False))
    raise DatabaseError(f"database URL '{parsed.render_as_string()}': unsupported database "
                        f"'{parsed.get_backend_name()}'; {URL_HELP}")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoint, never corrupt
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()
