"""API tokens and dashboard sessions: who may do what, in which namespace.

A token is shown once when created; only its SHA-256 is stored. (A slow password
hash buys nothing here: tokens are 256 random bits, not something a person chose.)
Scopes nest: `read` sees, `run` also starts, cancels, retries and approves, `admin`
also manages tokens and pauses workflows. A token limited to a namespace (a
top-level folder of the definitions folder) sees and touches only the workflows
in it and their runs.

A dashboard session is a random id in an HttpOnly cookie, stored hashed with the
identity it stands for; revoking a token ends its sessions.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import (
    TokenError,
    TokenExists,
)

if TYPE_CHECKING:
    from ..storage.store import Store

SCOPES = ("read", "run", "admin")
PREFIX = "trd_"
SESSION_SECONDS = 12 * 3600
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$"


@dataclass(frozen=True)
class Identity:
    """Who is asking: a token's name (or `local` when the server runs open)."""

    name: str
    scope: str
    namespace: str | None = None
    via: str = "token"  # token | admin-token | session | open

    def allows(self, scope: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(scope)

    def sees(self, namespace: str | None) -> bool:
        """May this identity see a workflow of `namespace` ("" for the top folder)?"""
        return self.namespace is None or namespace == self.namespace


OPEN = Identity("local", "admin", None, via="open")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def namespace_of(path: str) -> str:
    """The namespace of a definition file: its top-level folder ("" at the top)."""
    head, sep, _ = path.partition("/")
    return head if sep else ""


class Tokens:
    def __init__(self, store: Store, *, admin_token: str | None = None):
        self.store = store
        self.admin_token = admin_token or None
        self._any: tuple[float, bool] | None = None  # cached "some token exists"

    async def create(self, name: str, scope: str, namespace: str | None = None) -> str:
        """Create a token and return it; it is never shown again."""
        if not re.fullmatch(NAME_PATTERN, name):
            raise TokenError(f"token name '{name}' must be 1-64 letters, digits, '_', '.', '@' or '-'")
        if scope not in SCOPES:
            raise TokenError(f"scope '{scope}' is not one of {', '.join(SCOPES)}")
        if namespace is not None and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", namespace):
            raise TokenError(f"namespace '{namespace}' must be the name of a top-level folder of the definitions")
        plain = PREFIX + secrets.token_urlsafe(32)
        if not await self.store.tokens.add(name=name, scope=scope, namespace=namespace, token_hash=digest(plain),
                                           now=time.time()):
            raise TokenExists(f"a token named '{name}' exists; revoke it first or pick another name")
        self._any = None
        return plain

    async def revoke(self, name: str) -> bool:
        """Revoke a token and end its sessions; False when there is no such active token."""
        done = await self.store.tokens.revoke(name, time.time())
        self._any = None
        return done

    async def list(self) -> list[dict[str, Any]]:
        return await self.store.tokens.all()

    async def required(self) -> bool:
        """Whether requests must authenticate: an admin token is set or a token exists.
        Cached for a second, so a token created with the CLI closes the server soon."""
        if self.admin_token:
            return True
        now = time.monotonic()
        if self._any is None or now - self._any[0] > 1.0:
            self._any = (now, await self.store.tokens.any_active())
        return self._any[1]

    async def check(self, plain: str | None) -> Identity | None:
        """The identity of a presented token, or None."""
        if not plain:
            return None
        if self.admin_token and hmac.compare_digest(plain.encode(), self.admin_token.encode()):
            return Identity("admin-token", "admin", None, via="admin-token")
        hashed = digest(plain)
        row = await self.store.tokens.active_by_hash(hashed)
        if row is None:
            return None
        if row["last_used_at"] is None or time.time() - row["last_used_at"] > 60:  # at most a write a minute
            await self.store.tokens.touch(row["name"], time.time())
        return Identity(row["name"], row["scope"], row["namespace"])

    # -- sessions --------------------------------------------------------------------

    async def open_session(self, identity: Identity) -> str:
        """A new session for `identity`; returns the cookie value."""
        sid = secrets.token_urlsafe(32)
        now = time.time()
        await self.store.tokens.open_session(id_hash=digest(sid), token_name=identity.name, scope=identity.scope,
                                             namespace=identity.namespace, now=now, expires_at=now + SESSION_SECONDS)
        return sid

    async def session(self, sid: str | None) -> Identity | None:
        if not sid:
            return None
        row = await self.store.tokens.session(digest(sid), time.time())
        if row is None:
            return None
        return Identity(row["token_name"], row["scope"], row["namespace"], via="session")

    async def close_session(self, sid: str | None) -> None:
        if sid:
            await self.store.tokens.close_session(digest(sid))
