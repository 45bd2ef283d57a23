"""The JSON API (SPEC §4) against a real uvicorn on loopback, with a real SQLite file."""

from __future__ import annotations

import json
import os
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from .web_server import serving

FINISHED = {"succeeded", "failed", "cancelled"}

DEFINITIONS = {
    "quick.yaml": """
        description: A quick one for the lifecycle tests.
        tags: [demo, fast]
        params:
          who: {type: string, default: world}
          times: {type: integer, default: 1}
        steps:
          - id: hello
            run: echo "hello {{ params.who }}"
          - id: shape
            set: {text: "{{ steps.hello.output }}", times: "{{ params.times }}"}
    """,
    "paged.yaml": """
        description: Only the run pagination test starts this one.
        steps:
          - id: only
            log: "run {{ params.n }}"
        params:
          n: {type: integer, required: true}
    """,
    "live.yaml": """
        tags: [demo]
        params:
          gates: {type: string, required: true}
        defaults: {timeout: 20s}
        steps:
          - id: a
            run: 'echo started; while [ ! -f "{{ params.gates }}/a" ]; do sleep 0.02; done'
          - id: b
            run: 'while [ ! -f "{{ params.gates }}/b" ]; do sleep 0.02; done; echo through'
          - id: c
            log: "after {{ steps.b.output }}"
    """,
    "slow.yaml": """
        params:
          pidfile: {type: string, required: true}
        steps:
          - id: sleepy
            run: 'echo $$ > "{{ params.pidfile }}"; exec sleep 30'
          - id: never
            log: not reached
    """,
    "flaky.yaml": """
        params:
          dir: {type: string, required: true}
        steps:
          - id: up
            run: 'echo up >> "{{ params.dir }}/up.count"; echo "{\\"v\\": 7}"'
          - id: check
            run: 'test -f "{{ params.dir }}/fixed" || { echo "no fix yet" >&2; exit 3; }'
          - id: after
            set: {v: "{{ steps.up.output.v }}"}
    """,
    "noisy.yaml": """
        steps:
          - id: noisy
            retry: {limit: 1, backoff: none}
            run: 'echo "out-$TREADLE_ATTEMPT"; echo "err-$TREADLE_ATTEMPT" >&2; test "$TREADLE_ATTEMPT" = 2'
    """,
    "plan.yaml": """
        params:
          region: {type: string, required: true}
          count: {type: integer, default: 2}
        env:
          BASE: "https://{{ params.region }}.example"
        steps:
          - id: fetch
            when: "{{ params.count > 0 }}"
            http: {url: "{{ env.BASE }}/items?n={{ params.count }}", method: GET}
          - id: each
            foreach: "{{ steps.fetch.output.json }}"
            log: "item {{ item }} from {{ params.region }}"
          - id: skipped
            needs: [fetch]
            when: "{{ params.count > 100 }}"
            log: big
    """,
    "secretive.yaml": """
        secrets: [TREADLE_TEST_SECRET_NEVER_SET]
        steps:
          - id: use
            log: "token {{ secrets.TREADLE_TEST_SECRET_NEVER_SET }}"
    """,
    "nested/broken.yaml": """
        steps:
          - id: a
            depend: [x]
            run: echo
    """,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(tmp_path_factory.mktemp("api"), DEFINITIONS, watch=False) as base:
        yield base


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=10) as c:
        yield c


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The SPEC's JSON error form."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) >= {"detail", "error_code", "path", "timestamp"}, body
    assert body["path"] == response.request.url.path
    assert datetime.fromisoformat(body["timestamp"]).tzinfo is not None
    if code is not None:
        assert body["error_code"] == code, body
    return body


def start(client: httpx.Client, name: str, **params: Any) -> str:
    r = client.post(f"/api/workflows/{name}/runs", json={"params": params})
    assert r.status_code == 202, r.text
    body = r.json()
    assert r.headers["location"] == f"/api/runs/{body['run_id']}"
    return body["run_id"]


def wait_run(client: httpx.Client, run_id: str, deadline_s: float = 20) -> dict[str, Any]:
    """Poll until the run finishes (the deadline only stops a broken run hanging the suite)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        doc = client.get(f"/api/runs/{run_id}").json()
        if doc["status"] in FINISHED:
            return doc
        time.sleep(0.03)
    raise AssertionError(f"run {run_id} did not finish: {doc}")


def steps_by_id(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in doc["steps"]}


def sse_events(response: httpx.Response, deadline_s: float = 20) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a text/event-stream, as they arrive."""
    end = time.monotonic() + deadline_s
    event, data = "message", []
    for line in response.iter_lines():
        assert time.monotonic() < end, "the event stream did not end"
        if line.startswith("event:"):
            event = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            data.append(line.partition(":")[2].strip())
        elif not line and data:
            yield event, json.loads("\n".join(data))
            event, data = "message", []


# -- health, schema, unknown routes ------------------------------------------------


def test_health_reports_database_runs_and_workflows(client: httpx.Client) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["version"]
    assert body["database"]["status"] == "ok" and body["database"]["latency_ms"] >= 0
    assert isinstance(body["runs"]["active"], int) and isinstance(body["runs"]["last_24h"], dict)
    assert body["workflows"] == {"total": len(DEFINITIONS), "valid": len(DEFINITIONS) - 1, "broken": 1}


def test_schema_is_openapi_json_with_every_route(client: httpx.Client) -> None:
    r = client.get("/schema")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    for path in ("/api/workflows", "/api/workflows/{name}", "/api/workflows/{name}/runs",
                 "/api/workflows/{name}/dry-run", "/api/runs", "/api/runs/{run_id}",
                 "/api/runs/{run_id}/steps/{step_id}/logs", "/api/runs/{run_id}/events",
                 "/api/runs/{run_id}/cancel", "/api/runs/{run_id}/retry", "/health"):
        assert path in doc["paths"], path
    listed = doc["paths"]["/api/runs"]["get"]
    assert {p["name"] for p in listed["parameters"]} >= {"workflow", "status", "page", "limit"}
    assert "202" in doc["paths"]["/api/workflows/{name}/runs"]["post"]["responses"]


def test_unknown_routes_and_methods_answer_in_the_json_error_form(client: httpx.Client) -> None:
    assert_error(client.get("/api/nothing-here"), 404, "NOT_FOUND")
    assert_error(client.get("/api/runs/x/y/z"), 404)
    body = assert_error(client.delete("/api/runs"), 405, "METHOD_NOT_ALLOWED")
    assert body["detail"]


# -- workflows ---------------------------------------------------------------------


def test_workflow_list_pages_filters_and_shows_broken_files(client: httpx.Client) -> None:
    everything = client.get("/api/workflows", params={"limit": 500}).json()
    assert everything["total"] == len(DEFINITIONS) and everything["page"] == 1
    names = [w["name"] for w in everything["items"]]
    assert names == sorted(names)
    seen: list[str] = []
    pages = -(-len(DEFINITIONS) // 3)
    for page in range(1, pages + 1):
        body = client.get("/api/workflows", params={"page": page, "limit": 3}).json()
        assert body["total"] == len(DEFINITIONS) and body["limit"] == 3 and body["page"] == page
        assert len(body["items"]) == (3 if page < pages else len(DEFINITIONS) - 3 * (pages - 1))
        seen += [w["name"] for w in body["items"]]
    assert seen == names
    assert client.get("/api/workflows", params={"page": pages + 1, "limit": 3}).json()["items"] == []

    tagged = client.get("/api/workflows", params={"tag": "demo"}).json()
    assert {w["name"] for w in tagged["items"]} == {"quick", "live"} and tagged["total"] == 2
    found = client.get("/api/workflows", params={"q": "PAGINATION"}).json()
    assert [w["name"] for w in found["items"]] == ["paged"]

    item = next(w for w in everything["items"] if w["name"] == "quick")
    assert set(item) >= {"name", "description", "tags", "version", "valid", "errors", "last_run", "path"}
    assert item["tags"] == ["demo", "fast"] and item["valid"] and item["errors"] == []
    broken = next(w for w in everything["items"] if w["name"] == "broken")
    assert broken["valid"] is False and broken["path"] == "nested/broken.yaml"
    assert broken["errors"][0].startswith("nested/broken.yaml:3:5: ") and "did you mean 'needs'" in broken["errors"][0]


@pytest.mark.parametrize("query", ["page=0", "page=-1", "page=x", "limit=0", "limit=501", "limit=abc", "page=1.5",
                                   "page=99999999999999999999999"])
@pytest.mark.parametrize("route", ["/api/workflows", "/api/runs"])
def test_bad_pagination_is_400_never_500(client: httpx.Client, route: str, query: str) -> None:
    body = assert_error(client.get(f"{route}?{query}"), 400, "VALIDATION_ERROR")
    assert body["errors"][0]["key"] in ("page", "limit")


def test_one_workflow_has_steps_graph_source_and_params(client: httpx.Client, server: str) -> None:
    body = client.get("/api/workflows/live").json()
    assert body["source"] == textwrap.dedent(DEFINITIONS["live.yaml"]).lstrip()
    assert body["valid"] and body["errors"] == [] and len(body["version"]) >= 8
    assert [(s["id"], s["kind"], s["needs"]) for s in body["steps"]] == [
        ("a", "run", []), ("b", "run", ["a"]), ("c", "log", ["b"])]
    b = body["steps"][1]
    assert b["trigger_rule"] == "all_succeeded" and b["timeout"] is None and "params.gates" in b["input"]["run"]
    assert body["graph"]["nodes"] == [{"id": "a", "kind": "run", "layer": 0}, {"id": "b", "kind": "run", "layer": 1},
                                      {"id": "c", "kind": "log", "layer": 2}]
    assert sorted((e["from"], e["to"]) for e in body["graph"]["edges"]) == [("a", "b"), ("b", "c")]
    assert body["params"]["gates"]["type"] == "string" and body["params"]["gates"]["required"] is True

    broken = client.get("/api/workflows/broken").json()
    assert broken["valid"] is False and broken["errors"] and broken["steps"] == []
    assert broken["graph"] == {"nodes": [], "edges": []} and "depend" in broken["source"]
    assert "did you mean 'paged'" in assert_error(client.get("/api/workflows/pagd"), 404, "WORKFLOW_NOT_FOUND")["detail"]


def test_dry_run_renders_what_params_and_env_decide_and_leaves_the_rest(client: httpx.Client) -> None:
    plan = client.post("/api/workflows/plan/dry-run", json={"params": {"region": "eu"}}).json()
    assert plan["valid"] and plan["problems"] == [] and plan["params"] == {"region": "eu", "count": 2}
    assert plan["order"] == ["fetch", "each", "skipped"]
    fetch, each, skipped = plan["steps"]
    assert fetch["input"]["http"]["url"] == "https://eu.example/items?n=2" and fetch["runs"] is True
    assert fetch["pending"] == []
    assert each["foreach"] == "{{ steps.fetch.output.json }}" and each["needs"] == ["fetch"]
    assert each["input"]["log"] == "item {{ item }} from {{ params.region }}"
    assert set(each["pending"]) == {"steps.each.foreach", "steps.each.log"} and each["runs"] is True
    assert skipped["runs"] is False and skipped["when"] is False

    bad = client.post("/api/workflows/plan/dry-run", json={"params": {"count": "many", "zone": 1}})
    assert bad.status_code == 200
    body = bad.json()
    assert set(body["param_errors"]) == {"region", "count", "zone"} and len(body["problems"]) == 3
    assert body["steps"][0]["pending"]  # the url depends on params, which are not known

    invalid = client.post("/api/workflows/broken/dry-run").json()
    assert invalid["valid"] is False and invalid["problems"] and invalid["steps"] == []
    assert_error(client.post("/api/workflows/nope/dry-run"), 404, "WORKFLOW_NOT_FOUND")
    assert_error(client.post("/api/workflows/plan/dry-run", content=b"{", headers={"content-type": "application/json"}), 400)
    assert client.get("/api/runs", params={"workflow": "plan"}).json()["total"] == 0  # nothing ran


# -- starting runs -----------------------------------------------------------------


@pytest.mark.parametrize(("body", "code"), [
    (b"{", "MALFORMED_BODY"), (b"not json", "MALFORMED_BODY"), (b"[]", "VALIDATION_ERROR"),
    (b'{"params": [1, 2]}', "VALIDATION_ERROR"), (b'{"params": {}, "extra": 1}', "VALIDATION_ERROR"),
    (b'"params"', "VALIDATION_ERROR"),
])
def test_malformed_or_misshapen_bodies_are_400(client: httpx.Client, body: bytes, code: str) -> None:
    for path in ("/api/workflows/quick/runs", "/api/workflows/quick/dry-run"):
        assert_error(client.post(path, content=body, headers={"content-type": "application/json"}), 400, code)


def test_bad_params_unknown_and_invalid_workflows(client: httpx.Client) -> None:
    body = assert_error(client.post("/api/workflows/paged/runs", json={"params": {"n": "three", "m": 1}}),
                        400, "INVALID_PARAMS")
    assert set(body["errors"]) == {"n", "m"} and "integer" in body["errors"]["n"]
    assert "required" in assert_error(client.post("/api/workflows/paged/runs"), 400)["errors"]["n"]
    assert_error(client.post("/api/workflows/nope/runs", json={}), 404, "WORKFLOW_NOT_FOUND")
    body = assert_error(client.post("/api/workflows/broken/runs", json={}), 409, "WORKFLOW_INVALID")
    assert body["errors"][0].startswith("nested/broken.yaml:3:5:")
    assert "TREADLE_TEST_SECRET_NEVER_SET" in assert_error(
        client.post("/api/workflows/secretive/runs"), 409, "SECRET_MISSING")["detail"]
    plan = client.post("/api/workflows/secretive/dry-run").json()
    assert plan["steps"][0]["input"] == {"log": "token ***"}  # never the value, even when it is set
    assert any("TREADLE_TEST_SECRET_NEVER_SET" in p for p in plan["problems"])


def test_run_started_by_post_is_followed_to_the_end(client: httpx.Client) -> None:
    r = client.post("/api/workflows/quick/runs", json={"params": {"who": "Ada", "times": 3}})
    assert r.status_code == 202
    assert r.json()["status"] in {"queued", "running", "succeeded"} and r.json()["workflow"] == "quick"
    doc = wait_run(client, r.json()["run_id"])
    assert doc["status"] == "succeeded" and doc["trigger"] == "api" and doc["error"] is None
    assert doc["params"] == {"who": "Ada", "times": 3}
    hello, shape = doc["steps"]
    assert (hello["id"], hello["status"], hello["attempts"], hello["exit_code"]) == ("hello", "succeeded", 1, 0)
    assert shape["output"] == {"text": "hello Ada", "times": 3} and shape["needs"] == ["hello"]
    for key in ("started_at", "finished_at"):
        assert datetime.fromisoformat(doc[key]).tzinfo is not None
    assert doc["duration_ms"] >= 0 and hello["duration_ms"] >= 0
    assert client.get(f"/api/runs/{doc['id']}/steps/hello/logs").text == "hello Ada\n"
    assert [a["attempt"] for a in hello["attempt_list"]] == [1]
    lean = client.get(f"/api/runs/{doc['id']}", params={"attempts": "false"}).json()
    assert "attempt_list" not in lean["steps"][0] and lean["steps"][0]["status"] == "succeeded"

    listed = client.get("/api/runs", params={"workflow": "quick"}).json()
    assert doc["id"] in [run["id"] for run in listed["items"]]
    last = next(w for w in client.get("/api/workflows").json()["items"] if w["name"] == "quick")["last_run"]
    assert last["workflow"] == "quick" and last["status"] == "succeeded"
    assert_error(client.get("/api/runs/no-such-run"), 404, "RUN_NOT_FOUND")


def test_run_list_is_newest_first_paged_and_filtered(client: httpx.Client) -> None:
    ids = [start(client, "paged", n=i) for i in range(5)]
    for run_id in ids:
        wait_run(client, run_id)
    pages = [client.get("/api/runs", params={"workflow": "paged", "limit": 2, "page": p}).json() for p in (1, 2, 3)]
    assert [p["total"] for p in pages] == [5, 5, 5] and [len(p["items"]) for p in pages] == [2, 2, 1]
    assert [run["id"] for p in pages for run in p["items"]] == ids[::-1]
    assert client.get("/api/runs", params={"workflow": "paged", "status": "failed"}).json()["total"] == 0
    assert client.get("/api/runs", params={"workflow": "paged", "status": "succeeded"}).json()["total"] == 5
    assert_error(client.get("/api/runs", params={"status": "exploded"}), 400, "VALIDATION_ERROR")


# -- logs, events ------------------------------------------------------------------


def test_step_logs_hold_every_attempt_and_unknowns_are_404(client: httpx.Client) -> None:
    run_id = start(client, "noisy")
    doc = wait_run(client, run_id)
    assert doc["status"] == "succeeded" and doc["steps"][0]["attempts"] == 2
    r = client.get(f"/api/runs/{run_id}/steps/noisy/logs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for piece in ("--- attempt 1 ---", "out-1", "err-1", "--- attempt 2 ---", "out-2", "err-2"):
        assert piece in text, text
    assert text.index("out-1") < text.index("--- attempt 2 ---") < text.index("out-2")
    assert "retry 1 of 1" in text  # Treadle's own note between the attempts
    assert_error(client.get(f"/api/runs/{run_id}/steps/nope/logs"), 404, "NOT_FOUND")
    assert_error(client.get("/api/runs/nope/steps/noisy/logs"), 404, "RUN_NOT_FOUND")


def test_events_stream_live_in_order_and_end_with_the_run(client: httpx.Client, tmp_path: Path) -> None:
    # steps a and b wait for files this test writes once it has seen the events so
    # far: what arrives before a file is written cannot have been held back
    run_id = start(client, "live", gates=str(tmp_path))
    events: list[tuple[str, dict[str, Any]]] = []
    opened: dict[str, int] = {}
    with client.stream("GET", f"/api/runs/{run_id}/events", timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for event, data in sse_events(r):
            events.append((event, data))
            states = {(d.get("step_id"), d.get("status")) for k, d in events}
            if "a" not in opened and {(None, "running"), ("a", "running")} <= states:
                later = client.get(f"/api/runs/{run_id}/steps/c/logs")  # not started: no log yet
                assert (later.status_code, later.text) == (200, "")
                opened["a"] = len(events)
                (tmp_path / "a").touch()
            if event == "step" and (data["step_id"], data["status"]) == ("b", "running"):
                opened["b"] = len(events)
                (tmp_path / "b").touch()
    # the loop ended: the server closed the stream after the run finished
    assert set(opened) == {"a", "b"}, events
    opening = next(d for k, d in events if k == "run")  # the run as it was when the stream opened
    assert opening["run_id"] == run_id and opening["workflow"] == "live" and opening["status"] == "running"
    assert [(d["step_id"], d["status"]) for k, d in events[:opened["a"]] if k == "step"] == [("a", "running")]
    live = events[opened["a"]:]
    assert [(d["step_id"], d["status"]) for k, d in live if k == "step"] == [
        ("a", "succeeded"), ("b", "running"), ("b", "succeeded"), ("c", "running"), ("c", "succeeded")]
    assert opened["b"] < len(events)  # b's end, c and the run's end came after b's file
    last_kind, last = events[-1]
    assert last_kind == "run" and last["status"] == "succeeded" and last["run_id"] == run_id
    assert datetime.fromisoformat(last["finished_at"]).tzinfo is not None
    logs = [(d["step_id"], d["text"]) for k, d in events if k == "log"]
    assert ("b", "through\n") in logs and ("c", "after through\n") in logs
    assert all(datetime.fromisoformat(d["started_at"]).tzinfo for k, d in events if k == "step")

    # a finished run: its state at once, then the end; logs=false leaves out the logs
    with client.stream("GET", f"/api/runs/{run_id}/events", params={"logs": "false"}) as r:
        again = list(sse_events(r))
    assert [(k, d.get("step_id"), d["status"]) for k, d in again] == [
        ("step", "a", "succeeded"), ("step", "b", "succeeded"), ("step", "c", "succeeded"),
        ("run", None, "succeeded")]
    assert_error(client.get("/api/runs/nope/events"), 404, "RUN_NOT_FOUND")


# -- cancel, retry -----------------------------------------------------------------


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_cancel_stops_a_long_shell_step(client: httpx.Client, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    run_id = start(client, "slow", pidfile=str(pidfile))
    end = time.monotonic() + 10
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < end, "the step never started"
        time.sleep(0.02)
    pid = int(pidfile.read_text())
    assert not _gone(pid)
    assert_error(client.post(f"/api/runs/{run_id}/retry"), 409, "RUN_ACTIVE")

    r = client.post(f"/api/runs/{run_id}/cancel")
    assert r.status_code == 202 and r.json()["run_id"] == run_id
    doc = wait_run(client, run_id)
    assert doc["status"] == "cancelled"
    assert [(s["id"], s["status"]) for s in doc["steps"]] == [("sleepy", "cancelled"), ("never", "cancelled")]
    end = time.monotonic() + 10
    while not _gone(pid):
        assert time.monotonic() < end, "the step's process is still alive"
        time.sleep(0.02)

    assert_error(client.post(f"/api/runs/{run_id}/cancel"), 409, "RUN_FINISHED")
    assert_error(client.post("/api/runs/nope/cancel"), 404, "RUN_NOT_FOUND")


def test_retry_from_the_failed_step_reuses_upstream_outputs(client: httpx.Client, tmp_path: Path) -> None:
    failed_id = start(client, "flaky", dir=str(tmp_path))
    failed = wait_run(client, failed_id)
    assert failed["status"] == "failed" and "check" in failed["error"]
    assert {s["id"]: s["status"] for s in failed["steps"]} == {"up": "succeeded", "check": "failed",
                                                               "after": "upstream_failed"}
    assert steps_by_id(failed)["check"]["exit_code"] == 3

    assert_error(client.post(f"/api/runs/{failed_id}/retry", json={"from": "chek"}), 400, "INVALID_PARAMS")
    assert_error(client.post("/api/runs/nope/retry", json={}), 404, "RUN_NOT_FOUND")
    assert_error(client.post(f"/api/runs/{failed_id}/retry", json={"from": 3}), 400)

    (tmp_path / "fixed").touch()
    r = client.post(f"/api/runs/{failed_id}/retry", json={"from": "check"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["retry_of"] == failed_id and body["retry_from"] == "check" and body["run_id"] != failed_id
    doc = wait_run(client, body["run_id"])
    assert doc["status"] == "succeeded" and doc["retry_of"] == failed_id and doc["trigger"] == "retry"
    steps = steps_by_id(doc)
    assert steps["up"]["status"] == "succeeded" and steps["up"]["attempts"] == 0  # reused, not run
    assert steps["up"]["input"] == {"reused_from": failed_id}
    assert steps["after"]["output"] == {"v": 7}
    assert (tmp_path / "up.count").read_text() == "up\n"

    # no body: what did not succeed runs again
    again = client.post(f"/api/runs/{failed_id}/retry")
    assert again.status_code == 202 and again.json()["retry_from"] is None
    assert wait_run(client, again.json()["run_id"])["status"] == "succeeded"
    assert (tmp_path / "up.count").read_text() == "up\n"
