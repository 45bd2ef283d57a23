"""The triggers overview page, and the dashboard forms that pause and resume a workflow."""

from __future__ import annotations

from urllib.parse import quote

from litestar import Request, get, post
from litestar.params import FromPath
from litestar.response import Redirect, Template

from runner.errors import WorkflowNotFound

from .api import _services
from .api_triggers import set_paused, trigger_summary
from .auth import visible
from .pages import next_fire, no_workflow


@get("/triggers", name="page-triggers", include_in_schema=False)
async def triggers_page(request: Request) -> Template:
    """Every way each workflow starts by itself, soonest schedule first: what fires
    next at a glance, and which workflows are paused."""
    services = _services(request)
    rows = []
    for definition in visible(request, services.catalog.entries()):
        if not definition.valid:
            continue
        summary = await trigger_summary(services, definition)
        automatic = summary["schedules"] or summary["webhook"] or summary["events"] or summary["files"] \
            or summary["after"]
        if automatic:
            rows.append({"t": summary, "next": next_fire(services, definition)})
    rows.sort(key=lambda r: (r["next"] is None, r["next"] or 0, r["t"]["workflow"]))
    return Template("triggers.html", context={"rows": rows, "nav": "triggers"})


async def _set(request: Request, name: str, paused: bool) -> Template | Redirect:
    try:
        await set_paused(_services(request), name, paused)
    except WorkflowNotFound:
        return no_workflow(name)
    return Redirect(f"/workflows/{quote(name, safe='')}#triggers", status_code=303)


@post("/workflows/{name:str}/pause", name="page-pause", include_in_schema=False,
      opt={"scope": "admin", "audit": "workflow.pause"})
async def pause_from_form(request: Request, name: FromPath[str]) -> Template | Redirect:
    return await _set(request, name, True)


@post("/workflows/{name:str}/resume", name="page-resume", include_in_schema=False,
      opt={"scope": "admin", "audit": "workflow.resume"})
async def resume_from_form(request: Request, name: FromPath[str]) -> Template | Redirect:
    return await _set(request, name, False)


TRIGGER_PAGES = [triggers_page, pause_from_form, resume_from_form]
