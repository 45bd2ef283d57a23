"""The step graph: the chain default, roots, order, ready steps, layers and cycles."""

from __future__ import annotations

import textwrap

import networkx as nx
import pytest

from runner.dsl.dag import Dag, build_dag, resolve_needs, steps_of
from runner.dsl.loader import load_text


class Sink:
    def __init__(self) -> None:
        self.items: list[tuple[int, int, str]] = []

    def add(self, line: int, column: int, message: str) -> None:
        self.items.append((line, column, message))


def dag_of(links: list[tuple[str, list[str] | None]]) -> Dag:
    sink = Sink()
    dag = build_dag(links, problems=sink)
    assert dag is not None, sink.items
    assert sink.items == []
    return dag


def test_steps_without_needs_form_a_chain() -> None:
    dag = dag_of([("a", None), ("b", None), ("c", None)])
    assert dag.deps == {"a": (), "b": ("a",), "c": ("b",)}
    assert dag.dependents == {"a": ("b",), "b": ("c",), "c": ()}
    assert dag.order == ("a", "b", "c")
    assert dag.roots() == ["a"] and dag.leaves == ("c",)
    assert set(dag.graph.edges) == {("a", "b"), ("b", "c")}


def test_empty_needs_makes_roots_and_the_chain_continues_from_them() -> None:
    dag = dag_of([("a", None), ("b", []), ("c", None), ("d", [])])
    assert dag.roots() == ["a", "b", "d"]
    assert dag.deps["c"] == ("b",)  # the chain follows the step above, root or not
    assert dag.leaves == ("a", "c", "d")
    assert dag.generations == [["a", "b", "d"], ["c"]]


def test_diamond() -> None:
    dag = dag_of([("start", None), ("left", ["start"]), ("right", ["start"]), ("end", ["left", "right"])])
    assert dag.order == ("start", "left", "right", "end")
    assert dag.deps["end"] == ("left", "right")
    assert dag.dependents["start"] == ("left", "right")
    assert dag.generations == [["start"], ["left", "right"], ["end"]]
    assert all(dag.runs_before(s, "end") for s in ("start", "left", "right"))
    assert dag.runs_before("start", "left") and not dag.runs_before("right", "left")
    assert not dag.runs_before("end", "start")
    assert dag.descendants("start") == {"left", "right", "end"}
    assert dag.descendants("end") == set()


def test_parallel_branches_do_not_run_before_each_other() -> None:
    # b and c both need only a: neither waits for the other, whatever the file order
    dag = dag_of([("a", None), ("b", ["a"]), ("c", ["a"]), ("d", ["c"])])
    assert not dag.runs_before("b", "c") and not dag.runs_before("c", "b")
    assert not dag.runs_before("b", "d")  # placed before d, but d only waits for c and a
    assert dag.runs_before("a", "d") and dag.runs_before("c", "d")
    assert not dag.runs_before("a", "a")
    # a bool, as documented (not merely something falsy), both when the order rules it
    # out at once and when the search back finds nothing
    assert dag.runs_before("d", "a") is False and dag.runs_before("b", "c") is False
    assert dag.runs_before("a", "d") is True


class _CountingDict(dict):
    """A real dict that counts its lookups (how much of the graph a search visits)."""

    lookups = 0

    def __getitem__(self, key):
        self.lookups += 1
        return super().__getitem__(key)


def test_runs_before_visits_each_step_at_most_once() -> None:
    # a ladder of 20 diamonds has 2**20 paths from its top to its bottom: a search
    # that looked at a step once per path (no `seen`) would take a million lookups
    links: list[tuple[str, list[str] | None]] = [("lone", []), ("s0", [])]
    for i in range(20):
        links += [(f"l{i}", [f"s{i}"]), (f"r{i}", [f"s{i}"]), (f"s{i + 1}", [f"l{i}", f"r{i}"])]
    dag = dag_of(links)
    dag.deps = counting = _CountingDict(dag.deps)
    assert dag.runs_before("lone", "s20") is False  # placed first, but nothing waits for it
    assert counting.lookups <= len(links)
    counting.lookups = 0
    assert dag.runs_before("s0", "s20") is True
    assert counting.lookups <= len(links)


def test_a_template_reading_a_parallel_branch_is_reported() -> None:
    problems = [str(p) for p in load_text(textwrap.dedent("""
        steps:
          - {id: a, log: x}
          - {id: b, needs: [a], set: {v: 1}}
          - {id: c, needs: [a], log: "{{ steps.b.output }}"}
    """), "wf.yaml").problems]
    assert len(problems) == 1 and "which does not run before 'c'; add 'b' to its needs" in problems[0], problems
    fixed = load_text(textwrap.dedent("""
        steps:
          - {id: a, log: x}
          - {id: b, needs: [a], set: {v: 1}}
          - {id: c, needs: [a, b], log: "{{ steps.b.output }}"}
    """), "wf.yaml")
    assert fixed.problems == []


def test_ready_steps_follow_what_has_finished() -> None:
    dag = dag_of([("start", None), ("left", ["start"]), ("right", ["start"]), ("end", ["left", "right"]),
                  ("other", [])])
    assert dag.ready(set()) == ["start", "other"]
    assert dag.ready({"start"}) == ["left", "right", "other"]
    assert dag.ready({"start", "left", "other"}) == ["right"]
    assert dag.ready({"start", "left", "right", "other"}) == ["end"]
    assert dag.ready(set(dag.order)) == []


def test_order_breaks_ties_by_file_order_and_respects_needs() -> None:
    dag = dag_of([("z", ["y"]), ("y", []), ("x", [])])
    assert dag.order == ("y", "z", "x")
    assert nx.is_directed_acyclic_graph(dag.graph)
    assert dag.generations == [["y", "x"], ["z"]]


def test_duplicate_needs_entries_count_once() -> None:
    assert resolve_needs([("a", None), ("b", ["a", "a"])]) == {"a": (), "b": ("a",)}


def test_steps_of_a_spec() -> None:
    definition = load_text("steps: [{id: a, log: x}, {id: b, needs: [], log: y}, {id: c, needs: a, log: z}]\n",
                           "wf.yaml")
    assert steps_of(definition.spec.steps) == [("a", None), ("b", []), ("c", ["a"])]


@pytest.mark.parametrize("links, cycle", [
    ([("a", ["b"]), ("b", None)], "a -> b -> a"),
    ([("x", None), ("a", ["c"]), ("b", ["a"]), ("c", ["b"])], "a -> b -> c -> a"),
    ([("c", ["b"]), ("b", ["a"]), ("a", ["c"])], "c -> a -> b -> c"),
])
def test_cycle_is_printed_from_its_first_step(links: list, cycle: str) -> None:
    sink = Sink()
    assert build_dag(links, problems=sink) is None
    [(_, _, message)] = sink.items
    assert f"cycle: {cycle} " in message
    first = cycle.split(" -> ")[0]
    index = [sid for sid, _ in links].index(first)
    assert message.startswith(f"steps[{index}].needs: ")
    closing = cycle.split(" -> ")[-2]
    assert f"remove '{closing}' from its needs" in message


def test_cycle_position_is_the_link_that_closes_it() -> None:
    text = textwrap.dedent("""\
        steps:
          - id: a
            log: x
            needs: [c, b]
          - id: b
            log: y
          - id: c
            log: z
            needs: []
    """)
    [problem] = load_text(text, "wf.yaml").problems
    assert (problem.line, problem.column) == (4, 16)
    assert "cycle: a -> b -> a" in problem.message


@pytest.mark.parametrize("links, expected", [
    ([("a", None), ("a", None)], "steps[1].id: duplicate step id 'a' (first used by steps[0])"),
    ([("a", None), ("b", ["c"])], "steps[1].needs: no step named 'c' (steps: a, b)"),
    ([("build", None), ("b", ["biuld"])], "steps[1].needs: no step named 'biuld'; did you mean 'build'?"),
    ([("a", ["a"])], "steps[0].needs: step 'a' cannot need itself; remove it"),
])
def test_broken_links_are_reported(links: list, expected: str) -> None:
    sink = Sink()
    assert build_dag(links, problems=sink) is None
    assert [m for _, _, m in sink.items] == [expected]


def test_without_a_sink_a_bad_graph_is_just_none() -> None:
    assert build_dag([("a", ["b"]), ("b", ["a"])]) is None
    assert build_dag([("a", None)]) is not None


def test_without_a_source_problems_are_placed_at_line_1_column_1() -> None:
    # build_dag on plain (id, needs) pairs (no YAML behind them) still reports, at 1:1
    sink = Sink()
    assert build_dag([("a", ["b"]), ("b", None)], problems=sink) is None
    assert sink.items == [(1, 1, "steps[0].needs: cycle: a -> b -> a (each step waits for the one before it); "
                                 "remove 'b' from its needs")]
