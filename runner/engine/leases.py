"""Keeping this process's leases, and letting go of runs it no longer holds.

Every HEARTBEAT_SECONDS, on a path of its own (a short transaction, never queued
behind the writer's batches), the keeper extends the leases of every run this
process drives, on the database's clock, and beats its server's heart. The answer
says which runs are still held:

- a run missing from it (another server claimed it: this process stalled, or its
  database connection was cut longer than a lease) is let go at once: its running
  steps are stopped and nothing more is written for it;
- a run with a cancel asked on another server is cancelled here;
- when renewals fail for most of a lease (the database is unreachable), every run
  is let go before another server may claim it; they resume wherever a server
  still reaches the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Protocol

from .. import __version__

if TYPE_CHECKING:
    from ..storage.store import Store
    from .run import RunExecution


class LeaseHolder(Protocol):
    """What the keeper needs of the engine (the Engine is one)."""

    owner: str
    store: Store
    runs: dict[str, RunExecution]

log = logging.getLogger("treadle.leases")

LEASE_SECONDS = 5.0  # a run whose lease is older than this has nobody working on it
HEARTBEAT_SECONDS = 1.0
GIVE_UP_AFTER = LEASE_SECONDS * 0.7  # no renewal for this long: let every run go before others may claim


def pid_namespace() -> str | None:
    """This process's pid namespace: a pid identifies a process only within it."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class LeaseKeeper:
    def __init__(self, engine: LeaseHolder, role: str):
        self.engine, self.role = engine, role
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self._renewing = asyncio.Lock()
        self._last_renewal = time.monotonic()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._stop.clear()
            self._task = asyncio.create_task(self._loop(), name="treadle-leases")

    async def stop(self) -> None:
        """Stop after the renewal in progress, if any (a renewal cancelled halfway could
        leave its transaction, and the row locks it holds, open on the database)."""
        if self._task is not None:
            self._stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), LEASE_SECONDS)
            except (TimeoutError, Exception):
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
            self._task = None
            with contextlib.suppress(Exception):
                await self.engine.store.leases.stopped(self.engine.owner)

    async def register(self) -> None:
        await self.engine.store.leases.register({
            "id": self.engine.owner, "host": socket.gethostname(), "pid": os.getpid(),
            "pid_ns": pid_namespace(), "role": self.role, "version": __version__})

    async def _loop(self) -> None:
        try:
            await self.register()
        except Exception as exc:  # the renewals below retry; registration is for /health
            log.warning("could not register this server: %s", exc)
        self._last_renewal = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), HEARTBEAT_SECONDS)
            if not self._stop.is_set():
                await self.renew_once()

    async def confirm(self, run_id: str) -> bool:
        """Whether this process still holds the run's lease, asked before it starts
        anything new for it. After a long silence (the process was frozen, or its
        database connection hung) a renewal is made first: a process that wakes up must
        not start a step, a retry or a handler for a run that is no longer its own."""
        if time.monotonic() - self._last_renewal > HEARTBEAT_SECONDS * 2:
            await self.renew_once()
        exe = self.engine.runs.get(run_id)
        return exe is not None and not exe.journal.closed

    async def renew_once(self) -> None:
        async with self._renewing:  # one renewal at a time: the loop and `confirm` may both ask
            await self._renew()

    async def _renew(self) -> None:
        engine = self.engine
        driven = [run_id for run_id, exe in engine.runs.items() if not exe.journal.closed]
        try:
            held = {row["id"]: row for row in await engine.store.leases.renew(engine.owner, LEASE_SECONDS, driven)}
        except Exception as exc:
            silent = time.monotonic() - self._last_renewal
            log.error("lease renewal failed (%.1fs without one): %s", silent, str(exc).splitlines()[0][:300])
            if silent >= GIVE_UP_AFTER:
                for exe in list(engine.runs.values()):
                    exe.lose_lease(f"the database was unreachable for {silent:.0f}s: its lease could not be kept")
            return
        self._last_renewal = time.monotonic()
        for exe in list(engine.runs.values()):
            row = held.get(exe.id)
            if row is None or row["lease_epoch"] != exe.epoch:
                # a run just started may not be committed yet: only one already seen,
                # or older than a lease, has really been lost
                if exe.lease_seen or time.monotonic() - exe.created_monotonic > LEASE_SECONDS:
                    exe.lose_lease("another server holds its lease now")
                continue
            exe.lease_seen = True
            if row["cancel_requested_at"] is not None:
                exe.cancel(f"cancelled by request ({row['cancel_requested_by'] or 'someone'})",
                           compensate=bool(row["cancel_compensate"]))
