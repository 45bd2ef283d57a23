"""Observability against a real server (uvicorn, SQLite file): /metrics parsed with
prometheus_client's own parser after real runs, per-workflow stats, /ready, and the
success rate and components of /health."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.web_server import serving

DEFINITIONS = {
    "ok.yaml": "steps:\n  - {id: a, set: {v: 1}}\n  - {id: b, run: 'true'}\n",
    "flaky.yaml": "steps:\n  - id: f\n    run: 'exit 3'\n    retry: {limit: 2, delay: 0s}\n",
}
ADMIN = "metrics-admin-token-0123456789"


def finish(c: httpx.Client, name: str) -> dict:
    run_id = c.post(f"/api/workflows/{name}/runs", json={}).json()["run_id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        run = c.get(f"/api/runs/{run_id}").json()
        if run["status"] not in ("queued", "running"):
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish")


def leading(c: httpx.Client) -> None:
    """Wait until the server holds leadership (taken in its first seconds)."""
    deadline = time.monotonic() + 15
    while not c.get("/health").json()["server"]["leader"]:
        assert time.monotonic() < deadline, "the only server never became leader"
        time.sleep(0.05)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_the_runs_made_and_read_the_database(tmp_path: Path) -> None:
    with serving(tmp_path, DEFINITIONS, admin_token=ADMIN) as base:
        anonymous = httpx.get(base + "/metrics")
        assert anonymous.status_code == 401 and anonymous.json()["error_code"] == "AUTHENTICATION_REQUIRED"
        c = httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {ADMIN}"})
        leading(c)
        assert [finish(c, "ok")["status"] for _ in range(3)] == ["succeeded"] * 3
        assert finish(c, "flaky")["status"] == "failed"
        deadline = time.monotonic() + 10
        while True:  # a run's end is counted once announced, just after its last commit
            answer = c.get("/metrics")
            assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
            m = samples(answer.text)
            ended = sum(v for (name, _), v in m.items() if name == "treadle_runs_finished_total")
            if ended == 4 or time.monotonic() > deadline:
                break
            time.sleep(0.05)

    assert m[("treadle_runs_started_total", (("trigger", "api"), ("workflow", "ok")))] == 3
    assert m[("treadle_runs_finished_total", (("status", "succeeded"), ("workflow", "ok")))] == 3
    assert m[("treadle_runs_finished_total", (("status", "failed"), ("workflow", "flaky")))] == 1
    assert m[("treadle_run_duration_seconds_count", (("workflow", "ok"),))] == 3
    assert m[("treadle_run_duration_seconds_bucket", (("le", "+Inf"), ("workflow", "ok")))] == 3
    # each `ok` run: one set and one run attempt; flaky: 3 failed attempts, 2 of them retried
    assert m[("treadle_step_attempts_total", (("kind", "set"), ("status", "succeeded"), ("workflow", "ok")))] == 3
    assert m[("treadle_step_attempts_total", (("kind", "run"), ("status", "succeeded"), ("workflow", "ok")))] == 3
    assert m[("treadle_step_attempts_total", (("kind", "run"), ("status", "failed"), ("workflow", "flaky")))] == 3
    assert m[("treadle_step_retries_total", (("kind", "run"), ("workflow", "flaky")))] == 2
    assert m[("treadle_step_duration_seconds_count", (("kind", "run"), ("workflow", "flaky")))] == 3
    assert m[("treadle_definitions", (("state", "valid"),))] == 2
    assert m[("treadle_definitions", (("state", "broken"),))] == 0
    assert m[("treadle_runs", (("state", "running"),))] == 0 and m[("treadle_runs", (("state", "queued"),))] == 0
    assert m[("treadle_leader", ())] == 1
    assert m[("treadle_store_batch_seconds_count", ())] > 0
    assert not any("run_id" in dict(labels) for _, labels in m)  # no unbounded labels


def test_stats_ready_and_health(tmp_path: Path) -> None:
    with serving(tmp_path, DEFINITIONS) as base:
        c = httpx.Client(base_url=base, timeout=30)
        assert c.get("/ready").json() == {"ready": True, "reasons": []}
        leading(c)
        for _ in range(3):
            finish(c, "ok")
        finish(c, "flaky")
        stats = c.get("/api/workflows/flaky/stats", params={"window": "7d"}).json()
        assert (stats["runs"], stats["by_status"], stats["success_rate"]) == (1, {"failed": 1}, 0.0)
        assert stats["failing_steps"] == [{"step": "f", "failed_attempts": 3}]
        ok = c.get("/api/workflows/ok/stats").json()
        assert (ok["window"], ok["runs"], ok["success_rate"], ok["failing_steps"]) == ("24h", 3, 1.0, [])
        durations = sorted(r["duration_s"] for r in ok["recent"])
        assert ok["duration_p50_s"] == durations[1] and ok["duration_p95_s"] == durations[2]
        assert c.get("/api/workflows/nope/stats").status_code == 404
        assert c.get("/api/workflows/ok/stats", params={"window": "1y"}).status_code == 400
        page = c.get("/workflows/ok").text  # the same figures and a chart of the runs on the page
        assert 'id="stats"' in page and "<strong>100%</strong> succeeded" in page
        assert page.count('<rect class="s-succeeded"') == 3
        assert c.get("/workflows/flaky").text.count('<rect class="s-failed"') == 1
        health = c.get("/health").json()
        assert health["runs"]["success_rate_24h"] == 0.75
        assert health["components"] == {"database": "ok", "scheduler": "leader", "watcher": "watching", "git": None}
