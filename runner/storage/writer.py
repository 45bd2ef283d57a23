"""The single writer: every record the engine produces, committed in batches, in order.

Records are queued by `Store.put_*`. The writer takes whatever has queued up, writes
it in one transaction and commits, then publishes the events on the Broker. Batches
are committed in queue order, so a `kill -9` can lose only the last moments, never
reorder them; each commit leaves a state from which a run can be resumed.

Text is stored the same on both databases: a NUL character (which PostgreSQL cannot
hold in text or JSON) becomes U+FFFD, in logs, inputs, outputs and errors alike.

A database that cannot be reached (a restart of PostgreSQL, a locked SQLite file) is
waited for: the batch is tried again with a growing pause, and nothing queued is
dropped. A record the database refuses (a bug, a value it cannot hold) is logged and
skipped on its own, so one bad record never costs the rest of its batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from .models import UNFINISHED_RUN_STATES, LogChunk, Run, StepAttempt, WorkflowVersion

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .database import Dialect
    from .events import Broker

log = logging.getLogger("treadle.store")

MAX_BATCH = 20_000
STEP_KEY = ("run_id", "step_id", "item", "attempt")
_STEP_COLS = [c.name for c in StepAttempt.__table__.columns if c.name != "id"]
_STEP_JSON = {"input", "output"}
_LOG_COLS = [c.name for c in LogChunk.__table__.columns if c.name != "id"]


def _quoted(names: list[str] | tuple[str, ...]) -> str:
    return ", ".join(f'"{n}"' for n in names)


class HotSql:
    """The raw statements of the hot path for one dialect (SQLAlchemy's per-row
    parameter processing costs several times more than the database itself)."""

    def __init__(self, dialect: Dialect):
        self.step_upsert = (
            f"INSERT INTO step_attempt ({_quoted(_STEP_COLS)}) VALUES ({dialect.placeholders(len(_STEP_COLS))}) "
            f"ON CONFLICT ({_quoted(STEP_KEY)}) DO UPDATE SET "
            + ", ".join(f'"{c}" = excluded."{c}"' for c in _STEP_COLS if c not in STEP_KEY)
        )
        self.log_insert = (f"INSERT INTO log_chunk ({_quoted(_LOG_COLS)}) "
                           f"VALUES ({dialect.placeholders(len(_LOG_COLS))})")


def transient(exc: BaseException) -> bool:
    """Worth trying again: the database is busy, restarting or unreachable."""
    if isinstance(exc, OperationalError | InterfaceError | OSError | TimeoutError | ConnectionError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class Writer:
    """One task that owns every write of the engine's records (see the module docstring)."""

    def __init__(self, engine: AsyncEngine, dialect: Dialect, broker: Broker):
        self.engine, self.dialect, self.broker = engine, dialect, broker
        self.sql = HotSql(dialect)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.errors = 0  # failed tries of a batch, and records refused
        self.last_batch_seconds = 0.0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="treadle-store-writer")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def put(self, kind: str, row: Any) -> None:
        self.queue.put_nowait((kind, row))

    async def flush(self) -> None:
        """Return once everything queued before this call is committed."""
        if not self.running:
            return
        done = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(("flush", done))
        await done

    async def stop(self) -> None:
        if self._task is None:
            return
        await self.flush()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def _loop(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            await self.write(batch)

    async def write(self, batch: list[tuple[str, Any]]) -> None:
        statements = self._statements(batch)
        started = time.perf_counter()
        pause = 0.05
        tries = 0
        while statements:
            tries += 1
            try:
                async with self.engine.begin() as conn:
                    for stmt, params in statements:
                        await _execute(conn, stmt, params)
                break
            except Exception as exc:
                self.errors += 1
                if transient(exc):
                    # wait for the database as long as it takes: nothing queued is dropped
                    if tries in (1, 2, 5) or tries % 20 == 0:
                        log.error("store: write of %d records failed (try %d, trying again in %.1fs): %s",
                                  len(batch), tries, pause, str(exc).splitlines()[0][:300])
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 2.0)
                    continue
                # a record the database refuses: write the others one by one, so
                # one bad record never costs the rest of the batch
                log.exception("store: a batch of %d records was refused; writing them one by one", len(batch))
                await self._write_one_by_one(statements)
                break
        self.last_batch_seconds = time.perf_counter() - started
        self._publish(batch)

    def _statements(self, batch: list[tuple[str, Any]]) -> list[tuple[Any, Any]]:
        versions: dict[tuple[str, str], dict] = {}
        runs: dict[str, dict] = {}
        updates: dict[str, dict] = {}
        steps: dict[tuple, dict] = {}
        logs: list[dict] = []
        leases: dict[str, float] = {}
        inserts: dict[Any, list[dict]] = {}  # plain rows of other tables (the audit log)
        for kind, row in batch:
            if kind == "step":
                steps[tuple(row[k] for k in STEP_KEY)] = row
            elif kind == "log":
                logs.append(row)
            elif kind == "run":
                runs[row["id"]] = without_nul(row)
            elif kind == "run_update":
                row = without_nul(row)
                if row["id"] in runs:
                    runs[row["id"]] = {**runs[row["id"]], **row}
                else:
                    updates[row["id"]] = {**updates.get(row["id"], {}), **row}
            elif kind == "lease":
                leases[row["owner"]] = row["until"]
            elif kind == "version":
                versions[(row["workflow"], row["version"])] = row
            elif kind == "insert":
                inserts.setdefault(row[0], []).append(without_nul(row[1]))
        insert = self.dialect.insert
        out: list[tuple[Any, Any]] = []
        if versions:
            out.append((insert(WorkflowVersion).on_conflict_do_nothing(), list(versions.values())))
        for row in runs.values():
            out.append((insert(Run).values(**row).on_conflict_do_nothing(), None))
        for row in updates.values():
            out.append((update(Run).where(Run.id == row["id"]).values(**{k: v for k, v in row.items() if k != "id"}),
                        None))
        if steps:
            out.append((self.sql.step_upsert, [_step_tuple(r) for r in steps.values()]))
        if logs:
            out.append((self.sql.log_insert, [tuple(_text(r[c]) for c in _LOG_COLS) for r in logs]))
        out += [(table.insert(), rows) for table, rows in inserts.items()]
        out += [
            (update(Run).where(Run.owner == owner, Run.status.in_(list(UNFINISHED_RUN_STATES)))
             .values(lease_until=until), None)
            for owner, until in leases.items()
        ]
        return out

    async def _write_one_by_one(self, statements: list[tuple[Any, Any]]) -> None:
        for stmt, params in statements:
            for one in (params if isinstance(params, list) else [params]):
                try:
                    async with self.engine.begin() as conn:
                        await _execute(conn, stmt, one)
                except Exception as exc:
                    self.errors += 1
                    log.error("store: record dropped: %s: %s", type(exc).__name__, str(exc)[:500])

    def _publish(self, batch: list[tuple[str, Any]]) -> None:
        broker = self.broker
        for kind, row in batch:
            if kind == "flush":
                if not row.done():
                    row.set_result(None)
            elif kind in ("step", "log"):
                topic = f"run:{row['run_id']}"
                if broker.has_subscribers(topic):
                    broker.publish(topic, {"type": kind, **row})
            elif kind in ("run", "run_update"):
                event = {"type": "run", **row}
                broker.publish(f"run:{row['id']}", event)
                broker.publish("runs", event)


def _step_tuple(row: dict[str, Any]) -> tuple:
    return tuple(_json(row.get(c)) if c in _STEP_JSON else _text(row.get(c)) for c in _STEP_COLS)


_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def _json(value: Any) -> str:
    """JSON of a step's input or output; a value JSON cannot hold (an integer of more
    than 4,300 digits) is stored as a note instead of stopping the writer."""
    try:
        text = json.dumps(value, default=str)
    except (ValueError, TypeError, RecursionError) as exc:
        return json.dumps({"unstorable": f"{type(exc).__name__}: {str(exc)[:200]}"})
    if "\\u0000" in text:  # a NUL inside a string (not an escaped backslash before `u0000`)
        text = _NUL_ESCAPE.sub(r"\1\\ufffd", text)
    return text


def _text(value: Any) -> Any:
    return value.replace("\x00", "\ufffd") if isinstance(value, str) and "\x00" in value else value


def without_nul(value: Any) -> Any:
    """`value` with every NUL character in its strings (keys too) replaced by U+FFFD."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_nul(v) for v in value]
    return value


async def _execute(conn: Any, stmt: Any, params: Any) -> None:
    if isinstance(stmt, str):
        await conn.exec_driver_sql(stmt, params)
    else:
        await conn.execute(stmt, params)
