"""The queries behind metrics and statistics: runs by state across the database, and a
workflow's history over a window (outcomes, durations, the steps that fail most)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from .models import UNFINISHED_RUN_STATES, Run, StepAttempt

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

MAX_HISTORY = 100_000  # runs read for one window's percentiles (newest first)


class StatsStore:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    async def unfinished(self) -> dict[str, int]:
        """Runs not finished, by status (queued, running, waiting), of every server."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(Run.status, func.count()).where(Run.status.in_(UNFINISHED_RUN_STATES))
                                      .group_by(Run.status))
            found = {status: n for status, n in rows}
        return {s: found.get(s, 0) for s in UNFINISHED_RUN_STATES}

    async def history(self, workflow: str, since: float) -> list[dict[str, Any]]:
        """The runs of `workflow` (child runs included) created since `since`, oldest first: id, status,
        created_at, started_at, finished_at."""
        cols = (Run.id, Run.status, Run.created_at, Run.started_at, Run.finished_at)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                select(*cols).where(Run.workflow == workflow, Run.created_at >= since)
                .order_by(Run.created_at.desc()).limit(MAX_HISTORY))).mappings().all()
        return [dict(r) for r in reversed(rows)]

    async def failing_steps(self, workflow: str, since: float, limit: int = 5) -> list[tuple[str, int]]:
        """The steps of `workflow` with the most failed attempts in runs created since
        `since`: (step id, failed attempts), most first."""
        runs = select(Run.id).where(Run.workflow == workflow, Run.created_at >= since)
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(StepAttempt.step_id, func.count().label("n"))
                .where(StepAttempt.run_id.in_(runs), StepAttempt.status == "failed", StepAttempt.attempt > 0)
                .group_by(StepAttempt.step_id).order_by(func.count().desc(), StepAttempt.step_id).limit(limit))
            return [(step_id, n) for step_id, n in rows]
