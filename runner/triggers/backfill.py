"""Backfills: the runs a schedule would have made for each slot of a past range.

`treadle backfill nightly --from 2026-11-01 --to 2026-11-30` walks the slots of the
workflow's schedule in that range (the schedule's own cron code, runner/triggers/
schedules.py) and starts one run per slot, with the params the schedule's `params:`
templates make for it (`{{ scheduled_at }}`), `trigger: backfill`, the slot as
`trigger_ref` (as a scheduled run has it) and the backfill's id on the run. At most
`parallel` of its runs go at once; slots that already have a run that succeeded or
is going (by the schedule or an earlier backfill) are skipped unless `rerun`.

A backfill is a row (runner/storage/backfills.py), driven by the leader (the server
that runs schedules), so it survives restarts and never has two drivers: each round,
oldest slot first, the cursor moves by compare-and-set before the slot's run starts
(a crash in between loses that one start, as for schedules). Paused, it starts no new
run (its runs going finish); cancelled, its runs going are cancelled too.
"""

from __future__ import annotations

import asyncio
import logging
import secrets as pysecrets
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from itertools import islice
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from ..dsl.trigger_spec import ScheduleSpec
from ..errors import BadRequest, RunConflict, WorkflowInvalid
from ..limits import MAX_BACKFILL_PARALLEL, MAX_BACKFILL_SLOTS
from .schedules import SlotSpan, slot_context, slot_ref

if TYPE_CHECKING:
    from ..dsl.loader import Definition
    from .launcher import Launcher

log = logging.getLogger("treadle.backfill")

RUNNING, PAUSED, CANCELLED, DONE = "running", "paused", "cancelled", "done"
LOOKAHEAD = 200  # slots read per round past those that start (to skip slots already run)
_EPSILON = timedelta(microseconds=1)


def new_backfill_id() -> str:
    return f"bf-{int(time.time() * 1000):011x}{pysecrets.token_hex(3)}"


def parse_bound(text: str, zone: ZoneInfo, *, end: bool) -> datetime:
    """A range bound: a day (`2026-11-01`: the whole day, in the schedule's zone) or a
    time (`2026-11-01T06:00`, zone of the schedule unless it says one). Raises BadRequest."""
    which = "to" if end else "from"
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=zone)
            return moment + timedelta(days=1) - _EPSILON if end else moment
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{which}: '{text}' is not a day (2026-11-01) or a time (2026-11-01T06:00)",
                         "INVALID_RANGE") from None
    return moment.replace(tzinfo=zone) if moment.tzinfo is None else moment


def schedule_of(definition: Definition, index: int | None) -> ScheduleSpec:
    """The schedule a backfill follows: the only one, or `index` (0-based) of several."""
    if not definition.valid or definition.spec is None:
        raise WorkflowInvalid(definition.name, definition.problems)
    schedules = definition.spec.triggers.schedule
    if not schedules:
        raise RunConflict(f"workflow '{definition.name}' has no schedule to backfill; add `triggers: {{schedule: "
                          "[{cron: ...}]}` (a backfill makes the runs a schedule would have made)", "NO_SCHEDULE")
    if index is None:
        if len(schedules) > 1:
            raise BadRequest(f"workflow '{definition.name}' has {len(schedules)} schedules; say which to backfill "
                             f"with schedule=0..{len(schedules) - 1} ({', '.join(s.cron for s in schedules)})",
                             "SCHEDULE_REQUIRED")
        index = 0
    if not 0 <= index < len(schedules):
        raise BadRequest(f"schedule={index}: workflow '{definition.name}' has schedules 0..{len(schedules) - 1}",
                         "INVALID_SCHEDULE")
    return schedules[index]


def plan_backfill(definition: Definition, start: str, end: str, *, parallel: int = 1,
                  schedule: int | None = None) -> tuple[ScheduleSpec, datetime, datetime, int]:
    """Check a backfill before it is recorded: (schedule, first moment, last moment, slots).
    Raises BadRequest (a range that is empty, backwards or too big), RunConflict (no schedule)."""
    spec = schedule_of(definition, schedule)
    zone = ZoneInfo(spec.timezone)
    low, high = parse_bound(start, zone, end=False), parse_bound(end, zone, end=True)
    if high < low:
        raise BadRequest(f"the range ends ({end}) before it starts ({start})", "INVALID_RANGE")
    if not 1 <= parallel <= MAX_BACKFILL_PARALLEL:
        raise BadRequest(f"parallel={parallel}: give 1 to {MAX_BACKFILL_PARALLEL}", "INVALID_PARALLEL")
    count = len(SlotSpan(spec, low - _EPSILON, high))
    if count == 0:
        raise BadRequest(f"schedule '{spec.cron}' ({spec.timezone}) has no slot from {start} to {end}", "NO_SLOTS")
    if count > MAX_BACKFILL_SLOTS:
        raise BadRequest(f"{start} to {end} holds {count:,} slots of '{spec.cron}', more than the {MAX_BACKFILL_SLOTS:,} "
                         "one backfill may start; split the range into several backfills", "BACKFILL_TOO_LARGE")
    return spec, low, high, count


class Backfills:
    """Creates backfills and drives the running ones (on the leader).

    Args:
        launcher: starts the runs (pins, concurrency, the queue apply as to any start).
        lookup: the current definition of a workflow by name (the catalog).
        leading: whether this server leads (only the leader drives backfills).
        cancel: cancels a run wherever it is driven (web/services.cancel_run).
    """

    def __init__(self, launcher: Launcher, lookup: Callable[[str], Definition | None],
                 leading: Callable[[], bool], cancel: Callable[[str], Any]):
        self.launcher, self.lookup, self.leading, self.cancel_run = launcher, lookup, leading, cancel
        self.store = launcher.store
        self._pumping = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        launcher.engine.run_ended.append(self._run_ended)

    async def create(self, definition: Definition, start: str, end: str, *, parallel: int = 1, rerun: bool = False,
                     schedule: int | None = None, by: str | None = None) -> dict[str, Any]:
        """Record a backfill (it starts within a second, on the leader). Raises BadRequest,
        RunConflict (the workflow has no schedule), WorkflowInvalid."""
        spec, low, high, count = plan_backfill(definition, start, end, parallel=parallel, schedule=schedule)
        row = {"id": new_backfill_id(), "workflow": definition.name, "cron": spec.cron, "timezone": spec.timezone,
               "range_from": low.timestamp(), "range_to": high.timestamp(), "slots": count, "parallel": parallel,
               "rerun": rerun, "status": RUNNING, "cursor": None, "started": 0, "skipped": 0,
               "created_at": time.time(), "created_by": by, "finished_at": None}
        await self.store.backfills.create(row)
        self.poke()
        return row

    async def set_state(self, backfill_id: str, status: str) -> bool:
        """Pause, resume or cancel; False when it was not in a state that allows it
        (cancelling also cancels its runs that go on)."""
        allowed = {PAUSED: [RUNNING], RUNNING: [PAUSED], CANCELLED: [RUNNING, PAUSED]}[status]
        changed = await self.store.backfills.set_status(backfill_id, status, only_from=allowed,
                                                        finished_at=time.time() if status == CANCELLED else None)
        if changed and status == CANCELLED:
            await self.store.flush()
            for run_id in await self.store.backfills.unfinished_runs(backfill_id):
                try:
                    await self.cancel_run(run_id)
                except Exception:  # one run that cannot be cancelled must not keep the others going
                    log.exception("backfill %s: could not cancel run %s", backfill_id, run_id)
        if changed and status == RUNNING:
            self.poke()
        return changed

    # -- driving -----------------------------------------------------------------------

    def poke(self) -> None:
        """Drive the running backfills now (not at the next round)."""
        if not self.leading():
            return
        task = asyncio.get_running_loop().create_task(self.pump(), name="treadle-backfill")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _run_ended(self, ended: Any) -> None:
        if ended.trigger == "backfill":  # a slot of its parallelism is free
            self.poke()

    async def pump(self) -> int:
        """One round over every running backfill (the leader only); returns how many runs
        it started."""
        if not self.leading() or self.launcher.engine.draining:
            return 0
        started = 0
        async with self._pumping:  # rounds never overlap: each counts what the previous started
            await self.store.flush()
            rows, _ = await self.store.backfills.list(status=RUNNING, limit=1000)
            for row in sorted(rows, key=lambda r: r["created_at"]):
                try:
                    started += await self._advance(row)
                except Exception:
                    log.exception("backfill %s of %s failed a round", row["id"], row["workflow"])
        return started

    async def _advance(self, row: dict[str, Any]) -> int:
        definition = self.lookup(row["workflow"])
        going = len(await self.store.backfills.unfinished_runs(row["id"]))
        room = row["parallel"] - going
        spec = _schedule_like(definition, row)
        cursor = row["cursor"]
        after = datetime.fromtimestamp(cursor, UTC) if cursor is not None else \
            datetime.fromtimestamp(row["range_from"], UTC) - _EPSILON
        until = datetime.fromtimestamp(row["range_to"], UTC)
        started = 0
        while room > 0:
            batch = list(islice(SlotSpan(spec, after, until), room + LOOKAHEAD))
            if not batch:
                if going + started == 0:
                    await self.store.backfills.set_status(row["id"], DONE, only_from=[RUNNING],
                                                          finished_at=time.time())
                    log.info("backfill %s of %s done", row["id"], row["workflow"])
                return started
            refs = [slot_ref(spec, slot) for slot in batch]
            done = set() if row["rerun"] else await self.store.backfills.slots_run(row["workflow"], refs)
            to_start: list[tuple[datetime, str]] = []
            skipped, newest = 0, after
            for slot, ref in zip(batch, refs, strict=True):
                if len(to_start) == room:
                    break
                newest = slot
                if ref in done:
                    skipped += 1
                else:
                    to_start.append((slot, ref))
            # the cursor moves first: a crash before the runs start loses them, never repeats them
            if not await self.store.backfills.advance(row["id"], cursor, newest.timestamp(),
                                                      started=len(to_start), skipped=skipped):
                return started  # paused or cancelled meanwhile (or another driver moved it)
            cursor, after = newest.timestamp(), newest
            for slot, ref in to_start:
                await self._start(definition, spec, row, slot, ref)
            started += len(to_start)
            room -= len(to_start)
        return started

    async def _start(self, definition: Definition | None, spec: ScheduleSpec, row: dict[str, Any], slot: datetime,
                     ref: str) -> None:
        if definition is None:
            log.error("backfill %s: workflow %s is gone; slot %s not started", row["id"], row["workflow"], ref)
            return
        launch = await self.launcher.fire(definition, trigger="backfill", ref=ref, mapping=spec.params, default={},
                                          context={**slot_context(spec, slot), "backfill": row["id"]}, manual=True,
                                          backfill_id=row["id"])
        if launch.status not in ("started", "queued"):
            log.error("backfill %s of %s: slot %s %s: %s", row["id"], row["workflow"], slot.isoformat(),
                      launch.status, launch.reason)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)


def _schedule_like(definition: Definition | None, row: dict[str, Any]) -> ScheduleSpec:
    """The workflow's schedule the backfill follows (for its `params:`), or, when the
    file no longer has it, a schedule of the same cron and zone without params."""
    if definition is not None and definition.valid and definition.spec is not None:
        for spec in definition.spec.triggers.schedule:
            if spec.cron == row["cron"] and spec.timezone == row["timezone"]:
                return spec
    return ScheduleSpec(cron=row["cron"], timezone=row["timezone"])
