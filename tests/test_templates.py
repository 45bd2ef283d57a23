"""Sandboxed Jinja2 templates: native types, strict names, limits, secret masking."""

from __future__ import annotations

import pytest

from runner.templates import (
    Masker,
    TemplateFailed,
    TemplateSyntax,
    check_template,
    is_template,
    render,
    step_refs,
    truthy,
)

CONTEXT = {
    "params": {"n": 5, "name": "ada", "items": [1, 2], "flag": False},
    "steps": {"build": {"output": {"json": {"status": "ok"}, "count": 3}, "status": "succeeded"}},
    "env": {"API": "http://127.0.0.1:9000"},
    "secrets": {"TOKEN": "s3cr3t"},
}


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "x {{ params.__class__ }}",
    "{{ lipsum.__globals__.os }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{% for c in ''.__class__.__mro__ %}{{ c }}{% endfor %}",
])
def test_sandbox_blocks_access_to_internals(template: str) -> None:
    with pytest.raises(TemplateFailed) as info:
        render(template, CONTEXT)
    assert "unsafe" in str(info.value) or "undefined" in str(info.value)


@pytest.mark.parametrize("template", ["{{ 'a' * 10000000 }}", "{{ [0] * 2000000 }}", "{{ 10 ** 100000 }}",
                                      "{{ range(10000000) | list }}"])
def test_sandbox_limits_what_one_template_can_build(template: str) -> None:
    with pytest.raises(TemplateFailed, match="not allowed|too big"):
        render(template, CONTEXT)


def test_small_products_and_powers_still_work() -> None:
    assert render("{{ 'ab' * 3 }}", CONTEXT) == "ababab"
    assert render("{{ [0] * 3 }}", CONTEXT) == [0, 0, 0]
    assert render("{{ 2 ** 10 }}", CONTEXT) == 1024
    assert render("{{ params.n * 2 }}", CONTEXT) == 10


@pytest.mark.parametrize("template, name", [
    ("{{ nope }}", "nope"),
    ("hello {{ nobody }}", "nobody"),
    ("{{ params.missing }}", "missing"),
    ("{{ steps.deploy.output }}", "deploy"),
    ("{% if ghost %}x{% endif %}", "ghost"),
])
def test_undefined_names_fail_and_are_named(template: str, name: str) -> None:
    with pytest.raises(TemplateFailed) as info:
        render(template, CONTEXT)
    assert f"'{name}'" in str(info.value)


@pytest.mark.parametrize("template, value", [
    ("{{ params.n }}", 5),
    ("  {{ params.n + 1 }} ", 6),
    ("{{ params.items }}", [1, 2]),
    ("{{ params.flag }}", False),
    ("{{ steps.build.output.json }}", {"status": "ok"}),
    ("{{ none }}", None),
    ("{{ steps.build.output.json.status == 'ok' }}", True),
    ("{{ params.n | string }}", "5"),
])
def test_a_whole_expression_keeps_its_type(template: str, value: object) -> None:
    result = render(template, CONTEXT)
    assert result == value and type(result) is type(value)


@pytest.mark.parametrize("template, text", [
    ("n={{ params.n }}", "n=5"),
    ("{{ params.n }}{{ params.n }}", "55"),
    ("{{ params.n }} and {{ params.name }}", "5 and ada"),
    ("{% if params.n > 1 %}big{% endif %}", "big"),
    ("{{ env.API }}/pay", "http://127.0.0.1:9000/pay"),
    ("{{ params.items | tojson }}", "[1, 2]"),
])
def test_anything_else_is_a_string(template: str, text: str) -> None:
    assert render(template, CONTEXT) == text


def test_keys_of_mappings_win_over_dict_methods() -> None:
    data = {"d": {"items": [1], "keys": "k", "get": 3}}
    assert render("{{ d.items }}", data) == [1]
    assert render("{{ d.keys }}-{{ d.get }}", data) == "k-3"
    assert render("{{ d.items | length }}", data) == 1
    assert render("{{ d['items'] }}", data) == [1]
    assert render("{{ {'a': 1}.items() | list }}", {}) == [("a", 1)]  # methods still work otherwise


def test_render_walks_lists_and_mappings_and_leaves_other_values() -> None:
    value = {"a": ["{{ params.n }}", "x{{ params.n }}", 7, None], "b": {"c": "{{ params.name }}"}, "d": True}
    assert render(value, CONTEXT) == {"a": [5, "x5", 7, None], "b": {"c": "ada"}, "d": True}
    assert render("plain text", {}) == "plain text"


def test_errors_inside_expressions_become_template_failed() -> None:
    with pytest.raises(TemplateFailed, match="ZeroDivisionError"):
        render("{{ 1 / 0 }}", CONTEXT)
    with pytest.raises(TemplateFailed, match="JSONDecodeError"):
        render("{{ 'not json' | fromjson }}", CONTEXT)


@pytest.mark.parametrize("template, line", [("{{ a }", 1), ("ok\n{% if x %}", 2), ("{{ x | nosuchfilter }}", 1)])
def test_syntax_errors_are_found_before_running(template: str, line: int) -> None:
    with pytest.raises(TemplateSyntax) as info:
        check_template(template)
    assert info.value.lineno == line and info.value.message


def test_valid_templates_pass_the_check() -> None:
    for template in ("{{ a }}", "x {{ a | tojson }} {% for i in b %}{{ i }}{% endfor %}", "no template"):
        check_template(template)


def test_step_refs_see_only_code() -> None:
    text = "steps.not_code {{ steps.a.output }}\n{% if steps['b-c'].status %}{{ steps.a.x }}{% endif %}"
    assert step_refs(text) == [("a", 1), ("b-c", 2), ("a", 2)]
    assert step_refs("{{ params.steps }}") == []
    assert step_refs("{{ broken") == []


def test_is_template_and_truthy() -> None:
    assert is_template("{{ x }}") and is_template("{% if %}") and not is_template("x") and not is_template(5)
    for value in ("false", "No", " 0 ", "", "none", "null", "off", 0, None, [], False):
        assert truthy(value) is False, value
    for value in ("true", "yes", "ok", 1, [0], True):
        assert truthy(value) is True, value


def test_masker_masks_secrets_everywhere_in_nested_data() -> None:
    mask = Masker(["s3cr3t", "pw", ""])
    data = {"headers": {"Authorization": "Bearer s3cr3t"}, "list": ["pw", ("x s3cr3t",)], "n": 5,
            "s3cr3t-key": None}
    assert mask.data(data) == {"headers": {"Authorization": "Bearer ***"}, "list": ["***", ["x ***"]], "n": 5,
                               "***-key": None}
    assert mask.text("pw and s3cr3t and pwx") == "*** and *** and ***x"
    assert mask


def test_masker_prefers_the_longest_secret() -> None:
    assert Masker(["abc", "abcdef"]).text("abcdef abc") == "*** ***"


def test_masker_without_secrets_changes_nothing() -> None:
    mask = Masker([])
    data = {"a": ["b"]}
    assert not mask
    assert mask.data(data) is data and mask.text("x") == "x"
    assert Masker([""]).text("anything") == "anything"
