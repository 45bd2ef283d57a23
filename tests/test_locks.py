"""Shared locks (`locks:`) across workflows and servers, on SQLite and PostgreSQL.

Concurrency is observed from outside Treadle: every locked step calls a loopback
HTTP server that counts how many of its requests are held at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runner.engine.engine import Engine
from runner.storage.store import Store
from tests.conftest import definition
from tests.http_server import LoopbackServer, http_server_fixture  # noqa: F401  (the fixture)


def _workflow(name: str, url: str, *, run_locks: str = "", step_locks: str = "", hold: float = 0.3):
    return definition(f"""
        {run_locks}
        steps:
          - id: before
            log: ready
          - id: use
            {step_locks}
            http: {{url: "{url}/hold/warehouse?s={hold}"}}
          - id: after
            log: done
    """, name=name)


async def _all_end(*executions) -> list[str]:
    return [str(status) for status in await asyncio.wait_for(asyncio.gather(*(e.wait() for e in executions)), 120)]


@pytest.mark.parametrize(("limit", "where"), [(1, "run"), (2, "run"), (1, "step"), (2, "step")])
async def test_a_lock_across_two_workflows_never_has_more_holders_than_its_limit(
        engine: Engine, http_server: LoopbackServer, limit: int, where: str) -> None:
    spec = "[warehouse]" if limit == 1 else f"[{{name: warehouse, limit: {limit}}}]"
    key = {"run_locks": f"locks: {spec}"} if where == "run" else {"step_locks": f"locks: {spec}"}
    a, b = (_workflow(name, http_server.url, **key) for name in ("loads", "reports"))
    runs = [await engine.start(d) for d in (a, b, a, b, a, b)]
    assert set(await _all_end(*runs)) == {"succeeded"}
    # the limit was reached (the runs did wait for each other) and never passed
    assert http_server.at_once["warehouse"] == limit
    assert await engine.store.locks.holders("warehouse") == []  # every run let go


async def test_a_waiting_run_says_which_lock_and_which_run_holds_it(engine: Engine, http_server: LoopbackServer) -> None:
    a = _workflow("loads", http_server.url, run_locks="locks: [warehouse]", hold=1.5)
    b = _workflow("reports", http_server.url, run_locks="locks: [warehouse]", hold=0.01)
    first = await engine.start(a)
    while http_server.holding["warehouse"] == 0:  # the first run holds the lock and is in its step
        await asyncio.sleep(0.01)
    second = await engine.start(b)
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        await engine.store.flush()
        run = await engine.store.get_run(second.id)
        if run["reason"]:
            break
        assert asyncio.get_running_loop().time() < deadline, "the second run never said what it waits for"
        await asyncio.sleep(0.02)
    assert run["reason"] == f"waiting for lock warehouse (held by run {first.id})"
    assert run["status"] == "running"
    assert set(await _all_end(first, second)) == {"succeeded"}
    await engine.store.flush()
    assert (await engine.store.get_run(second.id))["reason"] is None
    holders = [(h["run_id"], h["held"]) for h in await engine.store.locks.holders("warehouse")]
    assert holders == []


async def test_waiters_are_served_in_the_order_they_asked(engine: Engine, http_server: LoopbackServer) -> None:
    slow = _workflow("loads", http_server.url, run_locks="locks: [warehouse]", hold=0.8)
    quick = definition("""
        locks: [warehouse]
        steps: [{id: mark, log: "{{ params.n }}"}]
        params: {n: {type: integer}}
    """, name="reports")
    first = await engine.start(slow)
    while http_server.holding["warehouse"] == 0:
        await asyncio.sleep(0.01)
    waiters = []
    for n in range(4):
        waiters.append(await engine.start(quick, {"n": n}))
        while not [h for h in await engine.store.locks.holders("warehouse") if h["run_id"] == waiters[-1].id]:
            await asyncio.sleep(0.01)  # in line before the next one asks
    assert set(await _all_end(first, *waiters)) == {"succeeded"}
    await engine.store.flush()
    started = [(await engine.store.step_states(w.id))[0]["started_at"] for w in waiters]
    assert started == sorted(started)


async def test_two_servers_share_the_lock_and_a_stopped_server_lets_go(
        db_url: str, tmp_path: Path, http_server: LoopbackServer) -> None:
    """Two engines, each with its own connection pool, on one database: as two servers."""
    a = _workflow("loads", http_server.url, run_locks="locks: [warehouse]", hold=0.3)
    b = _workflow("reports", http_server.url, run_locks="locks: [warehouse]", hold=0.3)
    async with Store(db_url) as one, Store(db_url) as two:
        left, right = Engine(one, definitions_dir=tmp_path), Engine(two, definitions_dir=tmp_path)
        try:
            runs = [await left.start(a), await right.start(b), await left.start(a), await right.start(b)]
            assert set(await _all_end(*runs)) == {"succeeded"}
            assert http_server.at_once["warehouse"] == 1
            # a server that stops (its leases end) holds nothing: the other goes on at once
            stuck = await left.start(_workflow("loads", http_server.url, run_locks="locks: [warehouse]", hold=30))
            while http_server.holding["warehouse"] == 0:
                await asyncio.sleep(0.01)
            waiting = await right.start(b)
            await left.close()  # the run stays unfinished (it resumes at the next start), its lease is let go
            assert await _all_end(waiting) == ["succeeded"]
            assert (await two.get_run(stuck.id))["status"] == "running"
        finally:
            await left.close()
            await right.close()


def test_the_run_page_and_the_api_say_what_a_run_waits_for(tmp_path: Path, http_server: LoopbackServer) -> None:
    import time

    import httpx

    from tests.web_server import serving

    files = {f"{name}.yaml": f"""
        locks: [warehouse]
        steps:
          - id: use
            http: {{url: "{http_server.url}/hold/warehouse?s={hold}"}}
    """ for name, hold in (("loads", 2), ("reports", 0.01))}
    with serving(tmp_path, files, watch=False) as base, httpx.Client(base_url=base, timeout=30) as c:
        first = c.post("/api/workflows/loads/runs").json()["run_id"]
        while http_server.holding["warehouse"] == 0:
            time.sleep(0.01)
        second = c.post("/api/workflows/reports/runs").json()["run_id"]
        deadline = time.monotonic() + 30
        while not (reason := c.get(f"/api/runs/{second}").json().get("reason")):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert reason == f"waiting for lock warehouse (held by run {first})"
        page = c.get(f"/runs/{second}").text
        assert f"waiting for lock warehouse (held by run {first})" in page
        assert c.get(f"/api/runs/{second}?wait=30s").json()["status"] == "succeeded"
