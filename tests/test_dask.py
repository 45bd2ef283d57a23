"""Steps on a real Dask cluster (a scheduler and two `treadle worker` processes on
loopback): run, python and http steps with their logs arriving while they run,
secrets filled in on the worker, resources routing a step, timeouts and cancels that
kill the work on the worker, a worker killed mid-step, a server killed mid-run, and
the bundled examples passing on both executors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from runner.dispatch.dask import DaskDispatcher
from runner.engine.engine import Engine
from runner.engine.leases import process_is_gone
from runner.storage.store import Store
from tests import dask_cluster
from tests.conftest import definition
from tests.crash_harness import Server
from tests.db_support import query
from tests.exec_support import eventually, recorded, write_module
from tests.http_server import http_server_fixture  # noqa: F401  (the fixture)
from tests.web_server import free_port

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    started = dask_cluster.start(tmp_path_factory.mktemp("dask"))
    yield started
    started.stop()


@pytest.fixture
async def engine_on(cluster, tmp_path: Path):
    """An engine (on a SQLite file) whose cluster steps go to the test cluster."""
    dispatcher = DaskDispatcher(cluster.address, tmp_path)
    await dispatcher.start()
    async with Store(f"sqlite:///{tmp_path / 'treadle.db'}") as store:
        engine = Engine(store, definitions_dir=tmp_path, dispatcher=dispatcher,
                        environ={"WORKER_TOKEN": "the server's own value"})
        yield engine
        await engine.close()
    await dispatcher.close()


def _alive(pid: int) -> bool:
    return not process_is_gone(pid)


async def test_run_python_and_http_steps_execute_on_workers_with_live_logs(engine_on, cluster, tmp_path, http_server):
    mod = write_module(tmp_path, "import os\n\ndef double(x, ctx):\n    ctx.log(f'doubling {x}')\n"
                                 "    return {'x': x * 2, 'pid': os.getpid()}\n")
    gate = tmp_path / "gate"
    exe = await engine_on.start(definition(f"""
        secrets: [WORKER_TOKEN]
        steps:
          - id: sh
            env: {{T: "{{{{ secrets.WORKER_TOKEN }}}}"}}
            run: 'echo "first line"; while [ ! -e {gate} ]; do sleep 0.05; done; echo "token=$T"; echo "{{\\"on\\": \\"$TREADLE_WORKER\\"}}"'
          - {{id: py, python: "{mod}:double", with: {{x: 21}}}}
          - {{id: call, http: {{url: "{http_server.url}/json"}}}}
    """, tmp_path))
    store = engine_on.store

    async def first_line_arrived() -> bool:
        await store.flush()
        return "first line" in "".join(c["text"] for c in await store.logs(exe.id, "sh"))

    await eventually(first_line_arrived, 20)  # while the step still runs (it waits for the gate)
    running = [r for r in await store.step_attempts(exe.id) if r["step_id"] == "sh"]
    assert running[-1]["status"] == "running" and running[-1]["worker"] in cluster.wait_for_workers(2).values()
    gate.touch()
    await asyncio.wait_for(exe.wait(), 30)
    doc = await recorded(engine_on, exe.id)
    assert exe.status == "succeeded", doc["error"]
    steps = {s["id"]: s for s in doc["steps"]}
    attempts = {r["step_id"]: r for r in await store.step_attempts(exe.id)}
    workers = set(cluster.wait_for_workers(2).values())
    assert {attempts[s]["worker"] for s in ("sh", "py", "call")} <= workers
    assert steps["py"]["attempt_list"][0]["worker"] == attempts["py"]["worker"]  # the API says where it ran
    assert steps["sh"]["output"].endswith(f'{{"on": "{attempts["sh"]["worker"]}"}}')  # it really ran there
    assert steps["py"]["output"]["x"] == 42 and steps["py"]["output"]["pid"] != os.getpid()
    assert steps["call"]["output"]["json"] == {"status": "ok", "items": [1, 2, 3]}
    log = "".join(c["text"] for c in await store.logs(exe.id, "sh"))
    # the worker's own secret was used and masked there; the server's value never travelled
    assert "token=***" in log and dask_cluster.WORKER_SECRET not in log
    assert "doubling 21" in "".join(c["text"] for c in await store.logs(exe.id, "py"))
    assert dask_cluster.WORKER_SECRET not in json.dumps(doc)


async def test_labels_route_a_step_to_the_worker_that_offers_them(engine_on, cluster, tmp_path):
    names = cluster.wait_for_workers(2)
    exe = await engine_on.run(definition("""
        steps:
          - {id: special, labels: [special], foreach: [1, 2, 3, 4], run: 'echo $TREADLE_WORKER'}
          - {id: local, needs: [], executor: local, run: 'echo "${TREADLE_WORKER:-server}"'}
    """, tmp_path))
    doc = await recorded(engine_on, exe.id)
    assert exe.status == "succeeded", doc["error"]
    by_id = {s["id"]: s for s in doc["steps"]}
    assert set(by_id["special"]["output"]) == {names["special"]}
    assert by_id["local"]["output"] == "server"


async def test_a_step_no_worker_can_take_fails_saying_why(engine_on, tmp_path):
    exe = await engine_on.run(definition("""
        steps: [{id: big, resources: {gpu: 8}, placement_timeout: 2s, run: 'true'}]
    """, tmp_path))
    doc = await recorded(engine_on, exe.id)
    assert exe.status == "failed"
    error = doc["steps"][0]["error"]
    assert error.startswith("no worker took the step within 2s: it needs gpu=8; the workers offer"), error
    assert "label-special=1" in error and "treadle worker --resources" in error


@pytest.mark.parametrize("how", ["timeout", "cancel"])
async def test_a_timeout_or_a_cancel_kills_the_work_on_the_worker(engine_on, tmp_path, how):
    pidfile = tmp_path / "pid"
    exe = await engine_on.start(definition(f"""
        steps: [{{id: nap, {"timeout: 1s, " if how == "timeout" else ""}run: 'echo $$ > {pidfile}; exec sleep 60'}}]
    """, tmp_path))
    await eventually(lambda: pidfile.exists() and pidfile.read_text().strip(), 20)
    pid = int(pidfile.read_text())
    if how == "cancel":
        engine_on.cancel(exe.id)
    await asyncio.wait_for(exe.wait(), 20)
    await eventually(lambda: not _alive(pid), 10)  # the sleep on the worker is gone
    doc = await recorded(engine_on, exe.id)
    assert doc["status"] == ("failed" if how == "timeout" else "cancelled")
    if how == "timeout":
        assert doc["steps"][0]["error"] == "timed out after 1.0s; the step was stopped"


async def test_a_worker_killed_mid_step_fails_the_attempt_and_the_retry_runs_once(engine_on, cluster, tmp_path):
    log = tmp_path / "side-effects"
    names = cluster.wait_for_workers(2)
    exe = await engine_on.start(definition(f"""
        steps:
          - id: work
            retry: {{limit: 2, delay: 0.1s}}
            run: 'echo "start $TREADLE_ATTEMPT $TREADLE_WORKER" >> {log}; sleep 6; echo "end $TREADLE_ATTEMPT" >> {log}'
    """, tmp_path))
    await eventually(lambda: log.exists() and "start 1" in log.read_text(), 20)
    victim = next(name for name, address in names.items() if address in log.read_text())
    cluster.kill_worker(victim)
    try:
        await asyncio.wait_for(exe.wait(), 60)
        doc = await recorded(engine_on, exe.id)
        assert exe.status == "succeeded", doc["error"]
        attempts = sorted((r["attempt"], r["status"], r["error"] or "") for r in await engine_on.store.step_attempts(exe.id))
        assert attempts[0][:2] == (1, "failed") and attempts[0][2].startswith("worker lost"), attempts
        assert attempts[-1][1] == "succeeded" and len(attempts) == 2, attempts
        lines = log.read_text().splitlines()
        # attempt 1 never finished (its worker died); Dask's own re-run of it was refused
        assert [ln.split()[:2] for ln in lines] == [["start", "1"], ["start", "2"], ["end", "2"]], lines
    finally:
        cluster.start_worker(victim, *(["--labels", "special"] if victim == "special" else []))
        cluster.wait_for_workers(2)


LONG = """\
params: {log: {type: string, required: true}}
steps:
  - id: long
    run: 'echo "start $$ $TREADLE_WORKER" >> "{{ params.log }}"; sleep 4; echo "end $$" >> "{{ params.log }}"'
"""


def test_a_server_killed_mid_run_leaves_nothing_running_unsupervised(cluster, tmp_path):
    log = tmp_path / "exec.log"
    log.touch()
    (tmp_path / "definitions").mkdir()
    (tmp_path / "definitions" / "long.yaml").write_text(LONG)
    server = Server(tmp_path, free_port(), db=f"sqlite:///{tmp_path / 'treadle.db'}")
    server.extra_args = ["--executor", cluster.address]
    server.start()
    try:
        run_id = httpx.post(f"{server.base}/api/workflows/long/runs", json={"params": {"log": str(log)}},
                            timeout=10).json()["run_id"]
        deadline = time.monotonic() + 30
        while "start" not in log.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        first = log.read_text().split()[1]
        server.kill()
        # its Dask client is gone: the worker stops the step's processes
        deadline = time.monotonic() + 20
        while _alive(int(first)):
            assert time.monotonic() < deadline, "the step kept running on the worker without its server"
            time.sleep(0.1)
        server.start()  # resumes the run: the step runs again, once
        deadline = time.monotonic() + 60
        while httpx.get(f"{server.base}/api/runs/{run_id}", timeout=10).json()["status"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        server.stop()
    lines = log.read_text().splitlines()
    assert sum(ln.startswith("end") for ln in lines) == 1 and f"end {first}" not in lines, lines
    assert query(f"sqlite:///{tmp_path / 'treadle.db'}",
                 "SELECT count(*) AS n FROM step_attempt WHERE status = 'succeeded'") == [{"n": 1}]


@pytest.mark.parametrize("executor", ["local", "cluster"])
def test_the_bundled_examples_pass_on_either_executor(cluster, tmp_path, executor):
    root = Path(__file__).resolve().parent.parent
    db = f"sqlite:///{tmp_path / 'treadle.db'}"
    command = [sys.executable, "-m", "runner", "serve", "--definitions", str(root / "definitions"), "--db", db,
               "--port", str(port := free_port()), "--executor", "local" if executor == "local" else cluster.address]
    import subprocess

    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "serve did not start"
            time.sleep(0.1)
        results = {}
        for name in ("hello", "data-pipeline", "fan-out", "error-handling"):
            run_id = httpx.post(f"{base}/api/workflows/{name}/runs", json={}, timeout=10).json()["run_id"]
            deadline = time.monotonic() + 60
            while (doc := httpx.get(f"{base}/api/runs/{run_id}", timeout=10).json())["status"] in ("running", "queued"):
                assert time.monotonic() < deadline, name
                time.sleep(0.1)
            results[name] = doc["status"]
        workers = {r["worker"] for r in query(db, "SELECT worker FROM step_attempt")}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert results == dict.fromkeys(results, "succeeded"), results
    assert (workers == {None}) if executor == "local" else (len(workers - {None}) >= 1)
