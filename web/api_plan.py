"""Plans over the API: what a git revision of the definitions changes (`/api/plan`), and
applying the incoming commit of a server that follows a repository with `--apply
manual` (`/api/sync/apply`)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.params import FromQuery, JSONBody

from runner.errors import GitSyncError
from runner.gitops.plan import plan_between
from runner.security.tokens import namespace_of

from .api import _errors, _git_status, _services
from .auth import identity_of
from .services import RunConflict, Services


def default_head(services: Services) -> str | None:
    """What a plan compares with the commit in force: the incoming commit of a manual
    git sync, else the folder as it is (uncommitted edits included)."""
    sync = services.gitsync
    return sync.state.incoming if sync is not None and sync.state.incoming else None


async def plan_for(request: Request, base: str | None, head: str | None) -> dict[str, Any]:
    """The plan, limited to the workflows the requester's namespace may see."""
    services = _services(request)
    identity = identity_of(request)
    visible = None if identity.namespace is None else (lambda d: identity.sees(namespace_of(d.path)))
    doc = await asyncio.to_thread(plan_between, services.catalog.root, base or "HEAD",
                                  head if head else default_head(services), visible=visible)
    # a pinned workflow keeps running its pinned version whatever the change says
    doc["pinned"] = {name: pin["version"] for name, pin in sorted((await services.state.pins()).items())
                     if (d := services.catalog.get(name)) is None or visible is None or visible(d)}
    return doc


@get("/api/plan", tags=["workflows"], responses=_errors(400))
async def get_plan(request: Request, base: FromQuery[str | None] = None,
                   head: FromQuery[str | None] = None) -> dict[str, Any]:
    """The semantic plan between two git revisions of the definitions folder (as `treadle
    plan --json`): `base` defaults to HEAD (the commit in force), `head` to the incoming
    commit of a `--apply manual` git sync, else the folder as it is."""
    doc = await plan_for(request, base, head)
    doc.pop("labels", None)
    return doc


class ApplyRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST /api/sync/apply."""

    commit: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]  # the incoming commit whose plan was seen


@post("/api/sync/apply", status_code=200, opt={"scope": "admin", "global": True, "audit": "git.apply"},
      tags=["health"], responses=_errors(400, 409))
async def apply_incoming(request: Request, data: JSONBody[ApplyRequest]) -> dict[str, Any]:
    """Put the incoming commit in force (`serve --git URL --apply manual`). `commit` must
    be the incoming commit whose plan was reviewed; 409 otherwise, or when there is none."""
    services = _services(request)
    try:
        applied = await services.follower.apply_incoming(data.commit)
    except GitSyncError as exc:
        raise RunConflict(str(exc), "NOTHING_TO_APPLY") from None
    return {"applied": applied, **(_git_status(services) or {})}


PLAN_ROUTES = [get_plan, apply_incoming]
