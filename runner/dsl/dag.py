"""Workflow steps -> a networkx DiGraph, with the chain default and cycle reports.

A step without `needs` follows the step above it in the file (the "chain");
`needs: []` makes a root. Edges go from a dependency to the step that needs it.
"""

from __future__ import annotations

import difflib
import heapq
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

import networkx as nx

if TYPE_CHECKING:
    from .definition import StepSpec
    from .yaml_source import Source


class _Sink(Protocol):
    def add(self, line: int, column: int, message: str) -> None: ...


@dataclass
class Dag:
    graph: nx.DiGraph
    deps: dict[str, tuple[str, ...]]  # step -> steps it waits for, in file order
    dependents: dict[str, tuple[str, ...]]
    order: tuple[str, ...]  # a topological order, ties broken by file order

    @cached_property
    def position(self) -> dict[str, int]:
        """Each step's place in `order`."""
        return {s: i for i, s in enumerate(self.order)}

    def runs_before(self, first: str, then: str) -> bool:
        """True when `then` (transitively) waits for `first`.

        A search back from `then` that never goes past `first`'s place in the
        order: a step can only wait for steps placed before it, so this stays
        cheap even in a 10,000-step chain (where full ancestor sets are quadratic).
        """
        limit = self.position[first]
        if limit >= self.position[then]:
            return False
        seen, stack = {then}, [then]
        while stack:
            for dep in self.deps[stack.pop()]:
                if dep == first:
                    return True
                if dep not in seen and self.position[dep] > limit:
                    seen.add(dep)
                    stack.append(dep)
        return False

    @cached_property
    def generations(self) -> list[list[str]]:
        """Layers for drawing: each step one layer below its deepest dependency."""
        return [sorted(g, key=self.position.__getitem__) for g in nx.topological_generations(self.graph)]

    @cached_property
    def leaves(self) -> tuple[str, ...]:
        return tuple(s for s in self.order if not self.dependents[s])

    def roots(self) -> list[str]:
        return [s for s in self.order if not self.deps[s]]

    def descendants(self, step_id: str) -> set[str]:
        return set(nx.descendants(self.graph, step_id))

    def ready(self, finished: set[str] | frozenset[str]) -> list[str]:
        """Steps not finished whose dependencies all are, in file order."""
        return [s for s in self.order if s not in finished and all(d in finished for d in self.deps[s])]


StepLinks = list[tuple[str, list[str] | None]]  # (id, needs) in file order


def steps_of(steps: list[StepSpec]) -> StepLinks:
    return [(s.id, s.needs) for s in steps]


def resolve_needs(steps: StepLinks) -> dict[str, tuple[str, ...]]:
    deps: dict[str, tuple[str, ...]] = {}
    previous: str | None = None
    for sid, needs in steps:
        if needs is None:
            deps[sid] = (previous,) if previous is not None else ()
        else:
            deps[sid] = tuple(dict.fromkeys(needs))
        previous = sid
    return deps


def build_dag(steps: StepLinks, src: Source | None = None, problems: _Sink | None = None,
              key: str = "steps") -> Dag | None:
    """Build the graph; report duplicate ids, missing `needs` and cycles to `problems`.

    `steps` is (id, needs) per step in file order. Returns None when the graph
    cannot be built (problems were reported).
    """
    where = src.where if src is not None else (lambda path, key=False: (1, 1))
    ok = True

    def report(path: tuple, message: str) -> None:
        nonlocal ok
        ok = False
        if problems is not None:
            problems.add(*where(path), message)

    first_index: dict[str, int] = {}
    for i, (sid, _) in enumerate(steps):
        if sid in first_index:
            report((key, i, "id"), f"{key}[{i}].id: duplicate step id '{sid}' (first used by {key}[{first_index[sid]}])")
        else:
            first_index[sid] = i
    deps = resolve_needs(steps)
    for i, (sid, needs) in enumerate(steps):
        for j, need in enumerate(needs or []):
            if need not in first_index:
                close = difflib.get_close_matches(need, list(first_index), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f" (steps: {', '.join(first_index)})"
                report((key, i, "needs", j), f"{key}[{i}].needs: no step named '{need}'{hint}")
            elif need == sid:
                report((key, i, "needs", j), f"{key}[{i}].needs: step '{need}' cannot need itself; remove it")
    if not ok:
        return None
    graph = nx.DiGraph()
    graph.add_nodes_from(first_index)
    graph.add_edges_from((dep, sid) for sid, ds in deps.items() for dep in ds)
    dependents: dict[str, list[str]] = {s: [] for s in first_index}
    for sid, ds in deps.items():
        for dep in ds:
            dependents[dep].append(sid)
    order = _file_ordered_topological_sort(first_index, deps, dependents)
    if order is None:  # a cycle: networkx finds one to show (only on this error path)
        cycle = nx.find_cycle(graph)
        names = [u for u, _ in cycle]
        first = min(names, key=first_index.__getitem__)
        start = names.index(first)
        ordered = names[start:] + names[:start] + [first]
        i = first_index[first]
        closing = ordered[-2]  # `first` waits for it: the link that closes the loop
        written = steps[i][1]
        at = (key, i, "needs", written.index(closing)) if written and closing in written else (key, i)
        how = f"remove '{closing}' from its needs" if written and closing in written else f"give it needs without '{closing}'"
        report(at, f"{key}[{i}].needs: cycle: {' -> '.join(ordered)} (each step waits for the one before it); {how}")
        return None
    return Dag(graph=graph, deps=deps, dependents={k: tuple(v) for k, v in dependents.items()}, order=order)


def _file_ordered_topological_sort(
    index: dict[str, int], deps: dict[str, tuple[str, ...]], dependents: dict[str, list[str]],
) -> tuple[str, ...] | None:
    """Kahn's algorithm, ties broken by place in the file; None when there is a cycle.

    Linear-ish where networkx's lexicographic sort and cycle search cost seconds
    on a 10,000-step file.
    """
    waiting = {s: len(d) for s, d in deps.items()}
    ready = [(index[s], s) for s, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, sid = heapq.heappop(ready)
        order.append(sid)
        for nxt in dependents[sid]:
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                heapq.heappush(ready, (index[nxt], nxt))
    return tuple(order) if len(order) == len(index) else None
