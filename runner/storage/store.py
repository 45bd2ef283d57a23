"""The database: one writer task that batches commits, and the read queries.

Everything the engine records goes through `Store.put_*` onto one queue. The
writer takes whatever has queued up, writes it in one transaction and commits,
then publishes the events on the Broker. Batches are committed in queue order,
so a `kill -9` can lose only the last moments, never reorder them; each commit
leaves a state from which a run can be resumed (finished steps with outputs).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, select, update
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import SQLModel

from .. import DEFAULT_DB
from .events import Broker
from .models import UNFINISHED_RUN_STATES, LogChunk, Run, RunStatus, StepAttempt, WorkflowVersion

log = logging.getLogger("treadle.store")

_MAX_BATCH = 20_000
_STEP_KEY = ("run_id", "step_id", "item", "attempt")


def async_url(url: str) -> str:
    """`sqlite:///x.db` -> `sqlite+aiosqlite:///x.db`, creating the folder of the file."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return "sqlite+aiosqlite:///" + path
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoint, never corrupt
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


class Store:
    """Owns the engine, the writer task and the broker. Use `async with Store(url)`."""

    def __init__(self, url: str = DEFAULT_DB, broker: Broker | None = None):
        self.url = url
        self.broker = broker or Broker()
        self.engine: AsyncEngine = create_async_engine(async_url(url))
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._queue: asyncio.Queue = asyncio.Queue()
        self._writer: asyncio.Task | None = None
        self.write_errors = 0

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        for attempt in range(1, 4):
            try:
                async with self.engine.begin() as conn:
                    await conn.run_sync(SQLModel.metadata.create_all)
                    await conn.run_sync(_add_missing_columns)
                break
            except OperationalError as exc:  # another process created the tables at the same moment
                if "already exists" not in str(exc) or attempt == 3:
                    raise
        self._writer = asyncio.create_task(self._write_loop(), name="treadle-store-writer")

    async def close(self) -> None:
        if self._writer is not None:
            await self.flush()
            self._writer.cancel()
            try:
                await self._writer
            except asyncio.CancelledError:
                pass
            self._writer = None
        await self.engine.dispose()

    # -- writing -----------------------------------------------------------------

    def put_version(self, row: dict[str, Any]) -> None:
        self._queue.put_nowait(("version", row))

    def put_run(self, row: dict[str, Any]) -> None:
        """Insert a new run (every required column)."""
        self._queue.put_nowait(("run", row))

    def update_run(self, row: dict[str, Any]) -> None:
        """Update some columns of a run; `row` holds `id` and the columns to set."""
        self._queue.put_nowait(("run_update", row))

    def put_step(self, row: dict[str, Any]) -> None:
        """Insert or replace one step attempt, keyed by run, step, item and attempt."""
        self._queue.put_nowait(("step", row))

    def put_row(self, table: Any, row: dict[str, Any]) -> None:
        """Insert a row into another table in the next batch (in order with the rest)."""
        self._queue.put_nowait(("insert", (table, row)))

    def put_log(self, row: dict[str, Any]) -> None:
        self._queue.put_nowait(("log", row))

    def renew_leases(self, owner: str, until: float) -> None:
        """Extend the lease of every unfinished run `owner` drives."""
        self._queue.put_nowait(("lease", {"owner": owner, "until": until}))

    async def active_owners(self) -> list[str]:
        """The processes named as owners of unfinished runs."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(Run.owner).distinct().where(
                Run.status.in_(list(UNFINISHED_RUN_STATES)), Run.owner.is_not(None)))
            return [r[0] for r in rows]

    async def claim_stale_runs(self, owner: str, until: float, now: float | None = None,
                               workflow: str | None = None, dead_owners: list[str] | None = None) -> list[dict[str, Any]]:
        """Take over the unfinished runs nobody is driving (no lease, one that ran out,
        or an owner known to be dead); returns them. Atomic: two processes never
        claim the same run."""
        now = time.time() if now is None else now
        stale = (Run.lease_until.is_(None)) | (Run.lease_until < now)
        if dead_owners:
            stale = stale | Run.owner.in_(dead_owners)
        stmt = (
            update(Run)
            # a queued run has nobody driving it on purpose: the launcher starts it
            .where(Run.status.in_([RunStatus.RUNNING.value, RunStatus.WAITING.value]), stale,
                   *([Run.workflow == workflow] if workflow else []))
            .values(owner=owner, lease_until=until)
            .returning(*Run.__table__.columns)
        )
        async with self.engine.begin() as conn:
            return [dict(r) for r in (await conn.execute(stmt)).mappings()]

    async def flush(self) -> None:
        """Return once everything queued before this call is committed."""
        if self._writer is None or self._writer.done():
            return
        done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(("flush", done))
        await done

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            await self._write_batch(batch)

    async def _write_batch(self, batch: list[tuple[str, Any]]) -> None:
        versions: dict[tuple[str, str], dict] = {}
        runs: dict[str, dict] = {}
        updates: dict[str, dict] = {}
        steps: dict[tuple, dict] = {}
        logs: list[dict] = []
        leases: dict[str, float] = {}
        inserts: dict[Any, list[dict]] = {}  # plain rows of other tables (the audit log)
        for kind, row in batch:
            if kind == "lease":
                leases[row["owner"]] = row["until"]
            elif kind == "step":
                steps[tuple(row[k] for k in _STEP_KEY)] = row
            elif kind == "log":
                logs.append(row)
            elif kind == "run":
                runs[row["id"]] = row
            elif kind == "run_update":
                if row["id"] in runs:
                    runs[row["id"]] = {**runs[row["id"]], **row}
                else:
                    updates[row["id"]] = {**updates.get(row["id"], {}), **row}
            elif kind == "version":
                versions[(row["workflow"], row["version"])] = row
            elif kind == "insert":
                inserts.setdefault(row[0], []).append(row[1])
        statements = self._statements(versions, runs, updates, steps, logs)
        statements += [(table.insert(), rows) for table, rows in inserts.items()]
        statements += [
            (update(Run).where(Run.owner == owner, Run.status.in_(list(UNFINISHED_RUN_STATES)))
             .values(lease_until=until), None)
            for owner, until in leases.items()
        ]
        for attempt in range(1, 11):
            try:
                async with self.engine.begin() as conn:
                    for stmt, params in statements:
                        await _execute(conn, stmt, params)
                break
            except OperationalError as exc:  # locked, busy, I/O: worth another try
                self.write_errors += 1
                log.error("store: write of %d records failed (try %d of 10): %s", len(batch), attempt, exc)
                await asyncio.sleep(min(0.05 * 2**attempt, 2.0))
            except Exception:
                # a record the database refuses: write the others one by one, so
                # one bad record never costs the rest of the batch
                self.write_errors += 1
                log.exception("store: a batch of %d records was refused; writing them one by one", len(batch))
                await self._write_one_by_one(statements)
                break
        self._publish(batch)

    @staticmethod
    def _statements(versions: dict, runs: dict, updates: dict, steps: dict, logs: list) -> list[tuple[Any, Any]]:
        out: list[tuple[Any, Any]] = []
        if versions:
            out.append((insert(WorkflowVersion).on_conflict_do_nothing(), list(versions.values())))
        for row in runs.values():
            out.append((insert(Run).values(**row).on_conflict_do_nothing(), None))
        for row in updates.values():
            out.append((update(Run).where(Run.id == row["id"]).values(**{k: v for k, v in row.items() if k != "id"}), None))
        # the hot paths skip SQLAlchemy's per-row parameter processing (several times
        # faster): plain executemany with the JSON columns encoded here
        if steps:
            out.append((_STEP_UPSERT, [_step_tuple(r) for r in steps.values()]))
        if logs:
            out.append((_LOG_INSERT, [tuple(r[c] for c in _LOG_COLS) for r in logs]))
        return out

    async def _write_one_by_one(self, statements: list[tuple[Any, Any]]) -> None:
        for stmt, params in statements:
            for one in (params if isinstance(params, list) else [params]):
                try:
                    async with self.engine.begin() as conn:
                        await _execute(conn, stmt, one)
                except Exception as exc:
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
                event_ = {"type": "run", **row}
                broker.publish(f"run:{row['id']}", event_)
                broker.publish("runs", event_)

    # -- reading -----------------------------------------------------------------

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(Run).where(Run.id == run_id))).mappings().first()
        return dict(row) if row else None

    async def step_attempts(self, run_id: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(StepAttempt).where(StepAttempt.run_id == run_id)
                .order_by(StepAttempt.id)
            )
            return [dict(r) for r in rows.mappings()]

    async def step_states(self, run_id: str) -> list[dict[str, Any]]:
        """One row per step: its latest attempt (attempt 0 = it never started)."""
        best: dict[str, dict[str, Any]] = {}
        for row in await self.step_attempts(run_id):
            if row["item"] == -1:
                old = best.get(row["step_id"])
                if old is None or row["attempt"] >= old["attempt"]:
                    best[row["step_id"]] = row
        return list(best.values())

    async def list_runs(
        self, *, workflow: str | None = None, status: str | None = None,
        parent: str | None = None, offset: int = 0, limit: int = 50, workflows: list[str] | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """Newest first. `workflows`: only runs of these (a namespace's); None: all."""
        query = select(Run)
        count = select(func.count()).select_from(Run)
        for cond in (
            Run.workflow.in_(workflows) if workflows is not None else None,
            Run.workflow == workflow if workflow else None,
            Run.status == status if status else None,
            Run.parent_run_id == parent if parent else None,
        ):
            if cond is not None:
                query, count = query.where(cond), count.where(cond)
        query = query.order_by(Run.created_at.desc(), Run.id.desc()).offset(offset).limit(limit)
        async with self.engine.connect() as conn:
            rows = [dict(r) for r in (await conn.execute(query)).mappings()]
            total = (await conn.execute(count)).scalar_one()
        return rows, total

    async def last_runs(self) -> dict[str, dict[str, Any]]:
        """The newest run of each workflow."""
        newest = select(Run.workflow, func.max(Run.created_at).label("at")).group_by(Run.workflow).subquery()
        query = select(Run).join(newest, (Run.workflow == newest.c.workflow) & (Run.created_at == newest.c.at))
        async with self.engine.connect() as conn:
            return {r["workflow"]: dict(r) for r in (await conn.execute(query)).mappings()}

    async def logs(self, run_id: str, step_id: str, after_id: int = 0) -> list[dict[str, Any]]:
        query = (
            select(LogChunk)
            .where(LogChunk.run_id == run_id, LogChunk.step_id == step_id, LogChunk.id > after_id)
            .order_by(LogChunk.id)
        )
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]

    async def get_version(self, version: str, workflow: str) -> dict[str, Any] | None:
        query = select(WorkflowVersion).where(WorkflowVersion.version == version, WorkflowVersion.workflow == workflow)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return dict(row) if row else None

    async def versions(self, workflow: str, *, offset: int = 0, limit: int = 50) -> tuple[list[dict[str, Any]], int]:
        """The texts of a workflow seen so far, newest first (without their source)."""
        cols = [c for c in WorkflowVersion.__table__.columns if c.name != "source"]
        where = WorkflowVersion.workflow == workflow
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(*cols).where(where).order_by(WorkflowVersion.created_at.desc()).offset(offset).limit(limit))
            total = (await conn.execute(select(func.count()).select_from(WorkflowVersion).where(where))).scalar_one()
            return [dict(r) for r in rows.mappings()], total

    async def counts(self, since: float) -> dict[str, int]:
        async with self.engine.connect() as conn:
            active = (await conn.execute(
                select(func.count()).select_from(Run).where(Run.status.in_(UNFINISHED_RUN_STATES))
            )).scalar_one()
            rows = await conn.execute(
                select(Run.status, func.count()).where(Run.created_at >= since).group_by(Run.status)
            )
            recent = {status: n for status, n in rows}
        return {"active": active, **{f"last_24h_{k}": v for k, v in recent.items()}}

    async def unfinished_runs(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(Run).where(Run.status.in_(UNFINISHED_RUN_STATES)))
            return [dict(r) for r in rows.mappings()]


def _add_missing_columns(conn: Any) -> None:
    """Columns added since a database was created are added to it (all nullable or
    defaulted), so a database from an older Treadle keeps working."""
    from sqlalchemy import inspect

    inspector = inspect(conn)
    for table in SQLModel.metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have:
                ddl = column.type.compile(dialect=conn.dialect)
                default = column.default.arg if column.default is not None and column.default.is_scalar else None
                suffix = f" DEFAULT {default!r}" if isinstance(default, int | float | str) else ""
                conn.exec_driver_sql(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {ddl}{suffix}')


_STEP_COLS = [c.name for c in StepAttempt.__table__.columns if c.name != "id"]
_STEP_JSON = {"input", "output"}
_STEP_UPSERT = (
    f"INSERT INTO step_attempt ({', '.join(_STEP_COLS)}) VALUES ({', '.join('?' * len(_STEP_COLS))}) "
    f"ON CONFLICT ({', '.join(_STEP_KEY)}) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _STEP_COLS if c not in _STEP_KEY)
)
_LOG_COLS = [c.name for c in LogChunk.__table__.columns if c.name != "id"]
_LOG_INSERT = f"INSERT INTO log_chunk ({', '.join(_LOG_COLS)}) VALUES ({', '.join('?' * len(_LOG_COLS))})"


def _step_tuple(row: dict[str, Any]) -> tuple:
    return tuple(_json(row.get(c)) if c in _STEP_JSON else row.get(c) for c in _STEP_COLS)


def _json(value: Any) -> str:
    """JSON of a step's input or output; a value JSON cannot hold (an integer of more
    than 4,300 digits) is stored as a note instead of stopping the writer."""
    try:
        return json.dumps(value, default=str)
    except (ValueError, TypeError, RecursionError) as exc:
        return json.dumps({"unstorable": f"{type(exc).__name__}: {str(exc)[:200]}"})


async def _execute(conn: Any, stmt: Any, params: Any) -> None:
    if isinstance(stmt, str):
        await conn.exec_driver_sql(stmt, params)
    else:
        await conn.execute(stmt, params)


def now() -> float:
    return time.time()
