"""Webhooks, events, pause/resume and queued runs over HTTP, against a real server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from runner.triggers.signing import signed_headers
from tests.http_server import http_server_fixture  # noqa: F401  (fixture)
from tests.web_server import serving

SECRET = "hook-secret-for-tests"
TOKEN = "bearer-token-for-tests"

DEFINITIONS = {
    "signed.yaml": """
        name: signed
        params: {order: integer, who: {type: string, default: nobody}}
        triggers:
          webhook: {secret_env: TEST_HOOK_SECRET, params: {order: "{{ body.order.id }}", who: "{{ headers['x-sender'] | default('nobody') }}"}}
        steps: [{id: a, set: {order: "{{ params.order }}"}}]
    """,
    "token.yaml": """
        name: token
        params: {n: integer}
        triggers: {webhook: {token_env: TEST_HOOK_TOKEN}}
        steps: [{id: a, set: {n: "{{ params.n }}"}}]
    """,
    "unset.yaml": """
        name: unset
        triggers: {webhook: {secret_env: TEST_HOOK_NEVER_SET}}
        steps: [{id: a, log: x}]
    """,
    "plain.yaml": """
        name: plain
        triggers: {event: [order.created]}
        params: {id: {type: integer, default: 0}}
        steps: [{id: a, log: "{{ params.id }}"}]
    """,
    "one-at-a-time.yaml": """
        name: one-at-a-time
        concurrency: {limit: 1, policy: queue}
        triggers: {event: [order.*]}
        params: {id: {type: integer, default: 0}}
        steps: [{id: a, wait: 0.5s}]
    """,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    mp = pytest.MonkeyPatch()
    mp.setenv("TEST_HOOK_SECRET", SECRET)
    mp.setenv("TEST_HOOK_TOKEN", TOKEN)
    root = tmp_path_factory.mktemp("triggers")
    with serving(root, DEFINITIONS, watch=False) as base, httpx.Client(base_url=base, timeout=10) as client:
        yield client
    mp.undo()


def signed_post(client: httpx.Client, path: str, payload: object, *, secret: str = SECRET, at: float | None = None,
                headers: dict[str, str] | None = None) -> httpx.Response:
    body = json.dumps(payload).encode()
    sig = signed_headers(secret, body, time.time() if at is None else at)
    return client.post(path, content=body, headers={**sig, "Content-Type": "application/json", **(headers or {})})


def run_count(client: httpx.Client, workflow: str) -> int:
    return client.get("/api/runs", params={"workflow": workflow}).json()["total"]


def wait_run(client: httpx.Client, run_id: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get(f"/api/runs/{run_id}").json()
        if run["status"] in ("succeeded", "failed", "cancelled"):
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not end")


def test_a_signed_webhook_starts_a_run_with_params_from_the_body(server: httpx.Client) -> None:
    answer = signed_post(server, "/hooks/signed", {"order": {"id": 41}}, headers={"X-Sender": "shop"})
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["status"] == "running" and answer.headers["location"] == f"/api/runs/{body['run_id']}"
    run = wait_run(server, body["run_id"])
    assert run["status"] == "succeeded" and run["trigger"] == "webhook"
    assert run["params"] == {"order": 41, "who": "shop"}


@pytest.mark.parametrize("tamper", ["body", "secret", "old", "future", "no-signature", "no-timestamp", "format"])
def test_a_bad_signature_is_401_and_starts_nothing(server: httpx.Client, tamper: str) -> None:
    before = run_count(server, "signed")
    payload = {"order": {"id": 1}}
    body = json.dumps(payload).encode()
    headers = {**signed_headers(SECRET, body, time.time()), "Content-Type": "application/json"}
    if tamper == "body":
        body = json.dumps({"order": {"id": 2}}).encode()
    elif tamper == "secret":
        headers.update(signed_headers("not-the-secret", body, time.time()))
    elif tamper in ("old", "future"):
        headers.update(signed_headers(SECRET, body, time.time() + (-400 if tamper == "old" else 400)))
    elif tamper == "no-signature":
        del headers["X-Treadle-Signature"]
    elif tamper == "no-timestamp":
        del headers["X-Treadle-Timestamp"]
    else:
        headers["X-Treadle-Signature"] = headers["X-Treadle-Signature"].removeprefix("sha256=")
    answer = server.post("/hooks/signed", content=body, headers=headers)
    assert answer.status_code == 401, answer.text
    assert answer.json()["error_code"] == "WEBHOOK_UNAUTHORIZED"
    assert run_count(server, "signed") == before


def test_a_body_that_gives_bad_params_is_422(server: httpx.Client) -> None:
    before = run_count(server, "signed")
    answer = signed_post(server, "/hooks/signed", {"order": {"id": "forty-one"}})
    assert answer.status_code == 422
    assert answer.json()["errors"]["order"].startswith("expected an integer")
    missing = signed_post(server, "/hooks/signed", {"nothing": True})
    assert missing.status_code == 422 and "body" in missing.json()["detail"]
    assert run_count(server, "signed") == before


def test_not_json_is_400(server: httpx.Client) -> None:
    body = b"order=1"
    answer = server.post("/hooks/signed", content=body, headers=signed_headers(SECRET, body, time.time()))
    assert answer.status_code == 400 and answer.json()["error_code"] == "MALFORMED_BODY"


def test_bearer_token_webhook(server: httpx.Client) -> None:
    ok = server.post("/hooks/token", json={"n": 3}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 202
    assert wait_run(server, ok.json()["run_id"])["params"] == {"n": 3}
    for auth in (None, "Bearer nope", f"Basic {TOKEN}", TOKEN):
        answer = server.post("/hooks/token", json={"n": 3}, headers={"Authorization": auth} if auth else {})
        assert answer.status_code == 401, auth
    # the default params are the body itself: unknown keys are named
    extra = server.post("/hooks/token", json={"n": 3, "m": 4}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert extra.status_code == 422 and "m" in extra.json()["errors"]


def test_webhook_not_set_up_or_absent(server: httpx.Client) -> None:
    unset = signed_post(server, "/hooks/unset", {})
    assert unset.status_code == 503 and "TEST_HOOK_NEVER_SET" in unset.json()["detail"]
    plain = signed_post(server, "/hooks/plain", {})
    assert plain.status_code == 404 and plain.json()["error_code"] == "NO_WEBHOOK", plain.text
    assert plain.json()["detail"].startswith("workflow 'plain' has no webhook; add `triggers: {webhook:")
    assert signed_post(server, "/hooks/nope", {}).json()["detail"] == "no workflow named 'nope'"
    # a public route names no other workflow ("did you mean 'plain'?")
    assert signed_post(server, "/hooks/plian", {}).json()["detail"] == "no workflow named 'plian'"


def test_events_start_the_listeners_and_list_them(server: httpx.Client) -> None:
    answer = server.post("/api/events", json={"type": "order.created", "data": {"id": 5}})
    assert answer.status_code == 202
    body = answer.json()
    assert body["event_id"].startswith("evt-")
    by_workflow = {r["workflow"]: r for r in body["runs"]}
    assert set(by_workflow) == {"plain", "one-at-a-time"}
    run = wait_run(server, by_workflow["plain"]["run_id"])
    assert run["params"] == {"id": 5} and run["trigger_ref"] == body["event_id"]
    nobody = server.post("/api/events", json={"type": "user.deleted"})
    assert nobody.status_code == 202 and nobody.json()["runs"] == []
    assert server.post("/api/events", json={"data": {}}).status_code == 400


def test_queued_runs_show_why(server: httpx.Client) -> None:
    first = server.post("/api/workflows/one-at-a-time/runs", json={})
    second = server.post("/api/workflows/one-at-a-time/runs", json={})
    assert first.status_code == second.status_code == 202
    assert second.json()["status"] == "queued" and "concurrency limit 1" in second.json()["reason"]
    run = server.get(f"/api/runs/{second.json()['run_id']}").json()
    assert run["status"] == "queued" and run["reason"].startswith("waiting for a free slot")
    page = server.get(f"/runs/{second.json()['run_id']}")
    assert "waiting for a free slot" in page.text
    assert wait_run(server, second.json()["run_id"])["status"] == "succeeded"
    # a queued run can be cancelled
    server.post("/api/workflows/one-at-a-time/runs", json={})
    third = server.post("/api/workflows/one-at-a-time/runs", json={}).json()
    assert third["status"] == "queued"
    assert server.post(f"/api/runs/{third['run_id']}/cancel").status_code == 202
    assert server.get(f"/api/runs/{third['run_id']}").json()["status"] == "cancelled"


def test_pause_and_resume(server: httpx.Client) -> None:
    paused = server.post("/api/workflows/signed/pause")
    assert paused.status_code == 200 and paused.json()["paused"] is True and paused.json()["changed"] is True
    assert server.get("/api/workflows/signed").json()["paused"] is True
    assert server.get("/api/workflows/signed/triggers").json()["paused"] is True
    answer = signed_post(server, "/hooks/signed", {"order": {"id": 1}})
    assert answer.status_code == 409 and answer.json()["error_code"] == "WORKFLOW_PAUSED"
    assert "paused" in server.get("/workflows/signed").text
    resumed = server.post("/api/workflows/signed/resume")
    assert resumed.json()["paused"] is False and resumed.json()["changed"] is True
    assert signed_post(server, "/hooks/signed", {"order": {"id": 1}}).status_code == 202
    assert server.post("/api/workflows/nope/pause").status_code == 404


def test_pause_survives_a_restart(tmp_path: Path) -> None:
    files = {"w.yaml": "name: w\ntriggers: {event: [tick]}\nsteps: [{id: a, log: x}]\n"}
    with serving(tmp_path, files, watch=False) as base:
        assert httpx.post(base + "/api/workflows/w/pause").json()["paused"] is True
    with serving(tmp_path, files, watch=False) as base:
        assert httpx.get(base + "/api/workflows/w").json()["paused"] is True
        runs = httpx.post(base + "/api/events", json={"type": "tick"}).json()["runs"]
        assert [r["status"] for r in runs] == ["paused"]


def test_a_file_dropped_into_the_inbox_starts_a_run_in_the_server(tmp_path: Path) -> None:
    files = {"ingest.yaml": """
        name: ingest
        params: {path: string}
        triggers: {file: {path: "inbox/*.csv", settle: 0.2s}}
        steps: [{id: count, run: 'wc -l < "{{ params.path }}"'}]
    """}
    (tmp_path / "definitions" / "inbox").mkdir(parents=True)
    with serving(tmp_path, files) as base, httpx.Client(base_url=base, timeout=10) as client:
        half = tmp_path / "definitions" / "inbox" / "orders.csv"
        half.write_text("a\nb\nc\n")
        deadline = time.monotonic() + 30  # generous: the suite may run on a busy machine
        while client.get("/api/runs", params={"workflow": "ingest"}).json()["total"] == 0:
            assert time.monotonic() < deadline, "no run started for the dropped file"
            time.sleep(0.05)
        run_id = client.get("/api/runs", params={"workflow": "ingest"}).json()["items"][0]["id"]
        run = wait_run(client, run_id)
        assert run["trigger"] == "file" and run["trigger_ref"] == "inbox/orders.csv"
        assert run["params"] == {"path": str(half)} and run["status"] == "succeeded"
        assert run["steps"][0]["output"] == 3  # stdout that is JSON is read as JSON


def test_the_server_chains_workflows_and_notifies_when_runs_end(tmp_path: Path, http_server) -> None:
    files = {
        "ingest.yaml": """
            name: ingest
            steps: [{id: load, set: {rows: 7}}]
            outputs: {rows: "{{ steps.load.output.rows }}"}
        """,
        "report.yaml": f"""
            name: report
            params: {{rows: integer}}
            triggers: {{after: [{{workflow: ingest, params: {{rows: "{{{{ upstream.outputs.rows }}}}"}}}}]}}
            notify: [{{on: [succeeded], webhook: "{http_server.url}/echo"}}]
            steps: [{{id: a, set: {{rows: "{{{{ params.rows }}}}"}}}}]
        """,
    }
    with serving(tmp_path, files, watch=False) as base, httpx.Client(base_url=base, timeout=10) as client:
        up = client.post("/api/workflows/ingest/runs", json={}).json()["run_id"]
        deadline = time.monotonic() + 30  # generous: the suite may run on a busy machine
        while not http_server.requests:
            assert time.monotonic() < deadline, "no notification arrived"
            time.sleep(0.05)
        event = json.loads(http_server.requests[0]["body"])
        assert event["event_type"] == "run.succeeded" and event["workflow"] == "report"
        assert event["outputs"] == {"a": {"rows": 7}}  # no `outputs:`: those of the last steps
        report = client.get(f"/api/runs/{event['run_id']}").json()
        assert report["trigger"] == "after" and report["trigger_ref"] == up and report["params"] == {"rows": 7}
        assert client.get("/api/workflows/report/triggers").json()["after"] == [
            {"workflow": "ingest", "status": ["succeeded"]}]


def test_a_public_webhook_never_shows_the_problems_of_a_broken_file(tmp_path: Path) -> None:
    files = {"hooked.yaml": "triggers:\n  webhook: {token_env: HOOK_TOKEN}\nsteps:\n  - {id: a, lgo: secret-ish detail}\n"}
    with serving(tmp_path, files, watch=False) as base, httpx.Client(base_url=base, timeout=10) as client:
        answer = client.post("/hooks/hooked", json={})
    assert answer.status_code == 409 and answer.json()["error_code"] == "WORKFLOW_INVALID"
    assert "lgo" not in answer.text and "secret-ish" not in answer.text and not answer.json().get("errors")
    assert "has problems in its file" in answer.json()["detail"]
