"""The single writer: every record the engine produces, committed in batches, in order.

Records are queued by `Store.put_*`. The writer takes whatever has queued up, writes
it in one transaction and commits, then publishes the events on the Broker. Batches
are committed in queue order, so a `kill -9` can lose only the last moments, never
reorder them; each commit leaves a state from which a run can be resumed.

Text is stored the same on both databases: a NUL character (which PostgreSQL cannot
hold in text or JSON) becomes U+FFFD, in logs, inputs, outputs and errors alike.

Records of a run driver are fenced: each carries the (owner, epoch) of the lease it
was written under, and the batch's transaction first locks the rows of those runs and
reads who holds them now. A record whose lease is no longer held (the run was taken
over by another server after this one stalled) is refused, never written, and
`on_refused` tells the engine, which stops driving that run.

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
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from .database import json_for_database
from .models import LogChunk, Run, StepAttempt, WorkflowVersion

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

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
        self.errors = 0  # failed tries of a batch, and records the database refused
        self.fenced = 0  # records refused because their run's lease was no longer held
        # called with (run id, (owner, epoch)) of the leases whose records were refused
        self.on_refused: Callable[[set[tuple[str, tuple[str, int]]]], None] | None = None
        # called after each commit with the batch (the event feed across servers)
        self.on_commit: Callable[[AsyncConnection, list[tuple]], Awaitable[None]] | None = None
        self.last_batch_seconds = 0.0
        # told (seconds, records) after each batch is written (metrics); quick, never raising
        self.on_batch: Callable[[float, int], None] | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="treadle-store-writer")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def put(self, kind: str, row: Any, fence: tuple[str, int] | None = None) -> None:
        """Queue a record; `fence` (owner, epoch): commit it only while that lease holds."""
        self.queue.put_nowait((kind, row, fence))

    async def flush(self) -> None:
        """Return once everything queued before this call is committed."""
        if not self.running:
            return
        done = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(("flush", done, None))
        await done

    async def stop(self, timeout: float | None = None) -> None:
        """Commit what is queued, then end the writer task. `timeout`: give up waiting
        for the database after that many seconds (the records still queued are lost,
        as with a kill: recovery works from what was committed)."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self.flush(), timeout)
        except TimeoutError:
            log.error("store: the database did not take the last %d record(s) within %gs; stopping without them",
                      self.queue.qsize(), timeout)
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

    async def write(self, batch: list[tuple[str, Any, Any]]) -> None:
        started = time.perf_counter()
        pause = 0.05
        tries = 0
        refused: set[tuple[str, tuple[str, int]]] = set()
        statements: list[tuple[Any, Any]] = []
        while True:
            tries += 1
            try:
                async with self.engine.begin() as conn:
                    refused = await self._fence(conn, batch)
                    statements = self._statements(batch, refused)
                    for stmt, params in statements:
                        await _execute(conn, stmt, params)
                    if self.on_commit is not None:
                        await self.on_commit(conn, [r for r in batch if r[0] != "flush"])
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
        if self.on_batch is not None:
            self.on_batch(self.last_batch_seconds, len(batch))
        if refused:
            self.fenced += sum(1 for _, row, fence in batch if fence is not None and (_run_of(row), fence) in refused)
            log.warning("store: records of run(s) %s refused: their lease is held by another server now",
                        ", ".join(sorted({run_id for run_id, _ in refused})))
            if self.on_refused is not None:
                self.on_refused(refused)
        self._publish(batch, refused)

    async def _fence(self, conn: AsyncConnection, batch: list[tuple[str, Any, Any]]) -> set[tuple[str, tuple[str, int]]]:
        """Lock the rows of the runs with fenced records in this batch and return the
        (run, lease) pairs of records whose lease is no longer the run's (owner, epoch)."""
        wanted: dict[str, set[tuple[str, int]]] = {}
        inserted: dict[str, tuple[str, int]] = {}
        for kind, row, fence in batch:
            if fence is None:
                continue
            if kind == "run":  # a new run, inserted in this very batch under this lease
                inserted[row["id"]] = fence
            else:
                wanted.setdefault(_run_of(row), set()).add(fence)
        if not wanted:
            return set()
        held = {r[0]: (r[1], r[2]) for r in (await conn.execute(self.dialect.lock_runs(list(wanted)))).all()}
        return {(run_id, f) for run_id, fences in wanted.items() for f in fences
                if f != held.get(run_id, inserted.get(run_id))}

    def _statements(self, batch: list[tuple[str, Any, Any]], refused: set[tuple[str, tuple[str, int]]],
                    ) -> list[tuple[Any, Any]]:
        versions: dict[tuple[str, str], dict] = {}
        runs: dict[str, dict] = {}
        updates: dict[str, dict] = {}
        steps: dict[tuple, dict] = {}
        logs: list[dict] = []
        inserts: dict[Any, list[dict]] = {}  # plain rows of other tables (the audit log)
        for kind, row, fence in batch:
            if fence is not None and refused and (_run_of(row), fence) in refused:
                continue
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

    def announce(self, records: list[tuple[str, Any, Any]]) -> None:
        """Publish records committed outside the writer, as if it had written them."""
        self._publish(records, set())

    def _publish(self, batch: list[tuple[str, Any, Any]], refused: set[tuple[str, tuple[str, int]]]) -> None:
        broker = self.broker
        for kind, row, fence in batch:
            if fence is not None and refused and (_run_of(row), fence) in refused:
                continue
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
        text = json_for_database(json.dumps(value, default=str), value)
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


def _run_of(row: dict[str, Any]) -> str:
    """The run a record belongs to (attempts and logs say `run_id`, run rows `id`)."""
    return row["run_id"] if "run_id" in row else row["id"]
