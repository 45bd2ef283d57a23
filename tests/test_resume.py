"""Resuming unfinished runs in a new engine (the process that drove them stopped).

A stopped engine leaves its runs `running` with no owner, as a killed one does once
its lease runs out; tests/test_crash.py covers real SIGKILLs of `treadle serve`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from runner.engine.engine import Engine
from tests.conftest import definition
from tests.exec_support import by_id, eventually, recorded


async def _running(engine: Engine, run_id: str, step: str) -> bool:
    await engine.store.flush()
    return any(r["status"] == "running" and r["step_id"] == step for r in await engine.store.step_attempts(run_id))


async def _stop_when_running(store, tmp_path: Path, text: str, step: str) -> str:
    engine = Engine(store, definitions_dir=tmp_path)
    exe = await engine.start(definition(text, tmp_path))
    await eventually(lambda: _running(engine, exe.id, step))
    await asyncio.wait_for(engine.close(), 10)
    return exe.id


async def test_resume_false_marks_the_interrupted_run_failed(store, tmp_path):
    run_id = await _stop_when_running(store, tmp_path, """
        resume: false
        steps:
          - {id: slow, run: "sleep 30"}
          - {id: after, log: never}
    """, "slow")
    later = Engine(store, definitions_dir=tmp_path)
    try:
        assert await later.recover() == []  # nothing to drive: it is failed instead
    finally:
        await later.close()
    doc = await recorded(later, run_id)
    assert doc["status"] == "failed" and "resume: false" in doc["error"]
    assert by_id(doc)["slow"]["status"] == "cancelled" and "after" not in {s["id"] for s in doc["steps"] if s["attempts"]}


async def test_foreach_items_that_finished_are_not_run_again(store, tmp_path):
    ran = tmp_path / "ran.txt"
    d = definition("""
        max_parallel: 1
        steps:
          - id: each
            foreach: [0, 1, 2, 3]
            run: 'echo {{ item }} >> ran.txt; if [ {{ item }} = 2 ] && [ ! -f go ]; then sleep 30; fi; echo out{{ item }}'
          - {id: after, set: {all: "{{ steps.each.output }}"}}
    """, tmp_path)
    engine = Engine(store, definitions_dir=tmp_path)
    exe = await engine.start(d)
    await eventually(lambda: ran.exists() and "2" in ran.read_text().split())
    await asyncio.wait_for(engine.close(), 10)  # item 2 is interrupted; 0 and 1 are done
    (tmp_path / "go").write_text("")
    later = Engine(store, definitions_dir=tmp_path)
    try:
        [resumed] = await later.recover()
        assert resumed.id == exe.id
        assert await asyncio.wait_for(resumed.wait(), 20) == "succeeded"
    finally:
        await later.close()
    lines = ran.read_text().split()
    assert lines.count("0") == 1 and lines.count("1") == 1  # finished items kept their outputs
    assert lines.count("2") == 2  # the interrupted item ran again
    doc = await recorded(later, exe.id)
    assert by_id(doc)["after"]["output"] == {"all": ["out0", "out1", "out2", "out3"]}


async def test_a_foreach_item_that_failed_for_good_is_not_tried_again_on_resume(store, tmp_path):
    """Item 1 fails for good (no retry) before the stop: resumed, it keeps its one
    attempt and its error; only the interrupted item 2 runs again."""
    ran = tmp_path / "ran.txt"
    d = definition("""
        max_parallel: 1
        steps:
          - id: each
            foreach: [0, 1, 2]
            run: 'echo {{ item }} >> ran.txt; if [ {{ item }} = 1 ]; then exit 3; fi; if [ {{ item }} = 2 ] && [ ! -f go ]; then sleep 30; fi'
    """, tmp_path)
    engine = Engine(store, definitions_dir=tmp_path)
    exe = await engine.start(d)
    await eventually(lambda: ran.exists() and "2" in ran.read_text().split())
    await asyncio.wait_for(engine.close(), 10)
    assert ran.read_text().split().count("1") == 1  # failed before the stop
    (tmp_path / "go").write_text("")
    later = Engine(store, definitions_dir=tmp_path)
    try:
        [resumed] = await later.recover()
        assert await asyncio.wait_for(resumed.wait(), 20) == "failed"
    finally:
        await later.close()
    lines = ran.read_text().split()
    assert lines.count("1") == 1 and lines.count("2") == 2 and lines.count("0") == 1
    doc = await recorded(later, exe.id)
    assert doc["error"].startswith("step 'each' failed: 1 of 3 items failed; item 1: exit code 3"), doc["error"]
    item_attempts = [r["attempt"] for r in await later.store.step_attempts(exe.id) if r["step_id"] == "each" and r["item"] == 1]
    assert sorted(item_attempts) == [1]


async def test_a_resumed_step_keeps_its_retry_budget(store, tmp_path):
    """Attempt 1 fails, attempt 2 is interrupted by the stop: the resumed step goes on
    at attempt 3 with one retry used (an interruption is not a failure), so it gets
    exactly one more retry: 4 attempts in all, never 3 (the interruption counted) or 5
    (the failures forgotten)."""
    count = tmp_path / "count"
    engine = Engine(store, definitions_dir=tmp_path)
    exe = await engine.start(definition(f"""
        steps:
          - id: s
            retry: {{limit: 2, delay: 0}}
            run: 'echo x >> {count}; if [ $(wc -l < {count}) -eq 2 ]; then sleep 30; fi; exit 1'
          - id: after  # never started before the stop: it starts at attempt 1 with its whole budget
            trigger_rule: all_done
            retry: {{limit: 1, delay: 0}}
            run: exit 1
    """, tmp_path))
    await eventually(lambda: count.exists() and len(count.read_text().split()) == 2)
    await asyncio.wait_for(engine.close(), 10)
    run_id = exe.id
    assert count.read_text().split() == ["x", "x"]  # attempt 2 was running when the engine stopped
    later = Engine(store, definitions_dir=tmp_path)
    try:
        [resumed] = await later.recover()
        assert resumed.id == run_id
        assert await asyncio.wait_for(resumed.wait(), 20) == "failed"
    finally:
        await later.close()
    doc = await recorded(later, run_id)
    attempts = [(a["attempt"], a["status"]) for a in by_id(doc)["s"]["attempt_list"]]
    assert attempts == [(1, "failed"), (2, "cancelled"), (3, "failed"), (4, "failed")]
    assert [(a["attempt"], a["status"]) for a in by_id(doc)["after"]["attempt_list"]] == [(1, "failed"), (2, "failed")]
    assert len(count.read_text().split()) == 4


async def test_a_run_whose_secret_is_gone_is_failed_not_resumed(store, tmp_path):
    engine = Engine(store, definitions_dir=tmp_path, environ={"API_TOKEN": "t0k3n-value", "OTHER": "x"})
    exe = await engine.start(definition("""
        secrets: [API_TOKEN, OTHER]
        steps:
          - {id: slow, run: "sleep 30"}
          - {id: after, log: never}
    """, tmp_path))
    await eventually(lambda: _running(engine, exe.id, "slow"))
    await asyncio.wait_for(engine.close(), 10)
    later = Engine(store, definitions_dir=tmp_path, environ={"OTHER": "x"})  # API_TOKEN not set any more
    try:
        assert await later.recover() == []
    finally:
        await later.close()
    doc = await recorded(later, exe.id)
    assert doc["status"] == "failed"
    assert doc["error"] == "interrupted, and cannot resume: secret API_TOKEN not set"
    assert doc["finished_at"] is not None


async def test_a_failure_that_is_never_retried_is_not_run_again_on_resume(store, tmp_path):
    """`a` fails for good at once (a command not found is never retried, retries or
    not) while `b` still runs; after a restart `a` stays failed: running it again would
    repeat whatever it did (an http call, a payment) for a failure that cannot change."""
    d = definition("""
        steps:
          - {id: a, needs: [], retry: {limit: 3, delay: 0}, run: [no-such-program-treadle]}
          - {id: b, needs: [], run: 'if [ ! -f go ]; then sleep 30; fi'}
          - {id: c, needs: [a, b], trigger_rule: all_done, log: done}
    """, tmp_path)
    engine = Engine(store, definitions_dir=tmp_path)
    exe = await engine.start(d)

    async def a_failed() -> bool:
        await engine.store.flush()
        return any(r["step_id"] == "a" and r["status"] == "failed" for r in await engine.store.step_attempts(exe.id))
    await eventually(a_failed)
    await eventually(lambda: _running(engine, exe.id, "b"))
    await asyncio.wait_for(engine.close(), 10)
    (tmp_path / "go").write_text("")
    later = Engine(store, definitions_dir=tmp_path)
    try:
        [resumed] = await later.recover()
        assert await asyncio.wait_for(resumed.wait(), 20) == "failed"
    finally:
        await later.close()
    doc = await recorded(later, exe.id)
    steps = by_id(doc)
    assert [(a["attempt"], a["status"]) for a in steps["a"]["attempt_list"]] == [(1, "failed")]
    assert steps["b"]["status"] == "succeeded" and steps["c"]["status"] == "succeeded"
