"""The event feed across servers (PostgreSQL): LISTEN/NOTIFY, one small notification
per committed batch.

Each batch the writer commits sends, in its own transaction (so it is delivered only
if the batch commits), a notification naming the runs it touched: the run row, the
steps whose attempts changed, the steps whose log grew. Every other server listens on
a connection of its own and, for the runs someone watches there (an open run page, an
API event stream), reads what changed from the database and publishes it on its local
broker, exactly as if it had written it. Pages on server B therefore follow a run
driven by server A live. Payloads hold ids, never rows (NOTIFY carries at most 8000
bytes): a batch touching too many runs says only "runs changed".

A cancel asked on one server is announced the same way, so the server driving the
run stops it at once (the lease renewal would see it within a second anyway).

On SQLite (one machine) there is no feed: a `treadle run` in another process is not
streamed to the dashboard (its pages show it on the next refresh).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import text

from .models import RunStatus

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from .database import Dialect
    from .events import Broker


class RunReads(Protocol):
    """The reads the feed makes to republish a change (the Store has them)."""

    engine: AsyncEngine
    dialect: Dialect
    broker: Broker

    async def get_run(self, run_id: str) -> dict[str, Any] | None: ...
    async def step_attempts(self, run_id: str) -> list[dict[str, Any]]: ...
    async def logs(self, run_id: str, step_id: str, after_id: int = 0) -> list[dict[str, Any]]: ...

log = logging.getLogger("treadle.feed")
CHANNEL = "treadle_feed"
MAX_PAYLOAD = 7_900  # NOTIFY's limit is 8,000 bytes
FINISHED = {s.value for s in RunStatus if s.finished}


def payload(sender: str, records: list[tuple[str, Any, Any]]) -> str:
    """The notification for a committed batch: who wrote it and which runs it touched."""
    runs: dict[str, dict[str, Any]] = {}
    for kind, row, _fence in records:
        if kind in ("run", "run_update"):
            runs.setdefault(row["id"], {})["run"] = 1
        elif kind == "step":
            runs.setdefault(row["run_id"], {}).setdefault("steps", set()).add(row["step_id"])
        elif kind == "log":
            runs.setdefault(row["run_id"], {}).setdefault("logs", set()).add(row["step_id"])
    body = {"from": sender, "runs": {rid: {k: sorted(v) if isinstance(v, set) else v for k, v in what.items()}
                                     for rid, what in runs.items()}}
    text_ = json.dumps(body, separators=(",", ":"))
    if len(text_) <= MAX_PAYLOAD:
        return text_
    return json.dumps({"from": sender, "many": True})


class Feed:
    """Sends a notification per committed batch, and turns other servers' into local events."""

    def __init__(self, store: RunReads, sender: str):
        self.store, self.sender = store, sender
        self.on_cancel: Callable[[str, bool], None] | None = None
        self._conn: Any = None
        self._task: asyncio.Task | None = None
        self._pending: asyncio.Queue[str] = asyncio.Queue()
        self._log_cursor: dict[tuple[str, str], int] = {}

    @property
    def enabled(self) -> bool:
        return self.store.dialect.name == "postgresql"

    async def notify_batch(self, conn: AsyncConnection, records: list[tuple[str, Any, Any]]) -> None:
        """The writer's commit hook: runs in the batch's own transaction."""
        if records and any(kind in ("run", "run_update", "step", "log") for kind, _, _ in records):
            await conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": payload(self.sender, records)})

    async def notify(self, body: dict[str, Any]) -> None:
        """A notification of its own (a cancel request, a change made outside the writer)."""
        if not self.enabled:
            return
        async with self.store.engine.begin() as conn:
            await conn.execute(text("SELECT pg_notify(:c, :p)"),
                               {"c": CHANNEL, "p": json.dumps({"from": self.sender, **body})})

    async def start(self) -> None:
        if not self.enabled or self._task is not None:
            return
        self._task = asyncio.create_task(self._listen_forever(), name="treadle-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self._close()

    async def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    async def _listen_forever(self) -> None:
        import asyncpg

        url = self.store.dialect.url
        while True:
            try:
                # a connection of its own, outside the pool: LISTEN belongs to one session
                self._conn = await asyncpg.connect(url, timeout=10)
                await self._conn.add_listener(CHANNEL, lambda *args: self._pending.put_nowait(args[-1]))
                while not self._conn.is_closed():
                    try:
                        body = await asyncio.wait_for(self._pending.get(), 5)
                    except TimeoutError:
                        continue
                    await self._handle(body)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: listen again when it is back
                log.warning("event feed interrupted (%s); listening again in 1s", str(exc).splitlines()[0][:200])
            await self._close()
            await asyncio.sleep(1)

    async def _handle(self, raw: str) -> None:
        try:
            body = json.loads(raw)
        except ValueError:
            return
        if body.get("from") == self.sender:
            return  # this server published it already
        if "cancel" in body:
            if self.on_cancel is not None:
                self.on_cancel(body["cancel"], bool(body.get("compensate")))
            return
        broker = self.store.broker
        if body.get("many"):
            broker.publish("runs", {"type": "runs", "remote": True})
            return
        try:
            for run_id, what in body.get("runs", {}).items():
                await self._republish(run_id, what)
        except Exception as exc:  # a page misses a refresh; the next change brings it
            log.warning("event feed: reading a change failed: %s", exc)

    async def _republish(self, run_id: str, what: dict[str, Any]) -> None:
        broker, store = self.store.broker, self.store
        topic = f"run:{run_id}"
        watched = broker.has_subscribers(topic)
        if what.get("run") and (watched or broker.has_subscribers("runs")):
            run = await store.get_run(run_id)
            if run is not None:
                event = {"type": "run", **run}
                broker.publish(topic, event)
                broker.publish("runs", event)
                if run["status"] in FINISHED:
                    for key in [k for k in self._log_cursor if k[0] == run_id]:
                        del self._log_cursor[key]
        if not watched:
            return
        if what.get("steps"):
            wanted = set(what["steps"])
            for row in await store.step_attempts(run_id):
                if row["step_id"] in wanted:
                    broker.publish(topic, {"type": "step", **{k: v for k, v in row.items() if k != "id"}})
        for step_id in what.get("logs", []):
            cursor = self._log_cursor.get((run_id, step_id), 0)
            for chunk in await store.logs(run_id, step_id, after_id=cursor):
                cursor = chunk["id"]
                broker.publish(topic, {"type": "log", **{k: v for k, v in chunk.items() if k != "id"}})
            self._log_cursor[(run_id, step_id)] = cursor
