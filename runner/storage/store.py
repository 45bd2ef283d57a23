"""The storage interface: the one place Treadle speaks SQL.

`Store` opens a database (SQLite, the embedded default, or PostgreSQL 15+), brings
its schema to the current revision, and offers:

- the engine's records, queued in order and committed in batches by the single
  writer (runner/storage/writer.py): `put_version`, `put_run`, `update_run`,
  `put_step`, `put_log`, `flush`; a run driver's records carry its lease (fenced);
- the reads of runs, attempts, logs and definition versions (below);
- its parts, each in a module of its own: `leases` (leases, claims, live servers,
  cancel requests), `approvals`, `tokens` (and sessions), `audit`, `marks` (trigger
  marks, pause flags, pins), `backfills`, `locks` (shared locks), `deliveries` (signed webhook calls already taken), `run_pages`
  (the run page's queries), `stats` (metrics, statistics), `notifications` (deliveries of notifications);
- `broker`: the event feed, published after each commit.

One SQLAlchemy implementation serves both databases; what differs lives in
runner/storage/database.py.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

from sqlalchemy import String, cast, func, or_, select, text

from .. import DEFAULT_DB
from ..errors import DatabaseError
from .admission import AdmissionStore
from .approvals import ApprovalStore
from .audit import AuditStore
from .backfills import BackfillStore
from .database import SQLite, dialect_for
from .deliveries import DeliveryStore
from .events import Broker
from .feed import Feed
from .leadership import Leadership
from .leases import LeaseStore
from .locks import LockStore
from .marks import MarkStore
from .models import UNFINISHED_RUN_STATES, LogChunk, Run, StepAttempt, WorkflowVersion
from .notifications import NotificationStore
from .run_pages import RunPages
from .schema import ensure_schema
from .stats import StatsStore
from .tokens import TokenStore
from .writer import Writer


class Store:
    """Use `async with Store(url)`.

    Args:
        url: `sqlite:///PATH` or `postgresql://USER@HOST:PORT/DB`.
        broker: the event feed to publish committed records on (a new one by default).
        must_exist: refuse to create a new SQLite file (read-only commands: `runs`,
            `show`), so a typo in `--db` says so instead of showing an empty history.
    Raises:
        DatabaseError: the URL is not understood (at once), or on `open` the
            database cannot be reached, does not exist, or is newer than this Treadle.
    """

    def __init__(self, url: str = DEFAULT_DB, broker: Broker | None = None, *, must_exist: bool = False):
        self.url = url
        self.dialect = dialect_for(url)
        self.must_exist = must_exist
        self.close_timeout: float | None = None  # None: close waits for the database as long as it takes
        self.broker = broker or Broker()
        self.engine = self.dialect.engine()  # connects on first use
        self.writer = Writer(self.engine, self.dialect, self.broker)
        self.approvals = ApprovalStore(self.engine, self.dialect)
        self.tokens = TokenStore(self.engine, self.dialect)
        self.audit = AuditStore(self.engine, self.writer)
        self.marks = MarkStore(self.engine, self.dialect)
        self.backfills = BackfillStore(self.engine, self.dialect)
        self.deliveries = DeliveryStore(self.engine, self.dialect)
        self.run_pages = RunPages(self.engine, self.dialect)
        self.stats = StatsStore(self.engine)
        self.notifications = NotificationStore(self.engine)
        self.leases = LeaseStore(self.engine, self.dialect)
        self.admission = AdmissionStore(self.engine, self.dialect)
        self.locks = LockStore(self.engine, self.dialect)
        self.leadership = Leadership(self.engine, self.dialect)
        self.feed = Feed(self, sender=f"{os.getpid()}:{secrets.token_hex(4)}")
        if self.feed.enabled:
            self.writer.on_commit = self.feed.notify_batch

    @property
    def backend(self) -> str:
        return self.dialect.name

    @property
    def shown_url(self) -> str:
        """The URL without its password."""
        return self.dialect.shown()

    @property
    def write_errors(self) -> int:
        return self.writer.errors

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect, create or upgrade the schema (see runner/storage/schema.py), start the writer."""
        if isinstance(self.dialect, SQLite):
            if self.must_exist and not self.dialect.exists():
                raise DatabaseError(f"no database at {self.dialect.path} (nothing was created); point at yours "
                                    "with --db sqlite:///PATH or TREADLE_DB")
            self.dialect.prepare_location()
        try:
            await ensure_schema(self.engine, self.dialect)
        except DatabaseError:
            await self.engine.dispose()
            raise
        except Exception as exc:
            await self.engine.dispose()
            raise DatabaseError(self.dialect.explain(exc)) from None
        self.writer.start()

    async def close(self) -> None:
        """Commit what is queued (waiting at most `close_timeout` seconds when set) and
        let the database go."""
        await self.feed.stop()
        await self.writer.stop(self.close_timeout)
        await self.engine.dispose()

    async def ping(self) -> float:
        """Seconds one round trip to the database takes (raises when it does not answer)."""
        started = time.perf_counter()
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return time.perf_counter() - started

    # -- writing (through the single writer) -----------------------------------------

    def put_version(self, row: dict[str, Any]) -> None:
        self.writer.put("version", row)

    def put_run(self, row: dict[str, Any], fence: tuple[str, int] | None = None) -> None:
        """Insert a new run (every required column); `fence`: the lease it starts under."""
        self.writer.put("run", row, fence)

    def update_run(self, row: dict[str, Any], fence: tuple[str, int] | None = None) -> None:
        """Update some columns of a run; `row` holds `id` and the columns to set."""
        self.writer.put("run_update", row, fence)

    def put_step(self, row: dict[str, Any], fence: tuple[str, int] | None = None) -> None:
        """Insert or replace one step attempt, keyed by run, step, item and attempt."""
        self.writer.put("step", row, fence)

    def put_log(self, row: dict[str, Any], fence: tuple[str, int] | None = None) -> None:
        self.writer.put("log", row, fence)

    async def flush(self) -> None:
        """Return once everything queued before this call is committed."""
        await self.writer.flush()

    async def changed(self, run_id: str) -> None:
        """Tell the event feed that a run row changed outside the writer (a claim, a
        cancel of a queued run, an admission): pages showing it refresh."""
        run = await self.get_run(run_id)
        if run is not None:
            self.writer.announce([("run_update", run, None)])
            await self.feed.notify({"runs": {run_id: {"run": 1}}})

    # -- reading -----------------------------------------------------------------------

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(Run).where(Run.id == run_id))).mappings().first()
        return dict(row) if row else None

    async def step_attempts(self, run_id: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(StepAttempt).where(StepAttempt.run_id == run_id).order_by(StepAttempt.id))
            return [dict(r) for r in rows.mappings()]

    async def step_states(self, run_id: str) -> list[dict[str, Any]]:
        """One row per step: its latest attempt (attempt 0 = it never started)."""
        best: dict[str, dict[str, Any]] = {}
        for row in await self.step_attempts(run_id):
            if row["item"] == -1:
                old = best.get(row["step_id"])
                if old is None or row["attempt"] >= old["attempt"]:
                    best[row["step_id"]] = row
        return list(best.values())

    async def list_runs(
        self, *, workflow: str | None = None, status: str | None = None,
        parent: str | None = None, offset: int = 0, limit: int = 50, workflows: list[str] | None = None,
        trigger: str | None = None, since: float | None = None, until: float | None = None, search: str | None = None,
        backfill: str | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """Newest first. `workflows`: only runs of these (a namespace's); None: all.
        `since`/`until`: created in [since, until); `search`: text in the run's id or params;
        `backfill`: only the runs that backfill made."""
        query = select(Run)
        count = select(func.count()).select_from(Run)
        for cond in (
            Run.workflow.in_(workflows) if workflows is not None else None,
            Run.workflow == workflow if workflow else None,
            Run.status == status if status else None,
            Run.parent_run_id == parent if parent else None,
            Run.trigger == trigger if trigger else None,
            Run.created_at >= since if since is not None else None,
            Run.created_at < until if until is not None else None,
            _contains(search) if search else None,
            Run.backfill_id == backfill if backfill else None,
        ):
            if cond is not None:
                query, count = query.where(cond), count.where(cond)
        query = query.order_by(Run.created_at.desc(), Run.id.desc()).offset(offset).limit(limit)
        async with self.engine.connect() as conn:
            rows = [dict(r) for r in (await conn.execute(query)).mappings()]
            total = (await conn.execute(count)).scalar_one()
        return rows, total

    async def last_runs(self) -> dict[str, dict[str, Any]]:
        """The newest run of each workflow."""
        newest = select(Run.workflow, func.max(Run.created_at).label("at")).group_by(Run.workflow).subquery()
        query = select(Run).join(newest, (Run.workflow == newest.c.workflow) & (Run.created_at == newest.c.at))
        async with self.engine.connect() as conn:
            return {r["workflow"]: dict(r) for r in (await conn.execute(query)).mappings()}

    async def recent_runs(self, per_workflow: int) -> dict[str, list[dict[str, Any]]]:
        """The newest `per_workflow` runs of each workflow (id, status, created_at), newest
        first: the history strip of the workflows list, in one query."""
        ranked = select(Run.workflow, Run.id, Run.status, Run.created_at, func.row_number().over(
            partition_by=Run.workflow, order_by=(Run.created_at.desc(), Run.id.desc())).label("n")).subquery()
        query = select(ranked).where(ranked.c.n <= per_workflow).order_by(ranked.c.workflow, ranked.c.n)
        out: dict[str, list[dict[str, Any]]] = {}
        async with self.engine.connect() as conn:
            for r in (await conn.execute(query)).mappings():
                out.setdefault(r["workflow"], []).append({"id": r["id"], "status": r["status"],
                                                          "created_at": r["created_at"]})
        return out

    async def logs(self, run_id: str, step_id: str, after_id: int = 0) -> list[dict[str, Any]]:
        query = (
            select(LogChunk)
            .where(LogChunk.run_id == run_id, LogChunk.step_id == step_id, LogChunk.id > after_id)
            .order_by(LogChunk.id)
        )
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]

    async def get_version(self, version: str, workflow: str) -> dict[str, Any] | None:
        query = select(WorkflowVersion).where(WorkflowVersion.version == version, WorkflowVersion.workflow == workflow)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return dict(row) if row else None

    async def version_paths(self, workflow: str) -> list[str]:
        """Every file path a version of `workflow` was recorded from (its namespaces, even
        once the file is gone)."""
        query = select(WorkflowVersion.path).where(WorkflowVersion.workflow == workflow).distinct()
        async with self.engine.connect() as conn:
            return sorted(path for (path,) in await conn.execute(query))

    async def versions(self, workflow: str, *, offset: int = 0, limit: int = 50) -> tuple[list[dict[str, Any]], int]:
        """The texts of a workflow seen so far, newest first (without their source)."""
        cols = [c for c in WorkflowVersion.__table__.columns if c.name != "source"]
        where = WorkflowVersion.workflow == workflow
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(*cols).where(where).order_by(WorkflowVersion.created_at.desc())
                                      .offset(offset).limit(limit))
            total = (await conn.execute(select(func.count()).select_from(WorkflowVersion).where(where))).scalar_one()
            return [dict(r) for r in rows.mappings()], total

    async def counts(self, since: float) -> dict[str, int]:
        async with self.engine.connect() as conn:
            active = (await conn.execute(
                select(func.count()).select_from(Run).where(Run.status.in_(UNFINISHED_RUN_STATES))
            )).scalar_one()
            rows = await conn.execute(
                select(Run.status, func.count()).where(Run.created_at >= since).group_by(Run.status)
            )
            recent = {status: n for status, n in rows}
        return {"active": active, **{f"last_24h_{k}": v for k, v in recent.items()}}

    async def unfinished_runs(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(Run).where(Run.status.in_(UNFINISHED_RUN_STATES)))
            return [dict(r) for r in rows.mappings()]


def _contains(search: str) -> Any:
    """Runs whose id or params (as stored JSON text) contain `search`, any case; `%` and
    `_` in it are plain characters, not LIKE wildcards."""
    pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return or_(Run.id.ilike(pattern, escape="\\"), cast(Run.params, String).ilike(pattern, escape="\\"))


def now() -> float:
    return time.time()
