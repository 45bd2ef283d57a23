"""Signed webhook deliveries already accepted (the `webhook_delivery` table).

`first` claims a delivery in its own committed transaction, before the run it leads
to starts: the primary key makes a replay (or the same call reaching two servers at
once) lose the claim. Claims older than their window are deleted on the way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import delete

from .models import WebhookDelivery

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .database import Dialect


class DeliveryStore:
    def __init__(self, engine: AsyncEngine, dialect: Dialect):
        self.engine, self.dialect = engine, dialect

    async def first(self, workflow: str, key: str, *, now: float, keep: float) -> bool:
        """Record the delivery `key` of `workflow` for `keep` seconds; True when this
        call is the first to (committed on return), False for a replay."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(WebhookDelivery).where(WebhookDelivery.expires_at < now))
            stmt = self.dialect.insert(WebhookDelivery).values(
                workflow=workflow, key=key, received_at=now, expires_at=now + keep)
            result = await conn.execute(stmt.on_conflict_do_nothing())
            return result.rowcount == 1

    async def forget(self, workflow: str, key: str) -> None:
        """Drop a claim whose call started nothing (refused, failed): a resend may try again."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(WebhookDelivery).where(
                WebhookDelivery.workflow == workflow, WebhookDelivery.key == key))
