"""Approval steps' requests and decisions, kept in their own table.

A waiting approval is a row of `approval` keyed by (run, step, foreach item) with no
decision yet. A decision is written straight to the database, in its own committed
transaction, *before* the waiting step is told about it: a crash a moment later
cannot lose it, and the resumed step finds it there and uses it (it never asks
twice). `UPDATE .. WHERE decision IS NULL` makes the first decision win when two
people (or a person and the timeout) decide at once.

Why a table and not the step's output row: attempt rows go through the store's
writer queue (a decision would only be durable once the batch commits) and are
replaced whole when the attempt ends or is interrupted; a resumed step runs as a
new attempt, so the decision would have to be fished out of an older one. Here the
key has no attempt, the row is written once and read by any attempt, and the API,
the dashboard and another process all read the same truth.

The waiting step is woken at once by `notify` in this process and, for a decision
written by another process, by polling the row every `POLL_SECONDS`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..storage.models import ApprovalKey as Key
from ..storage.models import Decision

if TYPE_CHECKING:
    from ..storage.store import Store

POLL_SECONDS = 1.0
APPROVED, REJECTED = Decision.APPROVED.value, Decision.REJECTED.value
TIMED_OUT, CANCELLED = Decision.TIMED_OUT.value, Decision.CANCELLED.value


class Approvals:
    """Requests, decisions and the in-process wake-ups of waiting approval steps."""

    def __init__(self, store: Store, on_waiting: Callable[[str, bool], None] = lambda run_id, waiting: None):
        self.store = store
        self.on_waiting = on_waiting  # the run's driver records `waiting` / `running` (fenced)
        self._events: dict[Key, asyncio.Event] = {}
        self._waiting_runs: dict[str, int] = {}  # run id -> approvals of it waiting in this process

    async def get(self, key: Key) -> dict[str, Any] | None:
        return await self.store.approvals.get(key)

    async def request(self, key: Key, workflow: str, message: str, timeout: float | None) -> dict[str, Any]:
        """Record that `key` waits for a decision; returns the stored row (see
        ApprovalStore.request: a restart never extends a deadline or asks twice)."""
        return await self.store.approvals.request(key, workflow, message, timeout)

    async def decide(self, key: Key, decision: str, by: str | None, comment: str | None) -> dict[str, Any] | None:
        """Record a decision if `key` still waits for one (committed before returning),
        then wake the waiting step. None when it was not waiting (no row, or decided)."""
        row = await self.store.approvals.decide(key, decision, by, comment)
        if row is not None:
            self.notify(key)
        return row

    def notify(self, key: Key) -> None:
        event = self._events.get(key)
        if event is not None:
            event.set()

    async def wait(self, key: Key, deadline: float | None, *,
                   suspended: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        """Wait until `key` has a decision (or its deadline passes: `timed_out`); the run
        shows `waiting` meanwhile. When the wait is cancelled because Treadle stops
        (`suspended()`), the run stays `waiting` for the next start to resume."""
        event = self._events.setdefault(key, asyncio.Event())
        self._enter(key.run_id)
        try:
            while True:
                event.clear()  # before reading: a decision committed after the read sets it again
                row = await self.get(key)
                if row is not None and row["decision"] is not None:
                    return row
                now = time.time()
                if deadline is not None and now >= deadline:
                    return await self.decide(key, TIMED_OUT, "treadle", None) or await self.get(key) or {}
                pause = POLL_SECONDS if deadline is None else min(POLL_SECONDS, deadline - now)
                try:
                    await asyncio.wait_for(event.wait(), pause)
                except TimeoutError:
                    pass
        finally:
            self._events.pop(key, None)
            self._leave(key.run_id, back_to_running=not suspended())

    def waiting(self, run_id: str) -> int:
        """How many approvals of this run wait in this process now."""
        return self._waiting_runs.get(run_id, 0)

    def _enter(self, run_id: str) -> None:
        self._waiting_runs[run_id] = self._waiting_runs.get(run_id, 0) + 1
        if self._waiting_runs[run_id] == 1:
            self.on_waiting(run_id, True)

    def _leave(self, run_id: str, back_to_running: bool) -> None:
        left = self._waiting_runs.get(run_id, 1) - 1
        if left > 0:
            self._waiting_runs[run_id] = left
            return
        self._waiting_runs.pop(run_id, None)
        if back_to_running:
            self.on_waiting(run_id, False)

    async def pending(self, *, run_id: str | None = None, step_id: str | None = None,
                      offset: int = 0, limit: int = 50, workflows: list[str] | None = None,
                      ) -> tuple[list[dict[str, Any]], int]:
        """The approvals waiting now (of unfinished runs), oldest first; and how many.
        `workflows`: only those of these workflows (a namespace's)."""
        return await self.store.approvals.pending(run_id=run_id, step_id=step_id, offset=offset, limit=limit,
                                                  workflows=workflows)
