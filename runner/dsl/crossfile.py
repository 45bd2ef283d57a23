"""What one definition file says about another, checked across the folder.

- a `workflow:` step names a workflow that exists;
- the params it passes exist in that workflow, fit their types (literal values), and
  cover its required params;
- `steps.<s>.output.<name>` read from such a step names an output the child declares
  (its `outputs:`, or, without them, its last steps, whose outputs it returns);
- `triggers.after` names a workflow that exists.

Each problem is `path:line:column: message` with a fix, like the loader's. The catalog
(the dashboard, `treadle validate FOLDER`) runs this after every (re)load.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from ..errors import Problem
from .loader import Definition
from .params import coerce
from .refs import name_refs
from .yaml_source import Source, parse


def check(definitions: Iterable[Definition]) -> dict[str, list[Problem]]:
    """Problems per definition path, for every definition among `definitions` that parsed
    (a file with problems of its own gets these too, so one pass shows all)."""
    return {path: [problem for problem, _ in found] for path, found in references(definitions).items()}


def references(definitions: Iterable[Definition]) -> dict[str, list[tuple[Problem, str]]]:
    """Like `check`, each problem with the workflow it is about (the one called or
    followed): `treadle plan` tells who breaks when that workflow changes."""
    entries = list(definitions)
    by_name = {d.name: d for d in entries}
    names = sorted(by_name)
    out: dict[str, list[tuple[Problem, str]]] = {}
    for definition in entries:
        if definition.parsed is None:
            continue
        found = _check_one(definition, by_name, names)
        if found:
            out[definition.path] = found
    return out


def _check_one(definition: Definition, by_name: dict[str, Definition],
               names: list[str]) -> list[tuple[Problem, str]]:
    spec = definition.parsed
    assert spec is not None
    calls = [(i, s) for i, s in enumerate(spec.steps) if s.workflow is not None and "{{" not in s.workflow]
    afters = [(i, a) for i, a in enumerate(spec.triggers.after)]
    if not calls and not afters:
        return []
    src = _source(definition)
    problems: list[tuple[Problem, str]] = []
    target = ""  # the workflow the next problems are about

    def add(path: tuple, message: str, *, key: bool = False) -> None:
        line, column = src.where(path, key=key) if src is not None else (1, 1)
        problems.append((Problem(definition.path, line, column, message), target))

    children: dict[str, Definition] = {}
    for i, step in calls:
        where = ("steps", i)
        target = step.workflow
        child = by_name.get(step.workflow)
        if child is None:
            close = difflib.get_close_matches(step.workflow, names, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "add its file to the definitions folder"
            add((*where, "workflow"), f"steps[{i}].workflow: there is no workflow '{step.workflow}'; {hint}")
            continue
        if child.parsed is None:
            continue  # its own problems are reported on its file
        children[step.id] = child
        declared = child.parsed.params
        for key, value in step.params.items():
            if key not in declared:
                close = difflib.get_close_matches(key, sorted(declared), n=1)
                hint = f"did you mean '{close[0]}'?" if close else (
                    f"it takes {', '.join(sorted(declared))}" if declared else "it takes no params")
                add((*where, "params", key), f"steps[{i}].params.{key}: workflow '{child.name}' has no param "
                                             f"'{key}'; {hint}", key=True)
            elif not (isinstance(value, str) and ("{{" in value or "{%" in value)):
                try:
                    coerce(key, declared[key], value, from_text=False)
                except ValueError as exc:
                    add((*where, "params", key), f"steps[{i}].params.{key}: does not fit param '{key}' of "
                                                 f"workflow '{child.name}': {exc}")
        missing = [k for k, p in declared.items() if p.required and p.default is None and k not in step.params]
        if missing:
            add((*where, "params") if step.params else (*where, "workflow"),
                f"steps[{i}]: workflow '{child.name}' requires param{'s' if len(missing) > 1 else ''} "
                f"{', '.join(missing)}; pass {'them' if len(missing) > 1 else 'it'} under `params:`")
    if children and src is not None:
        _check_child_outputs(definition, src, children, problems)
    for i, after in afters:
        target = after.workflow
        if after.workflow not in by_name:
            close = difflib.get_close_matches(after.workflow, names, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "no file defines it"
            written = ((src.data.get("triggers") or {}) if src is not None and isinstance(src.data, dict) else {})
            alone = isinstance(written, dict) and isinstance(written.get("after"), dict)  # one `after`, not a list
            add(("triggers", "after", "workflow") if alone else ("triggers", "after", i, "workflow"),
                f"triggers.after: there is no workflow '{after.workflow}' to follow; {hint}")
    return problems


def _check_child_outputs(definition: Definition, src: Source, children: dict[str, Definition],
                         problems: list[tuple[Problem, str]]) -> None:
    """`steps.<child step>.output.<name>` must be an output the child returns."""
    for path, text in _templates(src.data, ()):
        for root, segments, lineno in name_refs(text):
            if root != "steps" or len(segments) < 3 or segments[1] != "output":
                continue
            child = children.get(segments[0])  # type: ignore[arg-type]
            name = segments[2]
            if child is None or not isinstance(name, str):
                continue
            offered = _outputs_of(child)
            if offered is None or name in offered:
                continue
            close = difflib.get_close_matches(name, sorted(offered), n=1)
            hint = f"did you mean '{close[0]}'?" if close else (
                f"it returns {', '.join(sorted(offered))}" if offered else "it returns no outputs")
            line, column = src.where(path)
            problems.append((Problem(definition.path, line + lineno - 1 if lineno > 1 and path in src.blocks else line,
                                     column, f"{_dotted(path)}: refers to steps.{segments[0]}.output.{name}, but "
                                             f"workflow '{child.name}' has no output '{name}'; {hint}"), child.name))


def _outputs_of(child: Definition) -> set[str] | None:
    """The names a child run's outputs have: its `outputs:` keys, else its last steps' ids."""
    spec, dag = child.spec, child.dag
    if spec is None or dag is None:
        return None
    if spec.outputs is not None:
        return set(spec.outputs) if isinstance(spec.outputs, dict) else None
    return set(dag.leaves)


def _templates(value: Any, path: tuple) -> list[tuple[tuple, str]]:
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _templates(v, (*path, k))]
    if isinstance(value, list):
        return [t for i, v in enumerate(value) for t in _templates(v, (*path, i))]
    if isinstance(value, str) and "{{" in value:
        return [(path, value)]
    return []


def _dotted(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(path))


def _source(definition: Definition) -> Source | None:
    try:
        return parse(definition.source)
    except Exception:  # it loaded, so it parses; a guard only
        return None
