"""Trigger marks, pause flags and pins (the `trigger_mark` and `workflow_state` tables).

Both are written in their own committed transaction, not through the writer: a mark
must be durable *before* the run it leads to starts. A mark moves by compare-and-set,
so two servers on one database never both fire the same schedule slot or file.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from .models import TriggerMark, WorkflowState

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .database import Dialect


class MarkStore:
    def __init__(self, engine: AsyncEngine, dialect: Dialect):
        self.engine, self.dialect = engine, dialect

    async def get(self, workflow: str, key: str) -> str | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(TriggerMark.value).where(
                TriggerMark.workflow == workflow, TriggerMark.key == key))).first()
        return row[0] if row else None

    async def with_prefix(self, workflow: str, prefix: str = "") -> dict[str, str]:
        """Every mark of `workflow` whose key starts with `prefix`."""
        query = select(TriggerMark.key, TriggerMark.value).where(TriggerMark.workflow == workflow)
        if prefix:
            query = query.where(TriggerMark.key.startswith(prefix, autoescape=True))
        async with self.engine.connect() as conn:
            return {k: v for k, v in (await conn.execute(query)).all()}

    async def advance(self, workflow: str, key: str, old: str | None, new: str) -> bool:
        """Set the mark to `new` if it is still `old` (None: there is no mark yet).
        True when this call moved it (committed on return)."""
        now = time.time()
        async with self.engine.begin() as conn:
            if old is None:
                stmt = self.dialect.insert(TriggerMark).values(workflow=workflow, key=key, value=new, at=now)
                result = await conn.execute(stmt.on_conflict_do_nothing())
            else:
                result = await conn.execute(update(TriggerMark).where(
                    TriggerMark.workflow == workflow, TriggerMark.key == key, TriggerMark.value == old,
                ).values(value=new, at=now))
            return result.rowcount == 1

    async def paused(self) -> dict[str, dict[str, Any]]:
        """Paused workflows: name -> {changed_at, changed_by}."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(WorkflowState).where(WorkflowState.paused.is_(True)))).mappings()
            return {r["workflow"]: {"changed_at": r["changed_at"], "changed_by": r["changed_by"]} for r in rows}

    async def set_paused(self, workflow: str, paused: bool, by: str | None, now: float) -> bool:
        """Pause or resume; False when it already was in that state (decided in the
        database, so two servers agree)."""
        async with self.engine.begin() as conn:
            current = (await conn.execute(select(WorkflowState.paused).where(
                WorkflowState.workflow == workflow))).first()
            if bool(current and current[0]) == paused:
                return False
            stmt = self.dialect.insert(WorkflowState).values(
                workflow=workflow, paused=paused, changed_at=now, changed_by=by)
            await conn.execute(stmt.on_conflict_do_update(
                index_elements=["workflow"], set_={"paused": paused, "changed_at": now, "changed_by": by}))
        return True

    async def pins(self) -> dict[str, dict[str, Any]]:
        """Pinned workflows: name -> {version, at, by, reason}."""
        query = select(WorkflowState).where(WorkflowState.pinned_version.is_not(None))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings()
            return {r["workflow"]: {"version": r["pinned_version"], "at": r["pinned_at"], "by": r["pinned_by"],
                                    "reason": r["pinned_reason"]} for r in rows}

    async def set_pin(self, workflow: str, version: str | None, by: str | None, reason: str | None,
                      now: float) -> bool:
        """Pin `workflow` to `version` (None: unpin); False when it already was so."""
        values = {"pinned_version": version, "pinned_at": now if version else None,
                  "pinned_by": by if version else None, "pinned_reason": reason if version else None}
        async with self.engine.begin() as conn:
            current = (await conn.execute(select(WorkflowState.pinned_version).where(
                WorkflowState.workflow == workflow))).first()
            if (current[0] if current else None) == version:
                return False
            stmt = self.dialect.insert(WorkflowState).values(workflow=workflow, paused=False, changed_at=now,
                                                            **values)
            await conn.execute(stmt.on_conflict_do_update(index_elements=["workflow"], set_=values))
        return True
