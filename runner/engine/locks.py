"""Shared locks for runs and steps (`locks:`): waiting in line, and letting go.

The decision lives in the database (runner/storage/locks.py), so a lock holds across
workflows and servers. Here a run (or a step) asks again every POLL_SECONDS until it
holds every lock it names, sooner when a run of this process lets a lock go; while it
waits, the run's `reason` says "waiting for lock warehouse (held by run X)". Locks are
taken in name order, so two runs naming the same locks never hold one each forever.

A database transaction is never cancelled halfway: a take or a release in flight when
its run is cancelled is let finish (see docs/architecture.md, invariants).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..dsl.definition import LockSpec
    from ..storage.store import Store

POLL_SECONDS = 0.2  # how often a waiter asks again (other servers' releases are seen this late at most)


async def _to_the_end(coro: Any) -> Any:
    """Await `coro` in a task that a cancel of the caller does not interrupt (it is let
    finish, then the cancel goes on)."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


class SharedLocks:
    """One per engine."""

    def __init__(self, store: Store, owner: str):
        self.store, self.owner = store, owner
        self._changed = asyncio.Event()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def take(self, run_id: str, epoch: int, step_id: str, locks: Sequence[LockSpec],
                   waiting: Callable[[str | None], None]) -> None:
        """Return once the run (its step `step_id`; "" for the run itself) holds every
        lock; `waiting` is told what it waits for, then None when it holds them all."""
        shown: str | None = None
        await self.store.flush()  # the run's row (and lease) is committed before it is looked at
        try:
            for lock in sorted(locks, key=lambda spec: spec.name):
                while True:
                    held, holders = await _to_the_end(self.store.locks.try_take(
                        lock.name, lock.limit, run_id, step_id, self.owner, epoch))
                    if held:
                        break
                    if holders is not None:  # None: fenced; the lease keeper stops the run
                        by = f"held by run {', '.join(holders)}" if holders else "runs before it in line"
                        message = f"waiting for lock {lock.name} ({by})"
                        if step_id:
                            message = f"step {step_id}: {message}"
                        if message != shown:
                            waiting(message)
                            shown = message
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), POLL_SECONDS)
        finally:  # held, or given up (cancelled): the run no longer waits for it
            if shown is not None:
                waiting(None)

    async def release(self, run_id: str, epoch: int, step_id: str | None = None) -> None:
        """Let go of what the run (its step) holds or waits for; wakes this process's waiters."""
        await _to_the_end(self.store.locks.release(run_id, epoch, step_id))
        self._wake()
