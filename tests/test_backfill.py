"""Backfills against real servers: a month of a daily schedule (exact slots, the
parallelism seen by a loopback HTTP server, slots already run skipped), pause, resume
and cancel, the size limit, a restart in the middle, the CLI and the dashboard."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from .conftest import BACKENDS, database_url
from .http_server import LoopbackServer, http_server_fixture  # noqa: F401
from .web_server import running_server, with_csrf, write_definitions

FINISHED = {"succeeded", "failed", "cancelled"}


def _definitions(url: str, hold: float) -> dict[str, str]:
    return {
        "daily.yaml": f"""
            params:
              day: {{type: string, required: true}}
            triggers:
              schedule:
                - cron: "0 3 * * *"
                  timezone: Europe/Berlin
                  catchup: none
                  params: {{day: "{{{{ scheduled_at[:10] }}}}"}}
            steps:
              - id: call
                http: {{url: "{url}/hold/daily?s={hold}"}}
              - id: slot
                set: {{at: "{{{{ trigger.scheduled_at }}}}", day: "{{{{ params.day }}}}"}}
            outputs: {{at: "{{{{ steps.slot.output.at }}}}", day: "{{{{ steps.slot.output.day }}}}"}}
        """,
        "minutely.yaml": """
            triggers: {schedule: [{cron: "*/5 * * * *", catchup: none}]}
            steps: [{id: a, log: hi}]
        """,
        "plain.yaml": "steps: [{id: a, log: hi}]\n",
    }


@contextmanager
def _site(root: Path, url: str, db: str, hold: float = 0.4) -> Iterator[httpx.Client]:
    defs = write_definitions(root / "definitions", _definitions(url, hold))
    with running_server(defs, db) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield client


def _until_ended(c: httpx.Client, backfill_id: str, deadline_s: float = 90) -> dict:
    """The backfill once it is done or cancelled and none of its runs goes on (the
    deadline only stops a broken backfill hanging the suite)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        doc = c.get(f"/api/backfills/{backfill_id}").json()
        if doc["status"] in ("done", "cancelled") and not any(r["status"] not in FINISHED for r in doc["run_list"]):
            return doc
        time.sleep(0.1)
    raise AssertionError(f"backfill {backfill_id} did not end: {doc}")


def _backfill(c: httpx.Client, **body: object) -> dict:
    r = c.post("/api/workflows/daily/backfill", json=body)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/api/backfills/{r.json()['id']}"
    return r.json()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_month_of_a_daily_schedule(backend: str, tmp_path: Path, http_server: LoopbackServer,
                                     request: pytest.FixtureRequest) -> None:
    db = database_url(backend, tmp_path, request)
    with _site(tmp_path, http_server.url, db) as c:
        first = _backfill(c, **{"from": "2026-11-01", "to": "2026-11-30", "parallel": 3})
        assert first["slots"] == 30 and first["status"] == "running"
        doc = _until_ended(c, first["id"])
        assert doc["status"] == "done" and doc["started"] == 30 and doc["skipped"] == 0
        assert doc["runs"] == {"succeeded": 30}
        runs = doc["run_list"]
        days = sorted(r["outputs"]["day"] for r in runs)
        assert days == [f"2026-11-{d:02d}" for d in range(1, 31)]  # exactly one run per slot
        # the slot in the schedule's zone: 03:00 in Berlin, +01:00 in November
        assert sorted(r["outputs"]["at"] for r in runs)[0] == "2026-11-01T03:00:00+01:00"
        assert {r["trigger"] for r in runs} == {"backfill"} and {r["backfill_id"] for r in runs} == {first["id"]}
        assert http_server.at_once["daily"] == 3  # parallelism observed from outside: reached, never passed
        listed = c.get("/api/runs", params={"backfill": first["id"], "limit": 500}).json()
        assert listed["total"] == 30

        # slots already run are skipped; --rerun runs them again
        again = _until_ended(c, _backfill(c, **{"from": "2026-11-29", "to": "2026-12-02", "parallel": 2})["id"])
        assert (again["slots"], again["skipped"], again["started"]) == (4, 2, 2)
        assert sorted(r["outputs"]["day"] for r in again["run_list"]) == ["2026-12-01", "2026-12-02"]
        rerun = _until_ended(c, _backfill(c, **{"from": "2026-11-30", "to": "2026-12-01", "rerun": True})["id"])
        assert (rerun["skipped"], rerun["started"]) == (0, 2)
        audit = [e["action"] for e in c.get("/api/audit", params={"limit": 100}).json()["items"]]
        assert audit.count("backfill.start") == 3


def test_pause_resume_and_cancel(tmp_path: Path, http_server: LoopbackServer) -> None:
    with _site(tmp_path, http_server.url, f"sqlite:///{tmp_path / 't.db'}", hold=0.6) as c:
        b = _backfill(c, **{"from": "2026-10-01", "to": "2026-10-10"})
        assert c.post(f"/api/backfills/{b['id']}/pause").json()["status"] == "paused"
        deadline = time.monotonic() + 30
        while any(r["status"] not in FINISHED for r in c.get(f"/api/backfills/{b['id']}").json()["run_list"]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        paused = c.get(f"/api/backfills/{b['id']}").json()
        time.sleep(2.5)  # a couple of the leader's rounds: a paused backfill starts nothing
        still = c.get(f"/api/backfills/{b['id']}").json()
        assert still["started"] == paused["started"] <= 1 and still["status"] == "paused"
        again = c.post(f"/api/backfills/{b['id']}/pause").json()
        assert again["changed"] is False
        assert c.post(f"/api/backfills/{b['id']}/resume").json()["status"] == "running"
        deadline = time.monotonic() + 30
        while c.get(f"/api/backfills/{b['id']}").json()["started"] <= still["started"]:
            assert time.monotonic() < deadline, "a resumed backfill goes on"
            time.sleep(0.05)
        cancelled = c.post(f"/api/backfills/{b['id']}/cancel").json()
        assert cancelled["status"] == "cancelled" and cancelled["changed"] is True
        doc = _until_ended(c, b["id"])
        assert doc["status"] == "cancelled" and doc["started"] < 10 and doc["remaining"] > 0
        assert set(doc["runs"]) <= {"succeeded", "cancelled"}
        time.sleep(1.5)
        assert c.get(f"/api/backfills/{b['id']}").json()["started"] == doc["started"]
        assert c.post(f"/api/backfills/{b['id']}/resume").json()["changed"] is False


def test_bad_backfills_are_refused_before_anything_starts(tmp_path: Path, http_server: LoopbackServer) -> None:
    with _site(tmp_path, http_server.url, f"sqlite:///{tmp_path / 't.db'}") as c:
        big = c.post("/api/workflows/minutely/backfill", json={"from": "2026-01-01", "to": "2026-12-31"})
        assert big.status_code == 400 and big.json()["error_code"] == "BACKFILL_TOO_LARGE", big.text
        assert "105,120 slots" in big.json()["detail"] and "1,000" in big.json()["detail"]
        cases = [("daily", {"from": "2026-11-30", "to": "2026-11-01"}, 400, "INVALID_RANGE"),
                 ("daily", {"from": "yesterday", "to": "2026-11-01"}, 400, "INVALID_RANGE"),
                 ("daily", {"from": "2026-11-01", "to": "2026-11-02", "parallel": 0}, 400, None),
                 ("plain", {"from": "2026-11-01", "to": "2026-11-02"}, 409, "NO_SCHEDULE"),
                 ("nosuch", {"from": "2026-11-01", "to": "2026-11-02"}, 404, "WORKFLOW_NOT_FOUND")]
        for name, body, status, code in cases:
            r = c.post(f"/api/workflows/{name}/backfill", json=body)
            assert r.status_code == status, (name, body, r.text)
            if code:
                assert r.json()["error_code"] == code, (name, body, r.text)
        assert c.get("/api/backfills").json()["total"] == 0 and c.get("/api/runs").json()["total"] == 0
        assert c.get("/api/backfills/bf-nope").json()["error_code"] == "BACKFILL_NOT_FOUND"


def test_a_backfill_goes_on_after_a_restart_without_repeating_a_slot(tmp_path: Path,
                                                                    http_server: LoopbackServer) -> None:
    db = f"sqlite:///{tmp_path / 't.db'}"
    with _site(tmp_path, http_server.url, db, hold=0.3) as c:
        b = _backfill(c, **{"from": "2026-09-01", "to": "2026-09-12", "parallel": 2})
        deadline = time.monotonic() + 30
        while c.get(f"/api/backfills/{b['id']}").json()["started"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    with _site(tmp_path, http_server.url, db, hold=0.3) as c:  # the server stopped in the middle
        doc = _until_ended(c, b["id"])
    assert doc["status"] == "done" and doc["started"] == 12
    days = sorted(r["outputs"]["day"] for r in doc["run_list"] if r["status"] == "succeeded")
    assert days == [f"2026-09-{d:02d}" for d in range(1, 13)]
    assert len(doc["run_list"]) == 12  # no slot started twice


def _treadle(*args: str, base: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TREADLE_SERVER": base}
    env.pop("TREADLE_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "runner", *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def test_cli_and_dashboard(tmp_path: Path, http_server: LoopbackServer) -> None:
    with _site(tmp_path, http_server.url, f"sqlite:///{tmp_path / 't.db'}", hold=0.05) as c:
        base = str(c.base_url).rstrip("/")
        done = _treadle("backfill", "daily", "--from", "2026-08-01", "--to", "2026-08-05", "--parallel", "2",
                        "--wait", base=base)
        assert done.returncode == 0, done.stderr
        backfill_id = done.stdout.strip()
        assert "5 slots" in done.stderr and "5 succeeded" in done.stderr
        shown = _treadle("backfills", backfill_id, base=base)
        assert shown.returncode == 0 and "done" in shown.stdout
        too_big = _treadle("backfill", "minutely", "--from", "2026-01-01", "--to", "2026-12-31", base=base)
        assert too_big.returncode == 2 and "split the range" in too_big.stderr

        with httpx.Client(base_url=base, timeout=30, follow_redirects=False) as page:
            with_csrf(page)
            assert "Start backfill" in page.get("/workflows/daily").text
            r = page.post("/workflows/daily/backfill", data={"from": "2026-07-01", "to": "2026-07-03", "parallel": "1"})
            assert r.status_code == 303, r.text
            backfill_id = r.headers["location"].rsplit("/", 1)[1]
            _until_ended(c, backfill_id)
            shown_page = page.get(r.headers["location"]).text
            assert "3</strong> started" in shown_page and "2026-07-03" in shown_page
            bad = page.post("/workflows/daily/backfill", data={"from": "<b>x</b>", "to": "2026-07-03"})
            assert bad.status_code == 400 and "&lt;b&gt;x&lt;/b&gt;" in bad.text and "<b>x</b>" not in bad.text


def test_a_namespaced_token_sees_only_its_namespaces_backfills(tmp_path: Path, http_server: LoopbackServer) -> None:
    admin_token = "admin-token-for-backfill-tests-0123"
    defs = write_definitions(tmp_path / "definitions", {
        f"ops/{name}": text for name, text in _definitions(http_server.url, 0.01).items()})
    with running_server(defs, f"sqlite:///{tmp_path / 't.db'}", admin_token=admin_token) as base, \
            httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {admin_token}"}) as admin:
        made = admin.post("/api/tokens", json={"name": "fin", "scope": "run", "namespace": "fin"})
        assert made.status_code == 201, made.text
        b = admin.post("/api/workflows/daily/backfill", json={"from": "2026-06-01", "to": "2026-06-02"}).json()
        with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {made.json()['token']}"}) as fin:
            assert fin.get(f"/api/backfills/{b['id']}").status_code == 404
            assert fin.post(f"/api/backfills/{b['id']}/cancel").status_code == 404
            assert fin.get("/api/backfills").json()["total"] == 0
            assert fin.post("/api/workflows/daily/backfill", json={"from": "2026-06-01", "to": "2026-06-02"}).status_code == 404
            assert fin.get(f"/backfills/{b['id']}").status_code == 404
        assert admin.get(f"/api/backfills/{b['id']}").json()["workflow"] == "daily"
