"""Dashboard pages (SPEC §5): server-rendered Jinja2, made live with htmx over SSE.

Every page and fragment is rendered from the database (and the catalog for
definitions); the page streams in `live.py` only say when to fetch again. Forms carry
a CSRF token and are checked in `auth.py` (origin, identity, scope); they redirect
(303) after success.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, pass_context
from litestar import Request, get, post
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Redirect, ServerSentEvent, Template
from markupsafe import Markup

from runner.dsl.casefile import test_file_beside
from runner.dsl.durations import format_duration
from runner.dsl.loader import Definition
from runner.errors import ParamError, RunNotFound, SecretMissing, TreadleError, WorkflowInvalid

from . import live
from .api import _git_status, pin_info
from .api_approvals import decide, decided_by
from .api_breakers import reset_breakers, shown_breakers
from .api_metrics import workflow_stats
from .api_notifications import delivery_doc
from .api_triggers import trigger_summary
from .auth import visible, visible_names
from .charts import runs_chart
from .dag_view import STATES, state_class, states_json, step_counts, structure_json
from .filters import RUN_TRIGGERS, WORKFLOW_STATES, run_window, workflow_matches
from .forms import as_text, form_fields, posted_params
from .run_view import (
    RunView,
    load_run_view,
    load_step_detail,
    log_chunks,
    script_of,
    show_value,
    state_filter,
)
from .services import RunConflict, Services, cancel_run, retry_run, start_run
from .sse import sse_response

RUNS_PER_PAGE = 25
HISTORY_PER_PAGE = 10
VERSIONS_SHOWN = 10
RUN_STATES = ("queued", "running", "waiting", "succeeded", "failed", "cancelled", "skipped")
APPROVALS_SHOWN = 10
StateQuery = Annotated[str | None, QueryParameter(name="state")]  # `state` is reserved by Litestar


def _services(request: Request) -> Services:
    return request.app.state.services


def _page_number(value: int | None) -> int:
    return max(1, value or 1)


def error_page(status: int, title: str, message: str) -> Template:
    return Template("error.html", context={"title": title, "message": message}, status_code=status)


def no_workflow(name: str) -> Template:
    return error_page(404, "No such workflow", f"There is no workflow named '{name}' in the definitions folder.")


def no_run(run_id: str) -> Template:
    return error_page(404, "No such run", f"There is no run with id '{run_id}'.")


# -- workflows -----------------------------------------------------------------------


def namespace(definition: Definition) -> str:
    folder = definition.path.rpartition("/")[0]
    return folder + "/" if folder else ""


HISTORY_STRIP = 14  # recent runs per workflow in the list's strip


def next_fire(services: Services, definition: Definition) -> float | None:
    """When a schedule of `definition` next starts it (the soonest of its schedules)."""
    if services.scheduler is None or not definition.spec or not definition.spec.triggers.schedule:
        return None
    slots = [datetime.fromisoformat(f["next"]).timestamp() for f in services.scheduler.next_fires(definition)
             if f["next"]]
    return min(slots, default=None)


@get("/", name="page-workflows", include_in_schema=False)
async def workflows_page(request: Request, q: FromQuery[str | None] = None, tag: FromQuery[str | None] = None,
                         state_q: StateQuery = None) -> Template:
    services = _services(request)
    entries = visible(request, services.catalog.entries())
    last = await services.store.last_runs()
    paused = await services.state.paused()
    state = state_q if state_q in WORKFLOW_STATES else None
    shown = [d for d in entries if workflow_matches(d, tag=tag, q=q, state=state, last=last.get(d.name),
                                                    paused=d.name in paused)]
    history = await services.store.recent_runs(HISTORY_STRIP)
    rows = [{"d": d, "ns": namespace(d), "last": last.get(d.name), "next": next_fire(services, d),
             "history": history.get(d.name, [])[::-1]} for d in shown]  # oldest to newest, left to right
    broken = [d for d in entries if not d.healthy]
    tags = sorted({t for d in entries if d.spec for t in d.spec.tags})
    sync = _git_status(services)  # the URL without its credentials
    breakers = [b.snapshot() for b in shown_breakers(request)]
    waiting, waiting_total = await services.engine.approvals.pending(limit=APPROVALS_SHOWN,
                                                                     workflows=visible_names(request))
    return Template("workflows.html", context={"rows": rows, "broken": broken, "nav": "workflows", "sync": sync,
                                               "paused": paused, "total": len(entries), "tags": tags,
                                               "filters": {"q": q or "", "tag": tag or "", "state": state or ""},
                                               "workflow_states": WORKFLOW_STATES,
                                               "pins": {n: pin_info(p) for n, p in (await services.state.pins()).items()
                                                        if n in {d.name for d in entries}},
                                               "breakers": breakers, "approvals": waiting,
                                               "approvals_total": waiting_total})


@post("/circuit-breakers/reset", name="page-reset-breaker", include_in_schema=False,
      opt={"audit": "breaker.reset", "scope": "admin"})
async def reset_breaker_from_form(request: Request) -> Template | Redirect:
    host = str((await request.form()).get("host") or "")
    if not reset_breakers(request, host):
        return error_page(404, "No such circuit breaker", f"No circuit breaker for '{host}'.")
    return Redirect("/", status_code=303)


def _graph(request: Request, definition: Definition | None) -> Markup | None:
    """The graph's structure as JSON for web/static/dag.js (None: the file has no graph).
    A child workflow's step count is shown only to who may see that workflow."""
    names = visible_names(request)
    return structure_json(definition, step_counts(_services(request).catalog.get,
                                                  None if names is None else set(names)))


async def _workflow_context(request: Request, definition: Definition, page: int) -> dict[str, Any]:
    services = _services(request)
    runs, total = await services.store.list_runs(workflow=definition.name, offset=(page - 1) * HISTORY_PER_PAGE,
                                                 limit=HISTORY_PER_PAGE)
    bad_lines = {p.line for p in definition.current_problems}
    versions, version_total = await services.store.versions(definition.name, limit=VERSIONS_SHOWN)
    return {
        "d": definition, "ns": namespace(definition), "graph": _graph(request, definition), "runs": runs,
        "page": page, "pages": max(1, -(-total // HISTORY_PER_PAGE)), "total": total, "nav": "workflows",
        "lines": (definition.broken or definition).source.splitlines(), "bad_lines": bad_lines,
        "versions": versions, "version_total": version_total,
        "fields": form_fields(definition.spec.params) if definition.spec is not None else [],
        "form_error": None, "triggers": await trigger_summary(services, definition),
        "test_file": test_file_beside(services.catalog.root, definition.path),
        "pin": pin_info(await services.state.pin(definition.name)),
        "backfills": (await services.store.backfills.list(workflow=definition.name, limit=5))[0],
        **await _stats(services, definition.name),
    }


async def _stats(services: Services, name: str) -> dict[str, Any]:
    stats = await workflow_stats(services, name, "7d")
    return {"stats": stats, "chart": runs_chart(stats["recent"])}


@get("/workflows/{name:str}", name="page-workflow", include_in_schema=False)
async def workflow_page(request: Request, name: FromPath[str], page: FromQuery[int | None] = None,
                        from_run: FromQuery[str | None] = None) -> Template:
    services = _services(request)
    definition = services.catalog.get(name)
    if definition is None:
        return no_workflow(name)
    context = await _workflow_context(request, definition, _page_number(page))
    if from_run and definition.spec is not None:
        # "Run again with these params": the start form filled with that run's values
        run = await services.store.get_run(from_run[:64])
        if run is not None and run["workflow"] == definition.name:
            given = {k: as_text(v) for k, v in (run["params"] or {}).items() if k in definition.spec.params}
            context["fields"] = form_fields(definition.spec.params, given)
            context["from_run"] = run["id"]
    return Template("workflow.html", context=context)


@post("/workflows/{name:str}/runs", name="page-start-run", include_in_schema=False, opt={"audit": "run.start"})
async def start_from_form(request: Request, name: FromPath[str]) -> Template | Redirect:
    services = _services(request)
    definition = services.catalog.get(name)
    if definition is None:
        return no_workflow(name)
    context = await _workflow_context(request, definition, 1)
    if definition.spec is None or not definition.valid:
        context["form_error"] = "This workflow's file has problems; fix them before starting a run."
        return Template("workflow.html", context=context, status_code=409)
    form = await request.form()
    values = posted_params(definition.spec.params, form)
    params: dict[str, Any] = {}
    for field in form_fields(definition.spec.params, values):
        if field.name not in values:
            continue
        if values[field.name] == "" and (field.required or field.options):
            continue  # an empty required field, or the empty choice of a select: not given
        params[field.name] = values[field.name]
    try:
        launch = await start_run(services, name, params, from_text=True, trigger="dashboard")
    except ParamError as exc:
        context["fields"] = form_fields(definition.spec.params, values, exc.errors)
        context["form_error"] = "Some values are not right; see the marked fields."
        return Template("workflow.html", context=context, status_code=400)
    except TreadleError as exc:  # invalid file, missing secret: the server's setup (409)
        context["fields"] = form_fields(definition.spec.params, values)
        context["form_error"] = str(exc)
        status = 409 if isinstance(exc, WorkflowInvalid | SecretMissing | RunConflict) else 400
        return Template("workflow.html", context=context, status_code=status)
    return Redirect(f"/runs/{quote(launch.run_id or '', safe='')}", status_code=303)


# -- runs ------------------------------------------------------------------------------


@get("/runs", name="page-runs", include_in_schema=False)
async def runs_page(request: Request, workflow: FromQuery[str | None] = None, state_q: StateQuery = None,
                    trigger: FromQuery[str | None] = None, since: FromQuery[str | None] = None,
                    until: FromQuery[str | None] = None, q: FromQuery[str | None] = None,
                    parent: FromQuery[str | None] = None, page: FromQuery[int | None] = None) -> Template:
    services = _services(request)
    page = _page_number(page)
    status = state_q if state_q in RUN_STATES else None
    trigger = trigger if trigger in RUN_TRIGGERS else None
    names = visible_names(request)
    filters = {"workflow": workflow or "", "state": status or "", "trigger": trigger or "",
               "since": since or "", "until": until or "", "q": (q or "")[:200], "parent": (parent or "")[:64]}
    try:
        start, end = run_window(since, until)
    except ValidationException as e:  # the form stays as typed, with the reason beside it
        start = end = None
        filters_error = str(e.detail)
    else:
        filters_error = ""
    runs, total = await services.store.list_runs(
        workflow=workflow or None, status=status, workflows=names, trigger=trigger, since=start, until=end,
        search=filters["q"] or None, parent=filters["parent"] or None, offset=(page - 1) * RUNS_PER_PAGE, limit=RUNS_PER_PAGE)
    context = {
        "runs": runs, "total": total, "page": page, "pages": max(1, -(-total // RUNS_PER_PAGE)),
        **filters, "filters": filters, "filters_error": filters_error, "nav": "runs",
        "filtered": any(filters.values()),
        "names": services.catalog.names() if names is None else sorted(names),
        "run_states": RUN_STATES, "run_triggers": RUN_TRIGGERS,
    }
    return Template("runs.html", context=context)


@get("/catalog/stream", name="page-catalog-stream", include_in_schema=False)
async def catalog_stream(request: Request) -> ServerSentEvent:
    return sse_response(live.catalog_stream(_services(request)))


@get("/runs/stream", name="page-runs-stream", include_in_schema=False)
async def runs_stream(request: Request) -> ServerSentEvent:
    return sse_response(live.runs_stream(_services(request)))


def _run_context(view: RunView, page: int | None, state: str | None, step: str | None) -> dict[str, Any]:
    rows, page, pages = view.page(page or (view.page_of(step, state) if step else 1), state)
    return {"view": view, "run": view.run, "rows": rows, "page": page, "pages": pages, "state": state or "",
            "step": step or "", "graph_states": states_json(view), "live": not view.finished, "nav": "runs"}


async def _detail_context(services: Services, run: dict[str, Any], step: str | None) -> dict[str, Any]:
    if not step:
        return {"detail": None, "chunks": [], "cut": False, "after": 0}
    detail = await load_step_detail(services, run, step)
    chunks, cut = await log_chunks(services, run["id"], step) if detail else ([], False)
    return {"detail": detail, "chunks": chunks, "cut": cut, "after": chunks[-1]["id"] if chunks else 0}


@get("/runs/{run_id:str}", name="page-run", include_in_schema=False)
async def run_page(request: Request, run_id: FromPath[str], step: FromQuery[str | None] = None,
                   page: FromQuery[int | None] = None, state_q: StateQuery = None) -> Template:
    services = _services(request)
    view = await load_run_view(services, run_id)
    if view is None:
        return no_run(run_id)
    if not step and view.failures:
        step = view.failures[0]["step"]  # open the root cause of a failed run
    context = _run_context(view, page, state_filter(state_q), step)
    context["graph"] = _graph(request, view.definition)
    context.update(await _detail_context(services, view.run, step))
    context["deliveries"] = [delivery_doc(r) for r in await services.store.notifications.of_run(run_id)]
    return Template("run.html", context=context)


@get("/runs/{run_id:str}/live", name="page-run-live", include_in_schema=False)
async def run_live(request: Request, run_id: FromPath[str], step: FromQuery[str | None] = None,
                   page: FromQuery[int | None] = None, state_q: StateQuery = None) -> Template:
    """Every live part of the run page at once, as out-of-band swaps (one read per refresh)."""
    services = _services(request)
    view = await load_run_view(services, run_id)
    if view is None:
        return no_run(run_id)
    context = _run_context(view, page, state_filter(state_q), step)
    context["detail"] = await load_step_detail(services, view.run, step) if step else None
    return Template("_run_live.html", context={**context, "oob": True})


@get("/runs/{run_id:str}/steps-table", name="page-run-steps", include_in_schema=False)
async def run_steps_part(request: Request, run_id: FromPath[str], page: FromQuery[int | None] = None,
                         state_q: StateQuery = None) -> Template:
    services = _services(request)
    view = await load_run_view(services, run_id)
    if view is None:
        return no_run(run_id)
    return Template("_run_steps.html", context=_run_context(view, page, state_filter(state_q), None))


@get("/runs/{run_id:str}/stream", name="page-run-stream", include_in_schema=False)
async def run_stream(request: Request, run_id: FromPath[str]) -> ServerSentEvent:
    return sse_response(live.run_stream(_services(request), run_id))


@get("/runs/{run_id:str}/steps/{step_id:str}", name="page-step", include_in_schema=False)
async def step_part(request: Request, run_id: FromPath[str], step_id: FromPath[str]) -> Template | Redirect:
    """The step panel (htmx); a plain visit goes to the run page with the step open."""
    if request.headers.get("hx-request") != "true":
        return Redirect(f"/runs/{quote(run_id, safe='')}?{urlencode({'step': step_id})}", status_code=303)
    services = _services(request)
    run = await services.store.get_run(run_id)
    if run is None:
        return no_run(run_id)
    context = await _detail_context(services, run, step_id)
    return Template("_step_detail.html", context={**context, "run": run, "step": step_id,
                                                  "live": run["status"] not in live.FINISHED})


@get("/runs/{run_id:str}/steps/{step_id:str}/log", name="page-step-log", include_in_schema=False)
async def step_log_part(request: Request, run_id: FromPath[str], step_id: FromPath[str],
                        after: FromQuery[int] = 0) -> Template:
    """Log chunks after id `after`, to append; plus the new `after` (out of band)."""
    chunks, _ = await log_chunks(_services(request), run_id, step_id, after)
    return Template("_log_chunks.html", context={"chunks": chunks, "after": chunks[-1]["id"] if chunks else after,
                                                 "step": step_id, "oob": True})


@post("/runs/{run_id:str}/cancel", name="page-cancel", include_in_schema=False, opt={"audit": "run.cancel"})
async def cancel_from_form(request: Request, run_id: FromPath[str]) -> Template | Redirect:
    try:
        await cancel_run(_services(request), run_id)
    except RunNotFound:
        return no_run(run_id)
    return Redirect(f"/runs/{quote(run_id, safe='')}", status_code=303)


@post("/runs/{run_id:str}/retry", name="page-retry", include_in_schema=False, opt={"audit": "run.retry"})
async def retry_from_form(request: Request, run_id: FromPath[str]) -> Template | Redirect:
    form = await request.form()
    from_step = form.get("from") or None
    try:
        exe = await retry_run(_services(request), run_id, from_step)
    except RunNotFound:
        return no_run(run_id)
    except TreadleError as exc:  # invalid file, run still going (409); no such step (400)
        conflict = isinstance(exc, WorkflowInvalid | RunConflict)
        return error_page(409 if conflict else 400, "Cannot retry", str(exc))
    return Redirect(f"/runs/{quote(exe.id, safe='')}", status_code=303)


async def _decide_from_form(request: Request, run_id: str, step_id: str, approve: bool) -> Template | Redirect:
    form = await request.form()
    index = str(form.get("index") or "").strip()
    if index and not index.isdigit():
        return error_page(400, "Cannot record the decision", f"index must be a whole number, not '{index}'.")
    try:
        await decide(_services(request), run_id, step_id, approve, by=decided_by(request, str(form.get("by") or ""), "dashboard"),
                     comment=str(form.get("comment") or "")[:2000], index=int(index) if index else None)
    except RunNotFound:
        return no_run(run_id)
    except NotFoundException as exc:
        return error_page(404, "No such step", str(exc.detail))
    except RunConflict as exc:
        return error_page(409, "Nothing to decide", str(exc))
    return Redirect(f"/runs/{quote(run_id, safe='')}", status_code=303)


@post("/runs/{run_id:str}/steps/{step_id:str}/approve", name="page-approve", include_in_schema=False,
      opt={"audit": "approval.approve"})
async def approve_from_form(request: Request, run_id: FromPath[str], step_id: FromPath[str]) -> Template | Redirect:
    return await _decide_from_form(request, run_id, step_id, True)


@post("/runs/{run_id:str}/steps/{step_id:str}/reject", name="page-reject", include_in_schema=False,
      opt={"audit": "approval.reject"})
async def reject_from_form(request: Request, run_id: FromPath[str], step_id: FromPath[str]) -> Template | Redirect:
    return await _decide_from_form(request, run_id, step_id, False)


PAGE_ROUTES: list = [
    workflows_page, reset_breaker_from_form, workflow_page, start_from_form, runs_page, runs_stream, catalog_stream, run_page, run_live,
    run_steps_part, run_stream, step_part, step_log_part, cancel_from_form, retry_from_form, approve_from_form,
    reject_from_form,
]


# -- template helpers ----------------------------------------------------------------


def _clock(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts is not None else ""


def _logtime(ts: float | None) -> str:
    """A log line's time of day in UTC, to the millisecond (the day is the run's)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S.%f")[:-3] if ts is not None else ""


def _span(delta: float) -> str:
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if delta >= size:
            return f"{int(delta // size)} {unit}"
    return f"{int(delta)} s"


def _ago(ts: float | None) -> str:
    return "never" if ts is None else f"{_span(max(0.0, time.time() - ts))} ago"


def _until(ts: float | None) -> str:
    """`in 19 h` for a time to come (`now` once it is due)."""
    if ts is None:
        return "-"
    delta = ts - time.time()
    return f"in {_span(delta)}" if delta >= 1 else "now"


def _duration(start: float | None, end: float | None = None) -> str:
    if start is None:
        return "-"
    return format_duration(max(0.0, (end if end is not None else time.time()) - start))


def _seconds(value: float | None) -> str:
    return format_duration(value) if value is not None else "-"


def _query(**values: Any) -> str:
    """A query string of the non-empty values (for links that keep filters)."""
    return urlencode({k: v for k, v in values.items() if v not in (None, "", 0)})


@pass_context
def _csrf_field(context: Any) -> Markup:
    """The hidden CSRF field every form posting to the dashboard carries (see auth.py)."""
    request = context.get("request")
    token = request.scope.get("state", {}).get("csrf", "") if request is not None else ""
    return Markup('<input type="hidden" name="csrf_token" value="{}">').format(token)


@pass_context
def _viewer(context: Any) -> Any:
    """Who is looking: the identity auth.py found (None outside a request)."""
    request = context.get("request")
    return request.scope.get("state", {}).get("identity") if request is not None else None


def register_template_helpers(env: Environment) -> None:
    """Filters and globals the page templates use."""
    env.filters.update({
        "clock": _clock, "iso": _iso, "ago": _ago, "until": _until, "logtime": _logtime, "seconds": _seconds, "urlquote": lambda v: quote(str(v), safe=""),
        "show": show_value,
    })
    env.globals.update({"duration": _duration, "query": _query, "script_of": script_of, "STATES": STATES, "sc": state_class,
                        "csrf_field": _csrf_field, "viewer": _viewer})
    env.trim_blocks = True
    env.lstrip_blocks = True
