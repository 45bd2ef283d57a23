"""Several `treadle serve` processes on one PostgreSQL database (real processes, a real
server): nothing runs twice, limits hold across servers, any server cancels and shows
any run, one leader fires schedules, a dead server's runs move to a live one, and a
stalled server that wakes up writes and runs nothing more.

The kill campaign is seeded and prints its seed, kill points and takeover times:
TREADLE_CLUSTER_SEED=<seed> TREADLE_CLUSTER_KILLS=<n> pytest tests/test_cluster.py.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from runner.engine.leases import process_is_gone
from tests.cluster_harness import owner_of, run_cluster_campaign, servers
from tests.conftest import database_url
from tests.db_support import query

KILLS = int(os.environ.get("TREADLE_CLUSTER_KILLS", "20"))


@pytest.fixture
def pg_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url("postgresql", tmp_path, request)


def wait_for(check, what: str, timeout: float = 60.0):  # noqa: ANN001, ANN201
    """Poll until `check()` gives something truthy (the timeout only stops a broken test)."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def run_status(base: str, run_id: str) -> str:
    return httpx.get(f"{base}/api/runs/{run_id}", timeout=10).json()["status"]


def start(base: str, workflow: str, params: dict | None = None) -> str:
    answer = httpx.post(f"{base}/api/workflows/{workflow}/runs", json={"params": params or {}}, timeout=10)
    assert answer.status_code == 202, answer.text
    return answer.json()["run_id"]


def test_kill_9_of_either_server_loses_nothing_and_runs_nothing_twice(tmp_path: Path, pg_url: str) -> None:
    seed = int(os.environ.get("TREADLE_CLUSTER_SEED", str(int(time.time()) % 100_000)))
    report = run_cluster_campaign(tmp_path, pg_url, KILLS, seed)
    print(report.summary())
    print("kill points (s after the runs were started):", report.kills)
    print("takeover after each kill (s):", report.takeovers)
    assert report.runs == KILLS * 2
    assert report.executions >= report.runs * 8  # every step of every run ran at least once
    assert not report.problems, f"replay with TREADLE_CLUSTER_SEED={seed}: {report.problems[:10]}"


LIMITED = """\
params: {log: {type: string, required: true}}
concurrency: {limit: 2, policy: queue}
steps:
  - id: work
    run: 'echo "start $TREADLE_RUN_ID $(date +%s.%N)" >> "{{ params.log }}"; sleep 0.4; echo "end $TREADLE_RUN_ID $(date +%s.%N)" >> "{{ params.log }}"'
"""


def test_a_concurrency_limit_holds_across_servers(tmp_path: Path, pg_url: str) -> None:
    log = tmp_path / "stamps.log"
    log.touch()
    with servers(tmp_path, pg_url, {"limited.yaml": LIMITED}) as (a, b):
        ids: list[str] = []
        answers: list[tuple[str, str]] = []  # (server, started | queued)
        lock = threading.Lock()

        def fire(base: str) -> None:
            answer = httpx.post(f"{base}/api/workflows/limited/runs", json={"params": {"log": str(log)}}, timeout=10)
            assert answer.status_code == 202, answer.text
            with lock:
                ids.append(answer.json()["run_id"])
                answers.append((base, answer.json()["status"]))

        threads = [threading.Thread(target=fire, args=((a if i % 2 else b).base,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_for(lambda: all(run_status(a.base, r) == "succeeded" for r in ids), "all 10 runs to succeed")
    events = sorted((float(at), kind) for kind, _, at in (line.split() for line in log.read_text().splitlines()))
    going, most = 0, 0
    for _, kind in events:
        going += 1 if kind == "start" else -1
        most = max(most, going)
    assert len(events) == 20 and most == 2, events
    # both servers admitted against the one limit: each queued some of what it was asked
    assert {base for base, status in answers if status == "queued"} == {a.base, b.base}, answers


SLEEPY = """\
steps:
  - id: nap
    run: 'echo $$ > {pidfile}; sleep 60'
"""


def test_a_run_is_cancelled_from_the_server_that_does_not_drive_it(tmp_path: Path, pg_url: str) -> None:
    pidfile = tmp_path / "nap.pid"
    with servers(tmp_path, pg_url, {"sleepy.yaml": SLEEPY.format(pidfile=pidfile)}) as (a, b):
        run_id = start(a.base, "sleepy")
        pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), "the step to start"))
        assert owner_of(pg_url, run_id).split(":")[1] == str(a.proc.pid)
        answer = httpx.post(f"{b.base}/api/runs/{run_id}/cancel", json={}, timeout=10)
        assert answer.status_code == 202, answer.text
        wait_for(lambda: run_status(b.base, run_id) == "cancelled", "the run to end cancelled")
        wait_for(lambda: not _alive(pid), "the step's process to be gone")
        again = httpx.post(f"{b.base}/api/runs/{run_id}/cancel", json={}, timeout=10)
        assert again.status_code == 409 and again.json()["error_code"] == "RUN_FINISHED"


def _alive(pid: int) -> bool:
    return not process_is_gone(pid)


STEPS = """\
steps:
  - {id: one, run: 'sleep 0.3; echo 1'}
  - {id: two, run: 'sleep 0.3; echo 2'}
  - {id: three, run: 'sleep 0.3; echo 3'}
"""


def test_a_run_driven_by_one_server_streams_live_from_the_other(tmp_path: Path, pg_url: str) -> None:
    with servers(tmp_path, pg_url, {"steps.yaml": STEPS}) as (a, b):
        run_id = start(a.base, "steps")
        events, kind = [], None
        with httpx.stream("GET", f"{b.base}/api/runs/{run_id}/events", timeout=30) as stream:
            for line in stream.iter_lines():  # the stream ends when the run has ended
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append({"type": kind, **json.loads(line.removeprefix("data: "))})
        assert owner_of(pg_url, run_id).split(":")[1] == str(a.proc.pid)
    done = {(e["step_id"], e["status"]) for e in events if e.get("type") == "step"}
    assert {("one", "succeeded"), ("two", "succeeded"), ("three", "succeeded")} <= done
    assert ("three", "running") in done  # seen while it ran, not only in the first snapshot
    assert [e["status"] for e in events if e["type"] == "run"][-1] == "succeeded"


SCHEDULED = """\
triggers:
  schedule: {cron: "* * * * *", catchup: latest}
steps: [{id: tick, log: tick}]
"""


def test_each_schedule_slot_fires_once_across_a_leader_kill(tmp_path: Path, pg_url: str) -> None:
    with servers(tmp_path, pg_url, {"ticker.yaml": SCHEDULED}) as group:
        leader = wait_for(lambda: next((s for s in group if httpx.get(f"{s.base}/health", timeout=5)
                                        .json()["server"]["leader"]), None), "a leader")
        other = next(s for s in group if s is not leader)
        # kill the leader a moment before the next minute's slot: the other must fire it, once
        wait_for(lambda: time.time() % 60 > 57, "the end of the minute", timeout=70)
        leader.kill()
        slot = query(pg_url, "SELECT trigger_ref FROM run WHERE workflow = 'ticker'")  # before: none at all
        wait_for(lambda: httpx.get(f"{other.base}/health", timeout=5).json()["server"]["leader"], "a new leader")
        runs = wait_for(lambda: query(pg_url, "SELECT trigger_ref FROM run WHERE workflow = 'ticker'"),
                        "the slot to fire", timeout=20)
        leader.start()  # back, not leading: it must not fire the slot again
        time.sleep(3)
        runs = query(pg_url, "SELECT trigger_ref, status FROM run WHERE workflow = 'ticker'")
        assert slot == [] and len(runs) == 1, runs
        health = httpx.get(f"{other.base}/health", timeout=5).json()
        assert [s["leader"] for s in health["servers"]].count(True) == 1
        assert {s["pid"] for s in health["servers"]} == {leader.proc.pid, other.proc.pid}


STALLED = """\
params: {log: {type: string, required: true}}
steps:
  - id: long
    run: 'echo "start $$" >> "{{ params.log }}"; sleep 12; echo "end $$" >> "{{ params.log }}"'
  - id: after
    run: 'echo "after $$" >> "{{ params.log }}"'
"""


def test_a_stalled_server_has_its_late_writes_refused_and_runs_nothing_more(tmp_path: Path, pg_url: str) -> None:
    log = tmp_path / "exec.log"
    log.touch()

    def started() -> list[str]:
        return [ln.split()[1] for ln in log.read_text().splitlines() if ln.startswith("start")]

    with servers(tmp_path, pg_url, {"stalled.yaml": STALLED}) as (a, b):
        run_id = start(a.base, "stalled", {"log": str(log)})
        [stalled_step] = wait_for(started, "the step to start on the first server")
        a.proc.send_signal(signal.SIGSTOP)  # stalled past its lease: no renewal, no writes
        wait_for(lambda: len(started()) == 2, "the other server to take the run over")
        taken = owner_of(pg_url, run_id)
        assert taken.split(":")[1] == str(b.proc.pid)
        a.proc.send_signal(signal.SIGCONT)
        # the woken server learns it lost the run and stops its step at once (it sleeps 12 s)
        wait_for(lambda: not _alive(int(stalled_step)), "the stalled server's step to be stopped", timeout=20)
        wait_for(lambda: run_status(b.base, run_id) == "succeeded", "the run to end", timeout=60)
        time.sleep(1.5)  # room for any late write of the woken server
    lines = log.read_text().splitlines()
    new_step = started()[1]
    assert f"end {stalled_step}" not in lines  # the stalled server's step never finished: it was stopped
    assert f"end {new_step}" in lines
    assert sum(ln.startswith("after") for ln in lines) == 1  # the next step ran once, by the new owner
    attempts = query(pg_url, "SELECT attempt, status FROM step_attempt WHERE run_id = ? AND step_id = 'long' "
                             "ORDER BY attempt", run_id)
    # exactly one success; what the stalled server had recorded (if anything) stays interrupted
    assert [r["status"] for r in attempts].count("succeeded") == 1
    assert all(r["status"] in ("succeeded", "cancelled") for r in attempts), attempts
    assert owner_of(pg_url, run_id) == taken
