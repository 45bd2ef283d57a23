"""Who is asking, and may they: one middleware in front of every route.

In order, for each HTTP request:
1. `Host` must be one this server answers to (DNS rebinding: a page of another
   site whose name points at 127.0.0.1 must not reach an open local server).
2. A state-changing request whose `Origin` is another site is refused (403), signed
   webhooks excepted (machines, with their own check).
3. The identity: `Authorization: Bearer <token>`, else the session cookie, else,
   when the server runs open (bound to loopback with no token set up), `local`.
   No identity: 401 for the API, the sign-in page for the dashboard.
4. The route's scope (`opt={"scope": ...}`; GET needs `read`, other methods `run`)
   and, for a token limited to a namespace, the workflow or run in the path must be
   in it (else 404: what a tenant may not see does not exist for it).
5. Dashboard forms (cookie or open) must carry the CSRF token (`csrf_token` field or
   `X-CSRF-Token` header), an HMAC of the session.
6. Routes with `opt={"audit": "action"}` write an audit entry with the answer's status.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
from collections.abc import Iterable
from hashlib import sha256
from html import escape
from typing import Any
from urllib.parse import quote, urlsplit

from litestar import Request
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from runner.dsl.loader import Definition
from runner.security import audit
from runner.security.tokens import OPEN, Identity, namespace_of

from .errors_json import error_body
from .headers import RAW_SECURITY_HEADERS

COOKIE = "treadle_session"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Gate:
    """The server's auth setup (one per app, in `Services.gate`)."""

    def __init__(self, *, bind_host: str, allowed_hosts: list[str] | None = None, insecure: bool = False):
        self.public = not is_loopback(bind_host)  # reachable from other machines
        self.insecure = insecure
        hosts = {h.lower() for h in allowed_hosts or []}
        if not self.public:
            hosts |= LOOPBACK_NAMES
        elif bind_host not in ("0.0.0.0", "::", ""):
            hosts.add(bind_host.lower())
        self.allowed_hosts = hosts  # empty: any Host (a public bind without --allowed-host)
        self.secret = secrets.token_bytes(32)  # CSRF tokens; forms of an earlier process need a reload

    def host_allowed(self, host_header: str | None) -> bool:
        if not self.allowed_hosts:
            return True
        if not host_header:
            return False
        host = urlsplit(f"//{host_header}").hostname or ""
        return host.lower() in self.allowed_hosts or f"[{host.lower()}]" in self.allowed_hosts

    def csrf_token(self, session: str | None) -> str:
        return hmac.new(self.secret, (session or "open").encode(), sha256).hexdigest()


def _same_origin(request: Request) -> bool:
    if request.headers.get("sec-fetch-site") == "cross-site":
        return False
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin is None:
        return True  # not sent by a browser form or fetch from another site (curl, scripts)
    return origin != "null" and urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower()


def _is_page_form(path: str) -> bool:
    return not path.startswith(("/api/", "/hooks/"))


async def _visible(services: Any, identity: Identity, params: dict[str, Any]) -> bool:
    """May a namespaced identity reach the workflow, version or run named in the path?

    Judged from the database's record where there is one (the run's version, the named
    version: each carries the path of the file it came from), else from the catalog,
    else from every recorded version of the name, so a workflow whose file is gone
    stays in its namespace."""
    if identity.namespace is None:
        return True
    name = params.get("name") or params.get("workflow")
    if "run_id" in params:
        run = await services.store.get_run(str(params["run_id"]))
        if run is None:
            return True  # 404 anyway
        stored = await services.store.get_version(run["version"], run["workflow"])
        paths = [stored["path"]] if stored else await _paths(services, run["workflow"])
        return any(identity.sees(namespace_of(p)) for p in paths)  # no record: not shown
    if name is None:
        return True  # not about one workflow or run (lists filter themselves)
    stored = await services.store.get_version(str(params["version"]), str(name)) if "version" in params else None
    paths = [stored["path"]] if stored else await _paths(services, str(name))
    if not paths:
        return True  # no such workflow: the handler says 404
    return any(identity.sees(namespace_of(p)) for p in paths)


async def _paths(services: Any, name: str) -> list[str]:
    """The file paths a workflow is known by: the catalog's, else those of its versions."""
    definition = services.catalog.get(name)
    if definition is not None:
        return [definition.path]
    return await services.store.version_paths(name)


def auth_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        services = scope["litestar_app"].state.services
        gate: Gate = services.gate
        request: Request = Request(scope, receive)
        handler = scope.get("route_handler")
        opt: dict[str, Any] = dict(handler.opt) if handler is not None else {}
        method, path = request.method, scope["path"]
        audit_action = opt.get("audit")

        async def refuse(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
            if audit_action:
                _audit(services, request, identity, audit_action, "denied", status, {"reason": code})
            if not path.startswith(("/api/", "/hooks/", "/schema", "/metrics")) and status in (401, 403, 400):
                if status == 401:
                    await _redirect(send, f"/signin?next={quote(_next(request), safe='/')}")
                    return
                await _page_error(send, status, detail)
                return
            await _json(send, status, error_body(path, detail, code), headers)

        identity: Identity | None = None
        if not gate.host_allowed(request.headers.get("host")):
            await refuse(400, "HOST_NOT_ALLOWED", f"this server does not answer to Host "
                         f"'{request.headers.get('host', '')}'; use one of {', '.join(sorted(gate.allowed_hosts))} "
                         "(or start it with --allowed-host)")
            return
        if method not in SAFE_METHODS and not path.startswith("/hooks/") and not _same_origin(request):
            await refuse(403, "CROSS_SITE", "requests from another site are refused (Origin does not match Host)")
            return
        if opt.get("public") or path.startswith("/static/") or path.startswith("/schema"):
            await _answer(app, scope, receive, send, services, request, None, audit_action, opt.get("who"))
            return
        identity, bad_token = await identify(services, request)
        if bad_token:
            await refuse(401, "INVALID_TOKEN", "the bearer token is not valid (mistyped, or revoked)",
                         {"WWW-Authenticate": 'Bearer error="invalid_token"'})
            return
        if identity is None:
            await refuse(401, "AUTHENTICATION_REQUIRED", "sign in: send 'Authorization: Bearer <token>' "
                         "(create one with `treadle token create NAME --scope read`)", {"WWW-Authenticate": "Bearer"})
            return
        needed = opt.get("scope") or ("read" if method in SAFE_METHODS else "run")
        if not identity.allows(needed):
            await refuse(403, "INSUFFICIENT_SCOPE", f"'{identity.name}' has scope '{identity.scope}'; "
                         f"this needs '{needed}'")
            return
        if opt.get("global") and identity.namespace is not None:
            await refuse(403, "INSUFFICIENT_SCOPE", f"'{identity.name}' is limited to namespace "
                         f"'{identity.namespace}'; this needs a token without a namespace")
            return
        if not await _visible(services, identity, scope.get("path_params") or {}):
            await refuse(404, "NOT_FOUND", "no such workflow or run")
            return
        session = request.cookies.get(COOKIE) if identity.via == "session" else None
        csrf = gate.csrf_token(session)
        scope.setdefault("state", {})
        scope["state"]["identity"], scope["state"]["csrf"] = identity, csrf
        if method not in SAFE_METHODS and _is_page_form(path) and identity.via in ("session", "open"):
            given = request.headers.get("x-csrf-token")
            if given is None:
                form = await request.form()
                given = form.get(CSRF_FIELD)
            if not given or not hmac.compare_digest(str(given), csrf):
                await refuse(403, "CSRF", "the form is stale or did not come from this dashboard; reload the page and try again")
                return
        await _answer(app, scope, receive, send, services, request, identity, audit_action)
    return middleware


async def _answer(app: ASGIApp, scope: Scope, receive: Receive, send: Send, services: Any, request: Request,
                  identity: Identity | None, audit_action: str | None, who: str | None = None) -> None:
    """Call the route; with `audit_action`, write the audit entry with its answer."""
    if not audit_action:
        await app(scope, receive, send)
        return
    answer: dict[str, Any] = {}

    async def watching(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body" and "body" not in answer:
            answer["body"] = message.get("body", b"")[:4096]
        await send(message)

    await app(scope, receive, watching)
    status = answer.get("status", 500)
    _audit(services, request, identity, audit_action, "ok" if status < 400 else "failed", status,
           _outcome(answer.get("body", b"")), who)


async def identify(services: Any, request: Request) -> tuple[Identity | None, bool]:
    """(identity, a bearer token was given but is not valid)."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            found = await services.tokens.check(value.strip())
            return found, found is None
    found = await services.tokens.session(request.cookies.get(COOKIE))
    if found is not None:
        return found, False
    if await auth_required(services):
        return None, False
    return OPEN, False


async def auth_required(services: Any) -> bool:
    """Open only when bound to loopback (or --insecure) with no token set up."""
    gate: Gate = services.gate
    return (gate.public and not gate.insecure) or await services.tokens.required()


def identity_of(request: Request) -> Identity:
    return request.scope.get("state", {}).get("identity", OPEN)


def visible(request: Request, definitions: Iterable[Definition]) -> list[Definition]:
    """The definitions the requester may see (all, unless its token has a namespace)."""
    identity = identity_of(request)
    if identity.namespace is None:
        return list(definitions)
    return [d for d in definitions if identity.sees(namespace_of(d.path))]


def visible_names(request: Request) -> list[str] | None:
    """Names of the workflows the requester may see; None when it sees everything."""
    if identity_of(request).namespace is None:
        return None
    services = request.scope["litestar_app"].state.services
    return [d.name for d in visible(request, services.catalog.entries())]


def _next(request: Request) -> str:
    query = request.scope.get("query_string", b"").decode()
    return request.scope["path"] + (f"?{query}" if query else "")


def _outcome(body: bytes) -> dict[str, Any] | None:
    """What to keep of an answer in the audit log: ids and error codes, not data."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    kept = {k: data[k] for k in ("run_id", "status", "error_code", "workflow") if k in data}
    return kept or None


def _audit(services: Any, request: Request, identity: Identity | None, action: str, result: str,
           status: int, detail: dict[str, Any] | None, who: str | None = None) -> None:
    params = request.scope.get("path_params") or {}
    target = params.get("run_id") or params.get("name") or params.get("workflow") or params.get("token")
    client = request.client.host if request.client else None
    audit.record(services.store, who=identity.name if identity else who or "anonymous", source=client, action=action,
                 target=str(target) if target is not None else None, result=result, status=status, detail=detail)


async def _json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
           *RAW_SECURITY_HEADERS]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


async def _redirect(send: Send, location: str) -> None:
    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", location.encode()), (b"content-length", b"0"), *RAW_SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": b""})


async def _page_error(send: Send, status: int, detail: str) -> None:
    page = (f"<!doctype html><meta charset=utf-8><title>Treadle: refused</title>"
            f"<link rel=stylesheet href=/static/treadle.css><main class=page><h1>Refused</h1>"
            f"<p>{escape(detail)}</p><p><a href=/>Back to the dashboard</a> · <a href=/signin>Sign in</a></p></main>")
    data = page.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(data)).encode()),
                            *RAW_SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": data})
