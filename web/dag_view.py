"""A workflow's DAG as data for the page's graph view (web/static/dag.js).

The server does not place boxes: the browser lays the graph out with dagre (vendored,
web/static/vendor/) in a Web Worker and draws it as SVG with pan, zoom and a minimap.
A layered layout of 5,000 steps takes seconds even in a good library, while the
page's own answer must stay well under a second; and the layout depends only on the
definition version, so the browser keeps it per version (docs/architecture.md,
"The graph view").

What the server sends is plain JSON in data attributes (single-quoted; the JSON escapes
`' < > &`), not in `<script>` elements, which htmx drops from what it swaps in:

- the structure, once per definition version (cached here): every step with its kind
  and, for foreach and `workflow:` steps, what the one node stands for; edges as pairs
  of indexes into the step list;
- on run pages, the states: step id -> [state, duration text, items succeeded, items],
  re-sent by each live refresh; the view only recolours and relabels its nodes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jinja2.utils import htmlsafe_json_dumps
from markupsafe import Markup

from runner.dsl.durations import format_duration

if TYPE_CHECKING:
    from runner.dsl.loader import Definition

    from .run_view import RunView

STATES = ("pending", "running", "waiting", "succeeded", "failed", "skipped", "upstream_failed", "cancelled")

_CACHE: OrderedDict[tuple, Markup] = OrderedDict()
_CACHE_SIZE = 64


def state_class(status: str | None) -> str:
    return status if status in STATES else "none"


def structure(definition: Definition, steps_of: Callable[[str], int | None]) -> dict[str, Any]:
    """The graph of `definition`: nodes in file order, edges as index pairs.

    Args:
        steps_of: a workflow name -> how many steps it has (None: unknown), for the
            one node that stands for a `workflow:` step's child run.
    """
    assert definition.spec is not None and definition.dag is not None
    index = {s.id: i for i, s in enumerate(definition.spec.steps)}
    nodes: list[dict[str, Any]] = []
    for s in definition.spec.steps:
        node: dict[str, Any] = {"id": s.id, "kind": s.kind}
        if s.foreach is not None:
            node["foreach"] = len(s.foreach) if isinstance(s.foreach, list) else True
        if s.workflow is not None:
            node["child"] = s.workflow
            node["child_steps"] = steps_of(s.workflow)
        nodes.append(node)
    edges = [[index[dep], index[sid]] for sid, deps in definition.dag.deps.items() for dep in deps]
    return {"version": definition.version, "nodes": nodes, "edges": edges}


def structure_json(definition: Definition | None, steps_of: Callable[[str], int | None]) -> Markup | None:
    """`structure` as JSON safe in a single-quoted attribute (or a `<script>`), cached per definition version
    (and the child workflows' step counts, which another file's change can move)."""
    if definition is None or definition.spec is None or definition.dag is None:
        return None
    children = tuple((s.workflow, steps_of(s.workflow)) for s in definition.spec.steps if s.workflow)
    key = (definition.name, definition.version, len(definition.dag.order), children)
    found = _CACHE.get(key)
    if found is None:
        found = htmlsafe_json_dumps(structure(definition, steps_of))
        _CACHE[key] = found
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return found


def states(view: RunView) -> dict[str, Any]:
    """What a live refresh tells the graph: each step's state, time and foreach items,
    and the step "focus on failed step" goes to (the root cause, else the first failed)."""
    shown: dict[str, list[Any]] = {}
    for s in view.steps:
        entry: list[Any] = [state_class(s.status), format_duration(s.duration) if s.duration is not None else ""]
        if s.items:
            entry += [s.items.get("succeeded", 0), s.item_total]
        shown[s.id] = entry
    first = view.failures[0]["step"] if view.failures else next(
        (s.id for s in view.steps if s.status == "failed"), None)
    return {"run": view.run["id"], "steps": shown, "failed": first}


def states_json(view: RunView) -> Markup:
    return htmlsafe_json_dumps(states(view))


def step_counts(catalog_get: Callable[[str], Any], visible: set[str] | None) -> Callable[[str], int | None]:
    """workflow name -> its step count, from the catalog's current definitions; None for
    a workflow the viewer may not see (`visible`: the names they may; None: all)."""
    def count(name: str) -> int | None:
        if visible is not None and name not in visible:
            return None
        found = catalog_get(name)
        return len(found.spec.steps) if found is not None and found.spec is not None else None
    return count

