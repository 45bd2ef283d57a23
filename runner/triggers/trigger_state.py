"""Trigger state that must survive restarts: paused and pinned workflows, and trigger marks.

Both are written straight to the database in their own committed transaction (not
through the store's batching writer): a mark must be durable *before* the run it
leads to starts, so that a crash in between loses at most that one start and a
restart never starts it twice. A mark moves by compare-and-set, so two servers on
one database never both fire the same schedule slot or file.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..storage.store import Store


PAUSE_TTL = 1.0  # seconds a server trusts what it read of the pause flags


class TriggerState:
    def __init__(self, store: Store):
        self.store = store
        # pause flags as read from the database, at most PAUSE_TTL old: another server
        # may pause or resume, and this one follows within a second
        self._paused: dict[str, dict[str, Any]] | None = None
        self._read_at = 0.0
        self._pins: dict[str, dict[str, Any]] | None = None  # the same for pins
        self._pins_read_at = 0.0

    # -- marks -------------------------------------------------------------------

    async def mark(self, workflow: str, key: str) -> str | None:
        return await self.store.marks.get(workflow, key)

    async def marks(self, workflow: str, prefix: str = "") -> dict[str, str]:
        """Every mark of `workflow` whose key starts with `prefix`."""
        return await self.store.marks.with_prefix(workflow, prefix)

    async def advance_mark(self, workflow: str, key: str, old: str | None, new: str) -> bool:
        """Set the mark to `new` if it is still `old` (None: there is no mark yet).
        True when this call moved it (committed on return): the caller may fire."""
        return await self.store.marks.advance(workflow, key, old, new)

    # -- pause -------------------------------------------------------------------

    async def paused(self) -> dict[str, dict[str, Any]]:
        """Paused workflows: name -> {changed_at, changed_by}."""
        if self._paused is None or time.monotonic() - self._read_at > PAUSE_TTL:
            self._paused = await self.store.marks.paused()
            self._read_at = time.monotonic()
        return self._paused

    async def is_paused(self, workflow: str) -> bool:
        return workflow in await self.paused()

    async def set_paused(self, workflow: str, paused: bool, by: str | None = None) -> bool:
        """Pause or resume; False when it already was in that state."""
        current = await self.paused()
        now = time.time()
        if not await self.store.marks.set_paused(workflow, paused, by, now):
            return False
        if paused:
            current[workflow] = {"changed_at": now, "changed_by": by}
        else:
            current.pop(workflow, None)
        return True

    # -- pins ----------------------------------------------------------------------

    async def pins(self) -> dict[str, dict[str, Any]]:
        """Pinned workflows: name -> {version, at, by, reason}; at most PAUSE_TTL old."""
        if self._pins is None or time.monotonic() - self._pins_read_at > PAUSE_TTL:
            self._pins = await self.store.marks.pins()
            self._pins_read_at = time.monotonic()
        return self._pins

    async def pin(self, workflow: str) -> dict[str, Any] | None:
        return (await self.pins()).get(workflow)

    async def set_pin(self, workflow: str, version: str | None, by: str | None = None,
                      reason: str | None = None) -> bool:
        """Pin to `version` (None: unpin); False when it already was so. Trusted at once
        here; other servers follow within PAUSE_TTL."""
        current = await self.pins()
        now = time.time()
        if not await self.store.marks.set_pin(workflow, version, by, reason, now):
            return False
        if version is None:
            current.pop(workflow, None)
        else:
            current[workflow] = {"version": version, "at": now, "by": by, "reason": reason}
        return True
