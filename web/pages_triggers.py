"""Dashboard forms of triggers: pause and resume a workflow."""

from __future__ import annotations

from urllib.parse import quote

from litestar import Request, post
from litestar.params import FromPath
from litestar.response import Redirect, Template

from runner.errors import WorkflowNotFound

from .api import _services
from .api_triggers import set_paused
from .pages import no_workflow


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


TRIGGER_PAGES = [pause_from_form, resume_from_form]
