"""JSON API of backfills: start one for a workflow's schedule over a past range, watch
it (its runs and their counts), pause, resume or cancel it. The dashboard's forms
share these actions (web/pages_backfills.py)."""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath, FromQuery, JSONBody

from runner.engine.report import iso, run_summary
from runner.errors import BackfillNotFound, WorkflowNotFound
from runner.limits import MAX_BACKFILL_PARALLEL, MAX_BACKFILL_SLOTS
from runner.triggers.backfill import CANCELLED, PAUSED, RUNNING

from .api import Limit, Page, RunSummary, _errors, _services
from .auth import identity_of, visible_names
from .services import Services


class BackfillRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST /api/workflows/{name}/backfill."""

    from_: Annotated[str, msgspec.Meta(min_length=1, max_length=40)] = msgspec.field(name="from")
    to: Annotated[str, msgspec.Meta(min_length=1, max_length=40)] = msgspec.field()
    parallel: Annotated[int, msgspec.Meta(ge=1, le=MAX_BACKFILL_PARALLEL)] = 1
    rerun: bool = False  # also the slots that already have a run that succeeded or goes on
    schedule: Annotated[int, msgspec.Meta(ge=0)] | None = None  # which schedule, when there are several


# functional form: the JSON key `from` is a Python keyword
BackfillDoc = TypedDict("BackfillDoc", {
    "id": str, "workflow": str, "cron": str, "timezone": str,
    "from": str, "to": str,  # the range, ISO 8601 (UTC)
    "slots": int,  # slots in the range
    "parallel": int, "rerun": bool,
    "status": str,  # running | paused | cancelled | done
    "started": int,  # slots whose run was started
    "skipped": int,  # slots skipped: a run of them had succeeded or was going
    "remaining": int,  # slots not reached yet
    "runs": dict[str, int],  # the backfill's runs per status
    "created_at": str, "created_by": str | None, "finished_at": str | None,
    "url": str, "runs_url": str,  # its runs: GET /api/runs?backfill=ID
})


class BackfillPage(TypedDict):
    items: list[BackfillDoc]
    total: int
    page: int
    limit: int


class BackfillDetail(BackfillDoc):
    run_list: list[RunSummary]  # newest first, at most MAX_BACKFILL_SLOTS


def backfill_doc(row: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    return {"id": row["id"], "workflow": row["workflow"], "cron": row["cron"], "timezone": row["timezone"],
            "from": iso(row["range_from"]), "to": iso(row["range_to"]), "slots": row["slots"],
            "parallel": row["parallel"], "rerun": bool(row["rerun"]), "status": row["status"],
            "started": row["started"], "skipped": row["skipped"],
            "remaining": max(row["slots"] - row["started"] - row["skipped"], 0), "runs": counts,
            "created_at": iso(row["created_at"]), "created_by": row["created_by"],
            "finished_at": iso(row["finished_at"]), "url": f"/api/backfills/{row['id']}",
            "runs_url": f"/api/runs?backfill={row['id']}"}


async def visible_backfill(request: Request, backfill_id: str) -> dict[str, Any]:
    """The backfill row, if the requester may see its workflow; BackfillNotFound otherwise."""
    row = await _services(request).store.backfills.get(backfill_id)
    names = visible_names(request)
    if row is None or (names is not None and row["workflow"] not in names):
        raise BackfillNotFound(backfill_id)
    return row


async def start_backfill(services: Services, name: str, data: BackfillRequest, by: str | None) -> dict[str, Any]:
    """Record a backfill of `name` (shared with the dashboard). Raises WorkflowNotFound,
    BadRequest (range, parallel, size), RunConflict (no schedule), WorkflowInvalid."""
    definition = services.catalog.get(name)
    if definition is None:
        raise WorkflowNotFound(name, services.catalog.names())
    assert services.backfills is not None
    row = await services.backfills.create(definition, data.from_, data.to, parallel=data.parallel, rerun=data.rerun,
                                          schedule=data.schedule, by=by)
    return backfill_doc(row, {})


@post("/api/workflows/{name:str}/backfill", status_code=201, opt={"audit": "backfill.start"}, tags=["backfills"],
      responses=_errors(400, 404, 409))
async def create_backfill(request: Request, name: FromPath[str], data: JSONBody[BackfillRequest]) -> Response[BackfillDoc]:
    """Start the runs the workflow's schedule would have made for each slot from `from`
    to `to` (days are whole days in the schedule's zone), `parallel` at once, as one
    group; slots already run are skipped unless `rerun`. At most 1,000 slots."""
    doc = await start_backfill(_services(request), name, data, identity_of(request).name)
    return Response(doc, status_code=201, headers={"Location": doc["url"]})  # type: ignore[arg-type]


@get("/api/backfills", tags=["backfills"], responses=_errors(400))
async def list_backfills(request: Request, workflow: FromQuery[str | None] = None, page: Page = 1,
                         limit: Limit = 50) -> BackfillPage:
    """Backfills, newest first (of `workflow`)."""
    store = _services(request).store
    rows, total = await store.backfills.list(workflow=workflow, workflows=visible_names(request),
                                             offset=(page - 1) * limit, limit=limit)
    items = [backfill_doc(r, await store.backfills.run_counts(r["id"])) for r in rows]
    return {"items": items, "total": total, "page": page, "limit": limit}  # type: ignore[typeddict-item]


@get("/api/backfills/{backfill_id:str}", tags=["backfills"], responses=_errors(404))
async def get_backfill(request: Request, backfill_id: FromPath[str]) -> BackfillDetail:
    """One backfill: its progress, its runs per status, and the runs themselves."""
    store = _services(request).store
    row = await visible_backfill(request, backfill_id)
    runs, _ = await store.list_runs(backfill=backfill_id, limit=MAX_BACKFILL_SLOTS)
    return {**backfill_doc(row, await store.backfills.run_counts(backfill_id)),  # type: ignore[typeddict-item]
            "run_list": [run_summary(r) for r in runs]}


async def change_backfill(request: Request, backfill_id: str, status: str) -> dict[str, Any]:
    services = _services(request)
    row = await visible_backfill(request, backfill_id)
    assert services.backfills is not None
    changed = await services.backfills.set_state(backfill_id, status)
    row = await services.store.backfills.get(backfill_id) or row
    return {**backfill_doc(row, await services.store.backfills.run_counts(backfill_id)), "changed": changed}


class BackfillChange(BackfillDoc):
    changed: bool  # false when it was not in a state that allows it (ended, or already so)


@post("/api/backfills/{backfill_id:str}/pause", status_code=200, opt={"audit": "backfill.pause"},
      tags=["backfills"], responses=_errors(404))
async def pause_backfill(request: Request, backfill_id: FromPath[str]) -> BackfillChange:
    """Start no new run of the backfill (its runs going finish) until resumed."""
    return await change_backfill(request, backfill_id, PAUSED)  # type: ignore[return-value]


@post("/api/backfills/{backfill_id:str}/resume", status_code=200, opt={"audit": "backfill.resume"},
      tags=["backfills"], responses=_errors(404))
async def resume_backfill(request: Request, backfill_id: FromPath[str]) -> BackfillChange:
    """Go on where the paused backfill stopped."""
    return await change_backfill(request, backfill_id, RUNNING)  # type: ignore[return-value]


@post("/api/backfills/{backfill_id:str}/cancel", status_code=200, opt={"audit": "backfill.cancel"},
      tags=["backfills"], responses=_errors(404))
async def cancel_backfill(request: Request, backfill_id: FromPath[str]) -> BackfillChange:
    """Start no new run of the backfill, and cancel its runs that go on."""
    return await change_backfill(request, backfill_id, CANCELLED)  # type: ignore[return-value]


BACKFILL_ROUTES = [create_backfill, list_backfills, get_backfill, pause_backfill, resume_backfill, cancel_backfill]
