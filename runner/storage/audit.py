"""The audit log's rows (the `audit` table): written through the writer, read here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from .models import AuditEntry

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .writer import Writer

TABLE = AuditEntry.__table__  # type: ignore[attr-defined]


class AuditStore:
    def __init__(self, engine: AsyncEngine, writer: Writer):
        self.engine, self.writer = engine, writer

    def put(self, row: dict[str, Any]) -> None:
        """Queue one entry (committed with the next batch, in order with the run rows)."""
        self.writer.put("insert", (TABLE, row))

    async def entries(self, *, action: str | None = None, who: str | None = None,
                      offset: int = 0, limit: int = 50) -> tuple[list[dict[str, Any]], int]:
        """Newest first; and how many match. `action` matches a prefix (`run.` for every run action)."""
        conds = [c for c in (AuditEntry.action.startswith(action, autoescape=True) if action else None,
                             AuditEntry.who == who if who else None) if c is not None]
        query = select(AuditEntry).where(*conds).order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
        count = select(func.count()).select_from(AuditEntry).where(*conds)
        async with self.engine.connect() as conn:
            rows = [dict(r) for r in (await conn.execute(query.offset(offset).limit(limit))).mappings()]
            total = (await conn.execute(count)).scalar_one()
        return rows, total
