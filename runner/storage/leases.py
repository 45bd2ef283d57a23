"""Leases on runs, live servers and cancel requests: what lets several servers share
one database (docs/deployment.md, "Running several servers").

- A run's owner holds a lease until a time on the *database's* clock, and renews it
  every second on a path of its own (never queued behind data). A run whose lease
  ran out is claimed by another server; each claim bumps the run's `lease_epoch`,
  and the writer commits a driver's records only while owner and epoch are still
  its own (runner/storage/writer.py), so a stalled driver can never overwrite what
  the new owner wrote.
- Claims take runs in small batches with `FOR UPDATE SKIP LOCKED` on PostgreSQL, so
  the surviving servers share the runs of a dead one instead of one taking all.
- A cancel asked on any server is a column of the run; the owner sees it with its
  next renewal (and at once through the event feed on PostgreSQL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, literal_column, or_, select, update

from .models import UNFINISHED_RUN_STATES, Run, RunStatus, Server

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .database import Dialect

DRIVEN = [RunStatus.RUNNING.value, RunStatus.WAITING.value]  # queued runs have no driver on purpose


class LeaseStore:
    def __init__(self, engine: AsyncEngine, dialect: Dialect):
        self.engine, self.dialect = engine, dialect

    def _now(self) -> Any:
        return literal_column(self.dialect.now_sql)

    async def now(self) -> float:
        """The database's clock (epoch seconds): every server compares leases to it."""
        async with self.engine.connect() as conn:
            return float((await conn.execute(select(self._now()))).scalar_one())

    async def renew(self, owner: str, seconds: float, run_ids: list[str]) -> list[dict[str, Any]]:
        """Extend the leases `owner` holds on these runs (those it drives: a run it gave
        up must run out, so that another server may claim it) and beat its server's
        heart; returns the runs still held, with their epoch and any cancel asked (a run
        missing from the answer is no longer this owner's: stop driving it)."""
        now = self._now()
        rows: list[dict[str, Any]] = []
        async with self.engine.begin() as conn:
            if run_ids:
                renew = (update(Run).where(Run.owner == owner, Run.id.in_(run_ids), Run.status.in_(DRIVEN))
                         .values(lease_until=now + seconds)
                         .returning(Run.id, Run.lease_epoch, Run.cancel_requested_at, Run.cancel_requested_by,
                                    Run.cancel_compensate))
                rows = [dict(r) for r in (await conn.execute(renew)).mappings()]
            await conn.execute(update(Server).where(Server.id == owner).values(heartbeat_at=now))
        return rows

    async def claim_stale(self, owner: str, seconds: float, *, workflow: str | None = None,
                          dead_owners: list[str] | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Take over up to `limit` driven runs whose lease ran out (or whose owner is known
        to be dead); each gets a new epoch. Returns them (every column)."""
        now = self._now()
        stale = or_(Run.lease_until.is_(None), Run.lease_until < now)
        if dead_owners:
            stale = or_(stale, Run.owner.in_(dead_owners))
        conds = [Run.status.in_(DRIVEN), stale, *([Run.workflow == workflow] if workflow else [])]
        chosen = select(Run.id).where(*conds).order_by(Run.created_at).limit(limit)
        if self.dialect.name == "postgresql":
            chosen = chosen.with_for_update(skip_locked=True)  # survivors share a dead server's runs
        stmt = (update(Run).where(Run.id.in_(chosen.scalar_subquery()))
                .values(owner=owner, lease_until=now + seconds, lease_epoch=Run.lease_epoch + 1)
                .returning(*Run.__table__.columns))
        async with self.engine.begin() as conn:
            return [dict(r) for r in (await conn.execute(stmt)).mappings()]

    async def release(self, owner: str, run_id: str, epoch: int) -> None:
        """Give a run up (shutdown): it stays unfinished with no lease, for anyone to resume."""
        async with self.engine.begin() as conn:
            await conn.execute(update(Run).where(Run.id == run_id, Run.owner == owner, Run.lease_epoch == epoch)
                               .values(owner=None, lease_until=None))

    async def request_cancel(self, run_id: str, by: str, compensate: bool) -> bool:
        """Ask the run's driver, wherever it is, to cancel it; False when the run is not
        driven (finished, queued, or unknown)."""
        stmt = (update(Run).where(Run.id == run_id, Run.status.in_(DRIVEN))
                .values(cancel_requested_at=self._now(), cancel_requested_by=by, cancel_compensate=compensate)
                .returning(Run.id))
        async with self.engine.begin() as conn:
            return (await conn.execute(stmt)).first() is not None

    # -- servers -----------------------------------------------------------------------

    async def register(self, row: dict[str, Any]) -> None:
        """Record this process as a live server (heartbeat now)."""
        now = self._now()
        stmt = self.dialect.insert(Server).values(**row, started_at=now, heartbeat_at=now, stopped_at=None)
        stmt = stmt.on_conflict_do_update(index_elements=["id"], set_={
            "heartbeat_at": now, "stopped_at": None, "role": row["role"]})
        async with self.engine.begin() as conn:
            await conn.execute(stmt)

    async def stopped(self, server_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(Server).where(Server.id == server_id)
                               .values(stopped_at=self._now(), leader_since=None))

    async def set_leader(self, server_id: str, leader: bool) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(Server).where(Server.id == server_id)
                               .values(leader_since=self._now() if leader else None))

    async def servers(self, within: float) -> list[dict[str, Any]]:
        """Servers whose heartbeat is younger than `within` seconds, each with `leases`
        (the unfinished runs it drives)."""
        leases = (select(Run.owner, func.count().label("n")).where(Run.status.in_(UNFINISHED_RUN_STATES))
                  .group_by(Run.owner).subquery())
        query = (select(Server, func.coalesce(leases.c.n, 0).label("leases"))
                 .outerjoin(leases, leases.c.owner == Server.id)
                 .where(Server.heartbeat_at > self._now() - within, Server.stopped_at.is_(None))
                 .order_by(Server.started_at))
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]

    async def known(self, ids: list[str], within: float) -> list[dict[str, Any]]:
        """The servers of this database among `ids`, each with `alive` (a heartbeat in
        the last `within` seconds, and not stopped)."""
        alive = and_(Server.heartbeat_at > self._now() - within, Server.stopped_at.is_(None)).label("alive")
        query = select(Server.id, Server.host, Server.pid, Server.pid_ns, alive).where(Server.id.in_(ids))
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]

    async def same_machine(self, host: str, pid_ns: str | None) -> list[dict[str, Any]]:
        """Servers recorded on this host and pid namespace that hold runs (to spot the
        dead among them by pid, without waiting for their leases to run out)."""
        query = (select(Server.id, Server.pid).where(Server.host == host, Server.pid_ns == pid_ns)
                 .where(Server.id.in_(select(Run.owner).where(Run.status.in_(DRIVEN)))))
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]

    async def held(self, owner: str, run_id: str, epoch: int) -> bool:
        query = select(Run.id).where(and_(Run.id == run_id, Run.owner == owner, Run.lease_epoch == epoch))
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).first() is not None
