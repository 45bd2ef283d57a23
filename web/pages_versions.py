"""Dashboard pages of the GitOps loop: one version's exact source, and diffs."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Template

from runner.dsl.loader import load_text
from runner.errors import WorkflowNotFound
from runner.gitops.plan import compare_workflow
from runner.gitops.plan_format import lines_of

from .api_versions import diff_versions, version_source
from .auth import identity_of
from .pages import _services, error_page


def _no_version(name: str, version: str) -> Template:
    return error_page(404, "No such version", f"Workflow '{name}' has no recorded version '{version}'.")


@get("/workflows/{name:str}/versions/{version:str}", name="page-version", include_in_schema=False)
async def version_page(request: Request, name: FromPath[str], version: FromPath[str]) -> Template:
    services = _services(request)
    try:
        row = await version_source(services, name, version, identity_of(request).namespace)
    except WorkflowNotFound:
        return _no_version(name, version)
    current = services.catalog.get(name)
    in_force = current is not None and current.valid and current.version == version
    return Template("version.html", context={"v": row, "name": name, "in_force": in_force,
                                             "lines": row["source"].splitlines(), "nav": "workflows"})


@get("/workflows/{name:str}/diff", name="page-diff", include_in_schema=False)
async def diff_page(
    request: Request, name: FromPath[str],
    old: Annotated[str, QueryParameter(name="from")], to: FromQuery[str | None] = None,
) -> Template:
    services = _services(request)
    if to is None:
        current = services.catalog.get(name)
        if current is None:
            return error_page(404, "No such workflow", f"There is no workflow named '{name}'.")
        to = (current.broken or current).version
    try:
        text = await diff_versions(services, name, old.strip(), to.strip(), identity_of(request).namespace)
    except WorkflowNotFound:
        return error_page(404, "No such version", f"Workflow '{name}' has no recorded version '{old}' or '{to}'.")
    lines = [(line[:1] if line[:1] in "+-@" and not line.startswith(("+++", "---")) else "", line.rstrip("\n"))
             for line in text.splitlines(keepends=True)]
    plan = await _plan(services, name, old.strip(), to.strip())
    return Template("diff.html", context={"name": name, "old": old, "new": to, "lines": lines, "nav": "workflows",
                                          "plan": plan})


async def _plan(services: Any, name: str, old: str, new: str) -> list[tuple[str, str]] | None:
    """What changed in meaning between the two versions (`treadle plan` for one workflow);
    None when nothing did."""
    a, b = await version_source(services, name, old), await version_source(services, name, new)
    entry = compare_workflow(load_text(a["source"], a["path"], name=name), load_text(b["source"], b["path"], name=name))
    return lines_of(entry) if entry is not None else None


VERSION_PAGES = [version_page, diff_page]
