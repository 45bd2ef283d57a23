"""What a change to the definitions does, workflow by workflow (`treadle plan`).

Two loaded catalogs (a git revision's folder, or the working tree) are compared by
meaning, not by text: a comment or a reordered mapping is no change; a step's
changed fields, dependencies gained and lost, params added, removed, retyped or made
required, triggers (with the next fire times of schedules before and after), and the
workflow's own settings are. **Breaks** are what the change does to the *other*
files: a caller that no longer fits a child's params, a workflow that follows one that
is gone. They are the cross-file problems of the new revision that the old one did not
have, attached to the workflow whose change caused them.

The result is plain data (the `--json` format and `/api/plan`); plan_format.py draws
it for people.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from croniter import CroniterBadDateError

from ..dsl import crossfile
from ..dsl.dag import resolve_needs, steps_of
from ..dsl.definition import WorkflowSpec
from ..dsl.loader import Definition
from ..errors import Problem
from ..triggers.schedules import next_fire
from .catalog import Catalog
from .revisions import Repository

# the workflow's own settings: compared field by field and shown before -> after
SETTINGS = ("description", "tags", "env", "secrets", "max_parallel", "timeout", "defaults", "resume",
            "on_failure", "on_success", "finally", "outputs", "concurrency", "notify", "executor")
FIRES_SHOWN = 3


def make_plan(base: Catalog, head: Catalog, *, now: datetime | None = None,
              visible: Callable[[Definition], bool] | None = None) -> list[dict[str, Any]]:
    """One entry per workflow added, removed or changed from `base` to `head`, by name.

    `visible` limits the plan to the workflows a reader may see (a namespace); breaks in
    files the reader may not see are counted but not shown.
    """
    now = now or datetime.now(UTC)
    before = {d.name: d for d in base.entries()}
    after = {d.name: d for d in head.entries()}
    new_breaks = _new_breaks(base, head)
    out = []
    for name in sorted(before.keys() | after.keys()):
        old, new = _current(before.get(name)), _current(after.get(name))
        if visible is not None and not any(visible(d) for d in (old, new) if d is not None):
            continue
        entry = compare_workflow(old, new, now=now)
        if entry is None:
            continue  # a caller that changed and no longer fits reports that as its own problem
        breaks = new_breaks.get(name, [])
        shown = [b for b in breaks if visible is None or visible(b[1])]
        entry["breaks"] = [{"workflow": d.name, "path": p.path, "line": p.line, "column": p.column,
                            "message": p.message} for p, d in shown]
        entry["hidden_breaks"] = len(breaks) - len(shown)
        out.append(entry)
    return out


def plan_between(folder: Path, base: str | None, head: str | None, *,
                 visible: Callable[[Definition], bool] | None = None) -> dict[str, Any]:
    """The plan of the definitions `folder` from git revision `base` to `head` (None:
    the working tree), as `treadle plan --json` and `/api/plan` give it. Slow (git,
    loading every file twice): call it in a worker thread from async code."""
    repo = Repository(folder)
    old, new = repo.resolve(base), repo.resolve(head)
    plan = make_plan(repo.catalog(old), repo.catalog(new), visible=visible)
    return {"base": old.as_json(), "head": new.as_json(), "workflows": plan,
            "labels": {"base": old.label, "head": new.label}}


def compare_workflow(old: Definition | None, new: Definition | None, *,
                     now: datetime | None = None) -> dict[str, Any] | None:
    """The change from `old` to `new` (either may be None: added, removed); None when
    nothing that matters changed."""
    now = now or datetime.now(UTC)
    if old is None and new is None:
        return None
    if old is None:
        entry = _entry(new, "added")  # type: ignore[arg-type]
        entry["steps"]["added"] = _step_ids(new)  # type: ignore[arg-type]
        entry["params"]["added"] = _added_params({}, _params(new.parsed))  # type: ignore[union-attr]
        entry["triggers"] = _triggers(None, new.parsed, now)  # type: ignore[union-attr]
        return entry
    if new is None:
        entry = _entry(old, "removed")
        entry["steps"]["removed"] = _step_ids(old)
        return entry
    a, b = old.parsed, new.parsed
    same_problems = [p.message for p in old.current_problems] == [p.message for p in new.current_problems]
    if old.source == new.source or (a is not None and b is not None and _dump(a) == _dump(b) and same_problems):
        return None
    entry = _entry(new, "changed")
    if old.path != new.path:
        entry["moved_from"] = old.path
    if a is None or b is None:
        return entry  # one side does not parse: its problems say why; nothing to compare field by field
    entry["steps"] = _steps(a, b)
    entry["params"] = _param_changes(a, b)
    entry["triggers"] = _triggers(a, b, now)
    entry["settings"] = [{"field": f, "before": _dump(a).get(f), "after": _dump(b).get(f)}
                         for f in SETTINGS if _dump(a).get(f) != _dump(b).get(f)]
    return entry


def has_breaks(plan: Iterable[dict[str, Any]]) -> bool:
    """Something in the new revision breaks: another file no longer fits, or a changed
    or added workflow has problems of its own (it would not load)."""
    return any(e["breaks"] or e["hidden_breaks"] or (e["change"] != "removed" and e["problems"]) for e in plan)


# -- the parts --------------------------------------------------------------------


def _current(definition: Definition | None) -> Definition | None:
    """The text on disk (a broken edit included), not the last good version kept in force."""
    if definition is None:
        return None
    return definition.broken or definition


def _entry(definition: Definition, change: str) -> dict[str, Any]:
    return {"name": definition.name, "path": definition.path, "change": change,
            "steps": {"added": [], "removed": [], "changed": [], "dependencies": {"added": [], "removed": []}},
            "params": {"added": [], "removed": [], "changed": []},
            "triggers": {"changed": [], "schedules": None},
            "settings": [], "breaks": [], "hidden_breaks": 0,
            "problems": [] if change == "removed" else [
                {"path": p.path, "line": p.line, "column": p.column, "message": p.message}
                for p in definition.current_problems]}


def _dump(spec: WorkflowSpec) -> dict[str, Any]:
    # defaults left out: writing a field's default value is no change
    return spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)


def _step_ids(definition: Definition) -> list[str]:
    return [s.id for s in definition.parsed.steps] if definition.parsed is not None else []


def _steps(a: WorkflowSpec, b: WorkflowSpec) -> dict[str, Any]:
    old = {s.id: s.model_dump(mode="json", by_alias=True, exclude_defaults=True) for s in a.steps}
    new = {s.id: s.model_dump(mode="json", by_alias=True, exclude_defaults=True) for s in b.steps}
    changed = []
    for sid in (s for s in new if s in old):
        fields = sorted(k for k in old[sid].keys() | new[sid].keys() if k != "needs" and old[sid].get(k) != new[sid].get(k))
        if fields:
            changed.append({"id": sid, "fields": fields})
    # dependencies as the run sees them (the chain included), not as written
    deps_a = {(d, s) for s, ds in resolve_needs(steps_of(a.steps)).items() for d in ds}
    deps_b = {(d, s) for s, ds in resolve_needs(steps_of(b.steps)).items() for d in ds}
    return {"added": [s for s in new if s not in old], "removed": [s for s in old if s not in new],
            "changed": changed,
            "dependencies": {"added": [{"from": d, "to": s} for d, s in sorted(deps_b - deps_a)],
                             "removed": [{"from": d, "to": s} for d, s in sorted(deps_a - deps_b)]}}


def _params(spec: WorkflowSpec | None) -> dict[str, dict[str, Any]]:
    if spec is None:
        return {}
    return {k: p.model_dump(mode="json", exclude_defaults=True) | {"type": p.type} for k, p in spec.params.items()}


def _required(param: dict[str, Any]) -> bool:
    return bool(param.get("required")) and param.get("default") is None


def _param_changes(a: WorkflowSpec, b: WorkflowSpec) -> dict[str, Any]:
    old, new = _params(a), _params(b)
    changed = []
    for name in sorted(old.keys() & new.keys()):
        if old[name] == new[name]:
            continue
        change: dict[str, Any] = {"name": name, "fields": sorted(k for k in old[name].keys() | new[name].keys()
                                                                  if old[name].get(k) != new[name].get(k))}
        if old[name]["type"] != new[name]["type"]:
            change["retyped"] = {"from": old[name]["type"], "to": new[name]["type"]}
        if _required(old[name]) != _required(new[name]):
            change["required"] = _required(new[name])
        changed.append(change)
    return {"added": _added_params(old, new), "removed": sorted(old.keys() - new.keys()), "changed": changed}


def _added_params(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": k, "type": new[k]["type"], "required": _required(new[k])} for k in sorted(new.keys() - old.keys())]


def _triggers(a: WorkflowSpec | None, b: WorkflowSpec | None, now: datetime) -> dict[str, Any]:
    old = a.triggers.model_dump(mode="json", exclude_defaults=True) if a is not None else {}
    new = b.triggers.model_dump(mode="json", exclude_defaults=True) if b is not None else {}
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    schedules = None
    if "schedule" in changed:
        schedules = {"before": _fires(a, now), "after": _fires(b, now)}
    return {"changed": changed, "schedules": schedules}


def _fires(spec: WorkflowSpec | None, now: datetime) -> list[dict[str, Any]]:
    out = []
    for schedule in spec.triggers.schedule if spec is not None else []:
        times: list[str] = []
        at = now
        try:
            for _ in range(FIRES_SHOWN):
                at = next_fire(schedule, at)
                times.append(at.isoformat())
        except CroniterBadDateError:
            pass  # a cron that never matches: fewer (or no) times, which says it
        out.append({"cron": schedule.cron, "timezone": schedule.timezone, "next": times})
    return out


def _new_breaks(base: Catalog, head: Catalog) -> dict[str, list[tuple[Problem, Definition]]]:
    """Cross-file problems of `head` that `base` did not have, by the workflow they are about."""
    def refs(catalog: Catalog) -> dict[str, list[tuple[Problem, str]]]:
        return crossfile.references(_current(d) for d in catalog.entries())  # type: ignore[misc]

    by_path = {(_current(d) or d).path: _current(d) for d in head.entries()}
    old_by_path = {(_current(d) or d).path: _current(d) for d in base.entries()}
    known = {(old_by_path[path].name, p.message, target)  # type: ignore[union-attr]
             for path, found in refs(base).items() for p, target in found}
    out: dict[str, list[tuple[Problem, Definition]]] = {}
    for path, found in refs(head).items():
        caller = by_path[path]
        for problem, target in found:
            if target and target != caller.name and (caller.name, problem.message, target) not in known:  # type: ignore[union-attr]
                out.setdefault(target, []).append((problem, caller))  # type: ignore[arg-type]
    return out
