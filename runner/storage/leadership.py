"""One leader among the servers sharing a database: it alone runs the schedules, the
file triggers and the catch-up of `after` chains (trigger marks already keep those
from firing twice; one leader keeps the servers from racing for every slot).

On PostgreSQL the leader holds a session advisory lock on a connection of its own:
if the leader dies or its connection is cut, PostgreSQL releases the lock at once
and another server takes it at its next try (every second). On SQLite (one machine)
an exclusive `flock` on a file beside the database does the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .database import Dialect

_LEADER_LOCK_ID = 0x7472_6561_646C_66  # another number than the schema lock's


class Leadership:
    def __init__(self, engine: AsyncEngine, dialect: Dialect):
        self.engine, self.dialect = engine, dialect
        self._conn: Any = None  # PostgreSQL: the connection holding the lock
        self._fd: int | None = None  # SQLite: the locked file

    @property
    def held(self) -> bool:
        return self._conn is not None or self._fd is not None

    async def try_acquire(self) -> bool:
        """Become the leader if nobody is; True when this process leads now."""
        if self.held:
            return await self.still_held()
        if self.dialect.name == "postgresql":
            conn = await self.engine.connect()
            try:
                got = (await conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({_LEADER_LOCK_ID})")).scalar()
                await conn.commit()
            except Exception:
                await conn.close()
                raise
            if got:
                self._conn = conn
                return True
            await conn.close()
            return False
        path = getattr(self.dialect, "path", ":memory:")
        if path == ":memory:":
            self._fd = -1  # one process: it leads
            return True
        lock = Path(path).expanduser().with_name(Path(path).name + ".leader")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def still_held(self) -> bool:
        """False once the lock is lost (the connection holding it died)."""
        if self._conn is None:
            return self._fd is not None
        try:
            await self._conn.exec_driver_sql("SELECT 1")
            await self._conn.commit()
            return True
        except Exception:
            with contextlib.suppress(Exception):
                await self._conn.invalidate()
            self._conn = None
            return False

    async def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_LEADER_LOCK_ID})")
                await self._conn.commit()
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None
        if self._fd is not None:
            if self._fd >= 0:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None
