"""Backfills (the `backfill` table) and the runs of each (`run.backfill_id`).

A backfill's cursor (the newest slot started or skipped) moves by compare-and-set, in
its own committed transaction, *before* the run of the slot starts: as with schedule
marks, a crash in between loses that one start instead of repeating it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update

from .models import UNFINISHED_RUN_STATES, Backfill, Run, RunStatus

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .database import Dialect

# a slot counts as run when a run of it succeeded or is still going (failed and
# cancelled ones are run again by a backfill)
DONE_OR_GOING = [RunStatus.SUCCEEDED.value, *UNFINISHED_RUN_STATES]


class BackfillStore:
    def __init__(self, engine: AsyncEngine, dialect: Dialect):
        self.engine, self.dialect = engine, dialect

    async def create(self, row: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(self.dialect.insert(Backfill).values(**row))

    async def get(self, backfill_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(Backfill).where(Backfill.id == backfill_id))).mappings().first()
        return dict(row) if row else None

    async def list(self, *, workflow: str | None = None, workflows: list[str] | None = None,
                   status: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Backfills, newest first (of `workflow`, of the `workflows` a requester may see)."""
        query = select(Backfill)
        if workflow is not None:
            query = query.where(Backfill.workflow == workflow)
        if workflows is not None:
            query = query.where(Backfill.workflow.in_(workflows))
        if status is not None:
            query = query.where(Backfill.status == status)
        async with self.engine.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(query.subquery()))).scalar_one()
            rows = (await conn.execute(query.order_by(Backfill.created_at.desc(), Backfill.id.desc())
                                       .offset(offset).limit(limit))).mappings()
            return [dict(r) for r in rows], total

    async def advance(self, backfill_id: str, old: float | None, new: float, *, started: int, skipped: int) -> bool:
        """Move the cursor from `old` to `new` (compare-and-set, committed on return),
        counting the slots started and skipped; False when it was not at `old` any more
        or the backfill is not running."""
        cursor = Backfill.cursor.is_(None) if old is None else Backfill.cursor == old
        stmt = (update(Backfill).where(Backfill.id == backfill_id, cursor, Backfill.status == "running")
                .values(cursor=new, started=Backfill.started + started, skipped=Backfill.skipped + skipped))
        async with self.engine.begin() as conn:
            return (await conn.execute(stmt)).rowcount == 1

    async def set_status(self, backfill_id: str, status: str, *, only_from: list[str],
                         finished_at: float | None = None) -> bool:
        """Set the status if it is one of `only_from` (compare-and-set); False otherwise."""
        values: dict[str, Any] = {"status": status}
        if finished_at is not None:
            values["finished_at"] = finished_at
        stmt = update(Backfill).where(Backfill.id == backfill_id, Backfill.status.in_(only_from)).values(**values)
        async with self.engine.begin() as conn:
            return (await conn.execute(stmt)).rowcount == 1

    async def run_counts(self, backfill_id: str) -> dict[str, int]:
        """How many of the backfill's runs are in each status."""
        query = select(Run.status, func.count()).where(Run.backfill_id == backfill_id).group_by(Run.status)
        async with self.engine.connect() as conn:
            return {status: n for status, n in (await conn.execute(query)).all()}

    async def unfinished_runs(self, backfill_id: str) -> list[str]:
        """Ids of the backfill's runs that have not ended (queued, running, waiting)."""
        query = select(Run.id).where(Run.backfill_id == backfill_id, Run.status.in_(UNFINISHED_RUN_STATES))
        async with self.engine.connect() as conn:
            return [r[0] for r in (await conn.execute(query.order_by(Run.created_at))).all()]

    async def slots_run(self, workflow: str, refs: list[str]) -> set[str]:
        """Which of these slot references (a run's `trigger_ref`) already have a run of
        `workflow` that succeeded or is still going (by its schedule or a backfill)."""
        if not refs:
            return set()
        query = select(Run.trigger_ref).where(Run.workflow == workflow, Run.trigger_ref.in_(refs),
                                              Run.trigger.in_(["schedule", "backfill"]),
                                              Run.status.in_(DONE_OR_GOING))
        async with self.engine.connect() as conn:
            return {r[0] for r in (await conn.execute(query)).all()}
