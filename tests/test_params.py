"""Run parameters against a workflow's `params` (SPEC §1), and param defaults at load time."""

from __future__ import annotations

import pytest

from runner.dsl.definition import ParamSpec
from runner.dsl.loader import load_text
from runner.dsl.params import coerce, validate_params
from runner.errors import ParamError

SPECS = {
    "order_id": ParamSpec(type="string", required=True),
    "amount": ParamSpec(type="number", default=10),
    "count": ParamSpec(type="integer"),
    "express": ParamSpec(type="boolean", default=False),
    "items": ParamSpec(type="array"),
    "extra": ParamSpec(type="object"),
    "level": ParamSpec(type="string", enum=["low", "high"], default="low"),
}


def errors_of(given: object, *, from_text: bool = False, specs: dict | None = None) -> dict[str, str]:
    with pytest.raises(ParamError) as info:
        validate_params(SPECS if specs is None else specs, given, from_text=from_text)  # type: ignore[arg-type]
    return info.value.errors


def test_defaults_fill_what_is_not_given() -> None:
    assert validate_params(SPECS, {"order_id": "A1"}) == {
        "order_id": "A1", "amount": 10, "count": None, "express": False, "items": None, "extra": None,
        "level": "low"}


def test_given_values_win_over_defaults() -> None:
    out = validate_params(SPECS, {"order_id": "A1", "amount": 2.5, "express": True, "level": "high"})
    assert (out["amount"], out["express"], out["level"]) == (2.5, True, "high")


def test_required_param_missing() -> None:
    assert errors_of({}) == {"order_id": "missing required param (string)"}
    assert errors_of(None) == {"order_id": "missing required param (string)"}


@pytest.mark.parametrize("name, text, value", [
    ("count", "5", 5),
    ("count", " 7 ", 7),
    ("count", "5.0", 5),
    ("amount", "5", 5),
    ("amount", "2.5", 2.5),
    ("amount", "2.0", 2.0),  # written with a point: stays a float
    ("amount", "1e3", 1000),
    ("express", "yes", True),
    ("express", "Off", False),
    ("express", "1", True),
    ("items", '["a", 1]', ["a", 1]),
    ("extra", '{"gift": true}', {"gift": True}),
    ("order_id", "5", "5"),
])
def test_values_from_text_are_coerced(name: str, text: str, value: object) -> None:
    out = validate_params(SPECS, {"order_id": "A1", name: text}, from_text=True)
    assert out[name] == value and type(out[name]) is type(value)


@pytest.mark.parametrize("name, text, expected", [
    ("count", "five", 'expected an integer, got "five"'),
    ("count", "5.5", 'expected an integer, got "5.5"'),
    ("amount", "lots", 'expected a number, got "lots"'),
    ("amount", "nan", "expected a number"),
    ("express", "maybe", 'expected a boolean, got "maybe"'),
    ("items", "a,b", "expected an array (JSON list)"),
    ("extra", "[1]", "expected an object (JSON mapping), got [1]"),
])
def test_bad_text_values_say_what_is_expected(name: str, text: str, expected: str) -> None:
    assert errors_of({"order_id": "A1", name: text}, from_text=True)[name].startswith(expected)


def test_empty_text_means_not_given_for_optional_non_strings() -> None:
    out = validate_params(SPECS, {"order_id": "", "amount": "", "count": ""}, from_text=True)
    assert out["order_id"] == "" and out["amount"] == 10 and out["count"] is None


@pytest.mark.parametrize("name, value, ok", [
    ("count", 5, True), ("count", 5.0, True), ("count", 5.5, False), ("count", True, False), ("count", "5", False),
    ("amount", 1, True), ("amount", 1.5, True), ("amount", False, False), ("amount", float("inf"), False),
    ("express", True, True), ("express", 1, False), ("express", "true", False),
    ("items", [1], True), ("items", {"a": 1}, False),
    ("extra", {"a": 1}, True), ("extra", [1], False),
    ("order_id", "x", True), ("order_id", 5, False),
])
def test_json_values_must_have_the_declared_type(name: str, value: object, ok: bool) -> None:
    given = {"order_id": "A1", name: value}
    if ok:
        assert validate_params(SPECS, given)[name] == value
    else:
        assert name in errors_of(given)


def test_json_integer_that_is_a_whole_float_becomes_an_int() -> None:
    assert type(validate_params(SPECS, {"order_id": "A", "count": 3.0})["count"]) is int


def test_enum() -> None:
    assert errors_of({"order_id": "A1", "level": "mid"}) == {"level": "must be one of low, high; got 'mid'"}
    numbers = {"n": ParamSpec(type="integer", enum=[1, 2])}
    assert validate_params(numbers, {"n": "2"}, from_text=True) == {"n": 2}
    assert "must be one of 1, 2" in errors_of({"n": "3"}, from_text=True, specs=numbers)["n"]


def test_unknown_param_with_a_suggestion() -> None:
    errors = errors_of({"order_id": "A1", "ammount": 5})
    assert errors == {"ammount": "unknown param; did you mean 'amount'?"}
    assert errors_of({"zzz": 1}, specs={"a": ParamSpec()}) == {"zzz": "unknown param; known params: a"}
    assert errors_of({"x": 1}, specs={}) == {"x": "unknown param; this workflow takes no params"}


def test_every_bad_param_is_reported_at_once() -> None:
    errors = errors_of({"amount": "x", "count": 1.5, "bogus": 1})
    assert set(errors) == {"order_id", "amount", "count", "bogus"}
    assert "param 'order_id'" in str(ParamError(errors))


def test_params_that_are_not_a_mapping() -> None:
    assert "expected a mapping" in errors_of(["order_id", "A1"])["params"]


def test_coerce_directly() -> None:
    assert coerce("n", ParamSpec(type="number"), "1e3", from_text=True) == 1000.0
    with pytest.raises(ValueError, match="expected a string"):
        coerce("s", ParamSpec(type="string"), 1, from_text=False)


# -- defaults are checked when the file loads -------------------------------------


def test_default_of_the_wrong_type_is_reported_at_the_default() -> None:
    text = (
        "params:\n"
        "  n: {type: integer, default: 5}\n"
        "  m: {type: integer, default: five}\n"
        "  flag:\n"
        "    type: boolean\n"
        "    default: yes\n"
        "  level: {type: string, enum: [low, high], default: mid}\n"
        "  ratio: {type: number, default: 1.5}\n"
        "  ids: {type: array, default: {a: 1}}\n"
        "  kind: {type: string, enum: [a, 1]}\n"
        "steps: [{id: a, log: x}]\n"
    )
    problems = load_text(text, "wf.yaml").problems
    got = [(p.line, p.column, p.message) for p in problems]
    assert got == [
        (3, 31, 'params.m.default: the default does not fit the param: expected an integer, got "five"'),
        (6, 14, 'params.flag.default: the default does not fit the param: expected a boolean, got "yes"'),
        (7, 53, "params.level.default: the default does not fit the param: must be one of low, high; got 'mid'"),
        (9, 31, 'params.ids.default: the default does not fit the param: expected an array (JSON list), got {"a": 1}'),
        (10, 30, "params.kind.enum: the enum value does not fit the param: expected a string, got 1"),
    ]


def test_good_defaults_load_and_whole_floats_become_integers() -> None:
    text = "params:\n  n: {type: integer, default: 5.0}\n  s: {type: string, default: '5'}\nsteps: [{id: a, log: x}]\n"
    definition = load_text(text, "wf.yaml")
    assert definition.valid, definition.problems
    assert definition.spec.params["n"].default == 5 and type(definition.spec.params["n"].default) is int
    assert validate_params(definition.spec.params, {}) == {"n": 5, "s": "5"}


def test_json_values_are_not_read_as_text_unless_asked() -> None:
    # values from JSON (the API, a dry-run) keep their type: "5" is no integer there,
    # while a command line or a form (from_text=True) may say 5 as "5"
    given = {"order_id": "A1", "count": "5", "express": "true"}
    assert errors_of(given) == {"count": 'expected an integer, got "5"', "express": 'expected a boolean, got "true"'}
    out = validate_params(SPECS, given, from_text=True)
    assert (out["count"], out["express"]) == (5, True)


def test_a_dry_run_checks_params_as_a_real_run_does() -> None:
    from runner.engine.plan import plan_run

    d = load_text("params:\n  count: integer\nsteps:\n  - {id: a, log: '{{ params.count }}'}\n", "wf.yaml")
    assert d.valid, d.problems
    plan = plan_run(d, {"count": "5"}, {})
    assert plan["params"] is None and plan["param_errors"] == {"count": 'expected an integer, got "5"'}
    assert plan_run(d, {"count": 5}, {})["params"] == {"count": 5}
