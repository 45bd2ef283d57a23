"""Fault injection: `treadle serve` killed with SIGKILL at random moments, restarted.

Used by tests/test_crash.py (30 kill points) and bench/soak.py (1,000). Every step of
the workflow appends a line to an execution log when it starts and another when it
ends (its side effect), so the checks can tell how often each step really ran, and
whether two executions of one step ever overlapped (an orphan of a killed server
finishing while its retry runs); the database must agree with the log.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.db_support import query
from tests.web_server import free_port

WORKFLOW = """\
name: crashy
params:
  log: {type: string, required: true}
steps:
  - id: a  # long enough to outlive a restart of its server: an orphan of it would overlap its retry
    run: 'k="$TREADLE_RUN_ID $TREADLE_STEP_ID"; echo "$k start $$ $(date +%s.%N)" >> "{{ params.log }}"; sleep 2; echo "$k end $$ $(date +%s.%N)" >> "{{ params.log }}"; echo "out-$TREADLE_STEP_ID"'
  - id: b
    run: &step 'k="$TREADLE_RUN_ID $TREADLE_STEP_ID${TREADLE_INDEX:+[$TREADLE_INDEX]}"; echo "$k start $$ $(date +%s.%N)" >> "{{ params.log }}"; sleep 0.1; echo "$k end $$ $(date +%s.%N)" >> "{{ params.log }}"; echo "out-$TREADLE_STEP_ID${TREADLE_INDEX:+-$TREADLE_INDEX}"'
  - id: c
    needs: [a]
    run: *step
  - id: fan
    needs: [b, c]
    foreach: [1, 2, 3, 4]
    run: *step
  - id: d
    run: *step
  - id: e
    set: {done: "{{ steps.d.output }}"}
"""


@dataclass
class Report:
    seed: int
    kills: list[float] = field(default_factory=list)  # seconds after the server was ready
    runs: int = 0
    executions: int = 0
    reexecuted_unfinished: int = 0  # at-least-once: a step that ran again after a kill mid-step
    overlaps: int = 0  # an execution that ended after the next execution of the same step had started
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"seed {self.seed}: {len(self.kills)} kills, {self.runs} runs, {self.executions} step "
                f"executions, {self.reexecuted_unfinished} re-run after a kill, {self.overlaps} overlaps, "
                f"{len(self.problems)} problems")


class Server:
    def __init__(self, root: Path, port: int, grace: str = "2s", db: str | None = None,
                 definitions: Path | None = None, log_name: str = "server.log"):
        self.root, self.port, self.grace = root, port, grace
        self.db = db or f"sqlite:///{root / 'treadle.db'}"
        self.definitions = definitions or root / "definitions"
        self.log_name = log_name
        self.extra_args: list[str] = []  # more `treadle serve` flags
        self.proc: subprocess.Popen | None = None
        self.base = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 90) -> None:  # a loaded 2-core machine can take long to start it
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.root / self.log_name, "ab") as log:  # the child keeps its own copy
            self.proc = self._spawn(env, log)
        deadline = time.monotonic() + timeout
        self._wait_ready(deadline)

    def _spawn(self, env: dict[str, str], log) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "runner", "serve", "--definitions", str(self.definitions),
             "--db", self.db, "--port", str(self.port), "--grace", self.grace, *self.extra_args],
            cwd=self.root, env=env, stdout=subprocess.DEVNULL, stderr=log,
        )

    def _wait_ready(self, deadline: float) -> None:
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.root / self.log_name}")
            try:
                if httpx.get(self.base + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def start_run(base: str, log: Path) -> str | None:
    try:
        r = httpx.post(f"{base}/api/workflows/crashy/runs", json={"params": {"log": str(log)}}, timeout=5)
    except httpx.HTTPError:
        return None
    return r.json()["run_id"] if r.status_code == 202 else None


def run_campaign(root: Path, kills: int, seed: int, *, runs_per_start: int = 1, db: str | None = None) -> Report:
    """Start runs, kill the server `kills` times at random moments, then let it finish."""
    rng = random.Random(seed)
    (root / "definitions").mkdir(parents=True, exist_ok=True)
    (root / "definitions" / "crashy.yaml").write_text(WORKFLOW)
    log = root / "executions.log"
    log.touch()
    report = Report(seed=seed)
    server = Server(root, free_port(), db=db)
    for _ in range(kills):
        server.start()
        for _ in range(runs_per_start):
            start_run(server.base, log)
        delay = rng.uniform(0.0, 0.6)
        time.sleep(delay)
        report.kills.append(round(delay, 3))
        server.kill()
    server.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        active = httpx.get(f"{server.base}/api/runs", params={"status": "running", "limit": 1}, timeout=5).json()
        if active["total"] == 0:
            break
        time.sleep(0.2)
    code = server.stop()
    if code not in (0, -signal.SIGTERM):  # uvicorn re-raises SIGTERM once it has shut down
        report.problems.append(f"the server did not stop cleanly on SIGTERM (exit {code})")
    check(root, report, server.db)
    return report


def check(root: Path, report: Report, db: str) -> None:
    """The invariants: every run ended; each step succeeded exactly once with its
    output; no step ran again after its success was recorded."""
    runs = {r["id"]: r["status"] for r in query(db, "SELECT id, status FROM run")}
    report.runs = len(runs)
    for run_id, status in runs.items():
        if status != "succeeded":
            report.problems.append(f"run {run_id} ended {status}")
    succeeded: dict[tuple[str, str, int], list[tuple[float, str]]] = {}
    for run_id, step, item, finished, output in (tuple(r.values()) for r in query(
        db, "SELECT run_id, step_id, item, finished_at, output FROM step_attempt WHERE status = 'succeeded'"
    )):
        succeeded.setdefault((run_id, step, item), []).append((finished, json.loads(output) if output else None))
    expected = [("a", -1), ("b", -1), ("c", -1), ("fan", -1), ("d", -1), ("e", -1)] + [("fan", i) for i in range(4)]
    for run_id in runs:
        for step, item in expected:
            got = succeeded.get((run_id, step, item), [])
            if len(got) != 1:
                report.problems.append(f"run {run_id} step {step}[{item}] succeeded {len(got)} times")
    starts: dict[tuple[str, str, int], list[float]] = {}
    spans: dict[tuple[str, str, int], dict[str, list[float]]] = {}  # key -> execution (shell pid) -> [start, end]
    for line in (root / "executions.log").read_text().splitlines():
        run_id, label, what, pid, at = line.split()
        step, _, rest = label.partition("[")
        key = (run_id, step, int(rest[:-1]) if rest else -1)
        if what == "start":
            starts.setdefault(key, []).append(float(at))
        spans.setdefault(key, {}).setdefault(pid, []).append(float(at))
    for key, executions in spans.items():
        ordered = sorted(executions.values())
        for this, following in zip(ordered, ordered[1:], strict=False):
            if len(this) == 2 and this[1] > following[0]:  # it finished its side effect after the next began
                report.overlaps += 1
                report.problems.append(f"{key}: an execution ended at {this[1]} after the next one began at "
                                       f"{following[0]}")
    report.executions = sum(len(v) for v in starts.values())
    for key, times in starts.items():
        done = succeeded.get(key)
        if not done:
            continue
        finished, output = done[0]
        late = [t for t in times if t > finished]
        if late:
            report.problems.append(f"{key} ran again after its success was recorded")
        report.reexecuted_unfinished += len(times) - 1
        step, item = key[1], key[2]
        want = f"out-{step}" + (f"-{item}" if item >= 0 else "")
        if step != "e" and output != want:
            report.problems.append(f"{key} output {output!r}, expected {want!r}")
