"""JSON API of triggers: incoming webhooks, events, pause and resume.

`POST /hooks/{workflow}` is for machines that sign (HMAC-SHA256 over
`timestamp.body`) or send a bearer token; a bad or missing signature starts
nothing (401), a body that does not give valid params is 422, an accepted call is
202 with the run id. `POST /api/events` starts every workflow listening to the
event type. Pause and resume are shared with the dashboard (web/pages_triggers.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, TypedDict

import msgspec
from litestar import Request, Response, get, post
from litestar.exceptions import SerializationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody

from runner.dsl.loader import Definition
from runner.engine.report import iso
from runner.errors import (
    DuplicateDelivery,
    LaunchRejected,
    MalformedBody,
    NoWebhook,
    SignatureError,
    WebhookNotConfigured,
    WebhookUnauthorized,
    WorkflowInvalid,
    WorkflowNotFound,
    WorkflowPaused,
)
from runner.triggers.launcher import Launch, new_event_id
from runner.triggers.notify import redact_url, target_of
from runner.triggers.signing import DEFAULT_TOLERANCE, check_bearer, delivery_key, verify

from . import rate_limits
from .api import _errors, _services
from .auth import visible_names
from .services import Services

# headers a webhook's `params:` templates may not read: credentials
_HIDDEN_HEADERS = frozenset({"authorization", "cookie", "x-treadle-signature", "proxy-authorization"})


class EventRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST /api/events."""

    type: str
    data: Any = None


class LaunchDoc(TypedDict):
    workflow: str
    status: str  # started | queued | skipped | paused | rejected
    run_id: str | None
    reason: str | None


class EventAccepted(TypedDict):
    event_id: str | None
    type: str
    runs: list[LaunchDoc]


class PauseDoc(TypedDict):
    workflow: str
    paused: bool
    changed: bool  # false when it already was in that state
    queued_started: list[str]  # resuming starts queued runs that waited for it


def _hook_definition(services: Services, name: str) -> Definition:
    definition = services.catalog.get(name)
    if definition is None:
        raise WorkflowNotFound(name)  # a public route: no "did you mean" list of other names
    if not definition.valid or definition.spec is None:
        raise WorkflowInvalid(definition.name, [])  # a public route: the file's problems are not shown
    if definition.spec.triggers.webhook is None:
        raise NoWebhook(name)
    return definition


def _launch_response(launch: Launch) -> Response:
    body = {"run_id": launch.run_id, "status": "running" if launch.status == "started" else launch.status,
            "workflow": launch.workflow, "reason": launch.reason}
    if launch.status in ("started", "queued"):
        return Response(body, status_code=202, headers={"Location": f"/api/runs/{launch.run_id}"})
    return Response(body, status_code=200)  # skipped by the concurrency policy: nothing wrong with the call


@post("/hooks/{workflow:str}", status_code=202, opt={"public": True, "audit": "run.start", "who": "webhook"},
      middleware=[rate_limits.TRIGGERS.middleware], tags=["triggers"], responses={
          **_errors(400, 401, 404, 409, 422, 429, 503),
          200: ResponseSpec(LaunchDoc, description="skipped by the concurrency policy: nothing started")})
async def webhook(request: Request, workflow: FromPath[str]) -> Response[LaunchDoc]:
    """Start a run from a signed (or bearer-token) call; its JSON body gives the params.

    Signed: `X-Treadle-Timestamp: <unix seconds>` (within 5 minutes) and
    `X-Treadle-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`. Each signed
    delivery is taken once: a replay is 409 `DUPLICATE_DELIVERY` and starts nothing."""
    services = _services(request)
    definition = _hook_definition(services, workflow)
    hook = definition.spec.triggers.webhook  # type: ignore[union-attr]
    body = await request.body()
    env_name = hook.secret_env or hook.token_env
    key = services.engine.environ.get(env_name or "")
    if not key:
        raise WebhookNotConfigured(f"the webhook of '{workflow}' is not set up: the server has no {env_name} "
                                   "in its environment; set it and restart")
    delivery: str | None = None  # signed calls: what a replay would repeat
    try:
        if hook.secret_env:
            stamp, signature = request.headers.get("x-treadle-timestamp"), request.headers.get("x-treadle-signature")
            verify(key, body, stamp, signature, now=time.time())
            delivery = delivery_key(stamp or "", signature or "")
        else:
            check_bearer(key, request.headers.get("authorization"))
    except SignatureError as exc:
        raise WebhookUnauthorized(str(exc)) from None
    try:
        payload = await request.json() if body.strip() else {}  # depth checked (web/json_body.py)
    except SerializationException as exc:
        raise MalformedBody(f"the body is not valid JSON: {exc.detail or exc}") from None
    if delivery is not None and not await services.store.deliveries.first(
            definition.name, delivery, now=time.time(), keep=2 * DEFAULT_TOLERANCE):
        raise DuplicateDelivery("this signed call was received before (same timestamp and signature); no run "
                                "was started. Each delivery is taken once: sign every call, resends included, "
                                "with a fresh X-Treadle-Timestamp")
    started = False
    try:
        headers = {k.lower(): v for k, v in request.headers.items() if k.lower() not in _HIDDEN_HEADERS}
        launch = await services.launcher.fire(
            definition, trigger="webhook", ref=request.headers.get("x-request-id"), mapping=hook.params,
            context={"body": payload, "headers": headers, "query": dict(request.query_params)},
            default=payload if isinstance(payload, dict) else {"body": payload})
        if launch.status == "rejected":
            raise LaunchRejected(launch.reason, launch.errors)
        if launch.status == "paused":
            raise WorkflowPaused(launch.reason or "paused")
        started = True
    finally:
        if delivery is not None and not started:  # nothing came of it: a resend may try again
            await asyncio.shield(services.store.deliveries.forget(definition.name, delivery))
    await services.store.flush()
    return _launch_response(launch)


@post("/api/events", status_code=202, opt={"audit": "event.emit"}, middleware=[rate_limits.TRIGGERS.middleware],
      tags=["triggers"], responses=_errors(400, 429))
async def post_event(request: Request, data: JSONBody[EventRequest]) -> Response[EventAccepted]:
    """Start every workflow whose `triggers.event` matches `type`, with `data` as params.

    The answer lists each workflow concerned and what became of it (`started`,
    `queued`, `skipped`, `paused`, or `rejected` with the reason)."""
    services = _services(request)
    event_id = new_event_id()
    names = visible_names(request)  # a namespaced token starts only its namespace's workflows
    launches = await services.launcher.emit(data.type, data.data, event_id=event_id,
                                            only=None if names is None else set(names))
    await services.store.flush()
    body: EventAccepted = {"event_id": event_id, "type": data.type,
                           "runs": [launch.as_dict() for launch in launches]}  # type: ignore[misc]
    return Response(body, status_code=202)


async def set_paused(services: Services, name: str, paused: bool, by: str | None = None) -> dict[str, Any]:
    """Pause or resume `name` (shared with the dashboard). Raises WorkflowNotFound."""
    definition = services.catalog.get(name)
    if definition is None:
        raise WorkflowNotFound(name, services.catalog.names())
    changed = await services.state.set_paused(definition.name, paused, by)
    started = [] if paused else await services.launcher.release(definition.name)
    if not paused and services.files is not None:
        services.files.rescan()  # files that arrived while paused start now
    return {"workflow": definition.name, "paused": paused, "changed": changed, "queued_started": started}


@post("/api/workflows/{name:str}/pause", status_code=200, opt={"scope": "admin", "audit": "workflow.pause"}, tags=["workflows"], responses=_errors(404))
async def pause(request: Request, name: FromPath[str]) -> PauseDoc:
    """No trigger starts the workflow until it is resumed (people still can); survives restarts."""
    return await set_paused(_services(request), name, True)  # type: ignore[return-value]


@post("/api/workflows/{name:str}/resume", status_code=200, opt={"scope": "admin", "audit": "workflow.resume"}, tags=["workflows"], responses=_errors(404))
async def resume(request: Request, name: FromPath[str]) -> PauseDoc:
    """Triggers start the workflow again; queued runs that waited for it start."""
    return await set_paused(_services(request), name, False)  # type: ignore[return-value]


@get("/api/workflows/{name:str}/triggers", tags=["workflows"], responses=_errors(404))
async def triggers(request: Request, name: FromPath[str]) -> dict[str, Any]:
    """What starts the workflow: schedules with their next time, webhook, events,
    files, upstream workflows; its concurrency, queued runs and whether it is paused."""
    services = _services(request)
    definition = services.catalog.get(name)
    if definition is None:
        raise WorkflowNotFound(name, services.catalog.names())
    return await trigger_summary(services, definition)


async def trigger_summary(services: Services, definition: Definition) -> dict[str, Any]:
    """The triggers of `definition` as the API and the dashboard show them."""
    spec = definition.spec
    paused = await services.state.paused()
    out: dict[str, Any] = {"workflow": definition.name, "paused": definition.name in paused,
                           "paused_since": None, "schedules": [], "webhook": None, "events": [], "files": [],
                           "after": [], "concurrency": None, "queued": await services.launcher.queued(definition.name),
                           "notify": []}
    if definition.name in paused:
        out["paused_since"] = iso(paused[definition.name]["changed_at"])
    if spec is None:
        return out
    triggers_ = spec.triggers
    out["schedules"] = services.scheduler.next_fires(definition) if services.scheduler else []
    if triggers_.webhook is not None:
        out["webhook"] = {"url": f"/hooks/{definition.name}", "auth": "hmac-sha256" if triggers_.webhook.secret_env
                          else "bearer", "env": triggers_.webhook.secret_env or triggers_.webhook.token_env}
    out["events"] = [e.type for e in triggers_.event]
    out["files"] = [{"path": f.path, "settle": f.settle} for f in triggers_.file]
    out["after"] = [{"workflow": a.workflow, "status": list(a.status)} for a in triggers_.after]
    if spec.concurrency is not None:
        out["concurrency"] = {"limit": spec.concurrency.limit, "policy": spec.concurrency.policy}
    out["notify"] = [{"on": list(n.on), "webhook": redact_url(n.webhook) if n.webhook else None,
                      "target": target_of(n)} for n in spec.notify]
    return out


TRIGGER_ROUTES = [webhook, post_event, pause, resume, triggers]
