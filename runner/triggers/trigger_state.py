"""Trigger state that must survive restarts: paused workflows and trigger marks.

Both are written straight to the database in their own committed transaction (not
through the store's batching writer): a mark must be durable *before* the run it
leads to starts, so that a crash in between loses at most that one start and a
restart never starts it twice. A mark moves by compare-and-set, so two servers on
one database never both fire the same schedule slot or file.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.dialects.sqlite import insert

from ..storage.models import TriggerMark, WorkflowState

if TYPE_CHECKING:
    from ..storage.store import Store


class TriggerState:
    def __init__(self, store: Store):
        self.store = store
        self._paused: dict[str, dict[str, Any]] | None = None  # cache; this process writes all changes

    # -- marks -------------------------------------------------------------------

    async def mark(self, workflow: str, key: str) -> str | None:
        async with self.store.engine.connect() as conn:
            row = (await conn.execute(select(TriggerMark.value).where(
                TriggerMark.workflow == workflow, TriggerMark.key == key))).first()
        return row[0] if row else None

    async def marks(self, workflow: str, prefix: str = "") -> dict[str, str]:
        """Every mark of `workflow` whose key starts with `prefix`."""
        query = select(TriggerMark.key, TriggerMark.value).where(TriggerMark.workflow == workflow)
        if prefix:
            query = query.where(TriggerMark.key.startswith(prefix, autoescape=True))
        async with self.store.engine.connect() as conn:
            return {k: v for k, v in (await conn.execute(query)).all()}

    async def advance_mark(self, workflow: str, key: str, old: str | None, new: str) -> bool:
        """Set the mark to `new` if it is still `old` (None: there is no mark yet).
        True when this call moved it (committed on return): the caller may fire."""
        values = {"workflow": workflow, "key": key, "value": new, "at": time.time()}
        async with self.store.engine.begin() as conn:
            if old is None:
                result = await conn.execute(insert(TriggerMark).values(**values).on_conflict_do_nothing())
            else:
                result = await conn.execute(update(TriggerMark).where(
                    TriggerMark.workflow == workflow, TriggerMark.key == key, TriggerMark.value == old,
                ).values(value=new, at=values["at"]))
            return result.rowcount == 1

    # -- pause -------------------------------------------------------------------

    async def paused(self) -> dict[str, dict[str, Any]]:
        """Paused workflows: name -> {changed_at, changed_by}."""
        if self._paused is None:
            async with self.store.engine.connect() as conn:
                rows = (await conn.execute(select(WorkflowState).where(WorkflowState.paused.is_(True)))).mappings()
                self._paused = {r["workflow"]: {"changed_at": r["changed_at"], "changed_by": r["changed_by"]} for r in rows}
        return self._paused

    async def is_paused(self, workflow: str) -> bool:
        return workflow in await self.paused()

    async def set_paused(self, workflow: str, paused: bool, by: str | None = None) -> bool:
        """Pause or resume; False when it already was in that state."""
        current = await self.paused()
        if (workflow in current) == paused:
            return False
        now = time.time()
        values = {"workflow": workflow, "paused": paused, "changed_at": now, "changed_by": by}
        stmt = insert(WorkflowState).values(**values).on_conflict_do_update(
            index_elements=["workflow"], set_={"paused": paused, "changed_at": now, "changed_by": by})
        async with self.store.engine.begin() as conn:
            await conn.execute(stmt)
        if paused:
            current[workflow] = {"changed_at": now, "changed_by": by}
        else:
            current.pop(workflow, None)
        return True
