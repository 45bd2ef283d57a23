"""Hardened inputs: every limit of runner/limits.py, with the message it gives.

Definition files (size, steps, literal foreach lists, durations) are checked at load
and reported as path:line:column; what a run makes (foreach lists, inputs, outputs,
http bodies, its duration) fails the step or the run with a message naming the
limit and the fix. The template sandbox is probed last: every way found to make one
template build gigabytes or run for minutes is refused.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import httpx
import jinja2.sandbox
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner import limits, templates
from runner.dsl import yaml_source
from runner.dsl.loader import load_file, load_text
from runner.engine import engine as executor
from runner.engine.engine import Engine
from runner.engine.logsink import LogSink
from runner.limits import NotJson, json_size
from runner.steps import http as http_step
from runner.steps import shell
from runner.templates import TemplateFailed, render
from tests.conftest import definition
from tests.exec_support import by_id, recorded, run_yaml, write_module
from tests.http_server import http_server_fixture  # noqa: F401  (the `http_server` fixture)

ROOT = Path(__file__).resolve().parent.parent


def problems_of(text: str) -> list[str]:
    return [str(p) for p in load_text(text, "wf.yaml").problems]


# -- the list itself ---------------------------------------------------------------------


def test_limits_mirrored_from_other_modules_agree_with_them() -> None:
    assert yaml_source.MAX_VALUES == limits.MAX_YAML_VALUES
    assert yaml_source.MAX_DEPTH == limits.MAX_YAML_DEPTH
    assert templates.MAX_SIZE == limits.MAX_TEMPLATE_SIZE
    assert templates.MAX_EXPONENT == limits.MAX_TEMPLATE_EXPONENT
    assert jinja2.sandbox.MAX_RANGE == limits.MAX_TEMPLATE_RANGE
    assert templates.MAX_RENDER_SECONDS == limits.MAX_TEMPLATE_SECONDS
    assert executor.MAX_CHILD_DEPTH == limits.MAX_CHILD_DEPTH
    assert shell.OUTPUT_LIMIT == limits.MAX_STDOUT_BYTES
    assert http_step.TEXT_LIMIT == limits.MAX_HTTP_TEXT_CHARS


MiB = 1024 * 1024
# every limit: its value, and how docs/definitions.md#limits shows it to users
DOCUMENTED = [
    ("MAX_FILE_BYTES", 1_000_000, "1,000,000 bytes"), ("MAX_STEPS", 10_000, "10,000 steps"),
    ("MAX_YAML_VALUES", 100_000, "100,000 values"), ("MAX_YAML_DEPTH", 200, "200 levels"),
    ("MAX_PARALLEL", 1024, "1,024"), ("MAX_RETRIES", 1000, "1,000 retries"), ("MAX_PROBLEMS", 1000, "1,000 problems"),
    ("MAX_FOREACH_ITEMS", 10_000, "10,000 items"), ("MAX_OUTPUT_BYTES", 4 * MiB, "4 MiB"),
    ("MAX_INPUT_BYTES", 4 * MiB, "4 MiB"), ("MAX_GATHERED_OUTPUT_BYTES", 64 * MiB, "64 MiB"),
    ("MAX_HTTP_RESPONSE_BYTES", 4 * MiB, "4 MiB"), ("MAX_HTTP_TEXT_CHARS", 1_000_000, "1,000,000"),
    ("MAX_STDOUT_BYTES", 1_000_000, "1,000,000 bytes"), ("MAX_LOG_BYTES", 1_000_000, "1,000,000 bytes"),
    ("LOG_TAIL_BYTES", 64_000, "64,000 bytes"), ("DEFAULT_RUN_TIMEOUT", 7 * 86400, "7 days"),
    ("MAX_RUN_TIMEOUT", 30 * 86400, "30 days"), ("WIND_UP_TIMEOUT", 7 * 86400, "7 days"),
    ("MAX_TEMPLATE_SIZE", 1_000_000, "1,000,000"), ("MAX_CHILD_DEPTH", 10, "10 levels"),
    ("MAX_REQUEST_BODY_BYTES", 1 * MiB, "1 MiB"),
]


@pytest.mark.parametrize("name, value, shown", DOCUMENTED, ids=[d[0] for d in DOCUMENTED])
def test_the_docs_list_every_limit_with_its_value(name: str, value: int, shown: str) -> None:
    text = (ROOT / "docs" / "definitions.md").read_text()
    section = text.split("\n## Limits\n", 1)[1].split("\n## ", 1)[0]
    assert getattr(limits, name) == value  # what users are told is what is enforced
    assert shown in section, shown
    assert "more than the limit of" in section  # the error texts are quoted


def test_sizes_and_durations_read_well_in_messages() -> None:
    assert limits.size_text(4 * 1024 * 1024) == "4 MiB (4,194,304 bytes)"
    assert limits.size_text(1_000_000) == "1,000,000 bytes"
    assert limits.size_text(4 * 1024 * 1024 + 1) == "4,194,305 bytes"  # MiB only when exact
    assert limits.size_text(0) == "0 bytes" and limits.size_text(1024 * 1024) == "1 MiB (1,048,576 bytes)"
    # past 1e15 s (and for inf/nan) no days-hours-minutes: the number as it is
    assert [limits.duration_text(s) for s in (1e15, 1e15 - 1, 0, 59.6, 2 * 86400 + 1)] == [
        "1e+15s", "11574074074d1h46m39s", "0s", "1m", "2d1s"]
    assert [limits.duration_text(s) for s in (7 * 86400, 30 * 86400, 5400, 90061, 0.5, float("inf"))] == [
        "7d", "30d", "1h30m", "1d1h1m1s", "0.5s", "forever"]


# -- definition files --------------------------------------------------------------------


def test_file_size_is_limited_for_text_as_for_files(tmp_path: Path) -> None:
    # counted in UTF-8 bytes: 500,001 two-byte characters are over the limit
    body = "steps: [{id: a, log: x}]\n# "
    text = body + "\u00e9" * ((limits.MAX_FILE_BYTES - len(body)) // 2 + 1)
    assert len(text) < limits.MAX_FILE_BYTES < len(text.encode())
    [problem] = load_text(text, "big.yaml").problems
    assert str(problem).startswith("big.yaml:1:1: file is 1,000,0")
    assert "the limit is 1,000,000 bytes (split the workflow into smaller ones" in problem.message
    path = tmp_path / "big.yaml"
    path.write_text(text)
    [from_file] = load_file(path).problems
    assert from_file.message == problem.message
    exactly = body + "x" * (limits.MAX_FILE_BYTES - len(body))
    assert len(exactly.encode()) == limits.MAX_FILE_BYTES and load_text(exactly, "ok.yaml").valid


def test_text_that_is_not_unicode_is_a_problem_not_an_exception() -> None:
    [problem] = load_text("steps: [{id: a, log: x}]\n# \ud800\n", "s.yaml").problems
    assert str(problem).startswith("s.yaml:2:3: the text is not valid Unicode")


def big_workflow(n: int, key: str = "steps") -> str:
    steps = "".join(f"  - id: {key[:1]}{i}\n    log: x\n" for i in range(n))
    main = "steps: [{id: main, log: x}]\n" if key != "steps" else ""
    return f"name: big\n{main}{key}:\n{steps}"


def test_ten_thousand_steps_load_and_one_more_is_reported_at_the_steps_key() -> None:
    assert load_text(big_workflow(limits.MAX_STEPS), "big.yaml").valid  # bench/reload.py's size
    assert problems_of(big_workflow(limits.MAX_STEPS + 1)) == [
        "wf.yaml:2:1: steps: 10,001 steps, more than the limit of 10,000 per list; split the workflow into "
        "smaller ones (a `workflow` step runs another workflow as a child)"]


@pytest.mark.parametrize("key", ["on_failure", "on_success", "finally"])
def test_handler_lists_have_the_same_limit(key: str) -> None:
    [problem] = problems_of(big_workflow(limits.MAX_STEPS + 1, key))
    assert problem.startswith(f"wf.yaml:3:1: {key}: 10,001 steps, more than the limit of 10,000 per list")


@pytest.mark.parametrize("at, over, problem", [
    ("max_parallel: 1024\nsteps: [{id: a, log: x}]\n", "max_parallel: 1025\nsteps: [{id: a, log: x}]\n",
     "wf.yaml:1:15: max_parallel: must be at most 1024 (got 1025)"),
    ("steps: [{id: a, retry: {limit: 1000}, log: x}]\n", "steps: [{id: a, retry: {limit: 1001}, log: x}]\n",
     "wf.yaml:1:32: steps[0].retry.limit: must be at most 1000 (got 1001)"),
    # the short form is a union (a number or a mapping): the bound is said, not a pydantic type name
    ("steps: [{id: a, retry: 1000, log: x}]\n", "steps: [{id: a, retry: 1001, log: x}]\n",
     "wf.yaml:1:24: steps[0].retry: must be at most 1000 (got 1001)"),
])
def test_max_parallel_and_retries_are_limited_at_their_values(at: str, over: str, problem: str) -> None:
    assert (limits.MAX_PARALLEL, limits.MAX_RETRIES) == (1024, 1000)
    assert problems_of(at) == []
    assert problems_of(over) == [problem]


def test_a_literal_foreach_list_over_the_limit_is_reported_at_load() -> None:
    items = ", ".join(["1"] * (limits.MAX_FOREACH_ITEMS + 1))
    assert problems_of(f"steps:\n  - id: a\n    foreach: [{items}]\n    log: x\n") == [
        "wf.yaml:3:5: steps[0].foreach: 10,001 items, more than the limit of 10,000 per step; split the list "
        "into batches (e.g. one child `workflow` run per batch)"]
    items = ", ".join(["1"] * limits.MAX_FOREACH_ITEMS)
    assert problems_of(f"steps:\n  - id: a\n    foreach: [{items}]\n    log: x\n") == []


def test_run_timeout_over_the_limit_and_waits_longer_than_a_run_are_reported() -> None:
    assert problems_of("timeout: 31d\nsteps: [{id: a, log: x}]\n") == [
        "wf.yaml:1:10: timeout: 31d is more than the limit of 30d for a run; split the work into several "
        "runs (a `schedule` or `after` trigger can start the next one)"]
    assert problems_of("timeout: 30d\nsteps: [{id: a, wait: 20d}]\n") == []
    assert problems_of("timeout: .nan\nsteps: [{id: a, wait: .nan}]\n") == [
        "wf.yaml:1:10: timeout: the duration is not a number (.nan); write e.g. 30s",
        "wf.yaml:2:23: steps[0].wait: the duration is not a number (.nan); write e.g. 30s"]
    text = "steps:\n  - {id: a, wait: 8d}\n  - {id: b, approval: {message: ok?, timeout: 10d}}\n" \
           "finally:\n  - {id: c, wait: 8d}\n"
    assert problems_of(text) == [
        "wf.yaml:2:19: steps[0].wait: 8d is longer than a run without `timeout` may last (7d); set the "
        "workflow's `timeout` (at most 30d) or wait less",
        "wf.yaml:3:47: steps[1].approval.timeout: 10d is longer than a run without `timeout` may last (7d); "
        "set the workflow's `timeout` (at most 30d) or wait less"]
    # the handlers run after the main steps (outside `timeout`), within their own limit
    assert problems_of("steps: [{id: a, log: x}]\nfinally: [{id: c, wait: 8d}]\n") == []


def test_a_file_with_a_problem_in_every_step_shows_the_first_thousand() -> None:
    # the problems used to be kept in a list searched and sorted on every add: this
    # 600 KB file took 6 minutes to load (its load time is a figure of bench/limits.py)
    text = "steps:\n" + "".join("  - {id: x, log: a}\n" for _ in range(30_000))
    problems = load_text(text, "dup.yaml").problems
    assert len(problems) == limits.MAX_PROBLEMS + 1
    assert str(problems[0]) == "dup.yaml:1:1: steps: 30,000 steps, more than the limit of 10,000 per list; " \
        "split the workflow into smaller ones (a `workflow` step runs another workflow as a child)"
    assert str(problems[-1]) == "dup.yaml:1002:10: 29,000 more problems not shown; fix the ones above first"


def test_the_json_schema_shows_the_step_limit() -> None:
    from runner.dsl.definition import json_schema

    assert json_schema()["properties"]["steps"]["maxItems"] == limits.MAX_STEPS


# -- the size of a value as JSON ---------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=5) | st.integers() | st.booleans() | st.none() | st.floats(), inner, max_size=4)
    | st.tuples(inner, inner),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(json_values)
def test_json_size_is_the_length_of_json_dumps(value: object) -> None:
    expected = len(json.dumps(value, default=str))
    assert json_size(value, 10**9) == expected
    assert json_size(value, expected) == expected
    assert json_size(value, expected - 1) == expected  # just over: limit + 1


def test_json_size_stops_early_and_refuses_what_json_cannot_hold() -> None:
    big = "x" * 1_000_000
    # a text far over the limit, or one whose every character takes 6 (\u0001): limit + 1, not its size
    assert json_size("x" * 100, 50) == 51 and json_size("\x01" * 10, 58) == 59 and json_size("\x01" * 10, 62) == 62
    shared = [big] * 100_000  # 100 GB of JSON made of references to one string: never expanded
    assert json_size(shared, limits.MAX_OUTPUT_BYTES) == limits.MAX_OUTPUT_BYTES + 1
    assert json_size([big] * 4, limits.MAX_OUTPUT_BYTES) == 4 * 1_000_002 + 2 * 4  # exact under the limit
    loop: list = [1]
    loop.append(loop)
    with pytest.raises(NotJson, match="contains itself"):
        json_size({"a": loop}, 10**9)
    with pytest.raises(NotJson, match="more than 4,300 digits"):
        json_size([9 ** 5000], 10**9)
    with pytest.raises(NotJson, match="key that is not text"):
        json_size({(1, 2): 3}, 10**9)
    assert json_size({"a": object}, 10**9) == len(json.dumps({"a": object}, default=str))


# -- runs: foreach, inputs, outputs --------------------------------------------------------


async def test_a_rendered_foreach_list_over_the_limit_fails_the_step_before_any_item(engine, tmp_path):
    exe, doc = await run_yaml(engine, tmp_path, """
        steps:
          - id: many
            foreach: "{{ range(10001) | list }}"
            log: "{{ item }}"
    """)
    assert exe.status == "failed"
    step = by_id(doc)["many"]
    assert step["status"] == "failed" and step["error"] == (
        "foreach: 10,001 items, more than the limit of 10,000 per step; split the list into batches of at most "
        "10,000 (e.g. one child `workflow` run per batch)")
    assert "items" not in step and step["attempts"] == 1


@pytest.fixture
def small_outputs(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(limits, "MAX_OUTPUT_BYTES", 1000)
    monkeypatch.setattr(limits, "MAX_INPUT_BYTES", 2000)
    monkeypatch.setattr(limits, "MAX_GATHERED_OUTPUT_BYTES", 5000)
    return 1000


OVER_OUTPUT = "output: more than the limit of 1,000 bytes as JSON; return less (write big data to a file"


async def test_outputs_over_the_limit_fail_the_step_without_retries(engine, tmp_path, small_outputs):
    mod = write_module(tmp_path, "def make(n):\n    return ['x' * 10] * n\n")
    exe, doc = await run_yaml(engine, tmp_path, """
        steps:
          - {id: fits, needs: [], set: {v: "{{ 'x' * 900 }}"}}
          - {id: set_big, needs: [], retry: 3, set: {v: "{{ 'x' * 1500 }}"}}
          - id: run_big
            needs: []
            run: python3 -c "print('[' + ','.join(['1'] * 600) + ']')"
          - {id: py_big, needs: [], retry: 2, python: "MOD:make", with: {n: 100}}
          - {id: after, needs: [set_big], trigger_rule: all_done, log: "{{ steps.set_big.output }}"}
    """.replace("MOD", mod))
    steps = by_id(doc)
    assert steps["fits"]["status"] == "succeeded"
    for sid in ("set_big", "run_big", "py_big"):
        assert steps[sid]["status"] == "failed", sid
        assert steps[sid]["error"].startswith(OVER_OUTPUT), steps[sid]["error"]
        assert steps[sid]["output"] is None and steps[sid]["attempts"] == 1, sid
    assert steps["run_big"]["exit_code"] == 0  # the command worked; its output did not fit
    assert steps["after"]["output"] == "None"  # later steps never see a cut value
    assert exe.status == "failed" and doc["error"].startswith("step 'set_big' failed: output: more than")


async def test_a_failed_attempts_big_output_is_dropped_with_a_note(engine, tmp_path, small_outputs):
    exe, doc = await run_yaml(engine, tmp_path, """
        steps:
          - id: bad
            run: python3 -c "import sys; print('[' + ','.join(['1'] * 600) + ']'); sys.exit(3)"
    """)
    step = by_id(doc)["bad"]
    assert step["status"] == "failed" and step["exit_code"] == 3 and step["output"] is None
    assert step["error"].startswith("exit code 3: ") and "(its output was not kept: output: more than" in step["error"]


async def test_inputs_over_the_limit_or_not_json_fail_before_the_step_runs(engine, tmp_path, small_outputs):
    exe, doc = await run_yaml(engine, tmp_path, """
        steps:
          - {id: a, needs: [], set: {v: "{{ 'x' * 900 }}"}}
          - {id: big_in, needs: [a], http: {url: "http://127.0.0.1:9/", json: "{{ [steps.a.output] * 3 }}"}}
          - {id: huge_int, needs: [], set: {v: "{{ 9 ** 999 * 9 ** 999 * 9 ** 999 * 9 ** 999 * 9 ** 999 }}"}}
          - {id: later, needs: [huge_int], trigger_rule: all_done, log: still recorded}
    """)
    steps = by_id(doc)
    assert steps["big_in"]["error"].startswith(
        "input: more than the limit of 2,000 bytes as JSON; pass less data to the step")
    assert steps["big_in"]["input"] is None and steps["big_in"]["attempts"] == 1
    # a value the database could not take never reaches it (it would stop the writer)
    assert steps["huge_int"]["error"] == "input: cannot be stored: it has a number with more than 4,300 digits, which JSON cannot hold"
    assert steps["later"]["status"] == "succeeded"


async def test_a_foreach_list_over_the_gathered_limit_fails(engine, tmp_path, small_outputs):
    exe, doc = await run_yaml(engine, tmp_path, """
        steps:
          - {id: each, foreach: "{{ range(10) | list }}", set: {v: "{{ 'x' * 600 }}"}}
    """)
    step = by_id(doc)["each"]
    assert step["status"] == "failed" and step["output"] is None
    assert step["error"].startswith("foreach: more than the limit of 5,000 bytes as JSON; the outputs of all its items")
    assert [i["status"] for i in step["items"]] == ["succeeded"] * 10  # each item fitted


FOREACH_KINDS = {
    # a `set` step's output is its input: its size is worked out from the input's
    "set": ('set: {v: "{{ item }}x", n: "{{ item }}"}', [{"v": f"{i}x", "n": i} for i in range(3)]),
    # a `log` of a number outputs the text: not its input, so it is measured as it is
    "log": ('log: "{{ item * 1000 }}"', ["0", "1000", "2000"]),
}


@pytest.mark.parametrize("kind", FOREACH_KINDS)
@pytest.mark.parametrize("spare", [0, -1])
async def test_a_foreach_of_set_steps_is_measured_to_the_byte(engine, tmp_path, monkeypatch, spare, kind):
    # the gathered list must come to exactly its JSON length, however each size was found
    body, outputs = FOREACH_KINDS[kind]
    exact = len(json.dumps(outputs))
    monkeypatch.setattr(limits, "MAX_GATHERED_OUTPUT_BYTES", exact + spare)
    exe, doc = await run_yaml(engine, tmp_path, f"""
        steps:
          - {{id: each, foreach: [0, 1, 2], {body}}}
    """)
    step = by_id(doc)["each"]
    if spare == 0:
        assert step["status"] == "succeeded" and step["output"] == outputs, step["error"]
    else:
        assert step["status"] == "failed" and step["error"].startswith(
            f"foreach: more than the limit of {exact - 1:,} bytes as JSON")


async def test_run_outputs_over_the_limit_fail_the_run(engine, tmp_path, small_outputs):
    text = """
        steps:
          - {id: a, needs: [], set: {v: "{{ 'x' * 900 }}"}}
          - {id: b, needs: [], set: {v: "{{ 'x' * 900 }}"}}
        OUTPUTS
    """
    exe, doc = await run_yaml(engine, tmp_path, text.replace("OUTPUTS", "outputs: {v: \"{{ [steps.a.output] * 6 }}\"}"))
    assert exe.status == "failed" and doc["outputs"] is None
    assert doc["error"] == "outputs: more than the limit of 5,000 bytes as JSON; keep only what matters in `outputs`"
    exe, doc = await run_yaml(engine, tmp_path, text.replace("OUTPUTS", "outputs: {v: \"{{ steps.a.output }}\"}"))
    assert exe.status == "succeeded" and doc["outputs"] == {"v": {"v": "x" * 900}}


async def test_default_outputs_over_the_limit_say_to_write_outputs(engine, tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_GATHERED_OUTPUT_BYTES", 1500)
    exe, doc = await run_yaml(engine, tmp_path, """
        steps:
          - {id: a, needs: [], set: {v: "{{ 'x' * 900 }}"}}
          - {id: b, needs: [], set: {v: "{{ 'x' * 900 }}"}}
    """)
    assert exe.status == "failed" and doc["error"] == (
        "outputs: more than the limit of 1,500 bytes as JSON; write `outputs:` to keep only what matters "
        "(without it, the outputs are those of the last steps)")


# -- http response bodies ------------------------------------------------------------------


async def test_an_endless_http_body_is_cut_off_at_the_limit(store, tmp_path, monkeypatch):
    monkeypatch.setattr(http_step, "MAX_HTTP_RESPONSE_BYTES", 200_000)
    sent = 0

    async def endless():
        nonlocal sent
        while True:
            sent += 65536
            yield b"x" * 65536

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/small":
            return httpx.Response(200, json={"ok": True})
        return httpx.Response(200, content=endless(), headers={"content-type": "text/plain"})

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    engine = Engine(store, definitions_dir=tmp_path, http=client)
    try:
        exe = await asyncio.wait_for(engine.run(definition("""
            steps:
              - {id: small, needs: [], http: {url: "http://api.test/small"}}
              - {id: endless, needs: [], retry: 2, http: {url: "http://api.test/endless"}}
        """, tmp_path)), 30)
        doc = await recorded(engine, exe.id)
    finally:
        await engine.close()
        await client.aclose()
    steps = by_id(doc)
    assert steps["small"]["output"]["json"] == {"ok": True}
    assert steps["endless"]["status"] == "failed" and steps["endless"]["attempts"] == 1
    assert steps["endless"]["http_status"] == 200
    assert steps["endless"]["error"] == (
        "GET http://api.test/endless answered 200 with a body of more than 200,000 bytes, the limit for an http "
        "step; download big files with a `run` step (e.g. curl -fsSo file URL) and pass the file's path")
    assert sent < 400_000  # reading stopped at the limit


async def test_an_http_body_of_exactly_the_real_limit_is_read_and_one_byte_more_is_not(engine, tmp_path, http_server):
    limit = limits.MAX_HTTP_RESPONSE_BYTES
    assert limit == 4 * 1024 * 1024
    exe, doc = await run_yaml(engine, tmp_path, f"""
        steps:
          - {{id: at, needs: [], http: {{url: "{http_server.url}/bytes?n={limit}"}}}}
          - {{id: over, needs: [], retry: 2, http: {{url: "{http_server.url}/bytes?n={limit + 1}"}}}}
    """)
    steps = by_id(doc)
    assert steps["at"]["status"] == "succeeded", steps["at"]["error"]
    text = steps["at"]["output"]["text"]  # kept up to MAX_HTTP_TEXT_CHARS, with a note
    assert text == "x" * limits.MAX_HTTP_TEXT_CHARS + f"\n[treadle: body truncated at {limits.MAX_HTTP_TEXT_CHARS} characters]"
    assert steps["over"]["status"] == "failed" and steps["over"]["attempts"] == 1  # a 200 sends the same body again
    assert steps["over"]["error"] == (
        f"GET {http_server.url}/bytes?n={limit + 1} answered 200 with a body of more than 4 MiB (4,194,304 bytes), "
        "the limit for an http step; download big files with a `run` step (e.g. curl -fsSo file URL) and pass "
        "the file's path")


async def test_inputs_and_outputs_of_exactly_the_real_limit_pass_and_one_byte_more_fails(engine, tmp_path):
    limit = limits.MAX_OUTPUT_BYTES
    assert limit == limits.MAX_INPUT_BYTES == 4 * 1024 * 1024
    mod = write_module(tmp_path, "def text(n):\n    return 'x' * n\n")
    overhead = len(json.dumps({"set": {"v": ""}}))  # the input of a `set` step is {"set": {...}}
    exe, doc = await run_yaml(engine, tmp_path, f"""
        params: {{at: {{type: string}}, over: {{type: string}}}}
        steps:
          - {{id: in_at, needs: [], set: {{v: "{{{{ params.at }}}}"}}}}
          - {{id: in_over, needs: [], set: {{v: "{{{{ params.over }}}}"}}}}
          - {{id: out_at, needs: [], python: "{mod}:text", with: {{n: {limit - 2}}}}}
          - {{id: out_over, needs: [], python: "{mod}:text", with: {{n: {limit - 1}}}}}
    """, params={"at": "x" * (limit - overhead), "over": "x" * (limit - overhead + 1)})
    steps = by_id(doc)
    assert steps["in_at"]["status"] == "succeeded", steps["in_at"]["error"]
    assert steps["in_over"]["error"] == ("input: more than the limit of 4 MiB (4,194,304 bytes) as JSON; pass less "
                                         "data to the step (only the fields it needs, or a file path)")
    assert steps["out_at"]["status"] == "succeeded", steps["out_at"]["error"]  # "xxx...": 2 quotes + limit - 2
    assert steps["out_over"]["status"] == "failed"
    assert steps["out_over"]["error"] == ("output: more than the limit of 4 MiB (4,194,304 bytes) as JSON; "
                                          f"{limits.OUTPUT_FIX}")


# -- logs ------------------------------------------------------------------------------------


def test_a_steps_log_keeps_the_limits_head_and_tail() -> None:
    rows: list[dict] = []
    sink = LogSink(rows.append, {"attempt": 1}, str)
    for _ in range(30):
        sink.write("stdout", "y" * 50_000)  # 1,500,000 bytes
    sink.close()
    text = "".join(r["text"] for r in rows)
    marker = (f"[treadle: log truncated: the limit is {limits.MAX_LOG_BYTES} bytes per step; "
              f"{1_500_000 - limits.MAX_LOG_BYTES - limits.LOG_TAIL_BYTES} bytes left out; "
              f"the last {limits.LOG_TAIL_BYTES} bytes follow]")
    assert marker in text
    assert len(text) == limits.MAX_LOG_BYTES + limits.LOG_TAIL_BYTES + len(marker) + 2


# -- how long a run may last -------------------------------------------------------------------


async def test_a_run_without_timeout_stops_at_the_default_limit(engine, tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "DEFAULT_RUN_TIMEOUT", 0.3)
    exe, doc = await run_yaml(engine, tmp_path, """
        steps:
          - {id: nap, wait: 20s}
    """)
    assert exe.status == "failed" and doc["error"] == (
        "run timed out after 0.3s, the limit for a run without `timeout`; set the workflow's `timeout` "
        "(at most 30d) if it needs longer")
    assert by_id(doc)["nap"]["status"] == "cancelled"


async def test_the_run_timeout_counts_from_the_runs_start(engine, tmp_path):
    """A run resumed after a restart keeps its start time: it gets no new window."""
    exe = await engine.start(definition("""
        timeout: 50s
        steps:
          - {id: nap, wait: 20s}
    """, tmp_path))
    exe.started_at = time.time() - 49.7  # as a resumed run started long ago would have
    # a new 50 s window would let the 20 s wait succeed (and outlast wait_for's 10 s)
    assert await asyncio.wait_for(exe.wait(), 10) == "failed"
    assert exe.error == "run timed out after 50.0s"


async def test_handlers_that_never_end_are_stopped(engine, tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "WIND_UP_TIMEOUT", 0.3)
    exe, doc = await run_yaml(engine, tmp_path, """
        steps:
          - {id: a, log: hi}
        finally:
          - {id: stuck, wait: 20s}
    """)
    assert exe.status == "succeeded"  # handlers never change the run's result
    assert by_id(doc)["stuck"]["status"] == "cancelled"


# -- the template sandbox ----------------------------------------------------------------------

CONTEXT = {"params": {"xs": [1, 2], "s": "abc"}, "steps": {}, "run": {"id": "r"}, "env": {}, "secrets": {}}


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__ }}",
    "{{ params.__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ self.__dict__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ params.s.format.__globals__ }}",
    "{{ '{0.__class__}'.format(params) }}",
    "{{ params.xs.pop.__self__ }}",
    "{{ params | attr('__class__') }}",
    "{{ params.__init__ }}",
    "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{{ c }}{% endfor %}",
])
def test_templates_cannot_reach_python_internals(template: str) -> None:
    with pytest.raises(TemplateFailed, match="not allowed in a template|has no attribute"):
        render(template, dict(CONTEXT))


@pytest.mark.parametrize("template", [
    "{{ range(10**9) | length }}",
    "{{ range(100001) | list | length }}",
    "{{ 'a' * 10**9 }}",
    "{{ [1] * 10**9 }}",
    "{{ 10 ** 100000 }}",
    "{{ (range(100000) | list | join(',') * 10) | length }}",
])
def test_templates_cannot_build_huge_values_with_range_star_or_power(template: str) -> None:
    with pytest.raises(TemplateFailed):
        render(template, dict(CONTEXT))


GROWERS = [
    pytest.param("{{ 'a' | center(2000000) }}", id="center-filter"),
    pytest.param("{{ 'a'.ljust(2000000) }}", id="str-ljust"),
    pytest.param("{{ 'a'.zfill(2000000) }}", id="str-zfill"),
    pytest.param("{{ '{:>2000000}'.format('a') }}", id="str-format-width"),
    pytest.param("{{ '%2000000s' % 'a' }}", id="percent-format-width"),
    pytest.param("{{ '%2000000s' | format('a') }}", id="format-filter-width"),
    pytest.param("{{ ('\t' * 1000).expandtabs(2000) }}", id="expandtabs"),
    pytest.param("{{ ('a' * 100000) | replace('a', 'aaaaaaaaaaaaaaaaaaaa') }}", id="replace-filter"),
    pytest.param("{{ ('a' * 100000).replace('a', 'aaaaaaaaaaaaaaaaaaaa') }}", id="str-replace"),
    pytest.param("{{ ((10 ** 1000) ** 1000) ** 2 }}", id="power-of-a-huge-base"),
    pytest.param("{{ params.xs.append(0) }}", id="mutating-run-data"),
    pytest.param("{{ params.update({'x': 1}) }}", id="mutating-params"),
]


@pytest.mark.parametrize("template", GROWERS)
def test_templates_cannot_exhaust_memory_or_change_run_data(template: str) -> None:
    data = {**CONTEXT, "params": {"xs": [1, 2], "s": "abc"}}
    with pytest.raises(TemplateFailed):
        render(template, data)
    assert data["params"] == {"xs": [1, 2], "s": "abc"}


def test_the_same_methods_work_at_a_normal_size() -> None:
    assert render("{{ 'ab'.center(6) }}|{{ '%05d' % 42 }}|{{ '{}/{}'.format(1, 2) }}|{{ 'aa' | replace('a', 'b') }}",
                  dict(CONTEXT)) == "  ab  |00042|1/2|bb"
    assert render("{{ 2 ** 100 }}", dict(CONTEXT)) == 2 ** 100


# `~` checks the size of what it joins, and all the ranges one render creates count
# against one budget, so nested loops cannot run for minutes.
TIME_EATERS = [
    pytest.param("{% set a = 'a' * 1000000 %}{% set a = a ~ a %}{{ a }}", id="concat-doubling"),
    pytest.param("{% for i in range(2000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}", id="nested-loops"),
]


@pytest.mark.parametrize("template", TIME_EATERS)
def test_templates_cannot_exhaust_time_with_loops_or_concatenation(template: str) -> None:
    with pytest.raises(TemplateFailed):
        render(template, {**CONTEXT, "params": {"xs": [1, 2], "s": "abc"}})
    # each render has its own budget: a failed one does not use up the next one's
    assert render("{% for i in range(1000) %}{% for j in range(900) %}{% endfor %}{% endfor %}ok", dict(CONTEXT)) == "ok"
    assert render("{{ 'a' ~ 1 ~ 'b' }}", dict(CONTEXT)) == "a1b"


# `*` counts the size of a list's items (three references to a 1,000,000 character
# text are 3,000,000 characters once printed, joined or `tojson`-ed); `indent` checks its width.
SIZE_GROWERS = [
    pytest.param("x {{ ['a' * 1000000] * 3 }}", id="printed-list-of-references"),
    pytest.param("{{ (['a' * 1000000] * 3) | join }}", id="joined-references"),
    pytest.param("{{ (['a' * 1000000] * 3) | tojson }}", id="tojson-of-references"),
    pytest.param("{{ 'a' | indent(2000000, true) }}", id="indent-width"),
]


@pytest.mark.parametrize("template", SIZE_GROWERS)
def test_templates_cannot_build_huge_text_from_references_or_indent(template: str) -> None:
    with pytest.raises(TemplateFailed):
        render(template, dict(CONTEXT))
    assert render("{{ (['ab'] * 3) | join }}|{{ 'a\nb' | indent(2) }}", dict(CONTEXT)) == "ababab|a\n  b"


def test_the_docs_quote_the_output_error_as_the_engine_says_it() -> None:
    text = (ROOT / "docs" / "definitions.md").read_text()
    said = limits.too_big("output", limits.MAX_OUTPUT_BYTES, limits.OUTPUT_FIX)
    assert re.sub(r"\s+", " ", said) in re.sub(r"\s+", " ", text)
