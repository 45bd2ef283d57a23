"""API tokens and dashboard sessions (the `api_token` and `web_session` tables).

Only hashes are stored; runner/security/tokens.py makes and checks the secrets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update

from .models import ApiToken, WebSession

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .database import Dialect


class TokenStore:
    def __init__(self, engine: AsyncEngine, dialect: Dialect):
        self.engine, self.dialect = engine, dialect

    async def add(self, *, name: str, scope: str, namespace: str | None, token_hash: str, now: float) -> bool:
        """Store a new token; False when an active token has that name (a revoked one is replaced)."""
        async with self.engine.begin() as conn:
            old = (await conn.execute(select(ApiToken.revoked_at).where(ApiToken.name == name))).first()
            if old is not None and old[0] is None:
                return False
            await conn.execute(delete(ApiToken).where(ApiToken.name == name))
            await conn.execute(ApiToken.__table__.insert().values(  # type: ignore[attr-defined]
                name=name, scope=scope, namespace=namespace, token_hash=token_hash, created_at=now))
        return True

    async def revoke(self, name: str, now: float) -> bool:
        """Revoke an active token and end its sessions; False when there is none of that name."""
        async with self.engine.begin() as conn:
            done = await conn.execute(update(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
                                      .values(revoked_at=now))
            await conn.execute(delete(WebSession).where(WebSession.token_name == name))
        return done.rowcount == 1

    async def all(self) -> list[dict[str, Any]]:
        """Every token (revoked ones too), without hashes, by name."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(ApiToken).order_by(ApiToken.name))).mappings()
            return [{k: v for k, v in r.items() if k != "token_hash"} for r in rows]

    async def any_active(self) -> bool:
        async with self.engine.connect() as conn:
            found = (await conn.execute(select(ApiToken.name).where(ApiToken.revoked_at.is_(None)).limit(1))).first()
        return found is not None

    async def active_by_hash(self, token_hash: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(ApiToken).where(ApiToken.token_hash == token_hash,
                                                             ApiToken.revoked_at.is_(None)))).mappings().first()
        return dict(row) if row else None

    async def touch(self, name: str, now: float) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(ApiToken).where(ApiToken.name == name).values(last_used_at=now))

    async def open_session(self, *, id_hash: str, token_name: str, scope: str, namespace: str | None,
                           now: float, expires_at: float) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(WebSession).where(WebSession.expires_at < now))
            await conn.execute(WebSession.__table__.insert().values(  # type: ignore[attr-defined]
                id_hash=id_hash, token_name=token_name, scope=scope, namespace=namespace, created_at=now,
                expires_at=expires_at))

    async def session(self, id_hash: str, now: float) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(WebSession).where(WebSession.id_hash == id_hash,
                                                               WebSession.expires_at > now))).mappings().first()
        return dict(row) if row else None

    async def close_session(self, id_hash: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(WebSession).where(WebSession.id_hash == id_hash))
