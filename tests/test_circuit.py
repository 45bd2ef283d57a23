"""Circuit breakers of `http` steps: the state machine with real time (short durations),
then real runs against the failing loopback HTTP server, the API and the dashboard over a
real uvicorn, and the checks at load."""

from __future__ import annotations

import asyncio
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from runner.dsl.definition import json_schema
from runner.dsl.loader import load_text
from runner.engine.circuit import (
    Breaker,
    Breakers,
    BreakerSettings,
    CircuitOpen,
    CircuitState,
    host_of,
)
from tests.exec_support import by_id, run_yaml
from tests.http_server import LoopbackServer, closed_port, http_server_fixture  # noqa: F401  (the fixture)
from tests.web_server import running_server, with_csrf

OPEN_MARK = "circuit open for "


def wait_for(check: Callable[[], bool], deadline_s: float = 5.0) -> None:
    """Poll until `check()` holds (the deadline only stops a broken test hanging the suite)."""
    end = time.monotonic() + deadline_s
    while not check():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


def fail(breaker: Breaker, times: int, error: str = "GET http://h/x answered 503") -> None:
    for _ in range(times):
        breaker.admit().failed(error)


# -- the state machine ---------------------------------------------------------------


def test_consecutive_failures_open_the_circuit_and_a_success_in_between_resets_the_run():
    b = Breaker("http://h:80", BreakerSettings(failures=3, reset_after=60))
    fail(b, 2)
    b.admit().succeeded()
    fail(b, 2)
    assert (b.current_state(), b.consecutive_failures, b.failures, b.successes) == ("closed", 2, 4, 1)
    fail(b, 1, "GET http://h/y answered 502")
    assert b.current_state() == CircuitState.OPEN and b.opened_at is not None
    with pytest.raises(CircuitOpen) as refused:
        b.admit()
    assert refused.value.retryable and refused.value.code is None
    message = str(refused.value)
    assert message.startswith("circuit open for http://h:80 after 3 failures (last: GET http://h/y answered 502); next trial in ")
    assert b.rejected == 1
    snap = b.snapshot()
    assert snap["state"] == "open" and snap["next_trial_at"] == pytest.approx(b.opened_at + 60, abs=1)
    assert snap["settings"] == {"failures": 3, "reset_after": 60.0, "half_open_max": 1}


def test_after_reset_after_trials_are_let_through_up_to_half_open_max():
    b = Breaker("http://h:80", BreakerSettings(failures=1, reset_after=0.2, half_open_max=2))
    fail(b, 1)
    with pytest.raises(CircuitOpen):
        b.admit()
    wait_for(lambda: b.current_state() == CircuitState.HALF_OPEN)
    assert b.snapshot()["next_trial_at"] is None
    first, second = b.admit(), b.admit()
    assert first.trial and second.trial
    with pytest.raises(CircuitOpen, match=r"^circuit half_open for http://h:80 after 1 failure .*2 trial calls in progress"):
        b.admit()
    first.release()  # cancelled: no verdict, the slot is free again
    assert b.current_state() == CircuitState.HALF_OPEN
    third = b.admit()
    third.succeeded()
    assert (b.current_state(), b.consecutive_failures, b.opened_at) == ("closed", 0, None)
    second.failed("late")  # a trial of the episode that just ended: counted, decides nothing
    assert (b.current_state(), b.failures, b.consecutive_failures, b.last_error) == ("closed", 2, 0, "late")


def test_a_failed_trial_opens_the_circuit_again_with_a_new_wait():
    b = Breaker("http://h:80", BreakerSettings(failures=2, reset_after=0.2))
    fail(b, 2)
    first_opened = b.opened_at
    wait_for(lambda: b.current_state() == CircuitState.HALF_OPEN)
    b.admit().failed("GET http://h/x: no answer within 1s")
    assert b.current_state() == CircuitState.OPEN and b.opened_at > first_opened
    with pytest.raises(CircuitOpen, match=r"after 3 failures \(last: GET http://h/x: no answer within 1s\)"):
        b.admit()
    wait_for(lambda: b.current_state() == CircuitState.HALF_OPEN)
    b.admit().succeeded()
    assert b.current_state() == CircuitState.CLOSED


def test_outcomes_of_calls_started_before_the_circuit_opened_do_not_close_it():
    b = Breaker("http://h:80", BreakerSettings(failures=1, reset_after=60))
    early = b.admit()
    fail(b, 1)
    early.succeeded()
    assert b.current_state() == CircuitState.OPEN and b.successes == 1
    b.reset()
    assert (b.current_state(), b.consecutive_failures, b.failures, b.successes) == ("closed", 0, 1, 1)
    b.admit().succeeded()
    assert b.current_state() == CircuitState.CLOSED


def test_settings_of_the_latest_call_apply():
    b = Breaker("http://h:80", BreakerSettings(failures=5))
    fail(b, 2)
    b.admit(BreakerSettings(failures=3)).failed("x")
    assert b.current_state() == CircuitState.OPEN


@pytest.mark.parametrize(("url", "host"), [
    ("http://Example.COM/a?b=1", "http://example.com:80"),
    ("https://example.com", "https://example.com:443"),
    ("http://127.0.0.1:9000/x", "http://127.0.0.1:9000"),
    ("http://[::1]:81/", "http://[::1]:81"),
    ("ftp://example.com", None),
    ("not a url", None),
])
def test_host_of(url, host):
    assert host_of(url) == host


def test_breakers_are_found_by_host_url_or_plain_host_port():
    breakers = Breakers()
    settings = BreakerSettings()
    assert breakers.admit("http://127.0.0.1:9000/a", settings) is not None
    assert breakers.admit("https://example.com/b", settings) is not None
    assert breakers.admit("/relative", settings) is None
    assert [b.host for b in breakers.all()] == ["http://127.0.0.1:9000", "https://example.com:443"]
    assert [b.host for b in breakers.find("http://127.0.0.1:9000")] == ["http://127.0.0.1:9000"]
    assert [b.host for b in breakers.find("127.0.0.1:9000")] == ["http://127.0.0.1:9000"]
    assert [b.host for b in breakers.find("EXAMPLE.com:443")] == ["https://example.com:443"]
    assert breakers.find("127.0.0.1:9001") == [] and breakers.find("http://other:80") == []


# -- runs against a real failing server ----------------------------------------------


def attempts(doc: dict, step: str) -> list[dict]:
    return by_id(doc)[step]["attempt_list"]


def refused(attempt: dict) -> bool:
    return (attempt["error"] or "").startswith(OPEN_MARK)


async def test_an_open_circuit_fails_attempts_at_once_until_a_trial_goes_through(engine, tmp_path, http_server):
    url = f"{http_server.url}/status/503"
    exe, doc = await run_yaml(engine, tmp_path, f"""
        steps:
          - id: call
            http: {{url: "{url}"}}
            circuit_breaker: {{failures: 2, reset_after: 0.3s}}
            retry: {{limit: 40, backoff: fixed, delay: 20ms}}
    """)
    assert exe.status == "failed"
    tries = attempts(doc, "call")
    assert len(tries) == 41
    reached = [a for a in tries if not refused(a)]
    # every attempt that was not refused reached the server, and only those did
    assert http_server.hits["/status/503"] == len(reached)
    assert [refused(a) for a in tries[:3]] == [False, False, True]
    host = f"http://127.0.0.1:{http_server.server_address[1]}"
    assert tries[2]["error"].startswith(
        f"circuit open for {host} after 2 failures (last: GET {url} answered 503); next trial in ")
    assert tries[2]["http_status"] is None and tries[1]["http_status"] == 503
    # after reset_after a trial went through (and failed, so the circuit opened again)
    later = [i for i, a in enumerate(tries) if i > 2 and not refused(a)]
    assert later and refused(tries[later[0] - 1])
    assert sum(map(refused, tries)) > len(reached)
    [breaker] = engine.breakers.all()
    assert breaker.host == host and breaker.failures == len(reached) and breaker.rejected == sum(map(refused, tries))


async def test_the_circuit_closes_when_the_server_recovers(engine, tmp_path, http_server):
    exe, doc = await run_yaml(engine, tmp_path, f"""
        defaults:
          circuit_breaker: {{failures: 2, reset_after: 0.3s}}
          retry: {{limit: 100, delay: 20ms}}
        steps:
          - id: call
            http: {{url: "{http_server.url}/flaky/recover?fail=3"}}
    """)
    assert exe.status == "succeeded", doc
    tries = attempts(doc, "call")
    assert tries[-1]["output"]["json"] == {"hits": 4}
    assert http_server.hits["/flaky/recover"] == 4  # 2 failures, a failed trial, the trial that closed it
    assert sum(map(refused, tries)) == len(tries) - 4 > 0
    breaker = engine.breakers.all()[0]
    assert (breaker.current_state(), breaker.consecutive_failures, breaker.failures, breaker.successes) == (
        "closed", 0, 3, 1)


async def test_breakers_are_shared_per_host_across_runs_and_only_where_configured(engine, tmp_path, http_server):
    down = f"{http_server.url}/status/500"
    await run_yaml(engine, tmp_path, f"""
        steps:
          - {{id: plain, http: {{url: "{down}"}}}}
    """, name="plain")
    assert engine.breakers.all() == []  # no circuit_breaker: no breaker
    await run_yaml(engine, tmp_path, f"""
        steps:
          - {{id: a, http: {{url: "{down}"}}, circuit_breaker: {{failures: 1, reset_after: 60s}}}}
    """)
    assert http_server.hits["/status/500"] == 2
    # another workflow calling the same host is refused without reaching the server, on any path
    exe, doc = await run_yaml(engine, tmp_path, f"""
        defaults: {{circuit_breaker: {{failures: 1, reset_after: 60s}}}}
        steps:
          - id: inherits
            http: {{url: "{http_server.url}/json"}}
          - id: optout
            needs: []
            http: {{url: "{http_server.url}/json"}}
            circuit_breaker:
    """, name="other")
    steps = by_id(doc)
    assert steps["inherits"]["status"] == "failed" and steps["inherits"]["error"].startswith(OPEN_MARK)
    assert steps["optout"]["status"] == "succeeded"
    assert http_server.hits["/json"] == 1 and http_server.hits["/status/500"] == 2
    [breaker] = engine.breakers.all()
    assert (breaker.failures, breaker.rejected) == (1, 1)


@contextmanager
def another_server() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


async def test_what_counts_as_a_failure(engine, tmp_path, http_server):
    port = closed_port()
    with another_server() as busy:
        exe, doc = await run_yaml(engine, tmp_path, f"""
            defaults: {{circuit_breaker: {{failures: 1, reset_after: 60s}}}}
            steps:
              - {{id: not_found, http: {{url: "{http_server.url}/status/404"}}, continue_on_failure: true}}
              - {{id: bad, http: {{url: "{http_server.url}/status/400"}}, continue_on_failure: true}}
              - {{id: busy, http: {{url: "{busy.url}/status/429"}}, continue_on_failure: true}}
              - {{id: refused, http: {{url: "http://127.0.0.1:{port}/"}}, continue_on_failure: true}}
              - {{id: ours, http: {{url: "{http_server.url}/json", headers: {{"bad header": "x"}}}}, continue_on_failure: true}}
        """)
    states = {b.host: b.snapshot() for b in engine.breakers.all()}
    steps = by_id(doc)
    assert steps["ours"]["error"] == f"GET {http_server.url}/json: LocalProtocolError: Illegal header name b'bad header'"
    here = states[http_server.url]
    # 4xx: the host is up; a request the client could not even send says nothing about the host
    assert (here["state"], here["successes"], here["failures"], here["trials_in_flight"]) == ("closed", 2, 0, 0)
    assert (states[busy.url]["state"], states[busy.url]["failures"]) == ("open", 1)
    assert states[busy.url]["last_error"] == f"GET {busy.url}/status/429 answered 429"
    gone = states[f"http://127.0.0.1:{port}"]
    assert gone["state"] == "open" and gone["last_error"] == f"GET http://127.0.0.1:{port}/: cannot connect (connection refused)"


async def test_a_step_stopped_by_its_timeout_counts_as_a_failure(engine, tmp_path, http_server):
    exe, doc = await run_yaml(engine, tmp_path, f"""
        steps:
          - id: slow
            timeout: 0.2s
            http: {{url: "{http_server.url}/slow?s=3"}}
            circuit_breaker: {{failures: 1, reset_after: 60s}}
    """)
    [breaker] = engine.breakers.all()
    # httpx's timeout and the step's are the same length: either may stop the call
    assert breaker.last_error in (f"GET {http_server.url}/slow?s=3: no answer within 0.2s",
                                  f"GET {http_server.url}/slow?s=3: no answer within the step's timeout (0.2s)")
    assert (breaker.current_state(), breaker.failures, breaker.snapshot()["trials_in_flight"]) == ("open", 1, 0)


# -- load-time checks ---------------------------------------------------------------


def test_circuit_breaker_on_a_step_that_is_not_http_is_reported():
    d = load_text(textwrap.dedent("""
        defaults: {circuit_breaker: {failures: 3}}
        steps:
          - id: build
            run: make
            circuit_breaker: {failures: 2}
          - id: call
            http: {url: "http://x"}
            circuit_breaker: {failure: 2, reset_after: soon}
    """).lstrip(), "wf.yaml")
    assert [str(p) for p in d.problems] == [
        "wf.yaml:5:5: steps[0].circuit_breaker: 'circuit_breaker' only applies to 'http' steps, not 'run'; remove it",
        "wf.yaml:8:23: steps[1].circuit_breaker.failure: unknown key 'failure'; did you mean 'failures'?",
        "wf.yaml:8:48: steps[1].circuit_breaker.reset_after: invalid duration 'soon'; use e.g. 45s, 10m, 1h30m, 500ms or a number of seconds",
    ]


def test_defaults_reach_http_steps_only_and_a_step_value_wins():
    d = load_text(textwrap.dedent("""
        defaults: {circuit_breaker: {failures: 3, reset_after: 1m}}
        steps:
          - {id: a, http: {url: "http://x"}}
          - {id: b, http: {url: "http://x"}, circuit_breaker: {half_open_max: 2}}
          - {id: c, log: hi}
    """).lstrip(), "wf.yaml")
    assert d.valid, d.problems
    a, b, c = d.spec.steps
    assert (a.circuit_breaker.failures, a.circuit_breaker.reset_after) == (3, 60.0)
    assert (b.circuit_breaker.failures, b.circuit_breaker.reset_after, b.circuit_breaker.half_open_max) == (5, 30.0, 2)
    assert c.circuit_breaker is None
    schema = json_schema()
    assert "circuit_breaker" in schema["$defs"]["StepSpec"]["properties"]
    assert "circuit_breaker" in schema["$defs"]["DefaultsSpec"]["properties"]
    assert "45s" in schema["$defs"]["CircuitBreakerSpec"]["properties"]["reset_after"]["description"]


# -- API and dashboard over a real server -------------------------------------------


@pytest.fixture
def served(tmp_path: Path, http_server: LoopbackServer):
    defs = tmp_path / "definitions"
    defs.mkdir()
    (defs / "down.yaml").write_text(textwrap.dedent(f"""
        steps:
          - id: call
            http: {{url: "{http_server.url}/status/503"}}
            circuit_breaker: {{failures: 1, reset_after: 60s}}
    """).lstrip())
    with running_server(defs, f"sqlite:///{tmp_path / 'treadle.db'}", watch=False) as base, \
            httpx.Client(base_url=base, timeout=10) as client:
        yield with_csrf(client)


def run_down(client: httpx.Client) -> dict:
    run_id = client.post("/api/workflows/down/runs", json={}).json()["run_id"]
    end = time.monotonic() + 20
    while (doc := client.get(f"/api/runs/{run_id}").json())["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < end, doc
        time.sleep(0.02)
    return doc


def test_api_lists_and_resets_breakers(served: httpx.Client, http_server: LoopbackServer):
    client = served
    assert client.get("/api/circuit-breakers").json() == {"items": [], "total": 0, "page": 1, "limit": 50}
    host = f"http://127.0.0.1:{http_server.server_address[1]}"
    assert run_down(client)["steps"][0]["error"].startswith(f"GET {host}/status/503 answered 503")
    [item] = client.get("/api/circuit-breakers").json()["items"]
    assert item["host"] == host and item["state"] == "open"
    assert (item["consecutive_failures"], item["failures"], item["successes"], item["rejected"]) == (1, 1, 0, 0)
    assert item["last_error"] == f"GET {host}/status/503 answered 503"
    assert item["settings"] == {"failures": 1, "reset_after": 60.0, "half_open_max": 1}
    assert item["opened_at"] < item["next_trial_at"]  # ISO 8601 with a zone sort as text
    assert run_down(client)["steps"][0]["error"].startswith(f"circuit open for {host} after 1 failure ")
    assert http_server.hits["/status/503"] == 1

    r = client.post(f"/api/circuit-breakers/{quote(host, safe='')}/reset")
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["consecutive_failures"], r.json()["rejected"]) == ("closed", 0, 1)
    run_down(client)  # reaches the server again, and opens the circuit again
    assert http_server.hits["/status/503"] == 2
    r = client.post(f"/api/circuit-breakers/127.0.0.1:{http_server.server_address[1]}/reset")
    assert r.status_code == 200 and r.json()["state"] == "closed"

    for path in ("/api/circuit-breakers/" + quote("http://127.0.0.1:1", safe="") + "/reset",
                 "/api/circuit-breakers/nowhere:80/reset"):
        missing = client.post(path)
        assert missing.status_code == 404 and missing.json()["error_code"] == "NOT_FOUND", missing.text
        assert "no circuit breaker for" in missing.json()["detail"]
    assert client.post(f"/api/circuit-breakers/{quote(host, safe='')}/open").status_code == 404
    assert "/api/circuit-breakers" in client.get("/schema").json()["paths"]
    assert client.get("/api/circuit-breakers?page=2").json()["items"] == []
    assert client.get("/api/circuit-breakers?limit=0").status_code == 400


def test_dashboard_shows_breakers_and_resets_one(served: httpx.Client, http_server: LoopbackServer):
    client = served
    assert "Circuit breakers" not in client.get("/").text
    run_down(client)
    host = f"http://127.0.0.1:{http_server.server_address[1]}"
    page = client.get("/").text
    assert "1 circuit breaker not closed" in page and f"<code>{host}</code> is open after 1 failure" in page
    assert f'<input type="hidden" name="host" value="{host}">' in page
    foreign = client.post("/circuit-breakers/reset", data={"host": host}, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403
    assert client.get("/api/circuit-breakers").json()["items"][0]["state"] == "open"
    origin = str(client.base_url).rstrip("/")
    r = client.post("/circuit-breakers/reset", data={"host": host}, headers={"Origin": origin})
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert client.get("/api/circuit-breakers").json()["items"][0]["state"] == "closed"
    page = client.get("/").text
    assert "not closed" not in page and "Circuit breakers" in page
    assert client.post("/circuit-breakers/reset", data={"host": "nowhere:1"}, headers={"Origin": origin}).status_code == 404


async def test_a_cancelled_trial_frees_its_slot(engine, tmp_path, http_server):
    breaker = engine.breakers.for_host(f"http://127.0.0.1:{http_server.server_address[1]}",
                                       BreakerSettings(failures=1, reset_after=0.1))
    breaker.admit().failed("down")
    await asyncio.sleep(0.15)
    exe = await engine.start(load_text(textwrap.dedent(f"""
        steps:
          - id: slow
            http: {{url: "{http_server.url}/slow?s=5"}}
            circuit_breaker: {{failures: 1, reset_after: 0.1s}}
    """), "wf.yaml", name="slow"))
    await asyncio.to_thread(wait_for, lambda: http_server.hits["/slow"] == 1)
    assert breaker.snapshot()["trials_in_flight"] == 1
    exe.cancel()
    await asyncio.wait_for(exe.wait(), 10)
    assert breaker.current_state() == CircuitState.HALF_OPEN and breaker.snapshot()["trials_in_flight"] == 0


async def test_a_key_shares_one_breaker_across_hosts(engine, tmp_path, http_server):
    up, down = f"{http_server.url}/status/503", f"http://127.0.0.1:{closed_port()}/orders"  # two hosts of one service
    exe, doc = await run_yaml(engine, tmp_path, f"""
        defaults:
          circuit_breaker: {{key: billing-api, failures: 2, reset_after: 60s}}
        steps:
          - id: one
            http: {{url: "{up}"}}
            continue_on_failure: true
          - id: two
            http: {{url: "{down}"}}
            continue_on_failure: true
          - id: three
            http: {{url: "{up}"}}
    """)
    assert exe.status == "failed"
    steps = by_id(doc)
    assert not refused(attempts(doc, "one")[0]) and not refused(attempts(doc, "two")[0])
    # two failures on two hosts opened the one breaker they share: the third call never left
    assert steps["three"]["error"].startswith("circuit open for billing-api after 2 failures")
    assert http_server.hits["/status/503"] == 1
    [breaker] = engine.breakers.all()
    assert (breaker.key, breaker.host, breaker.failures, breaker.rejected) == ("billing-api", "billing-api", 2, 1)
    assert engine.breakers.find("billing-api") == [breaker]


def test_get_one_breaker_by_key_or_host(tmp_path: Path, http_server: LoopbackServer):
    defs = tmp_path / "definitions"
    defs.mkdir()
    (defs / "bill.yaml").write_text(textwrap.dedent(f"""
        steps:
          - id: call
            http: {{url: "{http_server.url}/status/503"}}
            circuit_breaker: {{key: billing-api, failures: 1, reset_after: 60s}}
          - id: plain
            needs: []
            http: {{url: "http://127.0.0.1:{closed_port()}/x"}}
            circuit_breaker: {{failures: 1}}
    """).lstrip())
    with running_server(defs, f"sqlite:///{tmp_path / 'treadle.db'}", watch=False) as base, \
            httpx.Client(base_url=base, timeout=10) as client:
        assert client.get("/api/circuit-breakers/billing-api").status_code == 404
        assert client.post("/api/workflows/bill/runs?wait=20s").json()["status"] == "failed"
        one = client.get("/api/circuit-breakers/billing-api")
        assert one.status_code == 200, one.text
        assert (one.json()["key"], one.json()["host"], one.json()["state"]) == ("billing-api", "billing-api", "open")
        hosts = [b["host"] for b in client.get("/api/circuit-breakers").json()["items"] if b["key"] is None]
        assert len(hosts) == 1
        by_host = client.get(f"/api/circuit-breakers/{quote(hosts[0], safe='')}")
        assert by_host.status_code == 200 and by_host.json()["key"] is None
        assert client.get("/api/circuit-breakers/no-such-key").json()["error_code"] == "NOT_FOUND"
        r = client.post("/api/circuit-breakers/billing-api/reset")
        assert r.status_code == 200 and r.json()["state"] == "closed"
