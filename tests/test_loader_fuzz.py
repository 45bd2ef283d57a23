"""The loader never crashes: random YAML in, `path:line:column: message` problems out.

Two generators: (a) texts assembled from YAML-ish fragments (the format's keys, random
keys, scalars of every kind, indentation, lists, flow collections, anchors and
aliases, tags, tabs, unicode, broken quotes, duplicate keys), and (b) plausible
workflows dumped by yaml.safe_dump and then mutated (lines cut, moved, re-indented,
characters replaced). For every text, `load_text` returns a Definition whose
problems all read `fuzz.yaml:LINE:COLUMN: message` on one line, with the position
inside the text, and which is valid exactly when it has no problems.

Derandomized with a fixed number of examples, so CI sees the same texts every run
(about 10 s). Set TREADLE_FUZZ_EXAMPLES=20000 to search longer locally; the cases it
found are kept below as plain regression tests.
"""

from __future__ import annotations

import os
import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.dsl.loader import load_text

SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # yaml.safe_dump, in C when libyaml is there
EXAMPLES = int(os.environ.get("TREADLE_FUZZ_EXAMPLES", "400"))


def fuzz_settings(share: float = 1.0) -> settings:
    return settings(max_examples=max(1, int(EXAMPLES * share)), deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROBLEM = re.compile(r"fuzz\.yaml:(\d+):(\d+): (.+)")


def check(text: str) -> None:
    """What must hold for any text."""
    definition = load_text(text, "fuzz.yaml")
    lines = len(text.splitlines()) + 1
    widest = max((len(line) for line in text.splitlines()), default=0) + 2
    for problem in definition.problems:
        shown = str(problem)
        match = PROBLEM.fullmatch(shown)
        assert match, f"not path:line:column: message on one line: {shown!r}"
        line, column = int(match[1]), int(match[2])
        assert 1 <= line <= lines, f"line {line} outside the text ({lines - 1} lines): {shown!r}"
        assert 1 <= column <= widest, f"column {column} outside the text: {shown!r}"
        assert "internal error" not in match[3], shown
    assert definition.valid == (not definition.problems), definition.problems
    if definition.valid:
        assert definition.spec is not None and definition.dag is not None


# -- (a) texts from YAML-ish fragments -------------------------------------------------------

TOP_KEYS = ["name", "description", "tags", "params", "env", "secrets", "max_parallel", "timeout",
            "defaults", "steps", "resume", "on_failure", "on_success", "finally", "outputs", "triggers",
            "concurrency", "notify"]
STEP_KEYS = ["id", "needs", "when", "trigger_rule", "continue_on_failure", "retry", "timeout", "foreach",
             "env", "cwd", "circuit_breaker", "run", "http", "python", "with", "set", "wait", "log",
             "workflow", "approval", "params", "compensate"]
NESTED_KEYS = ["method", "url", "headers", "json", "body", "form", "expect_status", "limit", "backoff",
               "delay", "max_delay", "on", "type", "required", "default", "enum", "schedule", "webhook",
               "event", "file", "after", "cron", "message", "failures", "reset_after", "half_open_max",
               "policy", "secret_env", "path", "status", "retries", "<<", "depends_on", "command"]
SCALARS = ["a", "s1", "hello", "0", "1", "-1", "3.5", "1e3", "1.10", "0o17", "0x1F", "017", "1_000",
           "true", "false", "yes", "no", "on", "off", "null", "~", "''", '""', ".inf", "-.inf", ".nan",
           "10s", "1h30m", "500ms", "2d", "31d", "-5s", "12:30", "2024-05-01", "GET", "post", "integer",
           "string", "all_done", "exponential", "http://127.0.0.1:9/x", "mod:fn", "'{{ steps.a.output }}'",
           '"{{ params.n }}"', '"{% if x %}y{% endif %}"', '"{{ steps[\'a\'].output | nope }}"', '"{{"',
           '"{{ 1 +}}"', '"{{ item }}"', '"{% for %}"', "'unterminated", '"unterminated', '"a\\nb{{ x }}"',
           '"\\ud800"', '"\\x00"', "9" * 5000, "é", "日本", "🙂", "\u2028", "\u200b", "a: b", "- x",
           "[a, b", "{x: 1", "[]", "{}", "[1, [2, [3]]]", "{id: a, log: x}", "[{id: a, run: x}]",
           "*a", "&a", "&a x", "*nothing", "!!python/object:os.system", "!!binary aGk=", "!!str 5",
           "!!int x", "!!float x", "!!set {a}", "!x y", "|", ">", "|-", ">+2", "? x", "%YAML 1.2", "---",
           "...", "#", "# comment", "\t", "@x", "`x`", "|\n  a\n  b", "\"{{ steps.x.output }}\""]
INDENTS = ["", " ", "  ", "    ", "      ", "\t", "  \t", "        "]

keys = st.sampled_from(TOP_KEYS + STEP_KEYS + NESTED_KEYS) | st.text(max_size=8)
scalars = st.sampled_from(SCALARS) | st.text(max_size=12) | st.integers().map(str) | st.floats().map(str)


@st.composite
def yaml_line(draw: st.DrawFn) -> str:
    indent = draw(st.sampled_from(INDENTS))
    key, value = draw(keys), draw(scalars)
    shape = draw(st.sampled_from([
        "{k}: {v}", "{k}:", "- {k}: {v}", "- {v}", "-", "{k}: [{v}, {v2}]", "{k}: {{{k2}: {v}}}",
        "{k}: &anchor {v}", "{k}: *anchor", "<<: *anchor", "{k}: !!map {{{k2}: {v}}}", "{v}", "? {k}",
        ": {v}", "{k}: |", "{k}: >-", "  {v}", "{k}: {v} # note", "- {{id: {v}, {k2}: {v2}}}",
        "- id: {v}", "{k}: {k}: {v}", "'{k}': {v}", '"{k}": {v}', "{k}: '{v}", "{k}: \"{v}",
    ]))
    text = shape.format(k=key, v=value, k2=draw(keys), v2=draw(scalars))
    return indent + text


@st.composite
def yaml_text(draw: st.DrawFn) -> str:
    lines = draw(st.lists(yaml_line(), min_size=1, max_size=25))
    if draw(st.booleans()):  # a recognisable skeleton, so the checks past parsing run too
        lines = ["name: fuzz", "steps:", "  - id: a", "    log: x", *lines]
    if draw(st.booleans()):  # duplicate keys
        lines += draw(st.lists(st.sampled_from(lines), max_size=3))
    ending = draw(st.sampled_from(["\n", "\r\n", "\r", "\n\n"]))
    return ending.join(lines) + draw(st.sampled_from(["", "\n", ending, " ", "\t"]))


@fuzz_settings()
@given(yaml_text())
def test_yamlish_texts_never_crash_the_loader(text: str) -> None:
    check(text)


# -- (b) plausible workflows, dumped and mutated -----------------------------------------------

values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
    | st.sampled_from(SCALARS) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=6,
)
random_step = st.dictionaries(st.sampled_from(STEP_KEYS) | keys, values, max_size=5) \
    .map(lambda step: step if "id" in step else {"id": "s", **step})
# steps that are nearly right, so that the checks after the model (graph, templates,
# references between steps, durations, numbers YAML changes) run as often as parsing
ids = st.sampled_from(["a", "b", "c", "my-step", "a b", ""])
templates = st.sampled_from([
    "{{ steps.a.output }}", "{{ steps.b.output.x }}", "{{ steps.my.output }}", "{{ steps['my-step'].output }}",
    "{{ steps.c.output | nope }}", "{{ params.n }}", "{% for x in steps.a.output %}{{ x }}{% endfor %}",
    "{{ steps.a.output }}\n{{ steps.zz }}", "{{ steps.b.output }", "{{ item }} {{ index }}", "plain",
])
durations = st.sampled_from(["10s", "1h", "8d", "31d", "-1", "1.5", "soon", ".inf", "500ms"]) | st.floats(-1, 1e7)
numbers = st.sampled_from([1.10, 1.0, 15, "0o17", "1.10", True, None, "x"])
plausible_step = st.fixed_dictionaries({"id": ids}, optional={
    "needs": ids | st.lists(ids, max_size=3), "trigger_rule": st.sampled_from(["all_done", "any_failed", "al_done"]),
    "when": templates | st.booleans(), "foreach": templates | st.lists(numbers, max_size=3),
    "retry": st.integers(-1, 2000) | st.fixed_dictionaries({}, optional={
        "limit": st.integers(-1, 2000), "backoff": st.sampled_from(["fixed", "exponentail"]), "delay": durations,
        "on": st.integers(0, 600) | st.lists(st.integers(0, 600), max_size=2)}),
    "timeout": durations, "continue_on_failure": st.sampled_from([True, "maybe", "yes"]),
    "log": templates, "run": templates | st.lists(templates, max_size=2) | numbers, "wait": durations,
    "set": st.dictionaries(st.sampled_from(["x", "y"]), templates | numbers, max_size=2),
    "env": st.dictionaries(st.sampled_from(["A", "1B", "VERSION"]), numbers | templates, max_size=2),
    "http": st.fixed_dictionaries({"url": templates}, optional={
        "method": st.sampled_from(["GET", "post", "FETCH"]), "json": templates, "body": templates,
        "headers": st.dictionaries(st.sampled_from(["X-A", "X-B"]), numbers | templates, max_size=2),
        "expect_status": st.integers(100, 600) | st.lists(st.integers(), max_size=2)}),
    "python": st.sampled_from(["mod:fn", "mod", "a.b:c.d"]), "with": st.dictionaries(st.sampled_from(["a"]), templates),
    "approval": st.fixed_dictionaries({"message": templates}, optional={"timeout": durations}),
    "compensate": st.fixed_dictionaries({"log": templates}, optional={"needs": ids, "retry": st.integers(0, 3)}),
    "workflow": st.sampled_from(["child"]), "params": st.dictionaries(st.sampled_from(["n"]), templates),
})
steps = st.lists(plausible_step | random_step, max_size=5)
plausible_top = st.fixed_dictionaries({}, optional={
    "timeout": durations, "max_parallel": st.integers(-5, 5000), "name": ids,
    "env": st.dictionaries(st.sampled_from(["A", "VERSION"]), numbers | templates, max_size=2),
    "outputs": st.dictionaries(st.sampled_from(["o"]), templates, max_size=1),
    "params": st.dictionaries(st.sampled_from(["n", "m"]), st.sampled_from(["integer", "int", "string"]) | st.fixed_dictionaries(
        {"type": st.sampled_from(["integer", "number", "boolean", "array"])},
        optional={"default": numbers, "enum": st.lists(numbers, max_size=2), "required": st.booleans()}), max_size=2),
    "defaults": st.fixed_dictionaries({}, optional={"retry": st.integers(-1, 3), "timeout": durations}),
})
workflows = st.builds(
    lambda main, other, plausible, handlers: {**other, **plausible, "steps": main, **handlers},
    steps | values,
    st.dictionaries(st.sampled_from(TOP_KEYS), values, max_size=2),
    plausible_top,
    st.dictionaries(st.sampled_from(["on_failure", "finally"]), steps, max_size=1),
)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    data = draw(workflows)
    text = yaml.dump(data, Dumper=SafeDumper, default_flow_style=draw(st.sampled_from([None, False, True])),
                     allow_unicode=draw(st.booleans()), sort_keys=False, width=draw(st.sampled_from([20, 80])))
    for _ in range(draw(st.integers(0, 4))):
        lines = text.split("\n")
        n = len(lines)
        op = draw(st.sampled_from(["cut", "insert", "dup", "swap", "indent", "char", "truncate"]))
        i = draw(st.integers(0, n - 1))
        if op == "cut":
            del lines[i]
        elif op == "insert":
            lines.insert(i, draw(yaml_line()))
        elif op == "dup":
            lines.insert(i, lines[draw(st.integers(0, n - 1))])
        elif op == "swap":
            j = draw(st.integers(0, n - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "indent":
            lines[i] = draw(st.sampled_from(INDENTS)) + lines[i].lstrip(draw(st.sampled_from([" ", "", "- "])))
        elif op == "char" and lines[i]:
            at = draw(st.integers(0, len(lines[i]) - 1))
            lines[i] = lines[i][:at] + draw(st.sampled_from(list(":-[]{}&*!|>'\"#\t%@`,? ") + ["", "é"])) + lines[i][at + 1:]
        text = "\n".join(lines)
        if op == "truncate":
            text = text[:draw(st.integers(0, len(text)))]
    return text


@fuzz_settings(0.6)  # each example costs about three times as much to make
@given(mutated())
def test_dumped_and_mutated_workflows_never_crash_the_loader(text: str) -> None:
    check(text)


# -- cases the fuzz found, kept as regression tests ---------------------------------------------
# (each failed `check` with the loader as it was before the fuzz; the last three were
# found while writing it, by reading the code, and fixed the same way)

FOUND = [
    # a control character: the YAML reader's message had a line break and no position
    pytest.param("steps: [{id: a, log: x\x1f}]\n", id="control-character"),
    # a key with a line break made a problem of two lines
    pytest.param('steps:\n  - id: a\n    "x\\ny": 1\n    log: x\n', id="key-with-line-break"),
    # a template error on the 5th line of a one-line quoted value pointed past the file's end
    pytest.param('steps:\n  - id: a\n    log: "{{ a }}\\n\\n\\n\\n{{ }}"\n', id="template-line-past-end"),
    # a lone surrogate (from a JSON string) could not be hashed: UnicodeEncodeError
    pytest.param("steps: [{id: a, log: \ud800}]\n", id="lone-surrogate"),
    # infinite and NaN durations in the new run-duration checks (formatting them overflowed)
    pytest.param("timeout: .inf\nsteps: [{id: a, wait: .inf}]\n", id="infinite-duration"),
    pytest.param("steps: [{id: a, wait: .inf}, {id: b, approval: {message: m, timeout: .nan}}]\n", id="nan-duration"),
]


@pytest.mark.parametrize("text", FOUND)
def test_cases_the_fuzz_found(text: str) -> None:
    check(text)
