"""Loading and validating definition files (SPEC §1).

The files under tests/data drive most of this: each `bad_*.yaml` starts with
`# expect: LINE:COL: message-substring` lines, one per problem it must report, and
must report nothing else; each `good_*.yaml` must load with no problem at all.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel

from runner.dsl import definition as d
from runner.dsl import loader
from runner.dsl import trigger_spec as t
from runner.dsl.loader import load_file, load_text
from runner.errors import Problem
from runner.gitops.catalog import Catalog, find_files

DATA = Path(__file__).parent / "data"
BAD = sorted(DATA.glob("bad_*.yaml"))
GOOD = sorted(DATA.glob("good_*.yaml"))
_EXPECT = re.compile(r"^# expect: (\d+):(\d+): (.+)$")


def expectations(path: Path) -> list[tuple[int, int, str]]:
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _EXPECT.match(line)
        if m:
            found.append((int(m[1]), int(m[2]), m[3]))
    return found


def assert_reports(problems: list[Problem], expected: list[tuple[int, int, str]], path: str) -> None:
    """Each expected problem is reported exactly there, and nothing else is."""
    shown = "\n".join(map(str, problems))
    left = list(problems)
    for line, col, text in expected:
        match = next((p for p in left if (p.line, p.column) == (line, col) and text in p.message), None)
        assert match is not None, f"expected {path}:{line}:{col}: ...{text}...; got:\n{shown}"
        left.remove(match)
    assert not left, "unexpected problems:\n" + "\n".join(map(str, left))
    assert all(p.path == path for p in problems), shown


def load(text: str, name: str = "wf") -> loader.Definition:
    return load_text(textwrap.dedent(text), f"{name}.yaml", name=name)


def messages(text: str) -> list[str]:
    return [str(p) for p in load(text).problems]


# -- the data files -------------------------------------------------------------


def test_there_is_a_bad_file_for_each_kind_of_problem() -> None:
    names = {p.stem.removeprefix("bad_") for p in BAD}
    for kind in ("yaml_syntax", "unknown_key", "synonym_key", "missing_step_id", "missing_steps",
                 "wrong_type", "yaml11_trap", "duration", "duplicate_ids", "needs_missing", "cycle",
                 "template_syntax", "unknown_kind", "two_kinds", "template_ref", "duplicate_key",
                 "param_spec", "empty", "list", "many"):
        assert kind in names
    assert len(expectations(DATA / "bad_many.yaml")) >= 4


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_file_reports_each_expected_problem(path: Path) -> None:
    expected = expectations(path)
    assert expected, f"{path.name} has no '# expect:' lines"
    definition = load_file(path)
    assert not definition.valid
    assert definition.spec is None and definition.dag is None
    assert_reports(definition.problems, expected, str(path))


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_good_file_loads_without_problems(path: Path) -> None:
    definition = load_file(path)
    assert definition.problems == []
    assert definition.valid and definition.spec is not None and definition.dag is not None
    assert set(definition.dag.order) == {s.id for s in definition.spec.steps}


def _fields_used(value: object, used: dict[type, set[str]]) -> None:
    if isinstance(value, BaseModel):
        used.setdefault(type(value), set()).update(value.model_fields_set)
        for name in type(value).model_fields:
            _fields_used(getattr(value, name), used)
    elif isinstance(value, dict):
        for item in value.values():
            _fields_used(item, used)
    elif isinstance(value, list):
        for item in value:
            _fields_used(item, used)


def test_good_full_uses_every_field_of_the_format() -> None:
    definition = load_file(DATA / "good_full.yaml")
    assert definition.valid, definition.problems
    used: dict[type, set[str]] = {}
    _fields_used(definition.spec, used)
    for model in (d.WorkflowSpec, d.StepSpec, d.HttpSpec, d.RetrySpec, d.ParamSpec, d.DefaultsSpec, d.ResourcesSpec,
                  t.TriggersSpec, t.ScheduleSpec, t.WebhookSpec, t.EventSpec, t.FileTriggerSpec,
                  t.AfterSpec, t.ConcurrencySpec, t.NotifySpec, d.PreconditionSpec, d.ForeachSpec, d.RepeatSpec):
        # token_env is the alternative to secret_env (one or the other): tested in test_webhooks
        missing = set(model.model_fields) - used.get(model, set()) - ({"token_env"} if model is t.WebhookSpec else set())
        assert not missing, f"good_full.yaml never sets {model.__name__}.{sorted(missing)}"
    steps = definition.spec.steps
    assert {s.kind for s in steps} == set(d.KINDS)
    assert {s.trigger_rule for s in steps} == set(d.TRIGGER_RULES)
    assert {s.retry.backoff for s in steps if s.retry} | {definition.spec.defaults.retry.backoff} == {
        "none", "fixed", "linear", "exponential"}
    assert {p.type for p in definition.spec.params.values()} == set(d.PARAM_TYPES)


def test_good_full_values_are_read_as_written() -> None:
    spec = load_file(DATA / "good_full.yaml").spec
    assert spec is not None
    by_id = {s.id: s for s in spec.steps}
    assert spec.name == "full-example" and spec.max_parallel == 8 and spec.timeout == 600
    assert spec.env["VERSION"] == "1.10"
    assert spec.params["note"].type == "string"  # `note: string` shorthand
    assert spec.defaults.retry.on == [1, 503] and spec.defaults.timeout == 30
    assert by_id["reserve"].retry.limit == 3 and by_id["reserve"].timeout == 5400
    assert by_id["payment"].http.method == "POST" and by_id["payment"].needs == []
    assert by_id["label"].needs == ["ship"]
    assert by_id["ship"].http.expect_status == [200]
    assert by_id["notify"].retry.delay == 0.5
    assert by_id["score"].with_ == {"obj": "{{ steps.fan_out.output }}"}


def test_duplicate_names_across_files_are_reported_in_both() -> None:
    folder = DATA / "dupnames"
    catalog = Catalog(folder)
    catalog.load_all()
    entries = {e.path: e for e in catalog.entries()}
    assert set(entries) == {"first.yaml", "second.yaml"}
    for rel, entry in entries.items():
        assert not entry.valid
        assert_reports(entry.problems, expectations(folder / rel), rel)
    # alone, each file is fine: the clash is the problem
    assert load_file(folder / "first.yaml").valid


# -- files that cannot be read --------------------------------------------------


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes("steps:\n  - id: caf\xe9\n    log: x\n".encode("latin-1"))
    definition = load_file(path)
    assert [(p.line, p.column) for p in definition.problems] == [(1, 1)]
    assert "not UTF-8" in definition.problems[0].message
    assert definition.name == "latin"


def test_file_too_large(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "MAX_FILE_BYTES", 100)
    path = tmp_path / "big.yaml"
    path.write_text("steps:\n" + "".join(f"  - id: s{i}\n    log: x\n" for i in range(20)))
    problems = load_file(path).problems
    assert len(problems) == 1 and "the limit is 100" in problems[0].message
    small = tmp_path / "small.yaml"
    small.write_text("steps: [{id: a, log: x}]\n")
    assert load_file(small).valid


def test_unreadable_path_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    problems = load_file(tmp_path / "missing.yaml").problems
    assert len(problems) == 1 and "cannot read file" in problems[0].message


@pytest.mark.parametrize("text, message", [
    ("a: &x [*x]\n", "alias refers to a mapping or list that contains it"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}' if i > 1 else '*a'] * 10)}]\n" for i in range(1, 8)),
     "expands to more than"),
    ("a: " + "[" * 300 + "]" * 300 + "\n", "nested more than"),
    ("a: !!binary aGVsbG8=\n", "unsupported tag '!!binary'"),
    ("a: !!timestamp 2024-01-01\n", "unsupported tag '!!timestamp'"),
    ("a: !custom x\n", "unsupported tag '!custom'"),
    ("a: 1\n---\nb: 2\n", "invalid YAML"),
])
def test_hostile_yaml_is_reported_quickly(text: str, message: str) -> None:
    problems = load_text(text, "x.yaml").problems
    assert len(problems) == 1 and message in problems[0].message, problems


# -- YAML 1.2 rules and shorthands ---------------------------------------------


def test_yaml_11_words_stay_strings() -> None:
    definition = load("""
        description: on
        tags: [yes, no, on, off, y, n]
        env: {TIME: 12:30, ANSWER: yes, DAY: 2024-01-02}
        steps:
          - id: a
            run: yes
          - id: b
            when: no
            log: 12:30
    """)
    assert definition.valid, definition.problems
    spec = definition.spec
    assert spec.description == "on"
    assert spec.tags == ["yes", "no", "on", "off", "y", "n"]
    assert spec.env == {"TIME": "12:30", "ANSWER": "yes", "DAY": "2024-01-02"}
    assert spec.steps[0].run == "yes"
    assert spec.steps[1].when == "no" and spec.steps[1].log == "12:30"


def test_yaml_12_core_scalars() -> None:
    spec = load("""
        steps:
          - id: a
            set: {t: true, f: False, n: null, tilde: ~, i: 12, o: 0o17, h: 0x1f, x: 1.5, e: 1e3, s: 010}
    """).spec
    assert spec.steps[0].set == {"t": True, "f": False, "n": None, "tilde": None, "i": 12, "o": 15,
                                 "h": 31, "x": 1.5, "e": 1000.0, "s": 10}


def test_numbers_where_text_is_meant_are_reported() -> None:
    problems = load("""
        env: {VERSION: 1.10, PORT: 8080, MODE: 0o17, ON: true}
        steps:
          - id: a
            env: {RATIO: 1e3}
            run: [echo, 1.10]
    """).problems
    got = {(p.line, p.message.split(":")[0]) for p in problems}
    assert got == {(2, "env.VERSION"), (2, "env.MODE"), (5, "steps[0].env.RATIO"), (6, "steps[0].run[1]")}


def test_retry_and_needs_shorthands() -> None:
    spec = load("""
        steps:
          - id: a
            retry: 3
            log: x
          - id: b
            needs: a
            log: y
          - id: c
            needs: [a, b]
            retry: {limit: 1, on: 500}
            log: z
    """).spec
    a, b, c = spec.steps
    assert a.retry.limit == 3 and a.retry.backoff == "fixed"
    assert b.needs == ["a"]
    assert c.needs == ["a", "b"] and c.retry.on == [500]


def test_merge_keys_are_not_duplicate_keys() -> None:
    definition = load("""
        steps:
          - &base
            id: a
            timeout: 5s
            log: x
          - <<: *base
            id: b
            timeout: 10s
    """)
    assert definition.valid, definition.problems
    assert [(s.id, s.timeout, s.log) for s in definition.spec.steps] == [("a", 5, "x"), ("b", 10, "x")]


def test_an_overriding_value_replaces_what_was_known_about_the_merged_one() -> None:
    definition = load("""
        steps:
          - &base
            id: a
            env: {V: 1.10}
            run: echo
          - <<: *base
            id: b
            env: {V: "1.10"}
    """)
    # only the first step's number is reported: the second wrote text
    assert [(p.line, p.message.split(":")[0]) for p in definition.problems] == [(5, "steps[0].env.V")]
    bad = load("""
        steps:
          - &base
            id: a
            env: {V: "x"}
            run: echo
          - <<: *base
            id: b
            env: {V: 1.10}
    """)
    assert [(p.line, p.message.split(":")[0]) for p in bad.problems] == [(9, "steps[1].env.V")]


def test_positions_point_into_merged_and_overriding_values() -> None:
    problems = load("""
        steps:
          - &base
            id: a
            log: x
            timeout: soon
          - <<: *base
            id: b
            timeout: later
    """).problems
    assert [(p.line, p.column) for p in problems] == [(6, 14), (9, 14)]


# -- messages -------------------------------------------------------------------


def test_messages_name_the_file_line_column_and_field() -> None:
    [problem] = load("""
        steps:
          - id: a
            log: x
          - id: b
            log: y
            needs: [c]
    """, name="orders").problems
    assert str(problem) == "orders.yaml:7:13: steps[1].needs: no step named 'c' (steps: a, b)"


def test_unknown_key_in_nested_models_suggests_the_right_one() -> None:
    got = messages("""
        params:
          n: {type: integer, defualt: 5}
        defaults:
          retry: {limit: 2, backof: fixed}
        steps:
          - id: a
            http: {url: x, header: {}}
    """)
    assert got == [
        "wf.yaml:3:22: params.n.defualt: unknown key 'defualt'; did you mean 'default'?",
        "wf.yaml:5:21: defaults.retry.backof: unknown key 'backof'; did you mean 'backoff'?",
        "wf.yaml:8:20: steps[0].http.header: unknown key 'header'; did you mean 'headers'?",
    ]


def test_step_without_kind_lists_the_kinds() -> None:
    [message] = messages("""
        steps:
          - id: a
            needs: []
    """)
    assert message.startswith("wf.yaml:3:5: steps[0]: the step has no kind")
    assert "run, http, python, set, wait, log, workflow" in message


def test_misspelt_field_in_step_without_kind_is_not_called_a_kind() -> None:
    [message] = messages("""
        steps:
          - id: a
            neds: [b]
    """)
    assert "unknown key 'neds'; did you mean 'needs'?" in message


def test_a_step_reading_itself_or_env_reading_a_step() -> None:
    got = messages("""
        env: {OUT: "{{ steps.a.output }}"}
        steps:
          - id: a
            log: "{{ steps.a.status }}"
          - id: my-step
            log: x
          - id: c
            log: "text steps.nowhere is not code {{ steps.my-step.output }}"
    """)
    assert len(got) == 3
    assert "env.OUT: refers to steps.a, but env is rendered when the run starts" in got[0]
    assert "steps[0].log: refers to steps.a, the step itself" in got[1]
    assert "write steps['my-step']" in got[2] and "nowhere" not in got[2]


def test_reading_a_later_step_through_needs_is_fine() -> None:
    definition = load("""
        steps:
          - id: a
            needs: [b]
            log: "{{ steps.b.output }} {{ steps['b'].status }}"
          - id: b
            needs: []
            log: x
        outputs: {all: "{{ steps.a.output }}"}
    """)
    assert definition.valid, definition.problems


def test_template_error_on_a_later_line_of_a_block() -> None:
    [problem] = load("""
        steps:
          - id: a
            run: |

              echo one
              echo {{ oops }
    """).problems
    assert (problem.line, problem.column) == (7, 7)


def test_unknown_filter_is_caught_at_load() -> None:
    [message] = messages("""
        steps:
          - id: a
            log: "{{ params.x | nosuchfilter }}"
    """)
    assert "template error" in message and "nosuchfilter" in message


# -- the catalog ----------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_catalog_ignores_hidden_files_and_folders(tmp_path: Path) -> None:
    ok = "steps: [{id: a, log: x}]\n"
    _write(tmp_path / "visible.yaml", ok)
    _write(tmp_path / "team" / "nested.yml", ok)
    _write(tmp_path / ".hidden.yaml", "broken: [")
    _write(tmp_path / ".git" / "x.yaml", "broken: [")
    _write(tmp_path / "team" / ".drafts" / "draft.yaml", "broken: [")
    _write(tmp_path / "notes.txt", "broken: [")
    assert [p.relative_to(tmp_path).as_posix() for p in find_files(tmp_path)] == [
        "team/nested.yml", "visible.yaml"]
    catalog = Catalog(tmp_path)
    catalog.load_all()
    assert catalog.names() == ["nested", "visible"]
    assert catalog.problems() == []
    assert catalog.reload([tmp_path / ".git" / "x.yaml", tmp_path / "team" / ".drafts" / "draft.yaml"]) == []


def test_a_broken_file_never_stops_the_others(tmp_path: Path) -> None:
    _write(tmp_path / "a_broken.yaml", "steps: [\n")
    _write(tmp_path / "b_latin.yaml", "")
    (tmp_path / "b_latin.yaml").write_bytes(b"\xff\xfe")
    _write(tmp_path / "c_loop.yaml", "a: &x [*x]\n")
    _write(tmp_path / "d_good.yaml", "steps: [{id: a, log: x}]\n")
    _write(tmp_path / "e_cycle.yaml", "steps: [{id: a, log: x, needs: [b]}, {id: b, log: y}]\n")
    catalog = Catalog(tmp_path)
    catalog.load_all()
    assert catalog.names() == ["a_broken", "b_latin", "c_loop", "d_good", "e_cycle"]
    assert [e.name for e in catalog.entries() if e.valid] == ["d_good"]
    assert catalog.get("d_good").dag.order == ("a",)
    assert {p.path for p in catalog.problems()} == {"a_broken.yaml", "b_latin.yaml", "c_loop.yaml", "e_cycle.yaml"}


def test_catalog_reload_with_absolute_paths_and_a_relative_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    root = Path("defs")
    first = _write(tmp_path / "defs" / "one.yaml", "steps: [{id: a, log: x}]\n")
    catalog = Catalog(root)
    catalog.load_all()
    assert catalog.names() == ["one"]
    _write(tmp_path / "defs" / "two.yaml", "steps: [{id: a, log: x}]\n")
    assert catalog.reload([(tmp_path / "defs" / "two.yaml").absolute()]) == ["two.yaml"]
    assert catalog.names() == ["one", "two"]
    first.unlink()
    assert catalog.reload([first.absolute()]) == ["one.yaml"]
    assert catalog.names() == ["two"]


def test_name_clash_appears_and_goes_with_reload(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", "name: same\nsteps: [{id: a, log: x}]\n")
    catalog = Catalog(tmp_path)
    catalog.load_all()
    assert catalog.get("same").valid
    b = _write(tmp_path / "b.yaml", "steps: [{id: a, log: x}]\nname: same\n")
    catalog.reload([b])
    assert [(p.path, p.line, p.column) for p in catalog.problems()] == [("a.yaml", 1, 7), ("b.yaml", 2, 7)]
    # both are reported; a.yaml, which worked before the newcomer, keeps its version in force
    same = catalog.get("same")
    assert same.path == "a.yaml" and same.valid and not same.healthy
    b.unlink()
    catalog.reload([b])
    assert catalog.problems() == [] and catalog.get("same").valid


def test_json_schema_describes_triggers_and_their_shorthands() -> None:
    schema = d.json_schema()
    defs = schema["$defs"]
    assert {"TriggersSpec", "ScheduleSpec", "WebhookSpec", "EventSpec", "FileTriggerSpec", "AfterSpec",
            "ConcurrencySpec", "NotifySpec"} <= set(defs)
    ending = {"enum": ["succeeded", "failed", "cancelled"]}
    assert ending in defs["NotifySpec"]["properties"]["on"]["anyOf"]
    assert {"type": "integer"} in defs["RetrySpec"]["properties"]["on"]["anyOf"]  # exit codes stay numbers
    assert ending in defs["AfterSpec"]["properties"]["status"]["anyOf"]
    assert {"type": "string"} in defs["TriggersSpec"]["properties"]["event"]["anyOf"][1]["items"]["anyOf"]
    assert {"type": "integer", "minimum": 1} in schema["properties"]["concurrency"]["anyOf"]
    assert "pattern" in str(defs["FileTriggerSpec"]["properties"]["settle"])  # `2s` is a duration


@pytest.mark.parametrize(("trigger", "message"), [
    ('schedule: [{cron: "0 0 31 2 *"}]', "never matches a date"),
    ('schedule: [{cron: "*/5 * * * * *"}]', "has 6 fields"),
    ('schedule: [{cron: "*/5 * * * *", timezone: Mars/Olympus}]', "unknown time zone 'Mars/Olympus'"),
    ("webhook: {params: {a: 1}}", "needs exactly one of 'secret_env'"),
    ("webhook: {secret_env: A, token_env: B}", "needs exactly one of 'secret_env'"),
    ('event: [{type: "x", params: {a: "{{ data.a "}}]', "template error"),
    ("after: {workflow: w, status: done}", "'done' is not one of succeeded, failed, cancelled"),
])
def test_bad_triggers_are_reported_at_their_line(trigger: str, message: str) -> None:
    text = f"triggers:\n  {trigger}\nsteps: [{{id: a, log: x}}]\n"
    problems = load_text(text, "t.yaml").problems
    assert any(p.line == 2 and message in p.message for p in problems), problems
