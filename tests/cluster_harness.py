"""Several real `treadle serve` processes on one PostgreSQL database.

Used by tests/test_cluster.py (20 kill points in CI) and bench/cluster.py (1,000).
The kill campaign reuses the single-server one's workflow and checks
(tests/crash_harness.py): every step appends a line to an execution log when it
starts, so the checks can tell how often each step really ran.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.crash_harness import WORKFLOW, Report, Server, check, start_run
from tests.db_support import query
from tests.web_server import free_port, write_definitions


@contextmanager
def servers(root: Path, db: str, definitions: dict[str, str], count: int = 2,
            grace: str = "2s") -> Iterator[list[Server]]:
    """`count` servers on one database and one definitions folder; stopped at the end."""
    defs = write_definitions(root / "definitions", definitions)
    group = [Server(root, free_port(), grace, db=db, definitions=defs, log_name=f"server-{i}.log")
             for i in range(count)]
    try:
        for server in group:
            server.start()
        yield group
    finally:
        for server in group:
            if server.proc is not None and server.proc.poll() is None:
                server.proc.send_signal(signal.SIGCONT)  # a test may leave one stopped
                server.proc.kill()
                server.proc.wait(10)


def owner_of(db: str, run_id: str) -> str | None:
    rows = query(db, "SELECT owner FROM run WHERE id = ?", run_id)
    return rows[0]["owner"] if rows else None


def unfinished_owned_by(db: str, owner_pid: int) -> list[str]:
    rows = query(db, "SELECT id, owner FROM run WHERE status IN ('running', 'waiting')")
    return [r["id"] for r in rows if r["owner"] and r["owner"].split(":")[1] == str(owner_pid)]


@dataclass
class ClusterReport(Report):
    takeovers: list[float] = field(default_factory=list)  # seconds from a kill until its runs had a new owner


def run_cluster_campaign(root: Path, db: str, kills: int, seed: int, *, runs_per_round: int = 2) -> ClusterReport:
    """Two servers; start runs through both, kill one with SIGKILL at a random moment,
    measure how long until the other owns its runs, restart it; repeat; then check."""
    rng = random.Random(seed)
    log = root / "executions.log"
    log.touch()
    report = ClusterReport(seed=seed)
    with servers(root, db, {"crashy.yaml": WORKFLOW}) as group:
        for _ in range(kills):
            for i in range(runs_per_round):
                start_run(group[i % 2].base, log)
            victim, survivor = rng.sample(group, 2)
            delay = rng.uniform(0.0, 0.6)
            time.sleep(delay)
            report.kills.append(round(delay, 3))
            assert victim.proc is not None
            pid = victim.proc.pid
            victim.kill()
            killed_at = time.monotonic()
            deadline = killed_at + 60  # only so that a broken takeover cannot hang the suite
            while unfinished_owned_by(db, pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if unfinished_owned_by(db, pid):
                report.problems.append(f"runs of killed server {pid} were not taken over: "
                                       f"{unfinished_owned_by(db, pid)}")
            report.takeovers.append(round(time.monotonic() - killed_at, 2))
            victim.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            active = httpx.get(f"{group[0].base}/api/runs", params={"status": "running", "limit": 1}, timeout=5).json()
            if active["total"] == 0:
                break
            time.sleep(0.2)
    check(root, report, db)
    return report
