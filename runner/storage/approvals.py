"""Approval requests and decisions (the `approval` table).

A decision is written in its own committed transaction, not through the writer's
batches: it must be durable before the waiting step is told about it.
`UPDATE .. WHERE decision IS NULL` makes the first decision win when two people (or
a person and the timeout) decide at once.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update

from .models import UNFINISHED_RUN_STATES, ApprovalKey, ApprovalRow, Decision, Run

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .database import Dialect

_TABLE = ApprovalRow.__table__  # type: ignore[attr-defined]


def _where(key: ApprovalKey) -> tuple:
    return (ApprovalRow.run_id == key.run_id, ApprovalRow.step_id == key.step_id, ApprovalRow.item == key.item)


class ApprovalStore:
    def __init__(self, engine: AsyncEngine, dialect: Dialect):
        self.engine, self.dialect = engine, dialect

    async def get(self, key: ApprovalKey) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(ApprovalRow).where(*_where(key)))).mappings().first()
        return dict(row) if row else None

    async def request(self, key: ApprovalKey, workflow: str, message: str, timeout: float | None) -> dict[str, Any]:
        """Record that `key` waits for a decision; returns the stored row.

        An existing row is kept as it is (its decision, or its deadline when still
        waiting: a restart does not give more time), except one closed without a
        person's decision (`cancelled`), which asks again.
        """
        now = time.time()
        values = {"run_id": key.run_id, "step_id": key.step_id, "item": key.item, "workflow": workflow,
                  "message": message, "requested_at": now, "deadline": now + timeout if timeout else None,
                  "decision": None, "by": None, "comment": None, "decided_at": None}
        async with self.engine.begin() as conn:
            await conn.execute(self.dialect.insert(ApprovalRow).values(**values).on_conflict_do_nothing())
            await conn.execute(update(ApprovalRow).where(*_where(key), ApprovalRow.decision == Decision.CANCELLED.value)
                               .values(**{k: v for k, v in values.items() if k not in key._fields}))
        row = await self.get(key)
        assert row is not None
        return row

    async def decide(self, key: ApprovalKey, decision: str, by: str | None, comment: str | None) -> dict[str, Any] | None:
        """Record a decision if `key` still waits for one (committed on return); None when
        it was not waiting (no row, or already decided)."""
        stmt = (update(ApprovalRow).where(*_where(key), ApprovalRow.decision.is_(None))
                .values(decision=decision, by=by, comment=comment, decided_at=time.time())
                .returning(*_TABLE.columns))
        async with self.engine.begin() as conn:
            row = (await conn.execute(stmt)).mappings().first()
        return dict(row) if row else None

    async def pending(self, *, run_id: str | None = None, step_id: str | None = None,
                      offset: int = 0, limit: int = 50, workflows: list[str] | None = None,
                      ) -> tuple[list[dict[str, Any]], int]:
        """The approvals waiting now (of unfinished runs), oldest first; and how many.
        `workflows`: only those of these workflows (a namespace's)."""
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
        async with self.engine.connect() as conn:
            rows = [dict(r) for r in (await conn.execute(query.offset(offset).limit(limit))).mappings()]
            total = (await conn.execute(count)).scalar_one()
        return rows, total
