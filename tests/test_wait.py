"""Waiting for a run's result: `POST .../runs?wait=`, `GET /api/runs/{id}?wait=` and
`treadle start --wait`, against a real uvicorn with a real SQLite file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .web_server import serving

DEFINITIONS = {
    "quick.yaml": """
        params:
          times: {type: integer, default: 1}
        steps:
          - id: twice
            set: {doubled: "{{ params.times * 2 }}"}
        outputs: {doubled: "{{ steps.twice.output.doubled }}"}
    """,
    "gated.yaml": """
        params:
          gate: {type: string, required: true}
        defaults: {timeout: 30s}
        steps:
          - id: hold
            run: 'while [ ! -f "{{ params.gate }}" ]; do sleep 0.02; done; echo through'
    """,
    "failing.yaml": """
        steps:
          - id: boom
            run: 'echo broken >&2; exit 3'
    """,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(tmp_path_factory.mktemp("wait"), DEFINITIONS, watch=False) as base:
        yield base


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as c:
        yield c


def _run_count(client: httpx.Client) -> int:
    return client.get("/api/runs").json()["total"]


def test_wait_answers_200_with_the_finished_run(client: httpx.Client) -> None:
    r = client.post("/api/workflows/quick/runs?wait=20s", json={"params": {"times": 21}})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["status"] == "succeeded" and doc["outputs"] == {"doubled": 42}
    assert [s["id"] for s in doc["steps"]] == ["twice"] and doc["steps"][0]["status"] == "succeeded"


def test_wait_past_its_end_answers_202_and_the_location_waits_for_the_end(client: httpx.Client,
                                                                          tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    r = client.post("/api/workflows/gated/runs?wait=300ms", json={"params": {"gate": str(gate)}})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "running"
    assert r.headers["location"] == f"/api/runs/{body['run_id']}" == body["url"]
    assert int(r.headers["retry-after"]) > 0
    # still going: a GET that waits a little answers the run as it is
    early = client.get(r.headers["location"], params={"wait": "200ms"})
    assert early.status_code == 200 and early.json()["status"] == "running"
    gate.touch()
    done = client.get(r.headers["location"], params={"wait": "20s"})
    assert done.status_code == 200 and done.json()["status"] == "succeeded"


def test_a_failed_run_is_answered_200_with_its_error(client: httpx.Client) -> None:
    r = client.post("/api/workflows/failing/runs?wait=20s")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "failed" and "exit code 3" in r.json()["error"]


@pytest.mark.parametrize(("wait", "code"), [("6m", "WAIT_TOO_LONG"), ("soon", "INVALID_WAIT"), ("-1s", "INVALID_WAIT")])
def test_a_bad_wait_is_400_and_starts_nothing(client: httpx.Client, wait: str, code: str) -> None:
    before = _run_count(client)
    r = client.post("/api/workflows/quick/runs", params={"wait": wait})
    assert r.status_code == 400, r.text
    assert r.json()["error_code"] == code
    assert f"wait={wait}" in r.json()["detail"]
    assert _run_count(client) == before
    assert client.get("/api/runs/nope", params={"wait": wait}).json()["error_code"] == code


def test_get_wait_of_an_unknown_run_is_404(client: httpx.Client) -> None:
    assert client.get("/api/runs/nope", params={"wait": "1s"}).status_code == 404


def _treadle(*args: str, server: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TREADLE_SERVER": server}
    env.pop("TREADLE_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "runner", *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def test_start_wait_exit_code_is_the_runs_result(server: str) -> None:
    ok = _treadle("start", "quick", "-p", "times=4", "--wait", server=server)  # text param, typed by the server
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"doubled": 8}
    assert "succeeded" in ok.stderr
    failed = _treadle("start", "failing", "--wait", "30s", server=server)
    assert failed.returncode == 1, failed.stderr
    assert "failed" in failed.stderr and "exit code 3" in failed.stderr


def test_start_wait_past_its_duration_exits_124_and_the_run_goes_on(server: str, client: httpx.Client,
                                                                   tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    proc = _treadle("start", "gated", "-p", f"gate={gate}", "--wait", "500ms", "--json", server=server)
    assert proc.returncode == 124, proc.stderr
    assert "has not ended within --wait" in proc.stderr
    run_id = proc.stderr.split("run ")[1].split()[0]
    assert client.get(f"/api/runs/{run_id}").json()["status"] == "running"
    gate.touch()
    assert client.get(f"/api/runs/{run_id}", params={"wait": "20s"}).json()["status"] == "succeeded"


def test_start_without_wait_prints_the_run_id_and_errors_clearly(server: str, client: httpx.Client) -> None:
    started = _treadle("start", "quick", server=server)
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()
    assert client.get(f"/api/runs/{run_id}").status_code == 200
    unknown = _treadle("start", "qiuck", server=server)
    assert unknown.returncode == 2
    assert "no workflow named 'qiuck'" in unknown.stderr
    bad = _treadle("start", "quick", "-p", "times=many", server=server)
    assert bad.returncode == 2 and "times" in bad.stderr


def test_dry_run_takes_text_params_and_refuses_a_version(client: httpx.Client) -> None:
    plan = client.post("/api/workflows/quick/dry-run", json={"params": {"times": "3"}, "params_as_text": True})
    assert plan.status_code == 200 and plan.json()["params"] == {"times": 3}
    typed = client.post("/api/workflows/quick/dry-run", json={"params": {"times": "3"}})
    assert typed.json()["param_errors"]  # JSON params are typed: "3" is not an integer
    refused = client.post("/api/workflows/quick/dry-run", json={"version": "0123456789ab"})
    assert refused.status_code == 400 and refused.json()["error_code"] == "VERSION_NOT_PLANNED"
