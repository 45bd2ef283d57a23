"""JSON API for the GitOps loop: the versions of a workflow, diffs, pins, and git sync."""

from __future__ import annotations

import difflib
from typing import Annotated, Any, TypedDict

import msgspec
from litestar import Request, get, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from runner.errors import WorkflowNotFound
from runner.security.tokens import namespace_of

from .api import (
    Limit,
    Page,
    PinInfo,
    _errors,
    _git_status,
    _services,
    pin_info,
    version_of_namespace,
)
from .auth import identity_of
from .services import RunConflict, Services


class VersionItem(TypedDict):
    version: str
    workflow: str
    path: str
    created_at: str  # first seen
    commit: str | None
    valid: bool
    in_force: bool  # the version runs start from now


class VersionPage(TypedDict):
    items: list[VersionItem]
    total: int
    page: int
    limit: int


class VersionSource(VersionItem):
    source: str


class VersionDiff(TypedDict):
    workflow: str
    from_version: str
    to_version: str
    diff: str  # unified diff, empty when the texts are equal


async def in_force(services: Services, name: str) -> str | None:
    """The version starts use now: the pinned one, else the file's last good one."""
    pinned = await services.state.pin(name)
    if pinned is not None:
        return pinned["version"]
    definition = services.catalog.get(name)
    return definition.version if definition is not None and definition.valid else None


def _item(row: dict[str, Any], current: str | None) -> VersionItem:
    from runner.engine.report import iso

    return {"version": row["version"], "workflow": row["workflow"], "path": row["path"],
            "created_at": iso(row["created_at"]) or "", "commit": row["commit"], "valid": bool(row["valid"]),
            "in_force": row["version"] == current}


async def version_source(services: Services, name: str, version: str, namespace: str | None = None) -> dict[str, Any]:
    """The stored text of one version of `name`; WorkflowNotFound if there is none, or
    (`namespace`: the requester's) if it was recorded from a file of another namespace."""
    row = await services.store.get_version(version, name)
    if row is None or (namespace is not None and namespace_of(row["path"]) != namespace):
        raise WorkflowNotFound(f"{name} (version {version})")
    return row


async def diff_versions(services: Services, name: str, old: str, new: str, namespace: str | None = None) -> str:
    a = await version_source(services, name, old, namespace)
    b = await version_source(services, name, new, namespace)
    return "".join(difflib.unified_diff(
        a["source"].splitlines(keepends=True), b["source"].splitlines(keepends=True),
        fromfile=f"{a['path']} @ {old}", tofile=f"{b['path']} @ {new}",
    ))


@get("/api/workflows/{name:str}/versions", tags=["workflows"], responses=_errors(400, 404))
async def list_versions(request: Request, name: FromPath[str], page: Page = 1, limit: Limit = 50) -> VersionPage:
    """Every text of the workflow's file seen so far (valid or not), newest first."""
    services = _services(request)
    rows, total = await services.store.versions(name, offset=(page - 1) * limit, limit=limit)
    if total == 0 and services.catalog.get(name) is None:
        raise WorkflowNotFound(name, services.catalog.names())
    current = await in_force(services, name)
    return {"items": [_item(r, current) for r in rows], "total": total, "page": page, "limit": limit}


@get("/api/workflows/{name:str}/versions/{version:str}", tags=["workflows"], responses=_errors(404))
async def get_version(request: Request, name: FromPath[str], version: FromPath[str]) -> VersionSource:
    """One version with its exact source (what a run of that version ran)."""
    services = _services(request)
    row = await version_source(services, name, version, identity_of(request).namespace)
    return {**_item(row, await in_force(services, name)), "source": row["source"]}


@get("/api/workflows/{name:str}/diff", tags=["workflows"], responses=_errors(400, 404))
async def diff(
    request: Request, name: FromPath[str],
    from_: Annotated[str, QueryParameter(name="from", description="the older version")],
    to: FromQuery[str | None] = None,
) -> VersionDiff:
    """Unified diff between two versions (`to` defaults to the file's current text)."""
    services = _services(request)
    if to is None:
        current = services.catalog.get(name)
        if current is None:
            raise WorkflowNotFound(name, services.catalog.names())
        to = (current.broken or current).version
    return {"workflow": name, "from_version": from_, "to_version": to,
            "diff": await diff_versions(services, name, from_, to, identity_of(request).namespace)}


class PinRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST /api/workflows/{name}/pin."""

    version: str = msgspec.field()
    reason: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class PinDoc(TypedDict):
    workflow: str
    pinned: PinInfo | None  # null: not pinned (starts use the file's version in force)
    changed: bool  # false when it already was in that state


async def set_pin(services: Services, name: str, version: str | None, *, by: str | None = None,
                  reason: str | None = None, namespace: str | None = None) -> dict[str, Any]:
    """Pin `name` to `version` (None: unpin), shared with the dashboard. Raises
    WorkflowNotFound, VersionNotFound, WorkflowInvalid (that version had problems)."""
    definition = services.catalog.get(name)
    if definition is None:
        raise WorkflowNotFound(name, services.catalog.names())
    if version is not None:
        await version_of_namespace(services, name, version, namespace)
        await services.engine.definition_at(name, version)  # it must be able to run
    changed = await services.state.set_pin(name, version, by, reason)
    return {"workflow": name, "pinned": pin_info(await services.state.pin(name)), "changed": changed}


@post("/api/workflows/{name:str}/pin", status_code=200, opt={"scope": "admin", "audit": "workflow.pin"},
      tags=["workflows"], responses=_errors(404, 409))
async def pin(request: Request, name: FromPath[str], data: JSONBody[PinRequest]) -> PinDoc:
    """Every start of the workflow (people, API, triggers, retries) runs `version` until
    unpinned, whatever the file says; for the minutes between a bad merge and its revert."""
    identity = identity_of(request)
    return await set_pin(_services(request), name, data.version, by=identity.name, reason=data.reason,  # type: ignore[return-value]
                         namespace=identity.namespace)


@post("/api/workflows/{name:str}/unpin", status_code=200, opt={"scope": "admin", "audit": "workflow.unpin"},
      tags=["workflows"], responses=_errors(404))
async def unpin(request: Request, name: FromPath[str]) -> PinDoc:
    """Starts use the file's version in force again."""
    return await set_pin(_services(request), name, None, by=identity_of(request).name)  # type: ignore[return-value]


@post("/api/sync", status_code=200, opt={"scope": "admin", "global": True, "audit": "git.sync"}, tags=["health"], responses=_errors(409))
async def sync(request: Request) -> dict[str, Any]:
    """Pull the followed repository now (`serve --git`); 409 when not following one."""
    services = _services(request)
    if services.gitsync is None:
        raise RunConflict("this server does not follow a git repository (start it with --git URL)", "NOT_FOLLOWING_GIT")
    changed = await services.follower.sync_now()
    return {"changed": changed, **(_git_status(services) or {})}


VERSION_ROUTES = [list_versions, get_version, diff, pin, unpin, sync]
