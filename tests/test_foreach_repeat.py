"""`foreach: {items, max_parallel}` and `repeat: {until, interval, limit}` (#19), against a
real loopback HTTP server: it counts the requests in flight at once (the foreach
limit) and answers "pending" N times before "done" (polling)."""

from __future__ import annotations

from runner.dsl.loader import load_text
from tests.exec_support import by_id, log_text, run_yaml
from tests.http_server import http_server_fixture  # noqa: F401  (the fixture)

FOREACH = """
    max_parallel: RUN
    steps:
      - id: fan
        foreach: {items: [1, 2, 3, 4, 5, 6, 7, 8], max_parallel: STEP}
        http: {url: "BASE/hold/KEY?s=0.15"}
      - id: other
        needs: []
        foreach: [1, 2, 3, 4]
        http: {url: "BASE/hold/OTHER?s=0.15"}
"""


def foreach(base: str, run: int, step: int, key: str) -> str:
    return (FOREACH.replace("RUN", str(run)).replace("STEP", str(step)).replace("BASE", base)
            .replace("OTHER", key + "-other").replace("KEY", key))


async def test_a_foreach_step_keeps_to_its_own_limit_within_the_runs(engine, tmp_path, http_server) -> None:  # noqa: F811
    exe, doc = await run_yaml(engine, tmp_path, foreach(http_server.url, 16, 2, "a"))
    assert doc["status"] == "succeeded", doc["error"]
    assert http_server.hits["/hold/a"] == 8 and len(by_id(doc)["fan"]["output"]) == 8
    assert http_server.at_once["a"] == 2  # its own limit, reached
    assert http_server.at_once["a-other"] == 4  # the other foreach is not held by it
    # the run's limit is lower: it wins
    exe, doc = await run_yaml(engine, tmp_path, foreach(http_server.url, 1, 3, "b"))
    assert doc["status"] == "succeeded" and http_server.at_once["b"] == 1


def test_foreach_mapping_is_checked_with_positions() -> None:
    d = load_text("steps:\n  - id: f\n    foreach: {items: '{{ [1] }}', max_parallel: 0, each: 2}\n    log: x\n", "f.yaml")
    assert [str(p) for p in d.problems] == [
        "f.yaml:3:49: steps[0].foreach.max_parallel: must be at least 1 (got 0)",
        "f.yaml:3:52: steps[0].foreach.each: unknown key 'each' (known keys: items, max_parallel)",
    ]


POLL = """
    steps:
      - id: wait_done
        repeat: {until: "{{ output.json.status == 'done' }}", interval: 20ms, limit: LIMIT}
        http: {url: "BASE/poll/KEY?pending=PENDING"}
      - id: after
        log: "done after {{ steps.wait_done.output.json.hits }} polls"
"""


def poll(base: str, key: str, pending: int, limit: int) -> str:
    return POLL.replace("BASE", base).replace("KEY", key).replace("PENDING", str(pending)).replace("LIMIT", str(limit))


async def test_repeat_polls_until_the_condition_holds_each_poll_an_attempt(engine, tmp_path, http_server) -> None:  # noqa: F811
    exe, doc = await run_yaml(engine, tmp_path, poll(http_server.url, "p", 3, 10))
    assert doc["status"] == "succeeded", doc["error"]
    step = by_id(doc)["wait_done"]
    assert http_server.hits["/poll/p"] == 4 and step["attempts"] == 4
    assert [a["status"] for a in step["attempt_list"]] == ["succeeded"] * 4
    assert [a["output"]["json"]["status"] for a in step["attempt_list"]] == ["pending"] * 3 + ["done"]
    assert by_id(doc)["after"]["output"] == "done after 4 polls"
    log = await log_text(engine, exe.id, "wait_done", ("treadle",))
    assert "poll 1 of at most 10: `until` is false; next poll in 20ms" in log


async def test_repeat_fails_clearly_at_its_limit_keeping_the_last_output(engine, tmp_path, http_server) -> None:  # noqa: F811
    exe, doc = await run_yaml(engine, tmp_path, poll(http_server.url, "q", 100, 3))
    step = by_id(doc)["wait_done"]
    assert doc["status"] == "failed" and http_server.hits["/poll/q"] == 3
    assert step["status"] == "failed" and step["attempts"] == 3
    assert step["error"] == "repeat: `until` was still false after 3 polls (the limit); the last poll's output is kept"
    assert step["output"]["json"] == {"status": "pending", "hits": 3}
    assert by_id(doc)["after"]["status"] == "upstream_failed"


def test_repeat_is_checked_at_load() -> None:
    d = load_text("steps:\n  - id: a\n    repeat: {until: '{{ output.x ', limit: 0}\n    log: m\n", "r.yaml")
    shown = [str(p) for p in d.problems]
    assert shown[0].startswith("r.yaml:3:21: steps[0].repeat.until: template error"), shown
    assert shown[1] == "r.yaml:3:44: steps[0].repeat.limit: must be at least 1 (got 0)"
    d = load_text("steps:\n  - id: a\n    repeat: {until: '{{ output }}'}\n    approval: {message: m}\n", "r.yaml")
    assert [str(p) for p in d.problems] == [
        "r.yaml:3:5: steps[0].repeat: 'repeat' does not apply to 'approval' steps (a person decides once); remove it"]
