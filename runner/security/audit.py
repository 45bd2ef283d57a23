"""The audit log: who did what, from where, when, and how it went.

Every start, cancel, retry, approval, pause, token change and sign-in is one row
(denied attempts too). Rows go through the store's single writer, in order with
the run rows they concern, and are never updated.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Column, func, select
from sqlmodel import Field, SQLModel

if TYPE_CHECKING:
    from ..storage.store import Store


class AuditEntry(SQLModel, table=True):
    __tablename__ = "audit"
    id: int | None = Field(default=None, primary_key=True)
    at: float = Field(index=True)
    who: str  # token name, `admin-token`, `local` (open server), `cli:<user>`, or `anonymous`
    source: str | None = None  # client address
    action: str = Field(index=True)  # run.start, run.cancel, run.retry, approval.decide, workflow.pause, ...
    target: str | None = None  # workflow name, run id, token name
    result: str  # ok | denied | failed
    status: int | None = None  # the HTTP status answered, if any
    detail: Any = Field(default=None, sa_column=Column(JSON))


_TABLE = AuditEntry.__table__  # type: ignore[attr-defined]


def record(store: Store, *, who: str, action: str, result: str, source: str | None = None,
           target: str | None = None, status: int | None = None, detail: Any = None) -> None:
    """Queue one audit row (committed with the store's next batch)."""
    store.put_row(_TABLE, {"at": time.time(), "who": who, "source": source, "action": action, "target": target,
                           "result": result, "status": status, "detail": detail})


async def entries(store: Store, *, action: str | None = None, who: str | None = None,
                  offset: int = 0, limit: int = 50) -> tuple[list[dict[str, Any]], int]:
    """Newest first; and how many there are."""
    conds = [c for c in (AuditEntry.action.startswith(action) if action else None,
                         AuditEntry.who == who if who else None) if c is not None]
    query = select(AuditEntry).where(*conds).order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
    count = select(func.count()).select_from(AuditEntry).where(*conds)
    async with store.engine.connect() as conn:
        rows = [dict(r) for r in (await conn.execute(query.offset(offset).limit(limit))).mappings()]
        total = (await conn.execute(count)).scalar_one()
    return rows, total
