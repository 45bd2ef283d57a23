"""Dashboard pages of backfills: the form on a workflow's page, a page per backfill
(progress, its runs, pause/resume/cancel), refreshed live as its runs change."""

from __future__ import annotations

from urllib.parse import quote

import msgspec
from litestar import Request, get, post
from litestar.params import FromPath
from litestar.response import Redirect, Template

from runner.errors import BackfillNotFound, TreadleError, WorkflowNotFound
from runner.limits import MAX_BACKFILL_SLOTS
from runner.triggers.backfill import CANCELLED, PAUSED, RUNNING

from .api_backfills import (
    BackfillRequest,
    backfill_doc,
    change_backfill,
    start_backfill,
    visible_backfill,
)
from .auth import identity_of
from .pages import _services, error_page, no_workflow


def _no_backfill(backfill_id: str) -> Template:
    return error_page(404, "No such backfill", f"There is no backfill '{backfill_id}'.")


@post("/workflows/{name:str}/backfill", name="page-backfill-start", include_in_schema=False,
      opt={"audit": "backfill.start"})
async def backfill_from_form(request: Request, name: FromPath[str]) -> Template | Redirect:
    form = await request.form()
    try:
        data = msgspec.convert({
            "from": str(form.get("from") or ""), "to": str(form.get("to") or ""),
            "parallel": int(str(form.get("parallel") or "1")), "rerun": form.get("rerun") in ("on", "true", "1"),
            "schedule": int(str(form.get("schedule"))) if form.get("schedule") not in (None, "") else None,
        }, BackfillRequest)
    except (ValueError, msgspec.ValidationError) as exc:
        return error_page(400, "Cannot start the backfill", f"{exc}; go back and correct the form.")
    try:
        doc = await start_backfill(_services(request), name, data, identity_of(request).name)
    except WorkflowNotFound:
        return no_workflow(name)
    except TreadleError as exc:
        return error_page(exc.http_status or 400, "Cannot start the backfill", str(exc))
    return Redirect(f"/backfills/{quote(doc['id'], safe='')}", status_code=303)


@get("/backfills/{backfill_id:str}", name="page-backfill", include_in_schema=False)
async def backfill_page(request: Request, backfill_id: FromPath[str]) -> Template:
    store = _services(request).store
    try:
        row = await visible_backfill(request, backfill_id)
    except BackfillNotFound:
        return _no_backfill(backfill_id)
    runs, _ = await store.list_runs(backfill=backfill_id, limit=MAX_BACKFILL_SLOTS)
    return Template("backfill.html", context={"b": backfill_doc(row, await store.backfills.run_counts(backfill_id)),
                                              "runs": runs, "nav": "runs"})


async def _change(request: Request, backfill_id: str, status: str) -> Template | Redirect:
    try:
        await change_backfill(request, backfill_id, status)
    except BackfillNotFound:
        return _no_backfill(backfill_id)
    return Redirect(f"/backfills/{quote(backfill_id, safe='')}", status_code=303)


@post("/backfills/{backfill_id:str}/pause", name="page-backfill-pause", include_in_schema=False,
      opt={"audit": "backfill.pause"})
async def pause_from_form(request: Request, backfill_id: FromPath[str]) -> Template | Redirect:
    return await _change(request, backfill_id, PAUSED)


@post("/backfills/{backfill_id:str}/resume", name="page-backfill-resume", include_in_schema=False,
      opt={"audit": "backfill.resume"})
async def resume_from_form(request: Request, backfill_id: FromPath[str]) -> Template | Redirect:
    return await _change(request, backfill_id, RUNNING)


@post("/backfills/{backfill_id:str}/cancel", name="page-backfill-cancel", include_in_schema=False,
      opt={"audit": "backfill.cancel"})
async def cancel_from_form(request: Request, backfill_id: FromPath[str]) -> Template | Redirect:
    return await _change(request, backfill_id, CANCELLED)


BACKFILL_PAGES = [backfill_from_form, backfill_page, pause_from_form, resume_from_form, cancel_from_form]
