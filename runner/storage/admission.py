"""Admission under a concurrency limit, decided in the database so that it holds
across every server.

`admit(workflow)` opens a transaction that first writes the workflow's row of
`workflow_lock`: that write locks the row (PostgreSQL) or the database (SQLite)
until the transaction ends, so every server deciding for this workflow takes its
turn. Inside, the caller counts what runs and what waits, then inserts a run,
queues one, or claims the oldest queued run by compare-and-set, and commits: the
decision and its effect are one transaction.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import literal_column, select, update

from .models import Run, RunStatus, WorkflowLock
from .writer import without_nul

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from .database import Dialect

DRIVEN = [RunStatus.RUNNING.value, RunStatus.WAITING.value]
MANUAL_TRIGGERS = ("manual", "api", "dashboard", "retry", "cli", "backfill")  # asked by a person: not held back by a pause


class Admission:
    """One workflow's admission, inside its locked transaction."""

    def __init__(self, conn: AsyncConnection, dialect: Dialect, workflow: str):
        self.conn, self.dialect, self.workflow = conn, dialect, workflow

    async def running(self) -> list[dict[str, Any]]:
        """The workflow's runs that count against its limit (driven, not child runs), oldest first."""
        query = (select(Run.id, Run.started_at, Run.owner)
                 .where(Run.workflow == self.workflow, Run.status.in_(DRIVEN), Run.parent_run_id.is_(None))
                 .order_by(Run.started_at, Run.id))
        return [dict(r) for r in (await self.conn.execute(query)).mappings()]

    async def queued(self) -> list[dict[str, Any]]:
        """The workflow's queued runs in the order they start (FIFO)."""
        query = (select(Run.id, Run.trigger).where(Run.workflow == self.workflow, Run.status == RunStatus.QUEUED.value)
                 .order_by(Run.created_at, Run.id))
        return [dict(r) for r in (await self.conn.execute(query)).mappings()]

    async def insert(self, row: dict[str, Any]) -> None:
        """Record a new run (committed with the decision)."""
        if row.get("lease_until") is not None:  # the lease on the database's clock, not this host's
            row = {**row, "lease_until": literal_column(self.dialect.now_sql) + (row["lease_until"] - row["created_at"])}
        await self.conn.execute(self.dialect.insert(Run).values(**without_nul(row)))

    async def claim_queued(self, run_id: str, owner: str, lease_seconds: float) -> dict[str, Any] | None:
        """Turn a queued run into a running one driven by `owner` (compare-and-set: None
        when it is no longer queued). Returns the whole row."""
        now = literal_column(self.dialect.now_sql)
        stmt = (update(Run).where(Run.id == run_id, Run.status == RunStatus.QUEUED.value)
                .values(status=RunStatus.RUNNING.value, owner=owner, lease_epoch=Run.lease_epoch + 1,
                        lease_until=now + lease_seconds, started_at=now)
                .returning(*Run.__table__.columns))
        row = (await self.conn.execute(stmt)).mappings().first()
        return dict(row) if row else None

    async def request_cancel(self, run_ids: list[str], by: str) -> None:
        await self.conn.execute(update(Run).where(Run.id.in_(run_ids), Run.status.in_(DRIVEN))
                                .values(cancel_requested_at=literal_column(self.dialect.now_sql),
                                        cancel_requested_by=by, cancel_compensate=False))


class AdmissionStore:
    def __init__(self, engine: AsyncEngine, dialect: Dialect):
        self.engine, self.dialect = engine, dialect

    @contextlib.asynccontextmanager
    async def admit(self, workflow: str) -> AsyncIterator[Admission]:
        """A transaction holding `workflow`'s admission lock; committed on exit."""
        lock = self.dialect.insert(WorkflowLock).values(name=workflow, taken=1)
        lock = lock.on_conflict_do_update(index_elements=["name"], set_={"taken": WorkflowLock.taken + 1})
        async with self.engine.begin() as conn:
            await conn.execute(lock)
            yield Admission(conn, self.dialect, workflow)

    async def running(self, workflow: str) -> list[dict[str, Any]]:
        """As Admission.running, without the lock (to show, or to refuse a retry)."""
        async with self.engine.connect() as conn:
            return await Admission(conn, self.dialect, workflow).running()

    async def queued(self, workflow: str | None = None) -> list[dict[str, Any]]:
        """Queued runs (of one workflow, or all) in the order they start: id, workflow, trigger."""
        query = select(Run.id, Run.workflow, Run.trigger).where(Run.status == RunStatus.QUEUED.value)
        if workflow is not None:
            query = query.where(Run.workflow == workflow)
        async with self.engine.connect() as conn:
            rows = await conn.execute(query.order_by(Run.created_at, Run.id))
            return [dict(r) for r in rows.mappings()]

    async def cancel_queued(self, run_id: str) -> bool:
        """Cancel a run still queued (compare-and-set); False when it is not queued."""
        now = literal_column(self.dialect.now_sql)
        stmt = (update(Run).where(Run.id == run_id, Run.status == RunStatus.QUEUED.value)
                .values(status=RunStatus.CANCELLED.value, reason=None, error="cancelled while queued",
                        finished_at=now).returning(Run.id))
        async with self.engine.begin() as conn:
            return (await conn.execute(stmt)).first() is not None
