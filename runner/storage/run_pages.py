"""The queries behind the run page: light rows for the whole run, one step in full,
and the tail of a step's log. Inputs and outputs (which can be large) are read only
for the step a person opens."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from .models import LogChunk, StepAttempt

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .database import Dialect


class RunPages:
    def __init__(self, engine: AsyncEngine, dialect: Dialect):
        self.engine, self.dialect = engine, dialect

    async def attempt_rows(self, run_id: str) -> tuple[list[tuple], list[tuple]]:
        """(every attempt as (step_id, item, attempt, status, started_at, finished_at),
        the whole-step failures as (step_id, error, attempt) in the order they ended)."""
        cols = (StepAttempt.step_id, StepAttempt.item, StepAttempt.attempt, StepAttempt.status,
                StepAttempt.started_at, StepAttempt.finished_at)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(*cols).where(StepAttempt.run_id == run_id))).all()
            failed = (await conn.execute(
                select(StepAttempt.step_id, StepAttempt.error, StepAttempt.attempt)
                .where(StepAttempt.run_id == run_id, StepAttempt.item == -1, StepAttempt.status == "failed")
                .order_by(StepAttempt.finished_at).limit(200)
            )).all()
        return [tuple(r) for r in rows], [tuple(r) for r in failed]

    async def step_rows(self, run_id: str, step_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(the step's whole-step attempts in full, oldest first; its foreach items'
        (item, attempt, status, error) only: thousands of inputs and outputs stay unread)."""
        of_step = (StepAttempt.run_id == run_id, StepAttempt.step_id == step_id)
        async with self.engine.connect() as conn:
            whole = [dict(r) for r in (await conn.execute(
                select(StepAttempt).where(*of_step, StepAttempt.item == -1).order_by(StepAttempt.attempt)
            )).mappings()]
            items = [dict(r) for r in (await conn.execute(
                select(StepAttempt.item, StepAttempt.attempt, StepAttempt.status, StepAttempt.error)
                .where(*of_step, StepAttempt.item >= 0).order_by(StepAttempt.item, StepAttempt.attempt)
            )).mappings()]
        return whole, items

    async def log_tail(self, run_id: str, step_id: str, after: int, tail_chars: int) -> tuple[list[dict], bool]:
        """Log chunks after id `after`, oldest first; on a first read (after=0) only the
        last `tail_chars` characters. Returns (chunks, cut): `cut` says the head was left out."""
        query = select(LogChunk.id, LogChunk.item, LogChunk.attempt, LogChunk.stream, LogChunk.text, LogChunk.at).where(
            LogChunk.run_id == run_id, LogChunk.step_id == step_id, LogChunk.id > after
        ).order_by(LogChunk.id.desc())
        chunks: list[dict] = []
        size, cut = 0, False
        async with self.engine.connect() as conn:
            for row in (await conn.execute(query)).mappings():
                if size >= tail_chars and after == 0:
                    cut = True
                    break
                chunks.append(dict(row))
                size += len(row["text"])
        chunks.reverse()
        return chunks, cut
