"""The JSON API (SPEC §4): workflows, runs, logs, live events and health.

Handlers stay thin: they read from the catalog and the store, and call the actions
in `services` (shared with the dashboard's forms). Errors are raised, never built
here: `app.py` turns them into the SPEC's JSON error form.
"""

# no `from __future__ import annotations` here: with string annotations, Python
# (3.11-3.13) cannot see `NotRequired[...]` in a TypedDict, every key becomes required
# and /schema then demands keys the answers rightly leave out (tests/test_api_schema.py)

import asyncio
import time
from typing import Annotated, Any, Literal, NotRequired, TypedDict

import msgspec
from litestar import Request, Response, get, post
from litestar.enums import MediaType
from litestar.exceptions import NotFoundException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from runner import __version__
from runner.dsl.casefile import test_file_beside
from runner.dsl.durations import parse_duration
from runner.dsl.loader import Definition
from runner.engine.leases import LEASE_SECONDS
from runner.engine.plan import plan_run
from runner.engine.rehearsal import rehearsal_mocks, rehearse
from runner.engine.report import iso, run_document, run_summary
from runner.engine.run import raw_inputs
from runner.errors import (
    BadRequest,
    RunNotFound,
    VersionNotFound,
    WorkflowInvalid,
    WorkflowNotFound,
)
from runner.limits import MAX_WAIT_SECONDS, duration_text
from runner.security.tokens import namespace_of
from runner.storage.models import RunStatus
from runner.triggers.notify import redact_url

from .auth import identity_of, visible, visible_names
from .filters import RUN_TRIGGERS, WORKFLOW_STATES, run_window, workflow_matches
from .run_view import definition_of
from .services import Services, cancel_conflict, cancel_run, retry_run, start_run, wait_for_end
from .sse import broker_messages, sse_response

Page = Annotated[int, QueryParameter(ge=1, le=1_000_000, description="1-based page number")]
Limit = Annotated[int, QueryParameter(ge=1, le=500, description="items per page (1-500)")]
# `state` is a name Litestar keeps for itself: the parameter is read under that name
WorkflowStateQuery = Annotated[Literal[WORKFLOW_STATES] | None, QueryParameter(
    name="state", description="ok, failing (last run failed), broken (file with problems) or paused")]
TriggerQuery = Annotated[Literal[RUN_TRIGGERS] | None, QueryParameter(description="how the run was started")]
SinceQuery = Annotated[str | None, QueryParameter(
    description="started at or after: ISO 8601 (2026-11-01, 2026-11-01T08:00Z) or a duration ago (24h)")]
UntilQuery = Annotated[str | None, QueryParameter(description="started before: same forms as `since`")]
LogCursor = Annotated[int, QueryParameter(ge=0, le=2**62, description="only the lines after this X-Log-Cursor")]
RunSearchQuery = Annotated[str | None, QueryParameter(max_length=200, description="text in the run id or its params")]
_ERROR_TEXT = {400: "bad request: parameters, body or step", 404: "no such workflow, run or step",
               409: "the workflow or run does not allow this now",
               401: "missing or wrong credentials (signature, token)", 403: "the token's scope does not allow this",
               422: "the body does not give valid params", 503: "the server is not set up for this",
               429: "too many requests from this address; see Retry-After"}


def _errors(*codes: int) -> dict[int, ResponseSpec]:
    # 400 always: Litestar otherwise declares its own 400 body ({status_code, detail,
    # extra}) on every route with parameters, and ours is the ErrorBody form; 401 and
    # 403 always: web/auth.py may answer them on any route
    return {c: ResponseSpec(ErrorBody, description=_ERROR_TEXT[c]) for c in sorted({400, 401, 403, *codes})}


class RunRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST /api/workflows/{name}/runs."""

    params: dict[str, Any] = msgspec.field(default_factory=dict)
    # the params are text as typed on a command line (`treadle start -p n=5`): each is
    # converted to its declared type, as the dashboard's form does
    params_as_text: bool = False
    # run this recorded version of the workflow (a rollback) instead of the one in force
    version: str | None = msgspec.field(default=None)


Wait = Annotated[str | None, QueryParameter(
    max_length=32, description="wait up to this long for the run to end (`30s`, `2m`; at most 5m): 200 with the "
                               "finished run, else 202 with Location and Retry-After")]
RETRY_AFTER_SECONDS = 5  # past a wait: when to ask again (GET Location?wait=... answers as soon as it ends)


def wait_seconds(text: str | None) -> float | None:
    """The `wait` query value in seconds (None: do not wait). Raises BadRequest."""
    if text is None:
        return None
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise BadRequest(f"wait={text}: {exc}", "INVALID_WAIT") from None
    if seconds > MAX_WAIT_SECONDS:
        raise BadRequest(f"wait={text} is longer than the {duration_text(MAX_WAIT_SECONDS)} a request may wait; "
                         f"wait again on the run's URL (GET /api/runs/ID?wait=5m) or follow its /events",
                         "WAIT_TOO_LONG")
    return seconds


class DryRunRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST /api/workflows/{name}/dry-run; with `mock`, the run is executed with mocks."""

    params: dict[str, Any] = msgspec.field(default_factory=dict)
    mock: dict[str, Any] | None = None  # step id -> answer, or a list of answers (one per attempt)
    params_as_text: bool = False  # as in RunRequest
    version: str | None = None  # refused with a reason: a dry run plans the version in force


class CancelRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST /api/runs/{id}/cancel (optional)."""

    compensate: bool = False


class RetryRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST /api/runs/{id}/retry; without `from`, what did not succeed runs again."""

    from_: str | None = msgspec.field(name="from", default=None)


# -- response shapes (TypedDicts: no conversion cost, and they document /schema) ----


class ErrorBody(TypedDict):
    detail: str
    error_code: str
    path: str
    timestamp: str
    errors: NotRequired[Any]  # per-param messages (400) or the file's problems (409)


class RunSummary(TypedDict):
    id: str
    workflow: str
    version: str
    commit: str | None  # git revision of the definition the run ran (`abc..`, `abc..+dirty`), if in git
    status: str
    params: dict[str, Any]
    trigger: str  # manual | api | dashboard | retry | workflow | schedule | backfill | webhook | event | file | after
    trigger_ref: NotRequired[str | None]  # what exactly started it: the slot, upstream run, file, event id
    reason: NotRequired[str | None]  # why it is `queued`
    error: str | None
    outputs: Any
    parent_run_id: str | None
    parent_step_id: str | None
    retry_of: str | None
    retry_from: str | None
    compensated: NotRequired[str | None]  # after a failure with `compensate:` steps: "true" or "partial"
    backfill_id: NotRequired[str | None]  # the backfill that made it (GET /api/backfills/{id})
    created_at: str
    started_at: str | None
    finished_at: str | None
    duration_ms: int | None


class _Trace(TypedDict):
    status: str
    started_at: str | None
    finished_at: str | None
    duration_ms: int | None
    input: Any
    output: Any
    exit_code: int | None
    http_status: int | None
    error: str | None


class Attempt(_Trace):
    attempt: int
    item: int | None  # the foreach index; None for the step as a whole
    worker: str | None  # the cluster worker that executed it; None: the server itself


class StepDoc(_Trace):
    id: str
    kind: str | None  # run, http, python, set, wait, log, workflow, approval; None if the version is unknown
    attempts: int  # attempts that ran; 0 for a step reused by a retry
    needs: NotRequired[list[str]]
    attempt_list: NotRequired[list[Attempt]]
    items: NotRequired[list[Attempt]]  # foreach steps: every attempt of every item


class RunDoc(RunSummary):
    steps: list[StepDoc]


class RunPage(TypedDict):
    items: list[RunSummary]
    total: int
    page: int
    limit: int


class PinInfo(TypedDict):
    version: str  # every start runs this version until unpinned
    pinned_at: str | None
    pinned_by: str | None
    reason: str | None


class WorkflowItem(TypedDict):
    name: str
    path: str
    version: str  # the version runs use: after a broken edit, the last good one
    description: str | None
    tags: list[str]
    valid: bool  # false when the file on disk has problems (even if a good version is in force)
    errors: list[str]  # `path:line:column: message` of the file as it is on disk
    file_version: str  # hash of the file's current text (differs from `version` after a broken edit)
    in_force: bool  # a version of this workflow can run (false only when it never loaded cleanly)
    commit: str | None  # git revision of the version in force (`abc..`, `abc..+dirty`), if in git
    last_run: RunSummary | None
    paused: bool  # no trigger starts it until resumed (POST .../resume)
    enabled: bool  # false: `enabled: false` in its file; nothing starts it
    pinned: PinInfo | None  # pinned to a version: every start runs that one, not `version`


class WorkflowPage(TypedDict):
    items: list[WorkflowItem]
    total: int
    page: int
    limit: int


class WorkflowDetail(WorkflowItem):
    source: str
    params: dict[str, Any]
    env: dict[str, Any]
    secrets: list[str]
    max_parallel: int | None
    timeout: float | None
    steps: list[dict[str, Any]]
    graph: dict[str, list[dict[str, Any]]]  # nodes [{id, kind, layer}], edges [{from, to}]
    test_file: str | None  # NAME.test.yaml beside the file (`treadle test`), relative to the definitions folder


class RunAccepted(TypedDict):
    run_id: str
    status: str
    workflow: str
    url: str
    retry_of: NotRequired[str]
    retry_from: NotRequired[str | None]
    reason: NotRequired[str]  # why a run is `queued`


class Health(TypedDict):
    git: dict[str, Any] | None  # the repository followed with `serve --git`, if any
    status: str  # ok | degraded
    version: str
    uptime_s: float
    database: dict[str, Any]
    runs: dict[str, Any]
    workflows: dict[str, int]
    server: dict[str, Any]  # this server: id, leader (bool)
    servers: list[dict[str, Any]]  # every live server on this database: id, host, pid, role, leader, leases
    components: dict[str, Any]  # database ok|error, scheduler leader|standby, watcher watching|off, git ok|error|null


async def version_of_namespace(services: Services, name: str, version: str, namespace: str | None) -> None:
    """Raise VersionNotFound unless `version` of `name` was recorded from a file of
    `namespace` (what a tenant may not see does not exist for it)."""
    row = await services.store.get_version(version, name)
    if row is None or (namespace is not None and namespace_of(row["path"]) != namespace):
        raise VersionNotFound(name, version)


def _services(request: Request) -> Services:
    return request.app.state.services


# -- workflows -------------------------------------------------------------------


def pin_info(pin: dict[str, Any] | None) -> PinInfo | None:
    if pin is None:
        return None
    return {"version": pin["version"], "pinned_at": iso(pin["at"]), "pinned_by": pin["by"], "reason": pin["reason"]}


def _workflow_item(definition: Definition, last: dict[str, Any] | None, paused: bool = False,
                   pin: dict[str, Any] | None = None) -> WorkflowItem:
    spec = definition.spec
    return {
        "name": definition.name, "path": definition.path, "version": definition.version,
        "description": spec.description if spec else None, "tags": list(spec.tags) if spec else [],
        "valid": definition.healthy, "errors": [str(p) for p in definition.current_problems],
        "file_version": (definition.broken or definition).version, "in_force": definition.valid,
        "commit": definition.revision, "last_run": run_summary(last) if last else None, "paused": paused,
        "enabled": spec.enabled if spec else True,
        "pinned": pin_info(pin),
    }


@get("/api/workflows", tags=["workflows"], responses=_errors(400))
async def list_workflows(
    request: Request, tag: FromQuery[str | None] = None, q: FromQuery[str | None] = None,
    state_q: WorkflowStateQuery = None, page: Page = 1, limit: Limit = 50,
) -> WorkflowPage:
    """Every definition file, broken ones included (with their `errors`), by name.

    `tag` keeps the workflows carrying that tag; `q` searches name, path and description;
    `state` keeps those that are `broken` (file with problems), `paused`, `failing` (last
    run failed) or `ok` (none of these).
    """
    services = _services(request)
    last = await services.store.last_runs()
    paused, pins = await services.state.paused(), await services.state.pins()
    found = [d for d in visible(request, services.catalog.entries())
             if workflow_matches(d, tag=tag, q=q, state=state_q, last=last.get(d.name), paused=d.name in paused)]
    start = (page - 1) * limit
    items = [_workflow_item(d, last.get(d.name), d.name in paused, pins.get(d.name)) for d in found[start:start + limit]]
    return {"items": items, "total": len(found), "page": page, "limit": limit}


def _definition(services: Services, name: str) -> Definition:
    definition = services.catalog.get(name)
    if definition is None:
        raise WorkflowNotFound(name, services.catalog.names())
    return definition


def _steps(definition: Definition) -> list[dict[str, Any]]:
    spec, dag = definition.spec, definition.dag
    if spec is None or dag is None:
        return []
    return [{
        "id": s.id, "kind": s.kind, "needs": list(dag.deps[s.id]), "when": s.when,
        "trigger_rule": s.trigger_rule, "continue_on_failure": s.continue_on_failure,
        "retry": s.retry.model_dump() if s.retry else None, "timeout": s.timeout, "foreach": s.foreach_items,
        "foreach_max_parallel": s.foreach_limit, "repeat": s.repeat.model_dump() if s.repeat else None,
        "input": raw_inputs(definition, s),
    } for s in spec.steps]


@get("/api/workflows/{name:str}", tags=["workflows"], responses=_errors(404))
async def get_workflow(request: Request, name: FromPath[str]) -> WorkflowDetail:
    """One workflow: its steps as written, the graph, the source and any errors."""
    services = _services(request)
    definition = _definition(services, name)
    spec = definition.spec
    last = (await services.store.list_runs(workflow=name, limit=1))[0]
    return {
        **_workflow_item(definition, last[0] if last else None, await services.state.is_paused(definition.name),
                         await services.state.pin(definition.name)),
        "source": (definition.broken or definition).source,  # the text on disk: errors point into it
        "params": {k: p.model_dump() for k, p in spec.params.items()} if spec else {},
        "env": dict(spec.env) if spec else {}, "secrets": list(spec.secrets) if spec else [],
        "max_parallel": spec.max_parallel if spec else None, "timeout": spec.timeout if spec else None,
        "steps": _steps(definition), "graph": _graph(definition),
        "test_file": test_file_beside(services.catalog.root, definition.path),
    }


def _graph(definition: Definition) -> dict[str, list[dict[str, Any]]]:
    """Nodes with their layer (depth in the DAG, for drawing) and dependency edges."""
    spec, dag = definition.spec, definition.dag
    if spec is None or dag is None:
        return {"nodes": [], "edges": []}
    kinds = {s.id: s.kind for s in spec.steps}
    nodes = [{"id": sid, "kind": kinds[sid], "layer": layer}
             for layer, generation in enumerate(dag.generations) for sid in generation]
    return {"nodes": nodes, "edges": [{"from": u, "to": v} for u, v in dag.graph.edges]}


@post("/api/workflows/{name:str}/runs", status_code=202, opt={"audit": "run.start"}, tags=["runs"], responses={
    **_errors(400, 404, 409), 200: ResponseSpec(RunDoc, description="with `wait`: the run ended within it")})
async def create_run(request: Request, name: FromPath[str], data: JSONBody[RunRequest | None] = None,
                     wait: Wait = None) -> Response[RunAccepted]:
    """Start a run of the workflow's current version; returns once the run is recorded.

    With `wait` (e.g. `30s`, at most `5m`): answers 200 with the finished run when it
    ends within the wait, else 202 (the run goes on) with `Location` and `Retry-After`.
    """
    seconds = wait_seconds(wait)  # a bad wait starts nothing
    services = _services(request)
    version = data.version if data else None
    if version is not None and identity_of(request).namespace is not None:
        await version_of_namespace(services, name, version, identity_of(request).namespace)
    launch = await start_run(services, name, data.params if data else {}, from_text=bool(data and data.params_as_text),
                             version=version)
    if seconds is not None and launch.run_id:
        if await wait_for_end(services, launch.run_id, seconds) is not None:
            return Response(await run_document(services.store, launch.run_id), status_code=200)  # type: ignore[arg-type]
        run = await services.store.get_run(launch.run_id)
        status = run["status"] if run else launch.status
        extra = {"reason": run["reason"]} if run and run.get("reason") else {}
        return _accepted(launch.run_id, status, name, retry_after=True, **extra)
    extra = {"reason": launch.reason} if launch.reason else {}
    return _accepted(launch.run_id or "", "running" if launch.status == "started" else launch.status, name, **extra)


def _accepted(run_id: str, status: str, workflow: str, *, retry_after: bool = False, **extra: Any) -> Response[RunAccepted]:
    body: RunAccepted = {"run_id": run_id, "status": status, "workflow": workflow,
                         "url": f"/api/runs/{run_id}", **extra}  # type: ignore[typeddict-item]
    headers = {"Location": body["url"]}
    if retry_after:  # a wait ran out: the run is still going (not a gateway failure, so not 504)
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return Response(body, status_code=202, headers=headers)


@post("/api/workflows/{name:str}/dry-run", status_code=200, opt={"scope": "read"}, tags=["workflows"],
      responses=_errors(400, 404, 409))
async def dry_run(request: Request, name: FromPath[str], data: JSONBody[DryRunRequest | None] = None) -> dict[str, Any]:
    """The plan of a run without running anything: order, inputs rendered where known, problems.

    With `mock` (step id -> answer, as in a test file): the run is executed by the real
    engine in a throwaway database, every step but `set` and `log` answered by its mock
    (each must have one), and the answer is that run's document."""
    if data is not None and data.version is not None:
        raise BadRequest("a dry run plans the version in force; `version` is for starting a run "
                         "(GET /api/workflows/{name}/versions/{version} shows an earlier one)", "VERSION_NOT_PLANNED")
    services = _services(request)
    definition = _definition(services, name)
    params = data.params if data else {}
    if data is None or data.mock is None:
        # rendering thousands of templates must not stall the event loop
        return await asyncio.to_thread(plan_run, definition, params, services.engine.environ,  # --secrets-file too
                                       from_text=bool(data and data.params_as_text))
    if not definition.valid:
        raise WorkflowInvalid(definition.name, definition.current_problems)
    mocks = rehearsal_mocks(definition, data.mock)
    return {"mocked": sorted(mocks.answers), **await rehearse(definition, params, mocks, dict(services.engine.environ))}


# -- runs --------------------------------------------------------------------------


@get("/api/runs", tags=["runs"], responses=_errors(400))
async def list_runs(
    request: Request, workflow: FromQuery[str | None] = None, status: FromQuery[RunStatus | None] = None,
    parent: FromQuery[str | None] = None, trigger: TriggerQuery = None, since: SinceQuery = None,
    until: UntilQuery = None, q: RunSearchQuery = None, backfill: FromQuery[str | None] = None,
    page: Page = 1, limit: Limit = 50,
) -> RunPage:
    """Runs, newest first; `parent` lists the child runs started by a run's `workflow` steps,
    `backfill` the runs a backfill started.

    `trigger` keeps runs started that way; `since`/`until` bound the start time (ISO 8601,
    or a duration ago such as `24h`); `q` searches run ids and params.
    """
    start, end = run_window(since, until)
    rows, total = await _services(request).store.list_runs(
        workflow=workflow, status=status.value if status else None, parent=parent, trigger=trigger,
        since=start, until=end, search=q, backfill=backfill, offset=(page - 1) * limit, limit=limit,
        workflows=visible_names(request))
    return {"items": [run_summary(r) for r in rows], "total": total, "page": page, "limit": limit}


@get("/api/runs/{run_id:str}", tags=["runs"], responses=_errors(404))
async def get_run(request: Request, run_id: FromPath[str], attempts: FromQuery[bool] = True,
                  wait: Wait = None) -> RunDoc:
    """The run and its steps in DAG order (steps that have not started are `pending`).

    Each step carries `attempt_list` (and `items` for a foreach) unless `attempts=false`.
    With `wait` (at most `5m`), answers once the run has ended or the wait is over,
    whichever comes first (read `status` to know which).
    """
    seconds = wait_seconds(wait)
    services = _services(request)
    if seconds is not None:
        await wait_for_end(services, run_id, seconds)  # RunNotFound: 404
    doc = await run_document(services.store, run_id, with_attempts=attempts)
    if doc is None:
        raise RunNotFound(run_id)
    return doc  # type: ignore[return-value]


@get("/api/runs/{run_id:str}/steps/{step_id:str}/logs", media_type=MediaType.TEXT, tags=["runs"],
     responses=_errors(404))
async def step_logs(request: Request, run_id: FromPath[str], step_id: FromPath[str],
                    after: LogCursor = 0) -> Response[str]:
    """The step's log as text: stdout, stderr and Treadle's notes, every attempt and item.

    When there is more than one attempt (or foreach item), each starts with a
    `--- attempt N ---` (or `--- item I, attempt N ---`) line. The `X-Log-Cursor` header
    names the last line sent: `?after=CURSOR` answers only what came since, in the order
    it was written (`treadle logs -f` follows a log so).
    """
    services = _services(request)
    store = services.store
    run = await store.get_run(run_id)
    if run is None:
        raise RunNotFound(run_id)
    chunks = await store.logs(run_id, step_id, after_id=after)
    if not after and not chunks and not any(r["step_id"] == step_id for r in await store.step_states(run_id)):
        # not started yet, or no such step: the run's own version of the file decides
        definition = await definition_of(services, run)
        if definition is None or definition.dag is None or step_id not in definition.dag.deps:
            raise NotFoundException(f"run '{run_id}' has no step '{step_id}'")
    cursor = max((c["id"] for c in chunks), default=after)
    if not after:
        chunks.sort(key=lambda c: (c["item"], c["attempt"], c["id"]))  # grouped by attempt; `after`: as written
    groups = {(c["item"], c["attempt"]) for c in chunks}
    out: list[str] = []
    current = None
    for chunk in chunks:
        key = (chunk["item"], chunk["attempt"])
        if len(groups) > 1 and key != current:
            if out and not out[-1].endswith("\n"):
                out.append("\n")
            label = f"item {key[0]}, attempt {key[1]}" if key[0] >= 0 else f"attempt {key[1]}"
            out.append(f"--- {label} ---\n")
            current = key
        out.append(chunk["text"])
    return Response("".join(out), media_type=MediaType.TEXT, headers={"X-Log-Cursor": str(cursor)})


_TIMES = ("created_at", "started_at", "finished_at", "at")


def _event_message(event: dict[str, Any]) -> ServerSentEventMessage:
    data = {k: (iso(v) if k in _TIMES and isinstance(v, int | float) else v) for k, v in event.items() if k != "type"}
    if event["type"] == "run":
        data["run_id"] = data.pop("id")
    return ServerSentEventMessage(data=msgspec.json.encode(data).decode(), event=event["type"])


def _run_over(event: dict[str, Any]) -> bool:
    return event["type"] == "run" and RunStatus(event.get("status", "running")).finished


@get("/api/runs/{run_id:str}/events", media_type="text/event-stream", tags=["runs"],  # /schema: not JSON
     responses=_errors(404))
async def run_events(request: Request, run_id: FromPath[str], logs: FromQuery[bool] = True) -> ServerSentEvent:
    """Server-sent events `run`, `step` and `log` (unless `logs=false`), one per change.

    The stream opens with the state as it is: a `step` event for each step that
    has started, then a `run` event. It ends after the `run` event of a finished
    run (so at once, after that state, for a run that has already finished).
    """
    services = _services(request)
    store = services.store
    if await store.get_run(run_id) is None:
        raise RunNotFound(run_id)

    async def snapshot() -> list[dict[str, Any]]:  # read after subscribing: no change is lost
        run = await store.get_run(run_id)
        steps = sorted(await store.step_states(run_id), key=lambda r: r["id"])
        return [{"type": "step", **{k: v for k, v in row.items() if k != "id"}} for row in steps] + (
            [{"type": "run", **{k: run[k] for k in _RUN_EVENT_KEYS}}] if run else [])

    seen: set[tuple] = set()  # a change committed while the snapshot was read comes twice: send it once

    def render(event: dict[str, Any]) -> ServerSentEventMessage | None:
        kind = event["type"]
        if kind == "log":
            return _event_message(event) if logs else None
        key = (kind, event.get("step_id"), event.get("item"), event.get("attempt"), event.get("status"))
        if key in seen:
            return None
        seen.add(key)
        return _event_message(event)

    return sse_response(broker_messages(services.broker, [f"run:{run_id}"], services.stopping,
                                        render=render, until=_run_over, first=snapshot))


_RUN_EVENT_KEYS = ("id", "workflow", "version", "status", "error", "outputs", "created_at", "started_at",
                   "finished_at", "retry_of", "parent_run_id")


@post("/api/runs/{run_id:str}/cancel", status_code=202, opt={"audit": "run.cancel"}, tags=["runs"], responses=_errors(404, 409))
async def cancel(request: Request, run_id: FromPath[str], data: JSONBody[CancelRequest | None] = None) -> Response[RunAccepted]:
    """Ask a run to stop: running steps are stopped (their process group is killed).

    With `{"compensate": true}`, the `compensate:` steps of what succeeded then run,
    newest first, as after a failure."""
    services = _services(request)
    if not await cancel_run(services, run_id, compensate=bool(data and data.compensate)):
        raise await cancel_conflict(services, run_id)
    run = await services.store.get_run(run_id)
    return _accepted(run_id, "cancelling", run["workflow"] if run else "")


@post("/api/runs/{run_id:str}/retry", status_code=202, opt={"audit": "run.retry"}, tags=["runs"], responses=_errors(400, 404, 409))
async def retry(request: Request, run_id: FromPath[str], data: JSONBody[RetryRequest | None] = None) -> Response[RunAccepted]:
    """A new run reusing the outputs of what succeeded upstream.

    With `from`, that step and everything after it run again; without it, the
    steps that did not succeed and everything after them.
    """
    from_step = data.from_ if data else None
    exe = await retry_run(_services(request), run_id, from_step)
    return _accepted(exe.id, exe.status.value, exe.definition.name, retry_of=run_id, retry_from=from_step)


# -- health ------------------------------------------------------------------------


def _git_status(services: Services) -> dict[str, Any] | None:
    sync = services.gitsync
    if sync is None:
        return None
    st = sync.state
    return {"url": redact_url(st.url), "branch": st.branch, "commit": st.commit, "error": st.error,
            "last_attempt_at": iso(st.last_attempt_at), "last_success_at": iso(st.last_success_at),
            "apply": st.apply, "incoming": st.incoming, "incoming_subject": st.incoming_subject or None}


# public: load balancers and probes call it without a token (the git URL loses its credentials)
@get("/health", tags=["health"], opt={"public": True},
     responses={503: ResponseSpec(Health, description="the database does not answer")})
async def health(request: Request) -> Response[Health]:
    """Liveness and a summary: version, database, active runs, the last 24 h, workflows."""
    services = _services(request)
    store = services.store
    database: dict[str, Any] = {"status": "ok", "backend": store.backend, "url": store.shown_url,
                                "write_errors": store.write_errors, "fenced": store.writer.fenced}
    runs: dict[str, Any] = {"active": None, "last_24h": {}}
    servers: list[dict[str, Any]] = []
    try:
        database["latency_ms"] = round(await store.ping() * 1000, 2)
        counts = await store.counts(time.time() - 86_400)
        runs["active"] = counts.pop("active")
        runs["last_24h"] = {k.removeprefix("last_24h_"): v for k, v in counts.items()}
        servers = [{"id": s["id"], "host": s["host"], "pid": s["pid"], "role": s["role"], "version": s["version"],
                    "started_at": iso(s["started_at"]), "heartbeat_at": iso(s["heartbeat_at"]),
                    "leader": s["leader_since"] is not None, "leases": s["leases"]}
                   for s in await store.leases.servers(within=LEASE_SECONDS)]
    except Exception as exc:  # the point of a health check: say so, do not fail
        database.update(status="error", error=f"{type(exc).__name__}: {exc}"[:500])
    entries = services.catalog.entries()
    broken = sum(not d.healthy for d in entries)
    ok = database["status"] == "ok"
    ended = sum(runs["last_24h"].get(s, 0) for s in ("succeeded", "failed"))
    runs["success_rate_24h"] = round(runs["last_24h"].get("succeeded", 0) / ended, 4) if ended else None
    sync = services.gitsync
    components = {
        "database": database["status"],
        "scheduler": "leader" if services.leader_since is not None else "standby",
        "watcher": "watching" if services.follower.watching else "off",
        "git": None if sync is None else ("error" if sync.state.error else "ok"),
    }
    body: Health = {
        "status": "ok" if ok else "degraded", "version": __version__,
        "uptime_s": round(time.time() - services.started_at, 1), "database": database, "runs": runs,
        "workflows": {"total": len(entries), "valid": len(entries) - broken, "broken": broken},
        "server": {"id": services.engine.owner, "leader": services.leader_since is not None,
                   "leader_since": iso(services.leader_since)},
        "servers": servers,
        "git": _git_status(services),
        "components": components,
    }
    return Response(body, status_code=200 if ok else 503)


# public like /health: a load balancer or a Kubernetes readiness probe calls it
@get("/ready", tags=["health"], opt={"public": True},
     responses={503: ResponseSpec(dict[str, Any], description="not ready: why")})
async def ready(request: Request) -> Response[dict[str, Any]]:
    """200 when this server can take work: definitions loaded, database migrated and
    answering, not shutting down; 503 with the reason otherwise (send no traffic)."""
    services = _services(request)
    reasons = []
    if services.stopping.is_set():
        reasons.append("shutting down")
    if not services.catalog.loaded:
        reasons.append("definitions not loaded yet")
    try:
        await services.store.ping()
    except Exception as exc:
        reasons.append(f"database: {type(exc).__name__}: {exc}"[:300])
    return Response({"ready": not reasons, "reasons": reasons}, status_code=503 if reasons else 200)


API_ROUTES = [list_workflows, get_workflow, create_run, dry_run, list_runs, get_run, step_logs, run_events,
              cancel, retry, health, ready]
