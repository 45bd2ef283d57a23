"""The launcher: concurrency policies, the queue (also across a restart), pause,
workflow chaining (`after`) and events, with a real engine on a real SQLite file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runner.dsl.loader import Definition
from runner.engine.engine import Engine
from runner.storage.models import RunStatus
from runner.storage.store import Store
from runner.triggers.launcher import MAX_CHAIN, Launcher
from runner.triggers.trigger_state import TriggerState

from .conftest import definition


class Catalog:
    """The definitions a launcher sees (the server passes the real catalog)."""

    def __init__(self, *defs: Definition):
        self.defs = {d.name: d for d in defs}

    def entries(self) -> list[Definition]:
        return list(self.defs.values())


def slow(name: str, tmp_path: Path, policy: str | None = None, limit: int = 1) -> Definition:
    """A workflow whose runs take 0.4 s and output their param `n`."""
    lines = [f"name: {name}", "params: {n: {type: integer, default: 0}}",
             "steps: [{id: work, wait: 0.4s}, {id: done, set: {n: '{{ params.n }}'}}]",
             "outputs: {n: '{{ steps.done.output.n }}'}"]
    if policy:
        lines.append(f"concurrency: {{limit: {limit}, policy: {policy}}}")
    return definition("\n".join(lines), tmp_path, name)


async def until(check, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def quiet(engine: Engine, launcher: Launcher, timeout: float = 30.0) -> None:
    """Wait until nothing is left to happen: every run has ended, every end has been
    announced, and every follow-up of the launcher (its queue, the chains) has run.
    Runs that keep starting each other (a chain with no end) fail the test."""
    async def settle() -> None:
        while True:
            if engine.runs:
                await asyncio.gather(*(exe.wait() for exe in list(engine.runs.values())))
            await engine.announced()
            if launcher._tasks:
                await asyncio.wait(set(launcher._tasks))
            if not engine.runs and not engine._ending and not launcher._tasks:
                return
    try:
        await asyncio.wait_for(settle(), timeout)
    except TimeoutError:
        raise AssertionError(f"runs still starting after {timeout:g} s") from None


async def statuses(store: Store, workflow: str) -> list[str]:
    rows, _ = await store.list_runs(workflow=workflow, limit=1000)
    return [r["status"] for r in sorted(rows, key=lambda r: r["created_at"])]


@pytest.fixture
def state(store: Store) -> TriggerState:
    return TriggerState(store)


async def test_queue_policy_runs_one_at_a_time_in_order(engine: Engine, store: Store, state: TriggerState, tmp_path: Path) -> None:
    wf = slow("q", tmp_path, "queue")
    launcher = Launcher(engine, state, Catalog(wf).entries)
    launches = [await launcher.launch(wf, {"n": i}, trigger="api", manual=True) for i in range(3)]
    assert [x.status for x in launches] == ["started", "queued", "queued"]
    assert "concurrency limit 1 reached" in launches[1].reason and launches[0].run_id in launches[1].reason
    await store.flush()
    queued = await store.get_run(launches[1].run_id)
    assert queued["status"] == "queued" and queued["reason"].startswith("waiting for a free slot")
    await until(lambda: _all_done(store, "q", 3))
    rows = {r["id"]: r for r in (await store.list_runs(workflow="q"))[0]}
    runs = [rows[x.run_id] for x in launches]
    assert [r["status"] for r in runs] == ["succeeded"] * 3
    assert [r["outputs"]["n"] for r in runs] == [0, 1, 2]
    # never two at once, and in the order they came
    for before, after in zip(runs, runs[1:], strict=False):
        assert after["started_at"] >= before["finished_at"]
    assert runs[1]["reason"] is None


async def _all_done(store: Store, workflow: str, count: int) -> bool:
    got = await statuses(store, workflow)
    return len(got) == count and all(RunStatus(s).finished for s in got)


async def test_skip_policy_starts_nothing_past_the_limit(engine: Engine, store: Store, state: TriggerState, tmp_path: Path) -> None:
    wf = slow("s", tmp_path, "skip", limit=2)
    launcher = Launcher(engine, state, Catalog(wf).entries)
    launches = [await launcher.launch(wf, {}, trigger="event") for _ in range(4)]
    assert [x.status for x in launches] == ["started", "started", "skipped", "skipped"]
    assert launches[2].run_id is None and "limit 2" in launches[2].reason
    await until(lambda: _all_done(store, "s", 2))
    assert await statuses(store, "s") == ["succeeded", "succeeded"]
    # room again: the next one starts
    assert (await launcher.launch(wf, {}, trigger="event")).status == "started"


async def test_cancel_previous_cancels_the_oldest(engine: Engine, store: Store, state: TriggerState, tmp_path: Path) -> None:
    wf = slow("c", tmp_path, "cancel_previous")
    launcher = Launcher(engine, state, Catalog(wf).entries)
    first = await launcher.launch(wf, {"n": 1}, trigger="schedule")
    second = await launcher.launch(wf, {"n": 2}, trigger="schedule")
    assert first.status == second.status == "started"
    assert [r["id"] for r in await launcher.active("c")] == [second.run_id]  # the first ended before the second began
    await until(lambda: _all_done(store, "c", 2))
    assert (await store.get_run(first.run_id))["status"] == "cancelled"
    assert (await store.get_run(second.run_id))["status"] == "succeeded"


async def test_bad_params_are_refused_before_queueing(engine: Engine, store: Store, state: TriggerState, tmp_path: Path) -> None:
    wf = slow("b", tmp_path, "queue")
    launcher = Launcher(engine, state, Catalog(wf).entries)
    await launcher.launch(wf, {}, trigger="api", manual=True)
    bad = await launcher.fire(wf, trigger="event", ref=None, mapping=None, context={}, default={"n": "many"})
    assert bad.status == "rejected" and "n" in bad.errors and bad.run_id is None
    assert await launcher.queued("b") == []


async def test_queued_runs_survive_a_restart(db_url: str, tmp_path: Path) -> None:
    wf = slow("r", tmp_path, "queue")
    async with Store(db_url) as store:
        engine = Engine(store, definitions_dir=tmp_path)
        launcher = Launcher(engine, TriggerState(store), Catalog(wf).entries)
        first = await launcher.launch(wf, {"n": 1}, trigger="api", manual=True)
        queued = await launcher.launch(wf, {"n": 2}, trigger="file")
        assert queued.status == "queued"
        await engine.close()  # stops: the running one is left to resume, the queued one stays queued
    async with Store(db_url) as store:
        assert (await store.get_run(queued.run_id))["status"] == "queued"
        engine = Engine(store, definitions_dir=tmp_path, lookup=lambda name: wf)
        launcher = Launcher(engine, TriggerState(store), Catalog(wf).entries)
        resumed = await engine.recover()
        assert [e.id for e in resumed] == [first.run_id]  # recovery never takes queued runs
        assert await launcher.pump() == []  # no room: the resumed run holds the only slot
        await until(lambda: _all_done(store, "r", 2))
        second = await store.get_run(queued.run_id)
        assert second["status"] == "succeeded" and second["outputs"] == {"n": 2}
        assert second["started_at"] >= (await store.get_run(first.run_id))["finished_at"]
        await engine.close()


async def test_cancel_a_queued_run(engine: Engine, store: Store, state: TriggerState, tmp_path: Path) -> None:
    wf = slow("x", tmp_path, "queue")
    launcher = Launcher(engine, state, Catalog(wf).entries)
    await launcher.launch(wf, {}, trigger="api", manual=True)
    queued = await launcher.launch(wf, {}, trigger="api", manual=True)
    assert await launcher.cancel_queued(queued.run_id)
    assert not await launcher.cancel_queued(queued.run_id)
    assert (await store.get_run(queued.run_id))["status"] == "cancelled"
    await until(lambda: _all_done(store, "x", 2))
    assert sorted(await statuses(store, "x")) == ["cancelled", "succeeded"]


async def test_pause_stops_triggers_not_people(engine: Engine, store: Store, state: TriggerState, tmp_path: Path) -> None:
    wf = slow("p", tmp_path)
    launcher = Launcher(engine, state, Catalog(wf).entries)
    assert await state.set_paused("p", True, by="test")
    assert not await state.set_paused("p", True)
    paused = await launcher.fire(wf, trigger="schedule", ref=None, mapping=None, context={}, default={})
    assert paused.status == "paused" and "resume" in paused.reason
    manual = await launcher.launch(wf, {}, trigger="api", manual=True)
    assert manual.status == "started"
    # the pause survives a restart (a new TriggerState reads the database)
    assert await TriggerState(store).is_paused("p")
    await state.set_paused("p", False)
    assert (await launcher.fire(wf, trigger="schedule", ref=None, mapping=None, context={}, default={})).status == "started"


async def test_paused_workflow_keeps_trigger_runs_queued_until_resumed(engine: Engine, store: Store, state: TriggerState, tmp_path: Path) -> None:
    wf = slow("pq", tmp_path, "queue")
    launcher = Launcher(engine, state, Catalog(wf).entries)
    first = await launcher.launch(wf, {}, trigger="event")
    queued = await launcher.launch(wf, {}, trigger="event")
    await state.set_paused("pq", True)
    await until(lambda: _finished(store, first.run_id))
    await quiet(engine, launcher)  # the end of `first` was followed up: its slot is free
    assert (await store.get_run(queued.run_id))["status"] == "queued"
    await state.set_paused("pq", False)
    assert await launcher.release("pq") == [queued.run_id]
    await until(lambda: _finished(store, queued.run_id))


async def _finished(store: Store, run_id: str) -> bool:
    await store.flush()
    run = await store.get_run(run_id)
    return run is not None and RunStatus(run["status"]).finished


async def test_after_chains_with_the_upstream_outputs(engine: Engine, store: Store, state: TriggerState, tmp_path: Path) -> None:
    ingest = definition("""
        name: ingest
        steps: [{id: load, set: {rows: 42}}]
        outputs: {rows: "{{ steps.load.output.rows }}"}
    """, tmp_path, "ingest")
    report = definition("""
        name: report
        params: {rows: integer, upstream_run_id: string}
        triggers:
          after: [{workflow: ingest, params: {rows: "{{ upstream.outputs.rows }}", upstream_run_id: "{{ upstream.id }}"}}]
        steps: [{id: show, set: {got: "{{ params.rows }}"}}]
    """, tmp_path, "report")
    on_failure = definition("""
        name: alarm
        triggers: {after: {workflow: ingest, status: failed}}
        steps: [{id: ring, log: ring}]
    """, tmp_path, "alarm")
    launcher = Launcher(engine, state, Catalog(ingest, report, on_failure).entries)
    up = await launcher.launch(ingest, {}, trigger="api", manual=True)

    async def report_ran() -> bool:
        rows, _ = await store.list_runs(workflow="report")
        return bool(rows) and RunStatus(rows[0]["status"]).finished
    await until(report_ran)
    row = (await store.list_runs(workflow="report"))[0][0]
    assert row["trigger"] == "after" and row["trigger_ref"] == up.run_id
    assert row["params"] == {"rows": 42, "upstream_run_id": up.run_id} and row["status"] == "succeeded"
    assert (await store.list_runs(workflow="alarm"))[1] == 0  # only on failure
    # followed once: catching up (as after a restart) starts nothing more
    assert await launcher.catch_up_chains() == 0
    assert (await store.list_runs(workflow="report"))[1] == 1


async def test_catch_up_follows_runs_that_ended_while_nobody_chained(engine: Engine, store: Store, state: TriggerState, tmp_path: Path) -> None:
    ingest = definition("name: ingest\nsteps: [{id: a, log: x}]", tmp_path, "ingest")
    report = definition("name: report\ntriggers: {after: [{workflow: ingest}]}\nsteps: [{id: b, log: y}]",
                        tmp_path, "report")
    launcher = Launcher(engine, state, Catalog(ingest, report).entries)
    assert await launcher.catch_up_chains() == 0  # first sight of the follower
    engine.run_ended.clear()  # as if the process died right when the run ended
    await (await engine.start(ingest, {})).wait()
    await store.flush()
    assert (await store.list_runs(workflow="report"))[1] == 0
    assert await launcher.catch_up_chains() == 1
    assert await launcher.catch_up_chains() == 0


async def test_a_ring_of_after_triggers_stops(engine: Engine, store: Store, state: TriggerState, tmp_path: Path) -> None:
    ping = definition("name: ping\ntriggers: {after: [{workflow: pong}]}\nsteps: [{id: a, log: x}]", tmp_path, "ping")
    pong = definition("name: pong\ntriggers: {after: [{workflow: ping}]}\nsteps: [{id: a, log: x}]", tmp_path, "pong")
    launcher = Launcher(engine, state, Catalog(ping, pong).entries)
    await launcher.launch(ping, {}, trigger="api", manual=True)

    async def reached_the_guard() -> bool:
        await store.flush()
        return (await store.list_runs())[1] >= MAX_CHAIN + 1
    await until(reached_the_guard, timeout=60)
    await quiet(engine, launcher)  # one more link, if the guard let it through, has started
    await launcher.close()
    await store.flush()
    assert (await store.list_runs())[1] == MAX_CHAIN + 1


async def test_events_start_every_listener_with_the_data(engine: Engine, store: Store, state: TriggerState, tmp_path: Path) -> None:
    exact = definition("""
        name: on-created
        params: {id: integer}
        triggers: {event: [order.created]}
        steps: [{id: a, set: {id: "{{ params.id }}"}}]
    """, tmp_path, "on-created")
    wildcard = definition("""
        name: on-any-order
        params: {kind: string}
        triggers: {event: [{type: "order.*", params: {kind: "{{ type }}"}}]}
        steps: [{id: a, log: "{{ params.kind }}"}]
    """, tmp_path, "on-any-order")
    deaf = definition("name: deaf\nsteps: [{id: a, log: x}]", tmp_path, "deaf")
    launcher = Launcher(engine, state, Catalog(exact, wildcard, deaf).entries)
    launches = await launcher.emit("order.created", {"id": 7}, event_id="evt-1")
    assert sorted((x.workflow, x.status) for x in launches) == [("on-any-order", "started"), ("on-created", "started")]
    await store.flush()
    for x in launches:
        run = await store.get_run(x.run_id)
        assert run["trigger"] == "event" and run["trigger_ref"] == "evt-1"
    assert (await store.get_run(next(x.run_id for x in launches if x.workflow == "on-created")))["params"] == {"id": 7}
    # data that does not fit the params: rejected with the reason, nothing started
    bad = await launcher.emit("order.created", {"id": "seven", "extra": 1})
    rejected = next(x for x in bad if x.workflow == "on-created")
    assert rejected.status == "rejected" and set(rejected.errors) == {"id", "extra"}
    assert await launcher.emit("user.created", {}) == []


async def test_a_schedule_starts_real_runs_on_a_fake_clock(engine: Engine, store: Store, state: TriggerState, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from runner.triggers.schedules import Scheduler

    wf = definition("""
        name: tick
        params: {day: string}
        triggers: {schedule: [{cron: "0 6 * * *", timezone: Europe/Berlin, params: {day: "{{ scheduled_at[:10] }}"}}]}
        steps: [{id: a, set: {day: "{{ params.day }}"}}]
    """, tmp_path, "tick")
    now = [datetime(2026, 11, 20, 4, 0, tzinfo=UTC).timestamp()]
    scheduler = Scheduler(Launcher(engine, state, Catalog(wf).entries), Catalog(wf).entries, state,
                          clock=lambda: now[0])
    assert await scheduler.tick() == []  # first sight: nothing backfilled
    now[0] += 3 * 86400  # 05:00 in Berlin three days later: two mornings missed, catchup latest fires one
    launches = await scheduler.tick()
    assert [x.status for x in launches] == ["started"]
    await store.flush()
    run = await store.get_run(launches[0].run_id)
    assert run["trigger"] == "schedule" and run["params"] == {"day": "2026-11-22"}
    assert run["trigger_ref"] == "0 6 * * * Europe/Berlin @ 2026-11-22T05:00:00+00:00"  # the slot in UTC
    assert await scheduler.tick() == []  # the same slot never twice
