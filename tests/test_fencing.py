"""Fenced leases, on both backends: the writer commits a driver's records only while
its lease holds, a driver that lost its run stops it at once, and a database that
goes away makes the engine let its runs go before anyone may claim them (then
resume them when it is back)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runner.engine.engine import Engine
from runner.engine.leases import GIVE_UP_AFTER, process_is_gone
from runner.storage.store import Store
from tests import pg_server as pg
from tests.conftest import definition
from tests.db_support import query


def _row(run_id: str, owner: str) -> dict:
    return {"id": run_id, "workflow": "w", "version": "v1", "status": "running", "trigger": "test",
            "created_at": 1.0, "started_at": 1.0, "owner": owner, "lease_epoch": 1, "lease_until": 9e9, "params": {}}


def _attempt(run_id: str, step: str) -> dict:
    return {"run_id": run_id, "step_id": step, "item": -1, "attempt": 1, "status": "succeeded",
            "started_at": 1.0, "finished_at": 2.0}


async def test_the_writer_refuses_the_records_of_a_lease_no_longer_held(store: Store, db_url: str) -> None:
    refused: list[set[str]] = []
    store.writer.on_refused = refused.append
    store.put_run(_row("r1", "server-a"), ("server-a", 1))
    store.put_step(_attempt("r1", "early"), ("server-a", 1))  # in the same batch as the insert: accepted
    await store.flush()
    # another server claims the run (what LeaseStore.claim_stale does: new owner, next epoch)
    query(db_url, "UPDATE run SET owner = 'server-b', lease_epoch = 2 WHERE id = 'r1'")
    store.put_step(_attempt("r1", "late"), ("server-a", 1))
    store.put_log({"run_id": "r1", "step_id": "late", "item": -1, "attempt": 1, "stream": "stdout",
                   "text": "late\n", "at": 3.0}, ("server-a", 1))
    store.update_run({"id": "r1", "status": "succeeded"}, ("server-a", 1))
    store.put_step(_attempt("r1", "new-owner"), ("server-b", 2))
    await store.flush()
    steps = {r["step_id"] for r in query(db_url, "SELECT step_id FROM step_attempt WHERE run_id = 'r1'")}
    assert steps == {"early", "new-owner"}
    assert query(db_url, "SELECT text FROM log_chunk") == []
    assert query(db_url, "SELECT status, owner FROM run") == [{"status": "running", "owner": "server-b"}]
    assert refused == [{("r1", ("server-a", 1))}] and store.writer.fenced == 3


SLEEPY = """
name: sleepy
steps:
  - id: nap
    run: 'echo $$ > {pidfile}; sleep 30'
"""


def _alive(pid: int) -> bool:
    return not process_is_gone(pid)


async def _until(check, timeout: float = 20.0) -> None:  # noqa: ANN001
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_driver_whose_run_was_claimed_stops_it_at_once(db_url: str, tmp_path: Path) -> None:
    pidfile = tmp_path / "nap.pid"
    wf = definition(SLEEPY.format(pidfile=pidfile), tmp_path, "sleepy")
    async with Store(db_url) as store_a, Store(db_url) as store_b:
        a = Engine(store_a, definitions_dir=tmp_path)
        b = Engine(store_b, definitions_dir=tmp_path, lookup=lambda name: wf)
        ended_at_a: list = []
        a.run_ended.append(ended_at_a.append)
        exe = await a.start(wf)
        await _until(lambda: pidfile.exists() and pidfile.read_text().strip())
        first_pid = int(pidfile.read_text())
        await store_a.flush()
        pidfile.unlink()
        # as if A had stalled past its lease: B claims the run and drives it
        query(db_url, "UPDATE run SET lease_until = 0 WHERE id = ?", exe.id)
        [taken] = await b.recover()
        assert taken.id == exe.id and taken.epoch == 2
        # B stopped what A had left running of the run; A learns it lost the run (its
        # renewal, or the refusal of what it writes next) and lets it go without a word
        await asyncio.wait_for(exe.wait(), 10)
        await _until(lambda: exe.journal.closed)
        assert not _alive(first_pid)
        assert exe.id not in a.runs
        await _until(lambda: pidfile.exists() and pidfile.read_text().strip())  # B runs the step again
        b.cancel(exe.id)
        await asyncio.wait_for(taken.wait(), 10)
        await store_b.flush()
        [run] = query(db_url, "SELECT status, owner, lease_epoch FROM run WHERE id = ?", exe.id)
        assert (run["status"], run["owner"], run["lease_epoch"]) == ("cancelled", b.owner, 2)
        await a.close()
        await b.close()
    assert ended_at_a == []  # no chaining, no notification from the server that lost the run


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of this test's own, to stop and start again."""
    server = pg.start()
    if isinstance(server, str):
        pytest.skip(server)
    if server.folder is None:
        pytest.skip("a server given by TREADLE_TEST_PG_URL cannot be stopped by the test")
    yield server
    server.stop()


async def test_a_database_that_goes_away_makes_the_engine_let_go_then_resume(own_postgres, tmp_path: Path) -> None:
    pidfile = tmp_path / "nap.pid"
    wf = definition(SLEEPY.format(pidfile=pidfile), tmp_path, "sleepy")
    async with Store(own_postgres.url("postgres")) as store:
        engine = Engine(store, definitions_dir=tmp_path, lookup=lambda name: wf)
        exe = await engine.start(wf)
        await _until(lambda: pidfile.exists() and pidfile.read_text().strip())
        first_pid = int(pidfile.read_text())
        pidfile.unlink()
        await store.flush()
        own_postgres.halt()
        # no renewal for GIVE_UP_AFTER seconds: the run is let go before anyone could claim it
        await asyncio.wait_for(exe.wait(), GIVE_UP_AFTER + 10)
        assert not _alive(first_pid)
        own_postgres.resume()
        await _until(lambda: store.writer.queue.empty())
        resumed = []
        deadline = asyncio.get_running_loop().time() + 60
        while not resumed and asyncio.get_running_loop().time() < deadline:
            resumed = await engine.recover()  # the lease runs out (on the database's clock), then it is claimed
            await asyncio.sleep(0.2)
        assert [e.id for e in resumed] == [exe.id]
        await _until(lambda: pidfile.exists() and pidfile.read_text().strip())
        engine.cancel(exe.id)
        await asyncio.wait_for(resumed[0].wait(), 10)
        await engine.close()
    [run] = query(own_postgres.url("postgres"), "SELECT status, lease_epoch FROM run")
    assert run == {"status": "cancelled", "lease_epoch": 2}
