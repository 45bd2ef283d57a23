"""Dashboard pages of plans: the incoming commit's plan (with the manual gate of
`serve --git URL --apply manual`), any two revisions' plan, and the plan beside the
text diff of two versions of one workflow."""

from __future__ import annotations

from typing import Any

from litestar import Request, get, post
from litestar.params import FromQuery
from litestar.response import Redirect, Template

from runner.errors import GitSyncError, RevisionError
from runner.gitops.plan_format import SIGN, lines_of, summary

from .api import _git_status
from .api_plan import plan_for
from .auth import identity_of
from .pages import _services, error_page


def drawn(plan: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each workflow of a plan with its lines as the terminal view has them."""
    return [{**entry, "sign": SIGN[entry["change"]], "lines": lines_of(entry)} for entry in plan]


@get("/plan", name="page-plan", include_in_schema=False)
async def plan_page(request: Request, base: FromQuery[str | None] = None,
                    head: FromQuery[str | None] = None) -> Template:
    services = _services(request)
    try:
        doc = await plan_for(request, base, head)
    except RevisionError as exc:
        return error_page(400, "No plan", str(exc))
    sync = _git_status(services)  # the URL without its credentials
    identity = identity_of(request)
    incoming = sync["incoming"] if sync is not None else None
    can_apply = (incoming is not None and doc["head"]["commit"] == incoming and identity.allows("admin")
                 and identity.namespace is None)
    return Template("plan.html", context={
        "doc": doc, "entries": drawn(doc["workflows"]), "summary": summary(doc["workflows"]), "sync": sync,
        "incoming": incoming, "can_apply": can_apply, "nav": "workflows"})


@post("/plan/apply", name="page-plan-apply", include_in_schema=False,
      opt={"scope": "admin", "global": True, "audit": "git.apply"})
async def apply_from_form(request: Request) -> Template | Redirect:
    commit = str((await request.form()).get("commit") or "")
    try:
        await _services(request).follower.apply_incoming(commit)
    except GitSyncError as exc:
        return error_page(409, "Not applied", str(exc))
    return Redirect("/plan", status_code=303)


PLAN_PAGES = [plan_page, apply_from_form]
