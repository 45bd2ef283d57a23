"""Schemathesis over every operation of `/schema`, against a real server.

Each operation gets fuzzed (valid and invalid inputs, schemathesis' coverage and
fuzzing phases) and every answer must be: no 5xx, a status code the operation
declares, the content type it declares for that status, and a body that matches
the declared schema. Path and query parameters mostly name what exists (workflows,
finished and waiting runs, steps, versions, a circuit breaker) so that the routes
answer with data too, not only with 404s. Every case runs with the server's admin
token and again with none; `GET /api/runs/{id}/events` only gets finished runs, whose
stream ends at once. Schemathesis' stateful phase chains calls by their answers.
State-changing operations (start, cancel, retry, approve, pause, events, webhooks)
are fuzzed too: the server runs on a temporary folder and database.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .web_server import serving

TOKEN_ENV = "TREADLE_SCHEMA_TEST_TOKEN"
ADMIN_TOKEN = "schema-test-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FINISHED = {"succeeded", "failed", "cancelled"}


def _closed_port() -> int:
    """A loopback port nothing listens on: the breaker's http step fails at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DEAD_PORT = _closed_port()

DEFINITIONS = {
    "typed.yaml": """
        description: Params of every type, all with defaults.
        tags: [fuzz]
        params:
          text: {type: string, default: hi, description: any text}
          colour: {type: string, enum: [red, green], default: red}
          ratio: {type: number, default: 0.5}
          count: {type: integer, default: 2}
          flag: {type: boolean, default: true}
          items: {type: array, default: [1, 2]}
          extra: {type: object, default: {a: 1}}
        triggers:
          event: ["*"]
        steps:
          - id: echo
            set: {text: "{{ params.text }}", count: "{{ params.count }}"}
          - id: each
            foreach: "{{ params['items'] }}"
            log: "item {{ item }}"
    """,
    "hooked.yaml": """
        params: {n: {type: integer, default: 0}}
        triggers:
          webhook: {token_env: TREADLE_SCHEMA_TEST_TOKEN}
        concurrency: {limit: 1, policy: skip}
        steps: [{id: a, wait: 1s}]  # a second call while one runs is skipped (200)
    """,
    "unset-hook.yaml": """
        triggers:
          webhook: {secret_env: TREADLE_SCHEMA_TEST_NEVER_SET}
        steps: [{id: a, log: x}]
    """,
    "failing.yaml": """
        steps:
          - id: up
            set: {v: 7}
          - id: boom
            run: 'echo "no luck" >&2; exit 3'
          - id: after
            log: "{{ steps.up.output.v }}"
    """,
    "gate.yaml": """
        steps:
          - id: ask
            approval: {message: "go on?"}
          - id: done
            log: decided
    """,
    "breaker.yaml": f"""
        steps:
          - id: call
            http: {{url: "http://127.0.0.1:{DEAD_PORT}/x", timeout: 2s}}
            circuit_breaker: {{failures: 1, reset_after: 1h}}
    """,
    "broken.yaml": """
        steps:
          - id: a
            depend: [x]
            run: echo
    """,
}


def _wait(client: httpx.Client, run_id: str, states: set[str], deadline_s: float = 20) -> dict[str, Any]:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        doc = client.get(f"/api/runs/{run_id}").json()
        if doc["status"] in states:
            return doc
        time.sleep(0.03)
    raise AssertionError(f"run {run_id} never reached {states}: {doc}")


def _start(client: httpx.Client, name: str, states: set[str] = FINISHED) -> str:
    r = client.post(f"/api/workflows/{name}/runs", json={"params": {}})
    assert r.status_code == 202, r.text
    run_id = r.json()["run_id"]
    _wait(client, run_id, states)
    return run_id


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The server, with succeeded, failed and waiting runs, and an open circuit breaker.

    Yields its base URL and `known`: values of path and query parameters that name
    something that exists, by parameter name.
    """
    mp = pytest.MonkeyPatch()
    mp.setenv(TOKEN_ENV, ADMIN_TOKEN)  # the bearer every case sends also opens the webhook of `hooked`
    root = tmp_path_factory.mktemp("schema")
    with serving(root, DEFINITIONS, watch=False, admin_token=ADMIN_TOKEN) as base, \
            httpx.Client(base_url=base, timeout=10, headers=AUTH) as client:
        finished = [_start(client, "typed"), _start(client, "failing"), _start(client, "breaker")]
        assert [client.get(f"/api/runs/{r}").json()["status"] for r in finished] == [
            "succeeded", "failed", "failed"]
        waiting = [_start(client, "gate", {"waiting"}) for _ in range(3)]
        versions = [v["version"] for name in ("typed", "broken")
                    for v in client.get(f"/api/workflows/{name}/versions").json()["items"]]
        assert len(versions) == 2
        names = sorted(d.removesuffix(".yaml") for d in DEFINITIONS)
        known = {
            "name": names,
            "run_id": finished,  # events of a run still going would stream until it ends
            "waiting": waiting,
            "step_id": ["echo", "each", "up", "boom", "after", "ask", "call"],
            "version": versions,
            "target": [f"127.0.0.1:{DEAD_PORT}/reset", f"http://127.0.0.1:{DEAD_PORT}/reset"],
            # query parameters
            "workflow": names,
            "parent": finished,
            "from": versions,
            "to": versions,
        }
        yield {"base": base, "known": known}
    mp.undo()


def _known(known: dict[str, list[str]], path: str, name: str) -> list[str]:
    """What to name in parameter `name` of the operation on `path`."""
    deciding = path.endswith(("/approve", "/reject"))
    if name == "run_id" and deciding:
        return known["waiting"] + known["run_id"]
    if name == "run_id" and not path.endswith("/events"):
        return known["run_id"] + known["waiting"]
    if name == "step_id" and deciding:
        return ["ask", "done"]  # gate's approval step, and a step that is not one
    if name == "workflow" and path.startswith("/hooks/"):  # open (the bearer sent), no key, broken, none
        return ["hooked", "hooked", "unset-hook", "broken", "typed"]
    if name == "name" and ("/versions" in path or path.endswith("/diff")):
        return ["typed", "broken"]
    return known[name]


def _naming_known(strategy: Any, path: str, known: dict[str, list[str]]) -> Any:
    """Most cases name what exists in the parameters that were generated; the rest stay random."""

    def swap(generated: Any) -> Any:
        if not isinstance(generated, dict):
            return st.just(generated)
        chosen = {k: st.sampled_from(_known(known, path, k)) for k in generated if k in known}
        return st.fixed_dictionaries(chosen).map(lambda values: {**generated, **values})

    named = strategy.flatmap(swap)
    return st.one_of(named, named, strategy)


@pytest.fixture(scope="module")
def api_schema(server: dict[str, Any]) -> Any:
    base, known = server["base"], server["known"]
    config = schemathesis.Config.from_dict({
        "base-url": base,
        # a webhook whose key the server lacks is a documented 503 (WEBHOOK_NOT_CONFIGURED);
        # status_code_conformance still fails any 5xx an operation does not declare
        "operations": [{"include-path": "/hooks/{workflow}",
                        "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]}}}],
    })
    # /schema answers the JSON document itself (JsonRenderPlugin at "/", as docs/api.md says)
    schema = schemathesis.openapi.from_url(f"{base}/schema", config=config, timeout=10)

    @schema.hook
    def before_generate_path_parameters(context: Any, strategy: Any) -> Any:
        return _naming_known(strategy, context.operation.path, known)

    @schema.hook
    def before_generate_query(context: Any, strategy: Any) -> Any:
        return _naming_known(strategy, context.operation.path, known)

    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_the_schema(case: schemathesis.Case) -> None:
    """No 5xx (a webhook's documented 503 aside), a declared status code and content
    type, and a body that matches the declared schema, for every operation."""
    case.call_and_validate(
        checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                response_schema_conformance],
        headers=AUTH, timeout=15)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@schema.parametrize()
@settings(max_examples=4, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_without_a_token(case: schemathesis.Case) -> None:
    """Without a token each operation still answers what it declares: 401 for the
    protected ones (declared on every one of them), the open ones as with a token."""
    case.call_and_validate(checks=CHECKS, timeout=15)


def test_sequences_of_calls_conform_to_the_schema(server: dict[str, Any], tmp_path: Path) -> None:
    """Schemathesis' stateful phase: chains of calls linked by what one answer names
    (start a run, then read, cancel, retry or decide it; create a token, then revoke
    it), every answer checked as above. Run through schemathesis' own runner (`st`):
    Hypothesis' state machine inside pytest calls a precondition that depends on the
    server's answers flaky and gives up. Event streams are left out: a run that waits
    for an approval never ends its stream."""
    command = [str(Path(sys.executable).with_name("st")), "run", f"{server['base']}/schema",
               "--phases", "stateful", "--header", f"Authorization: Bearer {ADMIN_TOKEN}",
               "--checks", ",".join(check.__name__ for check in CHECKS),
               "--exclude-path", "/api/runs/{run_id}/events", "--max-examples", "30", "--seed", "1", "--no-color"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)  # its cache dir there
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    cases = re.search(r"(\d+) generated, (\d+) passed", report)
    links = re.search(r"API Links:\s+(\d+) covered", report)
    assert cases and links, report
    assert int(cases.group(1)) == int(cases.group(2)) >= 50, report  # chains did run, and all passed
    assert int(links.group(1)) >= 4, report  # runs started then acted on, tokens created then revoked
