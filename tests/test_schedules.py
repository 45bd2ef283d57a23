"""Schedule triggers: slot arithmetic (zones, DST, catchup) and the scheduler on a real
SQLite file, driven by a fake clock (no test waits for a real minute to pass)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from runner.dsl.loader import Definition
from runner.dsl.trigger_spec import ScheduleSpec
from runner.errors import Problem
from runner.storage.store import Store
from runner.triggers import schedules
from runner.triggers.schedules import MAX_CATCHUP, Scheduler, due_slots, next_fire
from runner.triggers.trigger_state import TriggerState
from tests.conftest import definition

BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def spec(cron: str, timezone: str = "UTC", catchup: str = "latest", **kw: Any) -> ScheduleSpec:
    return ScheduleSpec(cron=cron, timezone=timezone, catchup=catchup, **kw)


def instants(slots: Any) -> list[datetime]:
    """As UTC: datetimes sharing a zone compare by wall clock (the two autumn 02:30s are
    equal), and `==` across zones is always False for a time in the repeated hour."""
    return [s.astimezone(UTC) for s in slots]


def walk(s: ScheduleSpec, after: datetime, until: datetime) -> list[datetime]:
    """Every slot in (after, until], the slow way: one next_fire at a time."""
    out = []
    while (slot := next_fire(s, after)) <= until:
        out.append(slot.astimezone(UTC))
        after = slot
    return out


class Clock:
    def __init__(self, start: datetime):
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, moment: datetime) -> None:
        self.now = moment.timestamp()


@dataclasses.dataclass
class FakeLaunch:
    workflow: str
    status: str = "started"
    run_id: str | None = None
    reason: str | None = None


class FakeLauncher:
    """Records what it was asked to fire; raises for the workflows named in `fail_for`."""

    def __init__(self, fail_for: tuple[str, ...] = (), on_fire: Any = None):
        self.calls: list[dict[str, Any]] = []
        self.fail_for = fail_for
        self.on_fire = on_fire
        self.fired = asyncio.Event()

    async def fire(self, definition: Definition, *, trigger: str, ref: str | None,
                   mapping: dict[str, Any] | None, context: dict[str, Any],
                   default: dict[str, Any] | None) -> FakeLaunch:
        if self.on_fire is not None:
            await self.on_fire(definition, context)
        if definition.name in self.fail_for:
            raise RuntimeError(f"launcher broke on {definition.name}")
        self.calls.append({"workflow": definition.name, "trigger": trigger, "ref": ref,
                           "mapping": mapping, "context": context, "default": default})
        self.fired.set()
        return FakeLaunch(definition.name, run_id=f"run-{len(self.calls)}")

    def refs(self, workflow: str | None = None) -> list[str]:
        return [c["ref"] for c in self.calls if workflow is None or c["workflow"] == workflow]


def workflow(tmp_path: Path, name: str = "wf",
             schedule: str = '{cron: "*/5 * * * *"}') -> Definition:
    return definition(f"""
        name: {name}
        triggers:
          schedule: {schedule}
        steps:
          - {{id: a, log: hi}}
        """, tmp_path, name)


def ref(cron: str, zone: str, slot: datetime) -> str:
    return f"{cron} {zone} @ {slot.astimezone(UTC).isoformat()}"


# -- next_fire -----------------------------------------------------------------------


def test_next_fire_is_strictly_after_and_zone_aware():
    s = spec("*/5 * * * *")
    assert next_fire(s, utc(2026, 1, 5, 10, 2, 30)) == utc(2026, 1, 5, 10, 5)
    assert next_fire(s, utc(2026, 1, 5, 10, 5)) == utc(2026, 1, 5, 10, 10)  # strictly after
    assert next_fire(s, utc(2026, 1, 5, 10, 4, 59, 999999)) == utc(2026, 1, 5, 10, 5)
    assert next_fire(s, utc(2026, 1, 5, 10, 2)).tzinfo is not None
    with pytest.raises(ValueError, match="time zone"):
        next_fire(s, datetime(2026, 1, 5, 10, 2))


@pytest.mark.parametrize(("zone", "after", "expected"), [
    # 09:30 in Berlin in winter (+01:00): today's 09:00 is gone, tomorrow's is 08:00 UTC
    ("Europe/Berlin", utc(2026, 1, 15, 8, 30), "2026-01-16T09:00:00+01:00"),
    ("Europe/Berlin", utc(2026, 7, 15, 6, 30), "2026-07-15T09:00:00+02:00"),
    ("America/New_York", utc(2026, 7, 15, 12, 0), "2026-07-15T09:00:00-04:00"),
    ("Asia/Kolkata", utc(2026, 7, 15, 0, 0), "2026-07-15T09:00:00+05:30"),
    ("UTC", utc(2026, 7, 15, 0, 0), "2026-07-15T09:00:00+00:00"),
])
def test_next_fire_reads_the_cron_in_its_zone(zone: str, after: datetime, expected: str):
    slot = next_fire(spec("0 9 * * *", zone), after)
    assert slot.isoformat() == expected
    assert slot.utcoffset() == datetime.fromisoformat(expected).utcoffset()


def test_next_fire_accepts_after_in_any_zone():
    s = spec("0 9 * * *", "Europe/Berlin")
    after = utc(2026, 1, 15, 7, 59)
    assert next_fire(s, after) == next_fire(s, after.astimezone(ZoneInfo("Asia/Tokyo")))


# -- DST (croniter's definition) ---------------------------------------------------------


def test_spring_forward_moves_a_missing_time_to_the_end_of_the_gap():
    # 2026-03-29 in Berlin: 02:00 +01:00 is followed by 03:00 +02:00; 02:30 does not exist
    s = spec("30 2 * * *", "Europe/Berlin")
    slots = walk(s, utc(2026, 3, 27, 12), utc(2026, 3, 31, 12))
    assert [x.astimezone(BERLIN).isoformat() for x in slots] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",  # croniter: the first minute after the gap, once
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]


def test_spring_forward_hourly_skips_the_missing_hour():
    s = spec("0 * * * *", "Europe/Berlin")
    day = walk(s, utc(2026, 3, 28, 22, 59), utc(2026, 3, 29, 21, 59))  # the local day 29th
    local = [x.astimezone(BERLIN).strftime("%H:%M%z") for x in day]
    assert len(day) == 23 and "02:00+0100" not in local
    assert local[:3] == ["00:00+0100", "01:00+0100", "03:00+0200"]
    assert len(set(day)) == len(day)


def test_fall_back_fires_a_repeated_time_in_both_passes():
    # 2026-10-25 in Berlin: 03:00 +02:00 becomes 02:00 +01:00, so 02:30 happens twice;
    # croniter 7 fires both (an hour apart): two different instants, each once
    s = spec("30 2 * * *", "Europe/Berlin")
    slots = walk(s, utc(2026, 10, 23, 12), utc(2026, 10, 26, 12))
    assert [x.isoformat() for x in slots] == [
        "2026-10-24T00:30:00+00:00",
        "2026-10-25T00:30:00+00:00",  # 02:30 +02:00
        "2026-10-25T01:30:00+00:00",  # 02:30 +01:00
        "2026-10-26T01:30:00+00:00",
    ]
    assert next_fire(s, utc(2026, 10, 25, 0, 30)).isoformat() == "2026-10-25T02:30:00+01:00"


def test_fall_back_hourly_has_25_hours():
    s = spec("0 * * * *", "Europe/Berlin")
    day = walk(s, utc(2026, 10, 24, 21, 59), utc(2026, 10, 25, 22, 59))  # the local day 25th
    assert len(day) == 25 and len(set(day)) == 25
    assert day == sorted(day)
    local = [x.astimezone(BERLIN).strftime("%H:%M%z") for x in day]
    assert local[2:5] == ["02:00+0200", "02:00+0100", "03:00+0100"]


DST_NIGHTS = {"Europe/Berlin": [utc(2026, 3, 28, 20), utc(2026, 10, 24, 20)],
              "America/New_York": [utc(2026, 3, 8, 2), utc(2026, 10, 31, 2)]}


@pytest.mark.parametrize("zone", sorted(DST_NIGHTS))
@pytest.mark.parametrize("cron", ["30 2 * * *", "0 * * * *", "*/20 * * * *", "15,45 2 * * *",
                                  "0 2,3 * * *", "*/7 1-3 * * 0", "59 1 * * *", "0 0 * * 0"])
def test_due_slots_agree_with_walking_croniter(zone: str, cron: str,
                                               monkeypatch: pytest.MonkeyPatch):
    # due_slots finds and counts slots without walking them; around both DST nights of
    # 2026, for many windows, it must name exactly the slots a walk names
    monkeypatch.setattr(schedules, "MAX_CATCHUP", 3)
    for night in DST_NIGHTS[zone]:
        slow = walk(spec(cron, zone), night, night + timedelta(days=4))
        for start_min in range(0, 60 * 48, 241):
            last = night + timedelta(minutes=start_min, seconds=30)
            for length in (1, 61, 1500):
                now = last + timedelta(minutes=length)
                due = [x for x in slow if last < x <= now]
                on_time = bool(due) and (now - due[-1]).total_seconds() <= 60
                expected = {"all": due[-3:], "latest": due[-1:],
                            "none": due[-1:] if on_time else []}
                for catchup, fired in expected.items():
                    fire, skipped = due_slots(spec(cron, zone, catchup), last, now)
                    listed = instants(skipped)
                    assert instants(fire) == fired, (catchup, last, now)
                    assert listed + fired == due, (catchup, last, now)
                    assert len(skipped) == len(listed), (catchup, last, now)
                    if listed:
                        assert instants([skipped[0], skipped[-1]]) == [listed[0], listed[-1]]


# -- catchup -----------------------------------------------------------------------------


def test_due_slots_catchup_after_one_hour_outage():
    s = "*/5 * * * *"
    last, now = utc(2026, 1, 5, 10, 0), utc(2026, 1, 5, 11, 2)  # 10:05 .. 11:00 missed: 12 slots
    fire, skipped = due_slots(spec(s, catchup="all"), last, now)
    assert instants(fire) == [utc(2026, 1, 5, 10, 5) + timedelta(minutes=5 * i) for i in range(12)]
    assert len(skipped) == 0 and not skipped
    fire, skipped = due_slots(spec(s, catchup="latest"), last, now)
    assert instants(fire) == [utc(2026, 1, 5, 11, 0)] and len(skipped) == 11
    assert skipped[0] == utc(2026, 1, 5, 10, 5) and skipped[-1] == utc(2026, 1, 5, 10, 55)
    fire, skipped = due_slots(spec(s, catchup="none"), last, now)  # 11:00 is 2 minutes late
    assert fire == [] and len(skipped) == 12 and skipped[-1] == utc(2026, 1, 5, 11, 0)
    fire, _ = due_slots(spec(s, catchup="none"), last, utc(2026, 1, 5, 11, 1))  # 60 s: on time
    assert instants(fire) == [utc(2026, 1, 5, 11, 0)]
    fire, skipped = due_slots(spec(s), utc(2026, 1, 5, 11, 0), utc(2026, 1, 5, 11, 4, 59))
    assert fire == [] and not skipped and len(skipped) == 0


@pytest.mark.parametrize("catchup", ["all", "latest", "none"])
def test_a_year_down_stays_cheap_and_counts_every_slot(catchup: str):
    # 525,600 minutes: found without walking them (a walk would take about a minute)
    s = spec("* * * * *", "Europe/Berlin", catchup)
    last, now = utc(2025, 1, 1), utc(2026, 1, 1, 0, 0, 30)
    fire, skipped = due_slots(s, last, now)
    expected_fired = {"all": MAX_CATCHUP, "latest": 1, "none": 1}[catchup]
    assert len(fire) == expected_fired
    assert len(fire) + len(skipped) == 525_600  # the spring gap and the autumn repeat cancel out
    assert fire[-1] == utc(2026, 1, 1, 0, 0)
    assert skipped[0] == utc(2025, 1, 1, 0, 1)
    if catchup == "all":
        assert instants(fire) == [utc(2026, 1, 1) - timedelta(minutes=999 - i) for i in range(1000)]
        assert skipped[-1] == fire[0] - timedelta(minutes=1)


# -- the scheduler --------------------------------------------------------------------------


async def marks(store: Store, name: str = "wf") -> dict[str, str]:
    return await TriggerState(store).marks(name)


async def test_first_sight_stores_now_and_fires_nothing(store: Store, tmp_path: Path):
    clock = Clock(utc(2026, 1, 5, 10, 2, 30))
    launcher = FakeLauncher()
    sched = Scheduler(launcher, lambda: [workflow(tmp_path)], TriggerState(store), clock=clock)
    assert await sched.tick() == []
    assert await marks(store) == {"schedule:*/5 * * * *|UTC": "2026-01-05T10:02:30+00:00"}
    clock.set(utc(2026, 1, 5, 10, 4, 59))
    assert await sched.tick() == [] and launcher.calls == []
    clock.set(utc(2026, 1, 5, 10, 5, 1))
    launches = await sched.tick()
    assert [x.run_id for x in launches] == ["run-1"]
    assert launcher.calls == [{
        "workflow": "wf", "trigger": "schedule",
        "ref": "*/5 * * * * UTC @ 2026-01-05T10:05:00+00:00", "mapping": None, "default": {},
        "context": {"scheduled_at": "2026-01-05T10:05:00+00:00", "cron": "*/5 * * * *",
                    "timezone": "UTC"},
    }]
    assert await marks(store) == {"schedule:*/5 * * * *|UTC": "2026-01-05T10:05:00+00:00"}


async def test_fire_passes_params_and_the_slot_in_its_zone(store: Store, tmp_path: Path):
    wf = workflow(tmp_path, schedule='{cron: "0 9 * * *", timezone: Europe/Berlin, '
                                     'params: {day: "{{ scheduled_at[:10] }}"}}')
    clock = Clock(utc(2026, 7, 1, 6, 0))
    launcher = FakeLauncher()
    sched = Scheduler(launcher, lambda: [wf], TriggerState(store), clock=clock)
    await sched.tick()
    clock.set(utc(2026, 7, 1, 7, 0, 5))
    await sched.tick()
    [call] = launcher.calls
    assert call["mapping"] == {"day": "{{ scheduled_at[:10] }}"}
    assert call["context"]["scheduled_at"] == "2026-07-01T09:00:00+02:00"
    assert call["ref"] == "0 9 * * * Europe/Berlin @ 2026-07-01T07:00:00+00:00"


async def test_mark_is_committed_before_the_run_starts(store: Store, db_url: str, tmp_path: Path):
    seen: list[str | None] = []

    async def look(definition: Definition, context: dict[str, Any]) -> None:
        async with Store(db_url) as other:  # another connection: sees committed data only
            seen.append(await TriggerState(other).mark("wf", "schedule:*/5 * * * *|UTC"))

    clock = Clock(utc(2026, 1, 5, 10, 0))
    wf = workflow(tmp_path)
    sched = Scheduler(FakeLauncher(on_fire=look), lambda: [wf], TriggerState(store), clock=clock)
    await sched.tick()
    clock.set(utc(2026, 1, 5, 10, 5))
    await sched.tick()
    assert seen == ["2026-01-05T10:05:00+00:00"]


@pytest.mark.parametrize(("catchup", "fired"), [
    ("all", [f"2026-01-05T{10 + (m // 60)}:{m % 60:02d}:00+00:00" for m in range(5, 65, 5)]),
    ("latest", ["2026-01-05T11:00:00+00:00"]),
    ("none", []),
])
async def test_catchup_after_an_outage(store: Store, tmp_path: Path, catchup: str,
                                       fired: list[str]):
    wf = workflow(tmp_path, schedule=f'{{cron: "*/5 * * * *", catchup: {catchup}}}')
    clock = Clock(utc(2026, 1, 5, 10, 0))
    launcher = FakeLauncher()
    sched = Scheduler(launcher, lambda: [wf], TriggerState(store), clock=clock)
    await sched.tick()
    clock.set(utc(2026, 1, 5, 11, 2))  # down for an hour; the 11:00 slot is 2 minutes old
    await sched.tick()
    assert launcher.refs() == [f"*/5 * * * * UTC @ {x}" for x in fired]
    assert await marks(store) == {"schedule:*/5 * * * *|UTC": "2026-01-05T11:00:00+00:00"}
    await sched.tick()  # the same moment again: nothing new
    clock.set(utc(2026, 1, 5, 11, 5, 20))  # back to normal: on time for every catchup
    await sched.tick()
    assert launcher.refs()[len(fired):] == ["*/5 * * * * UTC @ 2026-01-05T11:05:00+00:00"]


async def test_a_restart_never_fires_a_slot_twice(store: Store, db_url: str, tmp_path: Path):
    wf = workflow(tmp_path)
    clock = Clock(utc(2026, 1, 5, 10, 0))
    first = FakeLauncher()
    await Scheduler(first, lambda: [wf], TriggerState(store), clock=clock).tick()
    clock.set(utc(2026, 1, 5, 10, 7))
    await Scheduler(first, lambda: [wf], TriggerState(store), clock=clock).tick()
    assert first.refs() == ["*/5 * * * * UTC @ 2026-01-05T10:05:00+00:00"]
    # a new process: new store, state and scheduler on the same file, same moment
    second = FakeLauncher()
    async with Store(db_url) as again:
        restarted = Scheduler(second, lambda: [wf], TriggerState(again), clock=clock)
        assert await restarted.tick() == []
        clock.set(utc(2026, 1, 5, 10, 12))
        await restarted.tick()
    assert second.refs() == ["*/5 * * * * UTC @ 2026-01-05T10:10:00+00:00"]


async def test_two_schedulers_on_one_database_fire_each_slot_once(store: Store, db_url: str,
                                                                 tmp_path: Path):
    wf = workflow(tmp_path)
    clock = Clock(utc(2026, 1, 5, 10, 0))
    a, b = FakeLauncher(), FakeLauncher()
    async with Store(db_url) as other:
        one = Scheduler(a, lambda: [wf], TriggerState(store), clock=clock)
        two = Scheduler(b, lambda: [wf], TriggerState(other), clock=clock)
        await asyncio.gather(one.tick(), two.tick())
        for minute in range(5, 35, 5):
            clock.set(utc(2026, 1, 5, 10, minute, 10))
            await asyncio.gather(one.tick(), two.tick())
    refs = a.refs() + b.refs()
    slots = [f"2026-01-05T10:{m:02d}:00+00:00" for m in range(5, 35, 5)]
    assert sorted(refs) == [f"*/5 * * * * UTC @ {slot}" for slot in slots]


async def test_a_lost_compare_and_set_fires_nothing(store: Store, tmp_path: Path):
    # what the loser of a race sees: it read the mark before the winner moved it
    wf = workflow(tmp_path)
    clock = Clock(utc(2026, 1, 5, 10, 0))
    state = TriggerState(store)
    await Scheduler(FakeLauncher(), lambda: [wf], state, clock=clock).tick()
    stale = await state.mark("wf", "schedule:*/5 * * * *|UTC")
    clock.set(utc(2026, 1, 5, 10, 5))
    winner = FakeLauncher()
    await Scheduler(winner, lambda: [wf], state, clock=clock).tick()

    async def stale_mark(workflow: str, key: str) -> str | None:
        return stale

    loser_state = TriggerState(store)
    loser_state.mark = stale_mark  # type: ignore[method-assign]
    loser = FakeLauncher()
    assert await Scheduler(loser, lambda: [wf], loser_state, clock=clock).tick() == []
    assert len(winner.calls) == 1 and loser.calls == []


@pytest.mark.parametrize(("cron", "night"), [
    ("30 2 * * *", utc(2026, 3, 28, 22)), ("0 * * * *", utc(2026, 3, 28, 22)),
    ("*/30 * * * *", utc(2026, 3, 28, 22)), ("15,45 2 * * *", utc(2026, 3, 28, 22)),
    ("30 2 * * *", utc(2026, 10, 24, 22)), ("0 * * * *", utc(2026, 10, 24, 22)),
    ("*/30 * * * *", utc(2026, 10, 24, 22)),
])
async def test_scheduler_over_a_dst_night_fires_what_croniter_defines_once(
        store: Store, tmp_path: Path, cron: str, night: datetime):
    wf = workflow(tmp_path, schedule=f'{{cron: "{cron}", timezone: Europe/Berlin}}')
    clock = Clock(night)
    launcher = FakeLauncher()
    sched = Scheduler(launcher, lambda: [wf], TriggerState(store), clock=clock)
    moment = night
    while moment < night + timedelta(hours=7):
        clock.set(moment)
        await sched.tick()
        moment += timedelta(minutes=7, seconds=13)  # never on a slot, often between two passes
    expected = walk(spec(cron, "Europe/Berlin"), night, moment - timedelta(minutes=7, seconds=13))
    assert launcher.refs() == [ref(cron, "Europe/Berlin", x) for x in expected]
    assert len(set(launcher.refs())) == len(launcher.refs()) > 0
    if cron == "30 2 * * *" and night.month == 10:
        scheduled = [c["context"]["scheduled_at"] for c in launcher.calls]
        assert scheduled == ["2026-10-25T02:30:00+02:00", "2026-10-25T02:30:00+01:00"]


async def test_an_invalid_definition_is_ignored(store: Store, tmp_path: Path):
    good = workflow(tmp_path)
    broken = dataclasses.replace(workflow(tmp_path, "broken"),
                                 problems=[Problem("broken.yaml", 1, 1, "a newer edit broke it")])
    assert broken.spec is not None and not broken.valid
    clock = Clock(utc(2026, 1, 5, 10, 0))
    launcher = FakeLauncher()
    sched = Scheduler(launcher, lambda: [broken, good], TriggerState(store), clock=clock)
    await sched.tick()
    clock.set(utc(2026, 1, 5, 10, 5))
    await sched.tick()
    assert [c["workflow"] for c in launcher.calls] == ["wf"]
    assert await marks(store, "broken") == {}
    assert sched.next_fires(broken) == []


async def test_a_launcher_error_does_not_stop_other_workflows(store: Store, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture):
    defs = [workflow(tmp_path, "bad"), workflow(tmp_path, "good")]
    clock = Clock(utc(2026, 1, 5, 10, 0))
    launcher = FakeLauncher(fail_for=("bad",))
    sched = Scheduler(launcher, lambda: defs, TriggerState(store), clock=clock)
    await sched.tick()
    clock.set(utc(2026, 1, 5, 10, 5))
    with caplog.at_level(logging.ERROR, logger="treadle.schedules"):
        launches = await sched.tick()
    assert [x.workflow for x in launches] == ["good"]
    assert [c["workflow"] for c in launcher.calls] == ["good"]
    assert any("bad" in r.getMessage() and r.exc_info for r in caplog.records)
    # the failed slot is not fired again: the mark moved before the launcher was asked
    assert await marks(store, "bad") == {"schedule:*/5 * * * *|UTC": "2026-01-05T10:05:00+00:00"}


async def test_a_launcher_error_does_not_stop_the_next_slots(store: Store, tmp_path: Path):
    async def fail_first(definition: Definition, context: dict[str, Any]) -> None:
        if context["scheduled_at"] == "2026-01-05T10:05:00+00:00":
            raise RuntimeError("database busy")

    wf = workflow(tmp_path, schedule='{cron: "*/5 * * * *", catchup: all}')
    clock = Clock(utc(2026, 1, 5, 10, 0))
    launcher = FakeLauncher(on_fire=fail_first)
    sched = Scheduler(launcher, lambda: [wf], TriggerState(store), clock=clock)
    await sched.tick()
    clock.set(utc(2026, 1, 5, 10, 16))
    launches = await sched.tick()
    assert len(launches) == 2
    assert [c["context"]["scheduled_at"][11:16] for c in launcher.calls] == ["10:10", "10:15"]


async def test_two_schedules_with_one_cron_both_fire(store: Store, tmp_path: Path):
    wf = workflow(tmp_path, schedule='[{cron: "*/5 * * * *", params: {region: eu}}, '
                                     '{cron: "*/5 * * * *", params: {region: us}}]')
    clock = Clock(utc(2026, 1, 5, 10, 0))
    launcher = FakeLauncher()
    sched = Scheduler(launcher, lambda: [wf], TriggerState(store), clock=clock)
    await sched.tick()
    clock.set(utc(2026, 1, 5, 10, 5))
    await sched.tick()
    assert [c["mapping"] for c in launcher.calls] == [{"region": "eu"}, {"region": "us"}]


def test_next_fires_for_the_dashboard(tmp_path: Path):
    wf = workflow(tmp_path, schedule='[{cron: "0 9 * * *", timezone: Europe/Berlin, '
                                     'catchup: none}, {cron: "0 0 29 2 1"}]')
    clock = Clock(utc(2026, 1, 5, 10, 0))
    sched = Scheduler(FakeLauncher(), lambda: [wf], None, clock=clock)  # type: ignore[arg-type]
    assert sched.next_fires(wf) == [
        {"cron": "0 9 * * *", "timezone": "Europe/Berlin", "catchup": "none",
         "next": "2026-01-06T09:00:00+01:00"},
        # the 29th or a Monday of February (cron ORs the two day fields)
        {"cron": "0 0 29 2 1", "timezone": "UTC", "catchup": "latest", "next": "2026-02-02T00:00:00+00:00"},
    ]
    clock.set(utc(2026, 7, 6, 7, 0))  # summer: the same 09:00, another offset
    assert sched.next_fires(wf)[0]["next"] == "2026-07-07T09:00:00+02:00"


# -- run_forever ----------------------------------------------------------------------------


async def wait_for(condition: Any, limit: float = 2.0) -> None:
    """Poll in small real steps; fails instead of hanging when the condition never holds."""
    for _ in range(int(limit / 0.01)):
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_run_forever_wakes_on_poke(store: Store, tmp_path: Path):
    clock = Clock(utc(2026, 1, 5, 10, 0))
    launcher = FakeLauncher()
    state = TriggerState(store)
    sched = Scheduler(launcher, lambda: [workflow(tmp_path)], state, clock=clock)
    task = asyncio.create_task(sched.run_forever())
    try:
        await wait_for(lambda: state.mark("wf", "schedule:*/5 * * * *|UTC"))
        # the next slot is 5 fake minutes away: the loop sleeps its longest (30 real s)
        # unless poked
        clock.set(utc(2026, 1, 5, 10, 5, 1))
        sched.poke()
        await asyncio.wait_for(launcher.fired.wait(), 1.0)
        assert launcher.refs() == ["*/5 * * * * UTC @ 2026-01-05T10:05:00+00:00"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_forever_sleeps_until_the_next_slot(store: Store, tmp_path: Path):
    clock = Clock(utc(2026, 1, 5, 10, 0))
    launcher = FakeLauncher()
    asked = 0

    def definitions() -> list[Definition]:
        nonlocal asked
        asked += 1
        return [wf]

    wf = workflow(tmp_path)
    sched = Scheduler(launcher, definitions, TriggerState(store), clock=clock)
    await sched.tick()
    clock.set(utc(2026, 1, 5, 10, 4, 59, 900000))  # 0.1 s before the slot
    asked = 0
    task = asyncio.create_task(sched.run_forever())
    try:
        await wait_for(lambda: asked >= 2)  # ticked (nothing due) and chose how long to sleep
        clock.set(utc(2026, 1, 5, 10, 5, 0, 100000))  # time passes; nobody pokes
        await asyncio.wait_for(launcher.fired.wait(), 1.0)
        assert launcher.refs() == ["*/5 * * * * UTC @ 2026-01-05T10:05:00+00:00"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_sleep_is_bounded(tmp_path: Path):
    clock = Clock(utc(2026, 1, 5, 10, 0))
    nothing = Scheduler(FakeLauncher(), lambda: [], None, clock=clock)  # type: ignore[arg-type]
    assert nothing._sleep_for() == schedules.MAX_SLEEP
    hourly = Scheduler(FakeLauncher(), lambda: [workflow(tmp_path, schedule='{cron: "0 * * * *"}')],
                       None, clock=clock)  # type: ignore[arg-type]
    assert hourly._sleep_for() == schedules.MAX_SLEEP
    clock.set(utc(2026, 1, 5, 10, 59, 59, 999000))
    assert hourly._sleep_for() == schedules.MIN_SLEEP


async def test_run_forever_survives_a_failing_tick(store: Store, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture):
    calls = 0

    def definitions() -> list[Definition]:
        nonlocal calls
        calls += 1
        if calls <= 2:  # the first tick and the sleep computation after it
            raise RuntimeError("catalog not ready")
        return [workflow(tmp_path)]

    clock = Clock(utc(2026, 1, 5, 10, 0))
    state = TriggerState(store)
    sched = Scheduler(FakeLauncher(), definitions, state, clock=clock)
    with caplog.at_level(logging.ERROR, logger="treadle.schedules"):
        task = asyncio.create_task(sched.run_forever())
        try:
            await wait_for(lambda: calls >= 2)
            sched.poke()
            await wait_for(lambda: state.mark("wf", "schedule:*/5 * * * *|UTC"))
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert any("catalog not ready" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)
