"""Schedule triggers: `schedule: {cron: "*/5 * * * *", timezone: Europe/Berlin}` starts runs.

A cron is read in its own time zone, so "30 2 * * *" means half past two on the wall
clock there; what that means on the days the clocks change is what croniter says (a
fixed time in the spring gap moves to the first minute after it, a wildcard hour skips
the gap; a time in the repeated autumn hour fires in both passes).

The durable mark per schedule is the newest slot already fired or passed over, in
UTC: it moves by compare-and-set *before* the runs start, so a restart or a second
server never fires a slot twice, and a slot is only ever compared with the mark,
never with the memory of this process.

Treadle can be down for a long time: the slots missed meanwhile (`catchup`) are found
without visiting each one, since '* * * * *' down for a year is half a million of them
and croniter takes ~0.1 ms per step.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from functools import cache, cached_property
from itertools import islice
from typing import TYPE_CHECKING, Any, overload
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

if TYPE_CHECKING:
    from ..dsl.loader import Definition
    from ..dsl.trigger_spec import ScheduleSpec
    from .launcher import Launch, Launcher
    from .trigger_state import TriggerState

log = logging.getLogger("treadle.schedules")

MAX_CATCHUP = 1000  # catchup: all fires at most this many of the newest missed slots
ON_TIME = 60.0  # seconds after its slot a run still counts as on time (catchup: none)
MIN_SLEEP = 0.05
MAX_SLEEP = 30.0  # also picks up clock jumps and definitions nobody poked about

_MINUTE = timedelta(minutes=1)
_DAY = timedelta(days=1)
# "just before" a slot: slots are whole minutes, so nothing lies between the two
_EPSILON = timedelta(microseconds=1)


# -- pure functions ----------------------------------------------------------------


def next_fire(spec: ScheduleSpec, after: datetime) -> datetime:
    """The first slot of `spec` strictly after `after`.

    Args:
        spec: the schedule.
        after: a timezone-aware time (any zone).

    Returns:
        The slot, timezone-aware in the schedule's zone.

    Raises:
        croniter.CroniterBadDateError: the cron never matches (e.g. '0 0 31 2 *').
        ValueError: `after` is naive.
    """
    slot = _Cron(spec).after(_utc(after))
    if slot is None:
        raise CroniterBadDateError(f"'{spec.cron}' never matches a date")
    return slot.astimezone(ZoneInfo(spec.timezone))


def due_slots(spec: ScheduleSpec, last: datetime, now: datetime) -> tuple[list[datetime], SlotSpan]:
    """The slots in (last, now], split by `spec.catchup` into those to fire and those skipped.

    `all` fires every due slot, but at most the MAX_CATCHUP newest (older ones are
    skipped); `latest` fires the newest one; `none` fires the newest one only while it
    is on time (at most ON_TIME seconds old), otherwise nothing. Long gaps cost about
    one croniter step per day with slots, not per slot.

    Args:
        spec: the schedule.
        last: the mark: the newest slot already fired or passed over (timezone-aware).
        now: the current time (timezone-aware).

    Returns:
        (to_fire, skipped): to_fire oldest first, every datetime in the schedule's zone;
        skipped is a lazy sequence (cheap `len`, `[0]` and `[-1]`). Compare slots through
        `.timestamp()` or UTC: Python compares datetimes sharing a tzinfo by wall clock
        (the two 02:30 of an autumn night are equal), and `==` across zones is always
        False for a time in the repeated hour.
    """
    last, now = _utc(last), _utc(now)
    cron = _Cron(spec)
    newest = cron.newest(last, now)
    if newest is None:
        return [], SlotSpan(spec, now, now)
    zone = cron.zone
    if spec.catchup == "latest":
        return [newest.astimezone(zone)], SlotSpan(spec, last, newest - _EPSILON)
    if spec.catchup == "none":
        if (now - newest).total_seconds() <= ON_TIME:
            return [newest.astimezone(zone)], SlotSpan(spec, last, newest - _EPSILON)
        return [], SlotSpan(spec, last, newest)
    # all: step back MAX_CATCHUP slots from the newest, then walk forwards from there,
    # so that a year-long gap never visits its older slots one by one
    start = last
    for slot in cron.backwards(newest + _EPSILON, MAX_CATCHUP):
        if slot <= last:
            break
        start = slot - _EPSILON
    kept = deque(cron.walk(start, now), maxlen=MAX_CATCHUP)
    skipped = SlotSpan(spec, last, kept[0] - _EPSILON) if kept else SlotSpan(spec, now, now)
    return [slot.astimezone(zone) for slot in kept], skipped


class SlotSpan(Sequence[datetime]):
    """The slots of one schedule in (after, until], found on demand.

    A schedule down for a year has half a million of them and the scheduler only needs
    how many and the first and last, so those are computed without listing the rest.
    Items are timezone-aware in the schedule's zone.
    """

    def __init__(self, spec: ScheduleSpec, after: datetime, until: datetime):
        self.spec = spec
        self.after = _utc(after)
        self.until = _utc(until)

    @cached_property
    def _length(self) -> int:
        return _Cron(self.spec).count(self.after, self.until)

    def __len__(self) -> int:
        return self._length

    def __bool__(self) -> bool:
        first = _Cron(self.spec).after(self.after)
        return first is not None and first <= self.until

    def __iter__(self) -> Iterator[datetime]:
        cron = _Cron(self.spec)
        for slot in cron.walk(self.after, self.until):
            yield slot.astimezone(cron.zone)

    @overload
    def __getitem__(self, index: int) -> datetime: ...
    @overload
    def __getitem__(self, index: slice) -> list[datetime]: ...
    def __getitem__(self, index: int | slice) -> datetime | list[datetime]:
        if isinstance(index, slice):
            return list(self)[index]
        cron = _Cron(self.spec)
        if index == -1:
            slot = cron.newest(self.after, self.until)
        else:
            if index < 0:
                index += len(self)
            slots = cron.walk(self.after, self.until)
            slot = next(islice(slots, index, None), None) if index >= 0 else None
        if slot is None:
            raise IndexError("slot index out of range")
        return slot.astimezone(cron.zone)

    def __repr__(self) -> str:
        span = f"({self.after.isoformat()}, {self.until.isoformat()}]"
        return f"SlotSpan({self.spec.cron!r}, {self.spec.timezone}, {span})"


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment!r} has no time zone; schedules need timezone-aware times")
    return moment.astimezone(UTC)


@cache
def _minutes_of_day(cron: str) -> tuple[int, ...]:
    """Every minute of a day (0..1439) the cron fires at on a day it fires on at all."""
    minutes, hours = croniter(cron).expanded[:2]
    minutes = range(60) if "*" in minutes else minutes
    hours = range(24) if "*" in hours else hours
    return tuple(sorted(h * 60 + m for h in hours for m in minutes))


# building a croniter parses the expression (~0.3 ms, the cost of three steps), so each
# thread keeps one per schedule; an instance is stateful, hence not shared by threads
_local = threading.local()


def _croniter(cron: str, zone: ZoneInfo) -> croniter:
    cache_: dict[tuple[str, str], croniter] = _local.__dict__.setdefault("crons", {})
    key = (cron, zone.key)
    if key not in cache_:
        if len(cache_) > 1024:
            cache_.clear()
        cache_[key] = croniter(cron, datetime.now(zone))
    return cache_[key]


class _Cron:
    """croniter for one schedule; takes and returns UTC datetimes (comparisons of times
    sharing a zone ignore `fold`, which would merge the two passes of an autumn hour)."""

    def __init__(self, spec: ScheduleSpec):
        self.cron = spec.cron
        self.zone = ZoneInfo(spec.timezone)
        self._iter = _croniter(spec.cron, self.zone)

    def after(self, moment: datetime) -> datetime | None:
        """The first slot strictly after `moment`; None if the cron never matches."""
        try:
            slot = self._iter.get_next(datetime, start_time=moment.astimezone(self.zone))
        except CroniterBadDateError:
            return None
        return slot.astimezone(UTC)

    def backwards(self, before: datetime, limit: int) -> Iterator[datetime]:
        """Up to `limit` slots strictly before `before`, newest first."""
        start = before.astimezone(self.zone)
        for _ in range(limit):
            try:
                start = self._iter.get_prev(datetime, start_time=start)
            except CroniterBadDateError:
                return
            yield start.astimezone(UTC)

    def walk(self, after: datetime, until: datetime) -> Iterator[datetime]:
        """Every slot in (after, until], oldest first, one croniter step each."""
        slot = self.after(after)
        while slot is not None and slot <= until:
            yield slot
            slot = self.after(slot)

    def newest(self, after: datetime, until: datetime) -> datetime | None:
        """The newest slot in (after, until], or None: one step back from `until`,
        not a walk from `after`."""
        # get_prev searches from the whole minute *before* its start: start at the
        # minute after `until`, so that a slot at exactly `until` counts
        start = until.replace(second=0, microsecond=0) + _MINUTE
        slot = next(self.backwards(start, 1), None)
        if slot is not None and slot > until:  # croniter's backward search around a DST change
            slot = next(self.backwards(slot, 1), None)
        if slot is None:
            return None
        # what fires is the forward walk; around DST changes the backward search of
        # croniter can land off it, so settle on the forward walk's newest slot
        while (following := self.after(slot)) is not None and following <= until:
            slot = following
        return slot if slot > after else None

    def count(self, after: datetime, until: datetime) -> int:
        """How many slots (after, until] holds, without visiting each.

        On a day with one UTC offset the wall clock is the real clock, so a day the cron
        fires on at all holds exactly its minutes of the day: one croniter step per such
        day (which also jumps over the days without slots). Days with a DST change
        follow croniter slot by slot, as it moves and repeats slots there.
        """
        minutes = _minutes_of_day(self.cron)
        total, moment = 0, after
        while (slot := self.after(moment)) is not None and slot <= until:
            day = slot.astimezone(self.zone).date()
            start, end = self._midnight(day), self._midnight(day + _DAY)
            if end - start != _DAY or slot >= end:
                total, moment = total + 1, slot
                continue
            low = (moment - start) / _MINUTE
            high = (min(until, end) - start) / _MINUTE
            total += bisect.bisect_right(minutes, high) - bisect.bisect_right(minutes, low)
            moment = end - _EPSILON
        return total

    def _midnight(self, day: date) -> datetime:
        return datetime(day.year, day.month, day.day, tzinfo=self.zone).astimezone(UTC)


# -- the scheduler -----------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def slot_ref(spec: ScheduleSpec, slot: datetime) -> str:
    """What a run of a schedule slot records as its `trigger_ref` (schedules and
    backfills alike: a backfill finds the slots already run by it)."""
    return f"{spec.cron} {spec.timezone} @ {_iso(slot)}"


def slot_context(spec: ScheduleSpec, slot: datetime) -> dict[str, Any]:
    """What the schedule's `params:` templates see for `slot`."""
    return {"scheduled_at": slot.astimezone(ZoneInfo(spec.timezone)).isoformat(), "cron": spec.cron,
            "timezone": spec.timezone}


def _read_mark(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class Scheduler:
    """Fires the schedules of the definitions it is given, through the launcher.

    Args:
        launcher: starts the runs (`await launcher.fire(definition, trigger=..., ...)`).
        definitions: returns the current definitions; called on every tick, so reloads
            are picked up without telling the scheduler (poke() only wakes it sooner).
        state: where the marks live.
        clock: epoch seconds; tests pass a fake one.
    """

    def __init__(
        self,
        launcher: Launcher,
        definitions: Callable[[], Iterable[Definition]],
        state: TriggerState,
        *,
        clock: Callable[[], float] = time.time,
    ):
        self.launcher = launcher
        self.on_fire: Callable[[str, float], None] | None = None  # (workflow, seconds after its slot)
        self.definitions = definitions
        self.state = state
        self.clock = clock
        self._wake = asyncio.Event()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    async def tick(self) -> list[Launch]:
        """Fire every schedule slot that is due now.

        Returns:
            What the launcher answered for each run fired, in firing order.
        """
        now = self._now()
        launches: list[Launch] = []
        for definition in self.definitions():
            if not definition.valid or definition.spec is None:
                continue
            # schedules with one cron and zone share one mark (ScheduleSpec.key): they
            # are moved once and fired together, or the second would never see a slot due
            groups: dict[str, list[ScheduleSpec]] = {}
            for spec in definition.spec.triggers.schedule:
                groups.setdefault(spec.key, []).append(spec)
            for key, specs in groups.items():
                try:
                    launches += await self._tick_one(definition, key, specs, now)
                except Exception:
                    log.exception("%s: schedule %s failed", definition.name, key)
        return launches

    async def _tick_one(self, definition: Definition, key: str, specs: list[ScheduleSpec],
                        now: datetime) -> list[Launch]:
        name = definition.name
        old = await self.state.mark(name, key)
        last = _read_mark(old)
        if last is None:
            # seen for the first time: slots count from now on, a new schedule (or a
            # changed cron, which is a new key) does not backfill
            if old is not None:
                log.warning("%s: unreadable mark %r for %s; starting from now", name, old, key)
            await self.state.advance_mark(name, key, old, _iso(now))
            return []
        plans = [(spec, *due_slots(spec, last, now)) for spec in specs]
        ends = [fire[-1] if fire else skipped[-1] for _, fire, skipped in plans if fire or skipped]
        newest = max(ends, key=lambda slot: slot.timestamp(), default=None)
        if newest is None:
            return []
        # the mark is committed before any run starts: a crash in between loses these
        # starts instead of repeating them, and a False means another server has them
        if not await self.state.advance_mark(name, key, old, _iso(newest)):
            log.info("%s: %s up to %s was fired by another process", name, key, _iso(newest))
            return []
        launches: list[Launch] = []
        for spec, fire, skipped in plans:
            if skipped:
                log.info("%s: schedule '%s' (%s) skipped %d missed slot(s) from %s to %s "
                         "(catchup: %s)", name, spec.cron, spec.timezone, len(skipped),
                         skipped[0].isoformat(), skipped[-1].isoformat(), spec.catchup)
            for slot in fire:
                if self.on_fire is not None:  # how late the slot fires (metrics)
                    self.on_fire(name, max(0.0, now.timestamp() - slot.timestamp()))
                try:
                    launches.append(await self.launcher.fire(
                        definition, trigger="schedule",
                        ref=slot_ref(spec, slot), mapping=spec.params, default={},
                        context=slot_context(spec, slot),
                    ))
                except Exception:
                    # the mark has moved: this slot is lost, which beats firing it twice
                    log.exception("%s: schedule '%s' (%s) could not start the run for %s",
                                  name, spec.cron, spec.timezone, slot.isoformat())
        return launches

    def next_fires(self, definition: Definition) -> list[dict[str, Any]]:
        """The next slot of each schedule of `definition`, for the dashboard and the API.

        Returns:
            Per schedule `{"cron", "timezone", "catchup", "next"}`, where `next` is an ISO
            8601 time in the schedule's zone, or None when the cron never matches.
            Empty for an invalid definition.
        """
        if not definition.valid or definition.spec is None:
            return []
        now = self._now()
        out = []
        for spec in definition.spec.triggers.schedule:
            cron = _Cron(spec)
            slot = cron.after(now)
            out.append({"cron": spec.cron, "timezone": spec.timezone, "catchup": spec.catchup,
                        "next": slot.astimezone(cron.zone).isoformat() if slot else None})
        return out

    def poke(self) -> None:
        """Wake run_forever now (the definitions changed). Call it on the event loop's
        thread; from another thread use `loop.call_soon_threadsafe(scheduler.poke)`."""
        self._wake.set()

    def _sleep_for(self) -> float:
        now = self._now()
        slots = (_Cron(spec).after(now) for definition in self.definitions()
                 if definition.valid and definition.spec is not None
                 for spec in definition.spec.triggers.schedule)
        earliest = min((slot for slot in slots if slot is not None), default=None)
        wait = MAX_SLEEP if earliest is None else (earliest - now).total_seconds()
        return min(MAX_SLEEP, max(MIN_SLEEP, wait))

    async def run_forever(self) -> None:
        """Tick, sleep until the next slot of any schedule (woken early by poke()), repeat.

        Runs until cancelled; a failing tick is logged and the loop goes on.
        """
        while True:
            # cleared before the tick: a poke during it is not lost, the sleep just ends at once
            self._wake.clear()
            try:
                await self.tick()
            except Exception:
                log.exception("schedule tick failed")
            try:
                delay = self._sleep_for()
            except Exception:
                log.exception("cannot compute the next schedule slot")
                delay = MAX_SLEEP
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
