"""The audit log: who did what, from where, when, and how it went.

Every start, cancel, retry, approval, pause, token change and sign-in is one row
(denied attempts too). Rows go through the store's single writer, in order with
the run rows they concern, and are never updated.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..storage.store import Store


def record(store: Store, *, who: str, action: str, result: str, source: str | None = None,
           target: str | None = None, status: int | None = None, detail: Any = None) -> None:
    """Queue one audit row (committed with the store's next batch)."""
    store.audit.put({"at": time.time(), "who": who, "source": source, "action": action, "target": target,
                           "result": result, "status": status, "detail": detail})


async def entries(store: Store, *, action: str | None = None, who: str | None = None,
                  offset: int = 0, limit: int = 50) -> tuple[list[dict[str, Any]], int]:
    """Newest first; and how many there are."""
    return await store.audit.entries(action=action, who=who, offset=offset, limit=limit)
