"""Crash safety against a real `treadle serve` process: kill -9 at random moments,
graceful SIGTERM, and a second signal that stops at once.

The kill campaign is seeded and prints its seed and kill points, so a failure can
be replayed: TREADLE_CRASH_SEED=<seed> pytest tests/test_crash.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from tests.crash_harness import Server, run_campaign
from tests.db_support import query
from tests.web_server import free_port

KILLS = int(os.environ.get("TREADLE_CRASH_POINTS", "30"))


def test_kill_9_at_random_moments_loses_nothing_and_runs_nothing_twice(tmp_path: Path, db_url: str) -> None:
    seed = int(os.environ.get("TREADLE_CRASH_SEED", str(int(time.time()) % 100_000)))
    report = run_campaign(tmp_path, KILLS, seed, db=db_url)
    print(report.summary())
    print("kill points (s after ready):", report.kills)
    assert report.runs >= KILLS  # one run started per server start
    assert report.executions >= report.runs * 8
    assert not report.problems, f"replay with TREADLE_CRASH_SEED={seed}: {report.problems[:10]}"


GRACEFUL = """\
steps:
  - id: slow
    run: 'sleep {{ params.seconds }}; echo slept'
  - id: after
    run: echo after
params:
  seconds: {type: number, default: 1}
"""


def _server(tmp_path: Path, db: str, grace: str = "2s") -> Server:
    (tmp_path / "definitions").mkdir()
    (tmp_path / "definitions" / "g.yaml").write_text(GRACEFUL)
    server = Server(tmp_path, free_port(), grace, db=db)
    server.start()
    return server


def _wait_running(base: str, run_id: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        steps = httpx.get(f"{base}/api/runs/{run_id}").json()["steps"]
        if steps[0]["status"] == "running":
            return
        time.sleep(0.02)
    raise AssertionError("the step never started")


def _steps(db: str, run_id: str) -> dict[str, list[tuple[int, str, str | None]]]:
    out: dict[str, list[tuple[int, str, str | None]]] = {}
    for r in query(db, "SELECT step_id, attempt, status, error FROM step_attempt WHERE run_id = ? ORDER BY attempt",
                   run_id):
        out.setdefault(r["step_id"], []).append((r["attempt"], r["status"], r["error"]))
    return out


def test_sigterm_lets_the_running_step_finish_and_the_next_start_resumes(tmp_path: Path, db_url: str) -> None:
    server = _server(tmp_path, db_url)
    run_id = httpx.post(f"{server.base}/api/workflows/g/runs", json={"params": {"seconds": 1}}).json()["run_id"]
    _wait_running(server.base, run_id)
    server.stop()  # SIGTERM: `slow` may finish (grace 2 s); `after` must not start
    steps = _steps(db_url, run_id)
    assert steps["slow"] == [(1, "succeeded", None)] and "after" not in steps
    assert query(db_url, "SELECT status FROM run WHERE id = ?", run_id) == [{"status": "running"}]
    server.start()  # resumes: `after` runs, `slow` does not run again
    deadline = time.monotonic() + 20
    while httpx.get(f"{server.base}/api/runs/{run_id}").json()["status"] != "succeeded":
        assert time.monotonic() < deadline, "the run was not resumed"
        time.sleep(0.05)
    server.stop()
    steps = _steps(db_url, run_id)
    assert steps["slow"] == [(1, "succeeded", None)] and steps["after"][-1][1] == "succeeded"


def test_a_second_signal_stops_at_once_and_the_step_is_recorded_as_interrupted(tmp_path: Path, db_url: str) -> None:
    server = _server(tmp_path, db_url, grace="60s")  # one signal would wait a minute for the step
    run_id = httpx.post(f"{server.base}/api/workflows/g/runs", json={"params": {"seconds": 60}}).json()["run_id"]
    _wait_running(server.base, run_id)
    assert server.proc is not None
    server.proc.terminate()
    time.sleep(0.5)
    server.proc.terminate()  # do not wait out the grace period
    # no time is asserted: had the server waited out its 60 s grace, the 60 s step would
    # have ended `succeeded` (and this wait would give up first)
    server.proc.wait(45)
    [(attempt, status, error)] = _steps(db_url, run_id)["slow"]
    assert status == "cancelled" and error.startswith("interrupted")
