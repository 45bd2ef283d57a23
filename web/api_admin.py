"""JSON API for administrators: tokens and the audit log (admin scope, no namespace)."""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery, JSONBody

from runner.engine.report import iso
from runner.security import audit

from .api import Limit, Page, _errors, _services

ADMIN = {"scope": "admin", "global": True}


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST /api/tokens."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    scope: str = "read"
    namespace: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


class TokenDoc(TypedDict):
    name: str
    scope: str
    namespace: str | None
    created_at: str | None
    last_used_at: str | None
    revoked_at: str | None


class TokenCreated(TokenDoc):
    token: str  # shown this once; only its hash is stored


class AuditDoc(TypedDict):
    at: str | None
    who: str
    source: str | None
    action: str
    target: str | None
    result: str  # ok | denied | failed
    status: int | None
    detail: Any


class AuditPage(TypedDict):
    items: list[AuditDoc]
    total: int
    page: int
    limit: int


def token_doc(row: dict[str, Any]) -> TokenDoc:
    return {"name": row["name"], "scope": row["scope"], "namespace": row["namespace"],
            "created_at": iso(row["created_at"]), "last_used_at": iso(row["last_used_at"]),
            "revoked_at": iso(row["revoked_at"])}


def audit_doc(row: dict[str, Any]) -> AuditDoc:
    return {"at": iso(row["at"]), "who": row["who"], "source": row["source"], "action": row["action"],
            "target": row["target"], "result": row["result"], "status": row["status"], "detail": row["detail"]}


@get("/api/tokens", tags=["admin"], opt=ADMIN, responses=_errors(401, 403))
async def list_tokens(request: Request) -> list[TokenDoc]:
    """Every token (revoked ones too), without their secret."""
    return [token_doc(r) for r in await _services(request).tokens.list()]


@post("/api/tokens", status_code=201, tags=["admin"], opt={**ADMIN, "audit": "token.create"},
      responses=_errors(400, 401, 403, 409))
async def create_token(request: Request, data: JSONBody[TokenRequest]) -> Response[TokenCreated]:
    """Create a token (scope `read`, `run` or `admin`, optionally limited to a namespace);
    the answer is the only time the token is shown."""
    tokens = _services(request).tokens
    plain = await tokens.create(data.name, data.scope, data.namespace)
    row = next(r for r in await tokens.list() if r["name"] == data.name)
    return Response({**token_doc(row), "token": plain}, status_code=201)  # type: ignore[typeddict-item]


@delete("/api/tokens/{token:str}", status_code=200, tags=["admin"], opt={**ADMIN, "audit": "token.revoke"},
        responses=_errors(401, 403, 404))
async def revoke_token(request: Request, token: FromPath[str]) -> TokenDoc:
    """Revoke a token by name; its dashboard sessions end at once."""
    tokens = _services(request).tokens
    if not await tokens.revoke(token):
        raise NotFoundException(f"no active token named '{token}'")
    return token_doc(next(r for r in await tokens.list() if r["name"] == token))


@get("/api/audit", tags=["admin"], opt=ADMIN, responses=_errors(400, 401, 403))
async def list_audit(request: Request, action: FromQuery[str | None] = None, who: FromQuery[str | None] = None,
                     page: Page = 1, limit: Limit = 50) -> AuditPage:
    """Who did what, newest first: starts, cancels, retries, approvals, pauses, token
    changes, sign-ins (denied attempts too). `action` matches a prefix (`run.`)."""
    store = _services(request).store
    await store.flush()
    rows, total = await audit.entries(store, action=action, who=who, offset=(page - 1) * limit, limit=limit)
    return {"items": [audit_doc(r) for r in rows], "total": total, "page": page, "limit": limit}


ADMIN_ROUTES = [list_tokens, create_token, revoke_token, list_audit]
