"""Approval steps against a real uvicorn (API and dashboard forms) and a real
`treadle serve` process stopped and started again while a run waits."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.crash_harness import Server
from tests.db_support import query
from tests.web_server import free_port, serving, with_csrf, write_definitions

GATE = """
    params:
      log: {type: string, required: true}
      what: {type: string, default: "v1 <b>bold</b>"}
    steps:
      - id: before
        run: 'echo before >> "{{ params.log }}"'
      - id: gate
        approval: {message: "Deploy {{ params.what }} to prod?", timeout: 1h}
      - id: after
        run: 'echo after >> "{{ params.log }}"; echo done'
"""

DEFINITIONS = {
    "gate.yaml": GATE,
    "quick_timeout.yaml": """
        defaults: {timeout: 0.1s}
        steps:
          - id: gate
            approval: {message: "nobody answers", timeout: 1s}
          - id: after
            log: never
    """,
    "each.yaml": """
        steps:
          - id: gate
            foreach: [red, blue]
            approval: {message: "ship {{ item }}?"}
          - id: after
            log: "{{ steps.gate.output }}"
    """,
    "plain.yaml": """
        steps:
          - id: only
            log: hi
    """,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(tmp_path_factory.mktemp("approvals"), DEFINITIONS, watch=False) as base:
        yield base


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=10) as c:
        yield with_csrf(c)


def wait_for(check: Callable[[], Any], what: str, limit: float = 20.0) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start(client: httpx.Client, name: str, **params: Any) -> str:
    r = client.post(f"/api/workflows/{name}/runs", json={"params": params})
    assert r.status_code == 202, r.text
    return r.json()["run_id"]


def run_doc(client: httpx.Client, run_id: str) -> dict[str, Any]:
    r = client.get(f"/api/runs/{run_id}")
    assert r.status_code == 200, r.text
    return r.json()


def steps_of(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in doc["steps"]}


def waiting(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    return [a for a in client.get("/api/approvals", params={"limit": 500}).json()["items"] if a["run_id"] == run_id]


def until_waiting(client: httpx.Client, run_id: str, count: int = 1) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        items = waiting(client, run_id)
        return items if len(items) == count and run_doc(client, run_id)["status"] == "waiting" else None
    return wait_for(check, f"run {run_id} to wait for {count} approval(s)")


def finished(client: httpx.Client, run_id: str) -> dict[str, Any]:
    return wait_for(lambda: (d := run_doc(client, run_id))["status"] in ("succeeded", "failed", "cancelled") and d,
                    f"run {run_id} to end")


def test_approve_via_the_api_resumes_the_run(client: httpx.Client, tmp_path: Path) -> None:
    log = tmp_path / "exec.log"
    run_id = start(client, "gate", log=str(log))
    [item] = until_waiting(client, run_id)
    assert item["workflow"] == "gate" and item["step"] == "gate" and item["index"] is None
    assert item["message"] == "Deploy v1 <b>bold</b> to prod?"
    assert item["since"] and item["deadline"] and item["url"] == f"/runs/{run_id}"
    assert steps_of(run_doc(client, run_id))["after"]["status"] == "pending"
    assert log.read_text().split() == ["before"]

    r = client.post(f"/api/runs/{run_id}/steps/gate/approve", json={"by": "alice", "comment": "ship it"})
    assert r.status_code == 200, r.text
    decision = r.json()
    assert decision["decision"] == "approved" and decision["approved"] is True
    assert (decision["by"], decision["comment"], decision["run_id"], decision["step"]) == ("alice", "ship it", run_id, "gate")
    assert decision["at"]

    doc = finished(client, run_id)
    assert doc["status"] == "succeeded", doc
    gate = steps_of(doc)["gate"]
    assert gate["output"] == {"approved": True, "by": "alice", "comment": "ship it", "at": decision["at"]}
    assert log.read_text().split() == ["before", "after"]
    assert waiting(client, run_id) == []
    logs = client.get(f"/api/runs/{run_id}/steps/gate/logs").text
    assert "waiting for approval: Deploy v1 <b>bold</b> to prod?" in logs and "approved by alice" in logs
    # decided already: a second decision is refused, and the first one stands
    again = client.post(f"/api/runs/{run_id}/steps/gate/reject", json={"by": "bob"})
    assert again.status_code == 409 and again.json()["error_code"] == "APPROVAL_NOT_WAITING"


def test_reject_fails_the_step_without_retry(client: httpx.Client, tmp_path: Path) -> None:
    log = tmp_path / "exec.log"
    run_id = start(client, "gate", log=str(log))
    until_waiting(client, run_id)
    # the run is waiting, not ended: approving another step, or an unknown one, is refused
    assert client.post(f"/api/runs/{run_id}/steps/before/approve").status_code == 409
    assert client.post(f"/api/runs/{run_id}/steps/after/approve").json()["error_code"] == "NOT_AN_APPROVAL"
    missing = client.post(f"/api/runs/{run_id}/steps/nope/approve")
    assert missing.status_code == 404 and missing.json()["detail"]
    assert client.post("/api/runs/no-such-run/steps/gate/approve").status_code == 404
    assert client.post(f"/api/runs/{run_id}/steps/gate/approve", json={"bogus": 1}).status_code == 400

    r = client.post(f"/api/runs/{run_id}/steps/gate/reject", json={"by": "bob", "comment": "not on a Friday"})
    assert r.status_code == 200 and r.json()["decision"] == "rejected" and r.json()["approved"] is False
    doc = finished(client, run_id)
    assert doc["status"] == "failed"
    gate = steps_of(doc)["gate"]
    assert gate["status"] == "failed" and gate["error"] == "rejected by bob: not on a Friday"
    assert gate["attempts"] == 1
    assert steps_of(doc)["after"]["status"] == "upstream_failed"
    assert log.read_text().split() == ["before"]
    # the run has ended: nothing to decide any more
    late = client.post(f"/api/runs/{run_id}/steps/gate/approve")
    assert late.status_code == 409 and "ended" in late.json()["detail"]


def test_no_decision_in_time_fails_the_step(client: httpx.Client) -> None:
    run_id = start(client, "quick_timeout")
    doc = finished(client, run_id)  # defaults.timeout (0.1s) does not apply to an approval
    gate = steps_of(doc)["gate"]
    assert doc["status"] == "failed" and gate["error"] == "no decision within 1s", gate
    assert client.post(f"/api/runs/{run_id}/steps/gate/approve").status_code == 409


def test_a_cancelled_run_no_longer_waits(client: httpx.Client, tmp_path: Path) -> None:
    run_id = start(client, "gate", log=str(tmp_path / "exec.log"))
    until_waiting(client, run_id)
    # cancel while waiting: the approval is no longer listed and cannot be decided
    assert client.post(f"/api/runs/{run_id}/cancel").status_code == 202
    assert finished(client, run_id)["status"] == "cancelled"
    assert waiting(client, run_id) == []
    assert client.post(f"/api/runs/{run_id}/steps/gate/approve").status_code == 409


def test_foreach_approvals_are_decided_per_item(client: httpx.Client) -> None:
    run_id = start(client, "each")
    items = until_waiting(client, run_id, count=2)
    assert sorted((a["index"], a["message"]) for a in items) == [(0, "ship red?"), (1, "ship blue?")]
    ambiguous = client.post(f"/api/runs/{run_id}/steps/gate/approve")
    assert ambiguous.status_code == 409 and ambiguous.json()["error_code"] == "APPROVAL_INDEX_NEEDED"
    assert client.post(f"/api/runs/{run_id}/steps/gate/approve", json={"index": 1, "by": "c"}).status_code == 200
    [left] = until_waiting(client, run_id, count=1)
    assert left["index"] == 0
    assert client.post(f"/api/runs/{run_id}/steps/gate/approve", json={"index": 1}).status_code == 409
    assert client.post(f"/api/runs/{run_id}/steps/gate/approve").status_code == 200  # the one left
    doc = finished(client, run_id)
    assert doc["status"] == "succeeded"
    assert [o["approved"] for o in steps_of(doc)["gate"]["output"]] == [True, True]


def test_dashboard_shows_the_waiting_step_and_decides_with_a_form(client: httpx.Client, server: str,
                                                                   tmp_path: Path) -> None:
    run_id = start(client, "gate", log=str(tmp_path / "exec.log"), what="<script>alert(1)</script>")
    until_waiting(client, run_id)
    page = client.get(f"/runs/{run_id}").text
    assert 'class="badge s-waiting">waiting<' in page
    assert "Deploy &lt;script&gt;alert(1)&lt;/script&gt; to prod?" in page and "<script>alert(1)" not in page
    assert f'action="/runs/{run_id}/steps/gate/approve"' in page
    assert f'formaction="/runs/{run_id}/steps/gate/reject"' in page
    home = client.get("/").text
    assert "waiting for approval" in home and f'href="/runs/{run_id}"' in home
    assert "<script>alert(1)" not in home

    url = f"/runs/{run_id}/steps/gate/approve"
    foreign = client.post(url, data={"comment": "x"}, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403
    assert run_doc(client, run_id)["status"] == "waiting"
    r = client.post(url, data={"comment": "looks <fine>", "by": ""}, headers={"Origin": server})
    assert r.status_code == 303 and r.headers["location"] == f"/runs/{run_id}"
    doc = finished(client, run_id)
    assert doc["status"] == "succeeded"
    out = steps_of(doc)["gate"]["output"]
    assert out["approved"] is True and out["by"] == "dashboard" and out["comment"] == "looks <fine>"
    again = client.post(url, data={}, headers={"Origin": server})
    assert again.status_code == 409 and "Nothing to decide" in again.text
    assert client.post(f"/runs/{run_id}/steps/nope/reject", headers={"Origin": server}).status_code == 404


# -- across a restart of a real `treadle serve` ------------------------------------


@contextmanager
def _serve(tmp_path: Path, db: str) -> Iterator[Server]:
    """A real `treadle serve` of the gate workflow; stopped at the end if still up."""
    write_definitions(tmp_path / "definitions", {"gate.yaml": GATE})
    server = Server(tmp_path, free_port(), grace="1s", db=db)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


def _db_status(db: str, run_id: str) -> str:
    return query(db, "SELECT status FROM run WHERE id = ?", run_id)[0]["status"]


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_an_approval_survives_a_restart(tmp_path: Path, how: str, db_url: str) -> None:
    log = tmp_path / "exec.log"
    with _serve(tmp_path, db_url) as server:
        with httpx.Client(base_url=server.base, timeout=10) as c:
            run_id = start(c, "gate", log=str(log))
            until_waiting(c, run_id)
        server.kill() if how == "kill" else server.stop()
        assert _db_status(db_url, run_id) == "waiting"  # unfinished: the next start resumes it
        server.start()
        with httpx.Client(base_url=server.base, timeout=10) as c:
            [item] = wait_for(lambda: waiting(c, run_id), "the approval to be listed after the restart")
            assert item["step"] == "gate"
            r = c.post(f"/api/runs/{run_id}/steps/gate/approve", json={"by": "carol"})
            assert r.status_code == 200, r.text
            doc = finished(c, run_id)
        assert doc["status"] == "succeeded", doc
        assert steps_of(doc)["gate"]["output"]["by"] == "carol"
        assert log.read_text().split() == ["before", "after"]  # nothing ran twice


def test_a_decision_stored_before_a_crash_is_used_after_it(tmp_path: Path, db_url: str) -> None:
    """A decision committed just before the process died (or by another process while
    it was down) is found by the resumed step: nobody is asked again."""
    log = tmp_path / "exec.log"
    with _serve(tmp_path, db_url) as server:
        with httpx.Client(base_url=server.base, timeout=10) as c:
            run_id = start(c, "gate", log=str(log))
            until_waiting(c, run_id)
        server.kill()
        changed = query(db_url, "UPDATE approval SET decision = 'approved', by = 'dave', decided_at = ? "
                                "WHERE run_id = ? AND step_id = 'gate' AND decision IS NULL RETURNING run_id",
                        time.time(), run_id)
        assert len(changed) == 1
        server.start()
        with httpx.Client(base_url=server.base, timeout=10) as c:
            doc = finished(c, run_id)
            assert waiting(c, run_id) == []
            logs = c.get(f"/api/runs/{run_id}/steps/gate/logs").text
        assert doc["status"] == "succeeded", doc
        assert steps_of(doc)["gate"]["output"]["by"] == "dave"
        assert "using the decision recorded earlier" in logs
        assert log.read_text().split() == ["before", "after"]


def test_a_signed_in_decision_records_the_identity_not_the_free_text(tmp_path: Path) -> None:
    admin_token = "admin-token-for-approvals-0123456789"
    with serving(tmp_path, DEFINITIONS, watch=False, admin_token=admin_token) as base:
        admin = httpx.Client(base_url=base, timeout=10, headers={"Authorization": f"Bearer {admin_token}"})
        made = admin.post("/api/tokens", json={"name": "alice", "scope": "run"})
        assert made.status_code == 201, made.text
        alice = httpx.Client(base_url=base, timeout=10, headers={"Authorization": f"Bearer {made.json()['token']}"})
        run_id = alice.post("/api/workflows/gate/runs", json={"params": {"log": str(tmp_path / "log")}}).json()["run_id"]
        deadline = time.monotonic() + 10
        while not [a for a in alice.get("/api/approvals").json()["items"] if a["run_id"] == run_id]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        page = alice.get(f"/runs/{run_id}").text
        assert "as <strong>alice</strong>" in page and 'name="by"' not in page
        decision = alice.post(f"/api/runs/{run_id}/steps/gate/approve", json={"by": "mallory", "comment": "ok"})
        assert decision.status_code == 200, decision.text
        assert decision.json()["by"] == "alice"
        while (doc := alice.get(f"/api/runs/{run_id}").json())["status"] != "succeeded":
            assert time.monotonic() < deadline + 10, doc["status"]
            time.sleep(0.05)
        gate = next(s for s in doc["steps"] if s["id"] == "gate")
        assert gate["output"]["by"] == "alice" and gate["kind"] == "approval"
        admin.close()
        alice.close()
