"""Deliveries of notifications: each try recorded, listed with its run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select

from .models import NotificationDelivery

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

MAX_LISTED = 500


class NotificationStore:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    async def record(self, row: dict[str, Any]) -> None:
        """One try (see NotificationDelivery). Written at once, outside the run's writer:
        a notification is never part of its run's records or their fencing."""
        async with self.engine.begin() as conn:
            await conn.execute(insert(NotificationDelivery).values(**row))

    async def of_run(self, run_id: str) -> list[dict[str, Any]]:
        """The run's tries, oldest first."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(NotificationDelivery).where(NotificationDelivery.run_id == run_id)
                                      .order_by(NotificationDelivery.id).limit(MAX_LISTED))
            return [dict(r) for r in rows.mappings()]
