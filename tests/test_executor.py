"""The engine end to end on real processes, a real SQLite file and a loopback HTTP server:
scheduling, trigger rules, failures, retries, timeouts, foreach, cancel, retry of runs."""

from __future__ import annotations

import asyncio
import json

import pytest

from runner.dsl.definition import RetrySpec
from runner.engine.engine import Engine
from tests.conftest import definition
from tests.exec_support import (
    by_id,
    ends,
    eventually,
    log_text,
    max_overlap,
    recorded,
    run_yaml,
    stamp,
)
from tests.http_server import http_server_fixture  # noqa: F401  (the `http_server` fixture)

# -- order and parallelism -------------------------------------------------------------


async def test_steps_without_needs_form_a_chain(engine, tmp_path):
    trace = tmp_path / "trace"
    exe, doc = await run_yaml(engine, tmp_path, f"""
        steps:
          - {{id: a, run: "echo a >> {trace}"}}
          - {{id: b, run: "sleep 0.05; echo b >> {trace}"}}
          - {{id: c, run: "echo c >> {trace}"}}
    """)
    assert exe.status == "succeeded"
    assert trace.read_text().split() == ["a", "b", "c"]
    assert by_id(doc)["c"]["needs"] == ["b"] and by_id(doc)["a"]["needs"] == []


async def test_needs_orders_steps_and_empty_needs_makes_a_root(engine, tmp_path):
    trace = tmp_path / "trace"
    exe, doc = await run_yaml(engine, tmp_path, f"""
        steps:
          - {{id: last, needs: [slow, fast], run: "echo last >> {trace}"}}
          - id: slow  # waits for `fast` (a root running beside it), not for a time
            needs: []
            timeout: 10s
            run: "until grep -q fast {trace} 2>/dev/null; do sleep 0.01; done; echo slow >> {trace}"
          - {{id: fast, needs: [], run: "echo fast >> {trace}"}}
    """)
    assert exe.status == "succeeded"
    assert trace.read_text().split() == ["fast", "slow", "last"]
    assert [s["id"] for s in doc["steps"]] == ["slow", "fast", "last"]


async def test_max_parallel_bounds_how_many_steps_run_at_once(engine, tmp_path):
    stamps = tmp_path / "stamps"
    steps = "\n".join(f'  - {{id: s{i}, needs: [], run: "{stamp(stamps, "sleep 0.3")}"}}' for i in range(5))
    exe, _ = await run_yaml(engine, tmp_path, f"max_parallel: 2\nsteps:\n{steps}\n")
    assert exe.status == "succeeded"
    assert max_overlap(stamps) == 2  # bounded, and the bound is used


async def test_foreach_is_bounded_and_keeps_item_order(engine, tmp_path):
    stamps = tmp_path / "stamps"
    # later items finish first: the output must still follow the item order
    exe, doc = await run_yaml(engine, tmp_path, f"""
        max_parallel: 2
        params:
          items: {{type: array, default: [4, 3, 2, 1]}}
        steps:
          - id: each
            foreach: "{{{{ params.items }}}}"
            run: '{stamp(stamps, "sleep 0.{{ item }}")}; echo {{{{ index }}}}-{{{{ item }}}}'
          - id: after
            set: {{out: "{{{{ steps.each.output }}}}"}}
    """)
    assert exe.status == "succeeded", doc
    assert doc["steps"][0]["output"] == ["0-4", "1-3", "2-2", "3-1"]
    assert by_id(doc)["after"]["output"] == {"out": ["0-4", "1-3", "2-2", "3-1"]}
    assert [i["item"] for i in by_id(doc)["each"]["items"]] == [0, 1, 2, 3]
    assert max_overlap(stamps) == 2


async def test_foreach_item_failure_fails_the_step_and_keeps_other_outputs(engine, tmp_path):
    exe, doc = await run_yaml(engine, tmp_path, """
        steps:
          - id: each
            foreach: [1, 2, 3]
            run: 'test {{ item }} -ne 2 && echo {{ item }}'
    """)
    step = by_id(doc)["each"]
    assert exe.status == "failed" and step["status"] == "failed"
    assert step["error"].startswith("1 of 3 items failed; item 1: exit code 1")
    assert step["output"] == [1, None, 3]
    assert [i["status"] for i in step["items"]] == ["succeeded", "failed", "succeeded"]


async def test_foreach_over_something_not_a_list_fails_clearly(engine, tmp_path):
    exe, doc = await run_yaml(engine, tmp_path, """
        steps:
          - {id: each, foreach: "{{ 5 }}", log: "{{ item }}"}
    """)
    assert exe.status == "failed"
    assert by_id(doc)["each"]["error"] == "foreach: expected a list, got int"


# -- when, trigger rules, failures ---------------------------------------------------


async def test_when_false_skips_the_step_and_true_runs_it(engine, tmp_path):
    text = """
        params: {go: {type: boolean, default: false}}
        steps:
          - {id: maybe, when: "{{ params.go }}", log: ran}
          - {id: always, needs: [], log: ran}
    """
    exe, doc = await run_yaml(engine, tmp_path, text)
    assert exe.status == "succeeded"
    assert by_id(doc)["maybe"]["status"] == "skipped" and by_id(doc)["maybe"]["attempts"] == 0
    assert await log_text(engine, exe.id, "maybe") == ""
    exe, doc = await run_yaml(engine, tmp_path, text, {"go": True})
    assert by_id(doc)["maybe"]["status"] == "succeeded"
    assert await log_text(engine, exe.id, "maybe") == "ran\n"


TRIGGER_RULES = """
    steps:
      - {id: ok, needs: [], run: "true"}
      - {id: bad, needs: [], run: "echo broken >&2; exit 7"}
      - {id: skip, needs: [], when: "{{ false }}", log: never}
      - {id: all_ok, needs: [ok], log: x}
      - {id: all_bad, needs: [ok, bad], log: x}
      - {id: all_skip, needs: [ok, skip], log: x}
      - {id: done, needs: [ok, bad, skip], trigger_rule: all_done, log: "{{ steps.bad.status }}"}
      - {id: any_ok, needs: [bad, ok], trigger_rule: any_succeeded, log: x}
      - {id: any_ok_none, needs: [bad], trigger_rule: any_succeeded, log: x}
      - {id: any_ok_skip, needs: [skip], trigger_rule: any_succeeded, log: x}
      - {id: any_fail, needs: [ok, bad], trigger_rule: any_failed, log: x}
      - {id: any_fail_none, needs: [ok, skip], trigger_rule: any_failed, log: x}
      - {id: after_blocked, needs: [all_bad], log: x}
      - {id: after_blocked_any_fail, needs: [all_bad], trigger_rule: any_failed, log: x}
      - {id: after_blocked_done, needs: [all_bad], trigger_rule: all_done, log: x}
"""


async def test_every_trigger_rule(engine, tmp_path):
    exe, doc = await run_yaml(engine, tmp_path, TRIGGER_RULES)
    states = {s["id"]: s["status"] for s in doc["steps"]}
    assert states == {
        "ok": "succeeded", "bad": "failed", "skip": "skipped",
        "all_ok": "succeeded", "all_bad": "upstream_failed", "all_skip": "succeeded",  # skipped satisfies
        "done": "succeeded",
        "any_ok": "succeeded", "any_ok_none": "upstream_failed", "any_ok_skip": "skipped",
        "any_fail": "succeeded", "any_fail_none": "skipped",
        "after_blocked": "upstream_failed", "after_blocked_any_fail": "succeeded",
        "after_blocked_done": "succeeded",
    }
    assert by_id(doc)["done"]["output"] == "failed"
    # the root cause stands out: the run names the step that failed, with its reason
    assert exe.status == "failed" and doc["status"] == "failed"
    assert doc["error"] == "step 'bad' failed: exit code 7: broken"
    assert by_id(doc)["all_bad"]["error"] is None and by_id(doc)["bad"]["exit_code"] == 7


async def test_continue_on_failure_neither_blocks_nor_fails_the_run(engine, tmp_path):
    exe, doc = await run_yaml(engine, tmp_path, """
        steps:
          - {id: flaky, run: "exit 3", continue_on_failure: true}
          - {id: next, log: "code {{ steps.flaky.exit_code }} {{ steps.flaky.status }}"}
    """)
    assert exe.status == "succeeded" and doc["error"] is None
    assert by_id(doc)["flaky"]["status"] == "failed"
    assert by_id(doc)["next"]["output"] == "code 3 failed"


async def test_a_failure_stops_what_follows_but_not_other_branches(engine, tmp_path):
    exe, doc = await run_yaml(engine, tmp_path, """
        steps:
          - {id: bad, needs: [], run: "exit 1"}
          - {id: then, log: x}
          - {id: then2, log: x}
          - {id: other, needs: [], run: "sleep 0.1"}
    """)
    states = {s["id"]: s["status"] for s in doc["steps"]}
    assert states == {"bad": "failed", "then": "upstream_failed", "then2": "upstream_failed", "other": "succeeded"}
    assert exe.status == "failed" and doc["error"].startswith("step 'bad' failed: exit code 1")


async def test_a_template_error_fails_the_step_with_the_name(engine, tmp_path):
    exe, doc = await run_yaml(engine, tmp_path, """
        steps:
          - {id: a, set: {x: 1}}
          - {id: b, log: "{{ steps.a.output.missing }}"}
    """)
    assert exe.status == "failed"
    assert "missing" in by_id(doc)["b"]["error"] and by_id(doc)["b"]["error"].startswith("input:")


# -- retries ---------------------------------------------------------------------


async def test_retry_after_503s_against_a_real_server(engine, tmp_path, http_server):
    exe, doc = await run_yaml(engine, tmp_path, f"""
        steps:
          - id: call
            retry: {{limit: 3, delay: 0.05, on: [503]}}
            http: {{url: "{http_server.url}/flaky/a?fail=2"}}
    """)
    step = by_id(doc)["call"]
    assert exe.status == "succeeded"
    assert http_server.hits["/flaky/a"] == 3
    assert step["attempts"] == 3 and step["output"]["json"] == {"hits": 3}
    assert [a["status"] for a in step["attempt_list"]] == ["failed", "failed", "succeeded"]
    assert [a["http_status"] for a in step["attempt_list"]] == [503, 503, 200]
    logs = await log_text(engine, exe.id, "call", ("treadle",))
    assert "attempt 1 failed: GET" in logs and "retry 2 of 3 in 50ms" in logs


async def test_retry_on_filter_skips_other_statuses(engine, tmp_path, http_server):
    exe, doc = await run_yaml(engine, tmp_path, f"""
        steps:
          - id: call
            retry: {{limit: 3, delay: 0, on: [500, 502]}}
            http: {{url: "{http_server.url}/flaky/b?fail=5"}}
    """)
    assert exe.status == "failed" and http_server.hits["/flaky/b"] == 1
    assert by_id(doc)["call"]["error"].startswith(f"GET {http_server.url}/flaky/b?fail=5 answered 503, expected 2xx")


@pytest.mark.parametrize("code, attempts, status", [(3, 3, "succeeded"), (4, 1, "failed")])
async def test_retry_on_exit_codes(engine, tmp_path, code, attempts, status):
    counter = tmp_path / "count"
    exe, doc = await run_yaml(engine, tmp_path, f"""
        steps:
          - id: s
            retry: {{limit: 4, delay: 0.01, on: [3]}}
            run: 'n=$(($(cat {counter} 2>/dev/null || echo 0) + 1)); echo $n > {counter}; test $n -ge 3 || exit {code}'
    """)
    assert exe.status == status
    assert int(counter.read_text()) == attempts
    assert by_id(doc)["s"]["attempts"] == attempts


async def test_retry_limit_counts_retries_after_the_first_attempt(engine, tmp_path):
    counter = tmp_path / "count"
    exe, doc = await run_yaml(engine, tmp_path, f"""
        defaults:
          retry: {{limit: 2, backoff: none}}
        steps:
          - {{id: s, run: 'echo x >> {counter}; exit 1'}}
          - {{id: once, needs: [], retry: 0, run: 'echo y >> {counter}; exit 1'}}
    """)
    assert exe.status == "failed"
    assert sorted(counter.read_text().split()) == ["x", "x", "x", "y"]
    assert by_id(doc)["s"]["attempts"] == 3 and by_id(doc)["once"]["attempts"] == 1


async def test_retry_backoff_delays(engine, tmp_path):
    exe, doc = await run_yaml(engine, tmp_path, """
        steps:
          - id: s
            retry: {limit: 3, backoff: exponential, delay: 0.05, max_delay: 0.15}
            run: "exit 1"
    """)
    logs = await log_text(engine, exe.id, "s", ("treadle",))
    assert [line.rsplit(" in ", 1)[1] for line in logs.splitlines() if line] == ["50ms]", "100ms]", "150ms]"]
    attempts = by_id(doc)["s"]["attempt_list"]
    starts = [a["started_at"] for a in attempts]
    assert len(starts) == 4 and starts == sorted(starts)
    assert [RetrySpec(limit=3, backoff=b, delay=1).delay_before(3) for b in ("none", "fixed", "linear", "exponential")] == [0, 1, 3, 4]


async def test_retry_is_not_used_for_mistakes_in_the_step(engine, tmp_path):
    exe, doc = await run_yaml(engine, tmp_path, """
        steps:
          - {id: s, retry: {limit: 3, delay: 0}, run: [no-such-program-treadle]}
    """)
    assert exe.status == "failed" and by_id(doc)["s"]["attempts"] == 1
    assert by_id(doc)["s"]["error"] == "command not found: 'no-such-program-treadle' (is it installed and on PATH?)"


# -- timeouts and cancel -----------------------------------------------------------


async def test_no_process_outlives_its_step(engine, tmp_path):
    exe, doc = await run_yaml(engine, tmp_path, """
        steps:
          - id: slow  # a step timeout kills the whole process group
            timeout: 0.5s
            run: "sleep 30 & echo $! > child.pid; echo $$ > shell.pid; wait"
          - {id: next, log: x}
          - id: leaves  # what a finished command left running does not hold up the step
            needs: []
            timeout: 10s
            run: "sleep 30 & echo $! > left.pid; echo started"
    """)
    steps = by_id(doc)
    assert exe.status == "failed" and steps["slow"]["status"] == "failed"
    assert steps["slow"]["error"] == "timed out after 500ms; the step was stopped"
    assert steps["next"]["status"] == "upstream_failed"
    assert steps["leaves"]["status"] == "succeeded" and steps["leaves"]["output"] == "started"
    for name in ("child.pid", "shell.pid", "left.pid"):
        await ends(tmp_path / name)


async def test_a_cancel_while_a_timed_out_run_stops_does_not_interrupt_the_stop(store, tmp_path):
    # the command ignores SIGTERM, so stopping it takes the SIGKILL grace period
    engine = Engine(store, definitions_dir=tmp_path)
    try:
        exe = await engine.start(definition("""
            timeout: 0.3
            steps:
              - {id: stubborn, run: "trap '' TERM; sleep 30 & echo $! > child.pid; wait"}
        """, tmp_path))
        await eventually(lambda: exe._stopping is not None)
        assert engine.cancel(exe.id) is True
        assert await asyncio.wait_for(exe.wait(), 10) == "failed"
    finally:
        await asyncio.wait_for(engine.close(), 10)
    doc = await recorded(engine, exe.id)
    assert doc["error"] == "run timed out after 300ms" and doc["steps"][0]["status"] == "cancelled"
    await ends(tmp_path / "child.pid")


async def test_run_timeout_fails_the_run_and_stops_its_steps(engine, tmp_path):
    exe, doc = await run_yaml(engine, tmp_path, """
        timeout: 0.5s
        steps:
          - {id: slow, run: "sleep 30 & echo $! > child.pid; wait"}
          - {id: next, log: x}
    """)
    assert exe.status == "failed" and doc["error"] == "run timed out after 500ms"
    assert by_id(doc)["slow"]["status"] == "cancelled" and by_id(doc)["next"]["status"] == "cancelled"
    await ends(tmp_path / "child.pid")


async def test_cancel_a_running_run(engine, tmp_path):
    d = definition("""
        steps:
          - {id: first, log: x}
          - {id: slow, run: "sleep 30 & echo $! > child.pid; wait"}
          - {id: par, needs: [first], wait: 30s}
          - {id: next, log: x}
    """, tmp_path)
    exe = await engine.start(d)
    pid_file = tmp_path / "child.pid"
    await eventually(lambda: pid_file.exists() and pid_file.read_text().strip() != "")
    assert engine.cancel(exe.id) is True
    assert await asyncio.wait_for(exe.wait(), 10) == "cancelled"
    doc = await recorded(engine, exe.id)
    assert doc["status"] == "cancelled" and doc["error"] == "cancelled by request"
    states = {s["id"]: s["status"] for s in doc["steps"]}
    assert states == {"first": "succeeded", "slow": "cancelled", "par": "cancelled", "next": "cancelled"}
    await ends(pid_file)
    assert engine.cancel(exe.id) is False  # no longer running here


async def test_cancel_at_once_after_start(store, tmp_path):
    engine = Engine(store, definitions_dir=tmp_path)
    try:
        exe = await engine.start(definition("steps: [{id: a, wait: 30s}]", tmp_path))
        engine.cancel(exe.id)  # before the run's task had a chance to begin
        assert await asyncio.wait_for(exe.wait(), 5) == "cancelled"
    finally:
        await asyncio.wait_for(engine.close(), 5)
    doc = await recorded(engine, exe.id)
    assert doc["status"] == "cancelled" and doc["steps"][0]["status"] == "cancelled"


async def test_cancel_during_a_retry_delay(engine, tmp_path):
    exe = await engine.start(definition("""
        steps:
          - {id: a, retry: {limit: 3, delay: 30s}, run: "exit 1"}
    """, tmp_path))
    await eventually(lambda: _pending_retry(engine, exe.id))
    engine.cancel(exe.id)
    assert await asyncio.wait_for(exe.wait(), 5) == "cancelled"
    step = (await recorded(engine, exe.id))["steps"][0]
    assert step["status"] == "cancelled" and step["attempts"] == 2


async def _pending_retry(engine: Engine, run_id: str) -> bool:
    await engine.store.flush()
    return any(r["attempt"] == 2 for r in await engine.store.step_attempts(run_id))


async def test_closing_the_engine_leaves_runs_for_the_next_start_to_resume(store, tmp_path):
    d = definition("""
        steps:
          - {id: first, run: "echo once >> first.count; echo done"}
          - {id: slow, run: "echo x >> slow.count; sleep 30"}
          - {id: last, log: "after {{ steps.first.output }}"}
    """, tmp_path)
    engine = Engine(store, definitions_dir=tmp_path)
    exe = await engine.start(d)
    await eventually(lambda: _running(engine, exe.id, "slow"))
    await asyncio.wait_for(engine.close(), 10)
    doc = await recorded(engine, exe.id)
    assert doc["status"] == "running"  # unfinished, owned by nobody: resumable
    assert by_id(doc)["slow"]["status"] == "cancelled" and by_id(doc)["slow"]["error"].startswith("interrupted")
    (tmp_path / "slow.count").write_text("")  # the second time, `slow` need not wait
    d2 = definition("""
        steps:
          - {id: first, run: "echo once >> first.count; echo done"}
          - {id: slow, run: "echo x >> slow.count; sleep 30"}
          - {id: last, log: "after {{ steps.first.output }}"}
    """, tmp_path)
    assert d2.version == d.version
    later = Engine(store, definitions_dir=tmp_path, lookup=lambda name: d2)
    try:
        [resumed] = await later.recover()
        assert resumed.id == exe.id
        await eventually(lambda: _running(later, exe.id, "slow"))
        resumed.suspend()  # `slow` sleeps: stop again, then check what ran
        await asyncio.wait_for(resumed.wait(), 10)
    finally:
        await asyncio.wait_for(later.close(), 10)
    assert (tmp_path / "first.count").read_text() == "once\n"  # a finished step never runs again
    doc = await recorded(later, exe.id)
    attempts = [a["attempt"] for a in by_id(doc)["slow"]["attempt_list"]]
    assert attempts == [1, 2]  # the interrupted attempt ran again as attempt 2


async def _running(engine: Engine, run_id: str, step: str | None = None) -> bool:
    await engine.store.flush()
    return any(r["status"] == "running" and step in (None, r["step_id"])
               for r in await engine.store.step_attempts(run_id))


# -- retry of a run, versions -------------------------------------------------------


RETRYABLE = """
    steps:
      - id: a
        run: 'echo a >> {count}; echo "{{\\"n\\": 5}}"'
      - id: b
        env: {{A_OUT: "{{{{ steps.a.stdout | trim }}}}"}}
        run: 'test -f {fixed} && echo "b got {{{{ steps.a.output.n }}}} $A_OUT"'
      - {{id: c, log: "c after {{{{ steps.b.output }}}}"}}
"""


async def test_engine_retry_reuses_what_succeeded_upstream(engine, tmp_path):
    count, fixed = tmp_path / "count", tmp_path / "fixed"
    first, doc = await run_yaml(engine, tmp_path, RETRYABLE.format(count=count, fixed=fixed))
    assert first.status == "failed" and by_id(doc)["c"]["status"] == "upstream_failed"
    fixed.touch()
    second = await engine.retry(first.id)
    assert await asyncio.wait_for(second.wait(), 10) == "succeeded"
    doc = await recorded(engine, second.id)
    assert count.read_text().split() == ["a"]  # `a` did not run again
    steps = by_id(doc)
    assert steps["a"]["status"] == "succeeded" and steps["a"]["input"] == {"reused_from": first.id}
    assert steps["b"]["output"] == 'b got 5 {"n": 5}'
    assert steps["c"]["output"] == 'c after b got 5 {"n": 5}'
    assert doc["retry_of"] == first.id and doc["trigger"] == "retry"

    third = await engine.retry(second.id, "b")  # from a step: it and what follows run again
    assert await asyncio.wait_for(third.wait(), 10) == "succeeded"
    assert count.read_text().split() == ["a"]
    steps = by_id(await recorded(engine, third.id))
    assert steps["a"]["input"] == {"reused_from": first.id}  # where it really ran
    assert steps["b"]["attempts"] == 1 and steps["b"]["output"] == 'b got 5 {"n": 5}'


async def test_each_run_keeps_its_definition_version(engine, tmp_path):
    v1 = definition("steps: [{id: gate, run: 'while [ ! -f go ]; do sleep 0.02; done'}, {id: one, log: v1}]", tmp_path)
    v2 = definition("steps: [{id: two, log: v2}]", tmp_path)
    old = await engine.start(v1)
    new = await engine.run(v2)  # the file changed while `old` was running
    (tmp_path / "go").touch()
    await asyncio.wait_for(old.wait(), 10)
    old_doc, new_doc = await recorded(engine, old.id), await recorded(engine, new.id)
    assert old_doc["version"] == v1.version != new_doc["version"] == v2.version
    assert [s["id"] for s in old_doc["steps"]] == ["gate", "one"] and old_doc["outputs"] == {"one": "v1"}
    assert [s["id"] for s in new_doc["steps"]] == ["two"]
    assert (await engine.store.get_version(v1.version, v1.name))["source"] == v1.source


async def test_outputs_templates_and_run_context(engine, tmp_path):
    exe, doc = await run_yaml(engine, tmp_path, """
        params: {n: {type: integer, default: 2}}
        outputs:
          double: "{{ steps.a.output * 2 }}"
          who: "{{ run.workflow }}/{{ run.id }}"
        steps:
          - {id: a, run: "echo {{ params.n }}"}
    """)
    assert doc["outputs"] == {"double": 4, "who": f"wf/{exe.id}"}
    assert json.loads(json.dumps(doc))["params"] == {"n": 2}

