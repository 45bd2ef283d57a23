"""Dry runs: what a run would do, without doing any of it (POST .../dry-run).

Inputs are rendered where they depend only on params, env and the run; what reads
`steps.*` (or `item`/`index` of a foreach) stays as written, its field listed under
`pending`. Secrets show as `***`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import Environment, TemplateSyntaxError, meta

from ..dsl.loader import Definition
from ..dsl.params import validate_params
from ..errors import ParamError, SecretMissing
from ..templates import TemplateFailed, is_template, render, truthy
from .run import raw_inputs

_NEVER_KNOWN = frozenset({"steps"})  # step results exist only once the run is going
_PER_ITEM = frozenset({"item", "index"})


@lru_cache(maxsize=4096)
def _names(template: str) -> frozenset[str]:
    """The top-level names a template reads (`params`, `steps`, ...)."""
    try:
        return frozenset(meta.find_undeclared_variables(_PARSER.parse(template)))
    except TemplateSyntaxError:
        return frozenset()


_PARSER = Environment()


class _Renderer:
    """Renders what is known before a run starts; leaves the rest as written."""

    def __init__(self, context: dict[str, Any], unknown: frozenset[str]):
        self.context, self.unknown = context, unknown
        self.problems: list[str] = []

    def value(self, value: Any, where: str, pending: list[str], unknown: frozenset[str] = frozenset()) -> Any:
        if isinstance(value, dict):
            return {k: self.value(v, f"{where}.{k}", pending, unknown) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, f"{where}[{i}]", pending, unknown) for i, v in enumerate(value)]
        if not is_template(value):
            return value
        unknown = self.unknown | unknown
        if any(name in value for name in unknown) and _names(value) & unknown:  # parse only when it may
            pending.append(where)
            return value
        try:
            return render(value, self.context)
        except TemplateFailed as exc:
            self.problems.append(f"{where}: {exc}")
            pending.append(where)
            return value


def plan_run(definition: Definition, params: dict[str, Any] | None, environ: Mapping[str, str], *,
             from_text: bool = False) -> dict[str, Any]:
    """What a run of `definition` with `params` would do, without doing any of it.

    Steps come in the order the engine would start them on one worker. Inputs are
    rendered where they depend only on params, env and the run; what reads
    `steps.*` (or `item`/`index` of a foreach) is left as written and its field
    listed under `pending`. Secrets show as `***`.
    """
    plan: dict[str, Any] = {"workflow": definition.name, "version": definition.version, "path": definition.path,
                            "valid": definition.valid, "params": None, "param_errors": {}, "order": [],
                            "steps": [], "problems": [str(p) for p in definition.problems]}
    spec, dag = definition.spec, definition.dag
    if not definition.valid or spec is None or dag is None:
        return plan
    unknown = set(_NEVER_KNOWN)
    try:
        plan["params"] = validate_params(spec.params, params, from_text=from_text)
    except ParamError as exc:
        plan["param_errors"] = exc.errors
        plan["problems"] += [f"param '{k}': {v}" for k, v in exc.errors.items()]
        unknown |= {"params", "trigger"}
    missing = [n for n in spec.secrets if not environ.get(n)]
    if missing:
        plan["problems"].append(str(SecretMissing(missing)))
    run = {"id": "(dry-run)", "workflow": definition.name, "version": definition.version}
    context = {"params": plan["params"], "trigger": plan["params"], "run": run, "env": {},
               "secrets": {n: "***" for n in spec.secrets}, "steps": {}}
    renderer = _Renderer(context, frozenset(unknown))
    env_pending: list[str] = []
    env = renderer.value(dict(spec.env), "env", env_pending)
    context["env"] = {k: v if isinstance(v, str) else json.dumps(v) for k, v in env.items()}
    if env_pending:
        renderer.unknown |= {"env"}
    plan["env"] = context["env"]
    plan["order"] = list(dag.order)
    steps = {s.id: s for s in spec.steps}
    for sid in dag.order:
        step = steps[sid]
        pending: list[str] = []
        where = f"steps.{sid}"
        when = renderer.value(step.when, f"{where}.when", pending)
        foreach = renderer.value(step.foreach_items, f"{where}.foreach", pending)
        per_item = _PER_ITEM if step.foreach is not None else frozenset()
        inputs = renderer.value(raw_inputs(definition, step), where, pending, per_item)
        known_when = step.when is None or f"{where}.when" not in pending
        plan["steps"].append({
            "id": sid, "kind": step.kind, "needs": list(dag.deps[sid]), "trigger_rule": step.trigger_rule,
            "continue_on_failure": step.continue_on_failure, "when": when,
            "runs": (step.when is None or truthy(when)) if known_when else None,
            "foreach": foreach, "input": inputs, "pending": pending,
        })
    plan["problems"] += renderer.problems
    return plan
