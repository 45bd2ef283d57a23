"""Dashboard pages of the GitOps loop: one version's exact source (with a start of that
version and a pin to it), and diffs."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from litestar import Request, get, post
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Redirect, Template

from runner.dsl.loader import load_text
from runner.errors import ParamError, TreadleError, VersionNotFound, WorkflowNotFound
from runner.gitops.plan import compare_workflow
from runner.gitops.plan_format import lines_of

from .api import pin_info
from .api_versions import diff_versions, in_force, set_pin, version_source
from .auth import identity_of
from .forms import form_fields, posted_params
from .pages import _services, error_page, no_workflow
from .services import start_run


def _no_version(name: str, version: str) -> Template:
    return error_page(404, "No such version", f"Workflow '{name}' has no recorded version '{version}'.")


@get("/workflows/{name:str}/versions/{version:str}", name="page-version", include_in_schema=False)
async def version_page(request: Request, name: FromPath[str], version: FromPath[str]) -> Template:
    services = _services(request)
    try:
        row = await version_source(services, name, version, identity_of(request).namespace)
    except WorkflowNotFound:
        return _no_version(name, version)
    return Template("version.html", context=await _version_context(services, name, row))


async def _version_context(services: Any, name: str, row: dict[str, Any], **extra: Any) -> dict[str, Any]:
    version = row["version"]
    try:  # the start form is built from that version's own params
        definition = await services.engine.definition_at(name, version)
    except TreadleError:
        definition = None
    return {"v": row, "name": name, "in_force": await in_force(services, name) == version,
            "pin": pin_info(await services.state.pin(name)), "lines": row["source"].splitlines(),
            "nav": "workflows", "runnable": definition is not None and services.catalog.get(name) is not None,
            "fields": form_fields(definition.spec.params) if definition is not None and definition.spec else [],
            "form_error": None, **extra}


@post("/workflows/{name:str}/versions/{version:str}/runs", name="page-start-version", include_in_schema=False,
      opt={"audit": "run.start"})
async def start_version_from_form(request: Request, name: FromPath[str], version: FromPath[str]) -> Template | Redirect:
    """"Run this version": a rollback for one run, recorded with that version."""
    services = _services(request)
    try:
        row = await version_source(services, name, version, identity_of(request).namespace)
    except WorkflowNotFound:
        return _no_version(name, version)
    context = await _version_context(services, name, row)
    if not context["runnable"]:
        context["form_error"] = "This version cannot run: its file had problems, or the workflow is gone."
        return Template("version.html", context=context, status_code=409)
    definition = await services.engine.definition_at(name, version)
    values = posted_params(definition.spec.params, await request.form())
    params = {f.name: values[f.name] for f in form_fields(definition.spec.params, values)
              if f.name in values and not (values[f.name] == "" and (f.required or f.options))}
    try:
        launch = await start_run(services, name, params, from_text=True, trigger="dashboard", version=version)
    except ParamError as exc:
        context.update(fields=form_fields(definition.spec.params, values, exc.errors),
                       form_error="Some values are not right; see the marked fields.")
        return Template("version.html", context=context, status_code=400)
    except TreadleError as exc:
        context.update(fields=form_fields(definition.spec.params, values), form_error=str(exc))
        return Template("version.html", context=context, status_code=exc.http_status or 400)
    return Redirect(f"/runs/{quote(launch.run_id or '', safe='')}", status_code=303)


@post("/workflows/{name:str}/pin", name="page-pin", include_in_schema=False,
      opt={"scope": "admin", "audit": "workflow.pin"})
async def pin_from_form(request: Request, name: FromPath[str]) -> Template | Redirect:
    form = await request.form()
    version, reason = str(form.get("version") or "").strip(), str(form.get("reason") or "").strip()[:500]
    identity = identity_of(request)
    try:
        await set_pin(_services(request), name, version, by=identity.name, reason=reason or None,
                      namespace=identity.namespace)
    except WorkflowNotFound:
        return no_workflow(name)
    except VersionNotFound:
        return _no_version(name, version)
    except TreadleError as exc:
        return error_page(exc.http_status or 400, "Cannot pin", str(exc))
    return Redirect(f"/workflows/{quote(name, safe='')}", status_code=303)


@post("/workflows/{name:str}/unpin", name="page-unpin", include_in_schema=False,
      opt={"scope": "admin", "audit": "workflow.unpin"})
async def unpin_from_form(request: Request, name: FromPath[str]) -> Template | Redirect:
    try:
        await set_pin(_services(request), name, None, by=identity_of(request).name)
    except WorkflowNotFound:
        return no_workflow(name)
    return Redirect(f"/workflows/{quote(name, safe='')}", status_code=303)


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


VERSION_PAGES = [version_page, diff_page, start_version_from_form, pin_from_form, unpin_from_form]
