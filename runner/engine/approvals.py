"""Approval steps' requests and decisions, kept in their own table.

A waiting approval is a row of `approval` keyed by (run, step, foreach item) with no
decision yet. A decision is written straight to the database, in its own committed
transaction, *before* the waiting step is told about it: a crash a moment later
cannot lose it, and the resumed step finds it there and uses it (it never asks
twice). `UPDATE .. WHERE decision IS NULL` makes the first decision win when two
people (or a person and the timeout) decide at once.

Why a table and not the step's output row: attempt rows go through the store's
writer queue (a decision would only be durable once the batch commits) and are
replaced whole when the attempt ends or is interrupted; a resumed step runs as a
new attempt, so the decision would have to be fished out of an older one. Here the
key has no attempt, the row is written once and read by any attempt, and the API,
the dashboard and another process all read the same truth.

The waiting step is woken at once by `notify` in this process and, for a decision
written by another process, by polling the row every `POLL_SECONDS`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import func, select, update
from sqlalchemy.dialects.sqlite import insert
from sqlmodel import Field, SQLModel

from ..storage.models import UNFINISHED_RUN_STATES, Run, RunStatus

if TYPE_CHECKING:
    from ..storage.store import Store

POLL_SECONDS = 1.0
APPROVED, REJECTED, TIMED_OUT, CANCELLED = "approved", "rejected", "timed_out", "cancelled"
HUMAN_DECISIONS = (APPROVED, REJECTED)


class ApprovalRow(SQLModel, table=True):
    """One approval request (a step, or one foreach item of it) and its decision."""

    __tablename__ = "approval"
    run_id: str = Field(primary_key=True)
    step_id: str = Field(primary_key=True)
    item: int = Field(default=-1, primary_key=True)  # foreach index; -1 outside foreach
    workflow: str = Field(index=True)
    message: str
    requested_at: float
    deadline: float | None = None  # epoch seconds; set once, so a restart does not extend it
    decision: str | None = Field(default=None, index=True)  # approved | rejected | timed_out | cancelled
    by: str | None = None
    comment: str | None = None
    decided_at: float | None = None


class Key(NamedTuple):
    run_id: str
    step_id: str
    item: int = -1


_TABLE = ApprovalRow.__table__  # type: ignore[attr-defined]


class Approvals:
    """Requests, decisions and the in-process wake-ups of waiting approval steps."""

    def __init__(self, store: Store):
        self.store = store
        self._events: dict[Key, asyncio.Event] = {}
        self._waiting_runs: dict[str, int] = {}  # run id -> approvals of it waiting in this process
        self._table_ready = False

    async def _ensure_table(self) -> None:
        """`Store.open` creates it when this module was imported first; make sure anyway."""
        if not self._table_ready:
            async with self.store.engine.begin() as conn:
                await conn.run_sync(lambda c: _TABLE.create(c, checkfirst=True))
            self._table_ready = True

    async def get(self, key: Key) -> dict[str, Any] | None:
        await self._ensure_table()
        query = select(ApprovalRow).where(*_where(key))
        async with self.store.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return dict(row) if row else None

    async def request(self, key: Key, workflow: str, message: str, timeout: float | None) -> dict[str, Any]:
        """Record that `key` waits for a decision; returns the stored row.

        An existing row is kept as it is (its decision, or its deadline when still
        waiting: a restart does not give more time), except one closed without a
        person's decision (`cancelled`), which asks again.
        """
        await self._ensure_table()
        now = time.time()
        values = {"run_id": key.run_id, "step_id": key.step_id, "item": key.item, "workflow": workflow,
                  "message": message, "requested_at": now, "deadline": now + timeout if timeout else None,
                  "decision": None, "by": None, "comment": None, "decided_at": None}
        async with self.store.engine.begin() as conn:
            await conn.execute(insert(ApprovalRow).values(**values).on_conflict_do_nothing())
            await conn.execute(update(ApprovalRow).where(*_where(key), ApprovalRow.decision == CANCELLED)
                               .values(**{k: v for k, v in values.items() if k not in key._fields}))
        row = await self.get(key)
        assert row is not None
        return row

    async def decide(self, key: Key, decision: str, by: str | None, comment: str | None) -> dict[str, Any] | None:
        """Record a decision if `key` still waits for one (committed before returning),
        then wake the waiting step. None when it was not waiting (no row, or decided)."""
        await self._ensure_table()
        stmt = (update(ApprovalRow).where(*_where(key), ApprovalRow.decision.is_(None))
                .values(decision=decision, by=by, comment=comment, decided_at=time.time())
                .returning(*_TABLE.columns))
        async with self.store.engine.begin() as conn:
            row = (await conn.execute(stmt)).mappings().first()
        if row is None:
            return None
        self.notify(key)
        return dict(row)

    def notify(self, key: Key) -> None:
        event = self._events.get(key)
        if event is not None:
            event.set()

    async def wait(self, key: Key, deadline: float | None, *,
                   suspended: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        """Wait until `key` has a decision (or its deadline passes: `timed_out`); the run
        shows `waiting` meanwhile. When the wait is cancelled because Treadle stops
        (`suspended()`), the run stays `waiting` for the next start to resume."""
        event = self._events.setdefault(key, asyncio.Event())
        self._enter(key.run_id)
        try:
            while True:
                event.clear()  # before reading: a decision committed after the read sets it again
                row = await self.get(key)
                if row is not None and row["decision"] is not None:
                    return row
                now = time.time()
                if deadline is not None and now >= deadline:
                    return await self.decide(key, TIMED_OUT, "treadle", None) or await self.get(key) or {}
                pause = POLL_SECONDS if deadline is None else min(POLL_SECONDS, deadline - now)
                try:
                    await asyncio.wait_for(event.wait(), pause)
                except TimeoutError:
                    pass
        finally:
            self._events.pop(key, None)
            self._leave(key.run_id, back_to_running=not suspended())

    def waiting(self, run_id: str) -> int:
        """How many approvals of this run wait in this process now."""
        return self._waiting_runs.get(run_id, 0)

    def _enter(self, run_id: str) -> None:
        self._waiting_runs[run_id] = self._waiting_runs.get(run_id, 0) + 1
        if self._waiting_runs[run_id] == 1:
            self.store.update_run({"id": run_id, "status": RunStatus.WAITING.value})

    def _leave(self, run_id: str, back_to_running: bool) -> None:
        left = self._waiting_runs.get(run_id, 1) - 1
        if left > 0:
            self._waiting_runs[run_id] = left
            return
        self._waiting_runs.pop(run_id, None)
        if back_to_running:
            self.store.update_run({"id": run_id, "status": RunStatus.RUNNING.value})

    async def pending(self, *, run_id: str | None = None, step_id: str | None = None,
                      offset: int = 0, limit: int = 50, workflows: list[str] | None = None,
                      ) -> tuple[list[dict[str, Any]], int]:
        """The approvals waiting now (of unfinished runs), oldest first; and how many.
        `workflows`: only those of these workflows (a namespace's)."""
        await self._ensure_table()
        conds = [ApprovalRow.decision.is_(None), Run.status.in_(list(UNFINISHED_RUN_STATES))]
        if workflows is not None:
            conds.append(ApprovalRow.workflow.in_(workflows))
        if run_id is not None:
            conds.append(ApprovalRow.run_id == run_id)
        if step_id is not None:
            conds.append(ApprovalRow.step_id == step_id)
        joined = select(ApprovalRow).join(Run, Run.id == ApprovalRow.run_id).where(*conds)
        query = joined.order_by(ApprovalRow.requested_at, ApprovalRow.run_id, ApprovalRow.item)
        count = select(func.count()).select_from(ApprovalRow).join(Run, Run.id == ApprovalRow.run_id).where(*conds)
        async with self.store.engine.connect() as conn:
            rows = [dict(r) for r in (await conn.execute(query.offset(offset).limit(limit))).mappings()]
            total = (await conn.execute(count)).scalar_one()
        return rows, total


def _where(key: Key) -> tuple:
    return (ApprovalRow.run_id == key.run_id, ApprovalRow.step_id == key.step_id, ApprovalRow.item == key.item)
