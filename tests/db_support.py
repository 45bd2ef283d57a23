"""Reading a test's database directly, on either backend (to check what is really stored).

JSON columns come back as their stored text on both (sqlite3 stores text; asyncpg
returns jsonb as text without a codec), so a test can look at the bytes.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import Any

_TABLES = ("run", "step_attempt", "log_chunk", "workflow_version", "workflow_state", "trigger_mark", "approval",
           "api_token", "web_session", "audit")


def query(db_url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Rows of `sql` (placeholders `?`) as dicts."""
    if db_url.startswith("sqlite:///"):
        with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute(sql, args).fetchall()]
    # in a thread of its own: the caller may be a test running on an event loop
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _pg(db_url, sql, args)).result()


async def _pg(db_url: str, sql: str, args: tuple) -> list[dict[str, Any]]:
    import asyncpg

    parts = sql.split("?")
    numbered = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
    conn = await asyncpg.connect(db_url)
    try:
        return [dict(r) for r in await conn.fetch(numbered, *args)]
    finally:
        await conn.close()


def everything(db_url: str) -> bytes:
    """Every value of every table as bytes (a SQLite file: the file and its WAL)."""
    if db_url.startswith("sqlite:///"):
        from pathlib import Path

        path = Path(db_url.removeprefix("sqlite:///"))
        return b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists())
    rows = [r for table in _TABLES for r in query(db_url, f"SELECT row_to_json(t)::text AS j FROM {table} t")]
    return "\n".join(r["j"] for r in rows).encode()
