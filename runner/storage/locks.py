"""Shared locks (`locks:` in a definition), decided in the database so that they hold
across workflows and servers.

A claim is a `shared_lock` row per (lock, run, step): waiting, or held. Whether a
run may take a lock is decided in one transaction that first writes the lock's row
of `workflow_lock` (as admission does): every server deciding for that lock takes
its turn. Claims count only while their run is driven under a live lease by the
driver that made them (status running or waiting, `lease_until` ahead on the
database clock, same epoch): when a run ends or its server dies, what it held is
free at once, with no cleanup needed for correctness (rows are deleted as a
courtesy). Waiters are served in the order they asked (`id`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, literal_column, select, update

from .admission import DRIVEN
from .models import Run, SharedLock, WorkflowLock

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .database import Dialect


class LockStore:
    def __init__(self, engine: AsyncEngine, dialect: Dialect):
        self.engine, self.dialect = engine, dialect

    def _live(self) -> Any:
        now = literal_column(self.dialect.now_sql)
        return and_(Run.status.in_(DRIVEN), Run.lease_until > now, Run.lease_epoch == SharedLock.epoch)

    async def try_take(self, name: str, limit: int, run_id: str, step_id: str, owner: str,
                       epoch: int) -> tuple[bool, list[str] | None]:
        """Take `name` for (run, step) when fewer than `limit` live claims hold it and no
        live waiter asked before; else keep (or take) a place in line.

        Returns (True, None) when held; (False, ids of the runs holding it) when not;
        (False, None) when the run is no longer driven by `owner` at `epoch` (fenced).
        """
        now = literal_column(self.dialect.now_sql)
        turn = self.dialect.insert(WorkflowLock).values(name=f"lock:{name}", taken=1)
        turn = turn.on_conflict_do_update(index_elements=["name"], set_={"taken": WorkflowLock.taken + 1})
        async with self.engine.begin() as conn:
            await conn.execute(turn)  # serialises every decision about this lock
            driven = select(Run.id).where(Run.id == run_id, Run.owner == owner, Run.lease_epoch == epoch,
                                          Run.status.in_(DRIVEN))
            if (await conn.execute(driven)).first() is None:
                return False, None
            mine = (SharedLock.name == name) & (SharedLock.run_id == run_id) & (SharedLock.step_id == step_id)
            # a claim left by an earlier driver of this run goes to the back of the line
            await conn.execute(delete(SharedLock).where(mine, SharedLock.epoch != epoch))
            await conn.execute(self.dialect.insert(SharedLock).values(
                name=name, run_id=run_id, step_id=step_id, epoch=epoch, held=False, since=now,
            ).on_conflict_do_nothing(index_elements=["name", "run_id", "step_id"]))
            claims = (await conn.execute(
                select(SharedLock.id, SharedLock.run_id, SharedLock.step_id, SharedLock.held)
                .join(Run, Run.id == SharedLock.run_id)
                .where(SharedLock.name == name, self._live()).order_by(SharedLock.id))).all()
            me = next((c for c in claims if c.run_id == run_id and c.step_id == step_id), None)
            if me is None:  # its lease ran out meanwhile: the lease keeper will say so
                return False, None
            if me.held:
                return True, None
            holders = [c for c in claims if c.held]
            ahead = [c for c in claims if not c.held and c.id < me.id]
            if len(holders) + len(ahead) < limit:
                await conn.execute(update(SharedLock).where(SharedLock.id == me.id).values(held=True, since=now))
                return True, None
            return False, list(dict.fromkeys(c.run_id for c in holders))

    async def release(self, run_id: str, epoch: int, step_id: str | None = None) -> None:
        """Let go of the claims (held or waiting) a run's driver made at `epoch` (of one
        of its steps); a later driver's claims stay."""
        stmt = delete(SharedLock).where(SharedLock.run_id == run_id, SharedLock.epoch == epoch)
        if step_id is not None:
            stmt = stmt.where(SharedLock.step_id == step_id)
        async with self.engine.begin() as conn:
            await conn.execute(stmt)

    async def holders(self, name: str) -> list[dict[str, Any]]:
        """The live claims of `name`, held first then waiting, in order."""
        query = (select(SharedLock.run_id, SharedLock.step_id, SharedLock.held, SharedLock.since)
                 .join(Run, Run.id == SharedLock.run_id).where(SharedLock.name == name, self._live())
                 .order_by(SharedLock.held.desc(), SharedLock.id))
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]
