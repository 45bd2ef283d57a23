"""The CLI against a real server (#17 item 14): `start`, `cancel`, `retry --from`,
`approve`, `logs -f`, `runs` and `show` with `--server`, as real subprocesses, printing
what the local commands print."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from tests.test_examples import Cli
from tests.web_server import serving

ADMIN = "remote-cli-admin-token"
DEFINITIONS = {
    "gate.yaml": """
        steps:
          - {id: ask, approval: {message: "go on?"}}
          - {id: done, needs: [ask], set: {ok: true}}
        outputs: {ok: "{{ steps.done.output.ok }}"}
    """,
    "flaky.yaml": """
        steps:
          - {id: first, log: one}
          - {id: second, needs: [first], run: 'test -f "{{ params.flag }}" || { echo missing >&2; exit 3; }'}
        params: {flag: {type: string}}
    """,
    "talk.yaml": """
        steps:
          - id: talk
            run: 'for i in 1 2 3 4 5; do echo "line $i"; sleep 0.3; done'
    """,
    "slow.yaml": "steps: [{id: nap, wait: 300s}]\n",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("remote")
    with serving(root, {k: textwrap.dedent(v) for k, v in DEFINITIONS.items()}, watch=False,
                 admin_token=ADMIN) as base:
        cli = Cli(root)
        cli.env.update(TREADLE_SERVER=base, TREADLE_TOKEN=ADMIN)
        yield base, cli, f"sqlite:///{root / 'treadle.db'}"


def _status(base: str, run_id: str) -> str:
    return httpx.get(f"{base}/api/runs/{run_id}", headers={"Authorization": f"Bearer {ADMIN}"}).json()["status"]


def _until(base: str, run_id: str, states: set[str]) -> None:
    deadline = time.monotonic() + 30
    while _status(base, run_id) not in states:
        assert time.monotonic() < deadline, run_id
        time.sleep(0.05)


def test_approve_a_waiting_step_and_wait_for_the_result(site) -> None:
    base, cli, _ = site
    started = cli("start", "gate")
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()
    _until(base, run_id, {"waiting"})
    approved = cli("approve", run_id, "ask", "--comment", "fine")
    assert approved.returncode == 0, approved.stderr
    assert f"run {run_id} step ask approved by admin" in approved.stderr or "approved" in approved.stderr
    _until(base, run_id, {"succeeded"})
    # a decision on a step that waits for none is refused with the server's reason, exit 2
    again = cli("reject", run_id, "ask")
    assert again.returncode == 2 and "answered 409" in again.stderr, again.stderr


def test_retry_from_a_step_and_cancel(site, tmp_path: Path) -> None:
    base, cli, _ = site
    flag = tmp_path / "flag"
    failed = cli("start", "flaky", "-p", f"flag={flag}", "--wait")
    assert failed.returncode == 1 and "exit code 3" in failed.stderr, failed.stderr
    run_id = re.search(r"^run (\w+) of flaky", failed.stderr, re.M).group(1)
    flag.write_text("")
    retried = cli("retry", run_id, "--from", "second")
    assert retried.returncode == 0, retried.stderr
    new_id = retried.stdout.strip()
    _until(base, new_id, {"succeeded"})
    doc = httpx.get(f"{base}/api/runs/{new_id}", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert doc["retry_of"] == run_id and doc["retry_from"] == "second"

    slow = cli("start", "slow").stdout.strip()
    _until(base, slow, {"running"})
    cancelled = cli("cancel", slow)
    assert cancelled.returncode == 0, cancelled.stderr
    _until(base, slow, {"cancelled"})
    assert cli("cancel", slow).returncode == 2  # finished: the server says so (RUN_FINISHED)


def test_logs_follow_prints_every_line_once_until_the_run_ends(site) -> None:
    base, cli, _ = site
    run_id = cli("start", "talk").stdout.strip()
    _until(base, run_id, {"running"})
    follow = subprocess.run([sys.executable, "-m", "runner", "logs", run_id, "talk", "-f"], capture_output=True,
                            text=True, timeout=120, cwd=cli.cwd, env=cli.env)
    assert follow.returncode == 0, follow.stderr
    assert follow.stdout.splitlines() == [f"line {i}" for i in range(1, 6)]
    assert _status(base, run_id) == "succeeded"


def test_runs_and_show_read_the_same_from_a_server_as_from_the_database(site) -> None:
    base, cli, db = site
    run_id = cli("start", "gate").stdout.strip()
    _until(base, run_id, {"waiting"})
    cli("approve", run_id, "ask")
    _until(base, run_id, {"succeeded"})
    local = cli("show", run_id, "--logs", "--db", db)
    remote = cli("show", run_id, "--logs", "--server", base)
    assert remote.returncode == local.returncode == 0, remote.stderr + local.stderr
    assert remote.stdout == local.stdout
    local_runs = json.loads(cli("runs", "--json", "--workflow", "gate", "--db", db).stdout)
    remote_runs = json.loads(cli("runs", "--json", "--workflow", "gate", "--server", base).stdout)
    assert [r["id"] for r in remote_runs] == [r["id"] for r in local_runs] and run_id in [r["id"] for r in local_runs]
    table = cli("runs", "--workflow", "gate", "--server", base).stdout.splitlines()
    assert table[0].split()[:3] == ["RUN", "WORKFLOW", "STATUS"] and any(run_id in line for line in table)
    # without a token the server refuses, and the message says how to pass one
    anonymous = cli("runs", "--server", base, env={"TREADLE_TOKEN": ""})
    assert anonymous.returncode == 2 and "--token or TREADLE_TOKEN" in anonymous.stderr, anonymous.stderr
