"""Every start of a run goes through here: pause, concurrency, queue, chaining, events.

The engine starts runs; the launcher decides *whether* and *when*. Triggers call
`fire` (it renders the trigger's `params:` templates first), people and the API
call `launch` with `manual=True`. Per workflow:

- a paused workflow is started by no trigger (a person still can);
- `concurrency: {limit, policy}` holds across every way of starting: past the limit
  a new run is queued (`queued`, with the reason, FIFO), skipped, or the oldest
  running ones are cancelled first. Runs of a `workflow` step (child runs) belong
  to their parent and are not counted;
- queued runs are rows in the database: after a restart they are still queued,
  and start as slots free up.

When a run ends the launcher releases the queue of its workflow and starts the
workflows that follow it (`triggers.after`). A follow-up is marked before it
starts (the upstream run id, compare-and-set), so a restart never starts it twice;
runs that ended while nobody could chain them (a crash right at the end) are
caught up at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import secrets as pysecrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..dsl.loader import Definition
from ..engine.engine import Engine, RunEnded
from ..engine.run import RunExecution
from ..errors import ParamError, TreadleError
from ..storage.models import RunStatus
from ..templates import TemplateFailed, render
from .trigger_state import TriggerState

log = logging.getLogger("treadle.launcher")

STRICT_TRIGGERS = frozenset({"webhook", "event"})  # their payload comes from outside: unknown keys are errors
MAX_CHAIN = 20  # `after` links followed from one manual run; stops a ring of workflows starting forever
CATCH_UP_SECONDS = 24 * 3600
CANCEL_WAIT_SECONDS = 30.0


def new_event_id() -> str:
    return f"evt-{int(time.time() * 1000):011x}{pysecrets.token_hex(4)}"


@dataclass
class Launch:
    """What became of one request to start a run."""

    workflow: str
    status: str  # started | queued | skipped | paused | rejected
    run_id: str | None = None
    reason: str | None = None
    errors: dict[str, str] | None = None  # rejected for its params: per param (or `triggers`) what is wrong

    def as_dict(self) -> dict[str, Any]:
        out = {"workflow": self.workflow, "status": self.status, "run_id": self.run_id, "reason": self.reason}
        return {**out, "errors": self.errors} if self.errors else out


@dataclass
class _Queued:
    run_id: str
    definition: Definition
    params: dict[str, Any]
    trigger: str
    manual: bool


@dataclass
class _Lane:
    """One workflow's admission state."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queue: deque[_Queued] = field(default_factory=deque)


class Launcher:
    """Args:
        engine: starts the runs.
        state: pause flags and trigger marks.
        definitions: the current valid and broken definitions (the catalog).
    """

    def __init__(self, engine: Engine, state: TriggerState, definitions: Callable[[], Iterable[Definition]]):
        self.engine, self.state, self.definitions = engine, state, definitions
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task] = set()
        engine.run_ended.append(self._run_ended)

    def _lane(self, name: str) -> _Lane:
        return self._lanes.setdefault(name, _Lane())

    # -- starting ------------------------------------------------------------------

    async def launch(self, definition: Definition, params: dict[str, Any] | None, *, trigger: str,
                     ref: str | None = None, from_text: bool = False, manual: bool = False) -> Launch:
        """Start, queue or skip a run of `definition` as its concurrency says.

        Raises the engine's errors for bad params, an invalid workflow or missing
        secrets (a caller answering a person shows them).
        """
        name = definition.name
        if not manual and await self.state.is_paused(name):
            return Launch(name, "paused", reason=f"workflow '{name}' is paused; resume it to let triggers start it")
        limits = definition.spec.concurrency if definition.spec else None
        lane = self._lane(name)
        async with lane.lock:
            if limits is None:
                exe = await self.engine.start(definition, params, from_text=from_text, trigger=trigger, ref=ref)
                return Launch(name, "started", exe.id)
            active = self.active(name)
            if len(active) < limits.limit and not lane.queue:
                exe = await self.engine.start(definition, params, from_text=from_text, trigger=trigger, ref=ref)
                return Launch(name, "started", exe.id)
            busy = f"concurrency limit {limits.limit} reached (going: {', '.join(e.id for e in active) or 'none'}"
            busy += f"; queued: {len(lane.queue)})" if lane.queue else ")"
            if limits.policy == "skip":
                self.engine.prepare(definition, params, from_text=from_text)  # bad params still say so
                log.info("%s: %s start skipped: %s", name, trigger, busy)
                return Launch(name, "skipped", reason=f"skipped: {busy}")
            if limits.policy == "queue":
                reason = f"waiting for a free slot: {busy}"
                run_id, checked = self.engine.enqueue(definition, params, trigger=trigger, ref=ref, reason=reason,
                                                      from_text=from_text)
                lane.queue.append(_Queued(run_id, definition, checked, trigger, manual))
                return Launch(name, "queued", run_id, reason)  # committed in order; callers flush
            # cancel_previous: the oldest going runs make room for the new one
            self.engine.prepare(definition, params, from_text=from_text)
            await self._cancel_oldest(active, len(active) - limits.limit + 1, name)
            exe = await self.engine.start(definition, params, from_text=from_text, trigger=trigger, ref=ref)
            return Launch(name, "started", exe.id)

    async def fire(self, definition: Definition, *, trigger: str, ref: str | None, mapping: dict[str, Any] | None,
                   context: dict[str, Any], default: dict[str, Any] | None) -> Launch:
        """Start a run for a trigger: params from the trigger's `params:` templates
        rendered over `context`, else from `default`. Never raises for a bad start:
        the Launch says `rejected` and why."""
        name = definition.name
        try:
            if mapping is not None:
                params = render(mapping, context)
            else:
                params = dict(default or {})
                if trigger not in STRICT_TRIGGERS and definition.spec is not None:
                    params = {k: v for k, v in params.items() if k in definition.spec.params}
            return await self.launch(definition, params, trigger=trigger, ref=ref)
        except TemplateFailed as exc:
            return Launch(name, "rejected", reason=f"the trigger's params: {exc}", errors={"triggers": str(exc)})
        except ParamError as exc:
            return Launch(name, "rejected", reason="; ".join(f"param '{k}': {v}" for k, v in exc.errors.items()),
                          errors=exc.errors)
        except TreadleError as exc:
            return Launch(name, "rejected", reason=str(exc))

    def active(self, name: str) -> list[RunExecution]:
        """The going runs of `name` that count against its limit, oldest first."""
        return sorted((e for e in self.engine.runs.values()
                       if e.definition.name == name and e.parent_run_id is None),
                      key=lambda e: e.started_at)

    async def _cancel_oldest(self, active: list[RunExecution], count: int, name: str) -> None:
        victims = active[:max(count, 0)]
        for exe in victims:
            exe.cancel()
        if victims:
            log.info("%s: cancel_previous cancelled %s", name, ", ".join(e.id for e in victims))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in victims), return_exceptions=True),
                                       CANCEL_WAIT_SECONDS)

    # -- the queue -------------------------------------------------------------------

    async def load_queued(self) -> int:
        """Take up the queued runs recorded in the database (after a restart)."""
        rows, _ = await self.engine.store.list_runs(status=RunStatus.QUEUED.value, limit=100_000)
        taken = 0
        for row in sorted(rows, key=lambda r: r["created_at"]):
            definition = await self.engine.stored_definition(row)
            lane = self._lane(row["workflow"])
            if definition is None or not definition.valid or any(q.run_id == row["id"] for q in lane.queue):
                continue
            lane.queue.append(_Queued(row["id"], definition, row["params"] or {}, row["trigger"],
                                      row["trigger"] in ("manual", "api", "retry")))
            taken += 1
        for name in list(self._lanes):
            await self.release(name)
        return taken

    async def release(self, name: str) -> list[str]:
        """Start queued runs of `name` while there is room; returns their ids."""
        lane = self._lane(name)
        started: list[str] = []
        async with lane.lock:
            paused = await self.state.is_paused(name)
            while lane.queue and not self.engine.draining:
                item = lane.queue[0]
                limits = item.definition.spec.concurrency if item.definition.spec else None
                if limits is not None and len(self.active(name)) >= limits.limit:
                    break
                if paused and not item.manual:
                    break
                lane.queue.popleft()
                try:
                    exe = await self.engine.start(item.definition, item.params, trigger=item.trigger,
                                                  queued_id=item.run_id)
                    started.append(exe.id)
                except TreadleError as exc:  # e.g. a secret removed meanwhile: the run fails, the queue goes on
                    self.engine.store.update_run({"id": item.run_id, "status": RunStatus.FAILED.value,
                                                  "error": f"could not start from the queue: {exc}",
                                                  "reason": None, "finished_at": time.time()})
        return started

    def queued(self, name: str) -> list[str]:
        """Ids of the queued runs of `name`, in the order they will start."""
        return [q.run_id for q in self._lane(name).queue]

    def queued_ids(self) -> set[str]:
        return {q.run_id for lane in self._lanes.values() for q in lane.queue}

    async def make_room(self, name: str, limit: int) -> None:
        """cancel_previous for a start that does not go through `launch` (a retry)."""
        async with self._lane(name).lock:
            active = self.active(name)
            await self._cancel_oldest(active, len(active) - limit + 1, name)

    async def cancel_queued(self, run_id: str) -> bool:
        """Cancel a queued run; False when it is not queued here."""
        for lane in self._lanes.values():
            for item in list(lane.queue):
                if item.run_id == run_id:
                    lane.queue.remove(item)
                    now = time.time()
                    self.engine.store.update_run({"id": run_id, "status": RunStatus.CANCELLED.value, "reason": None,
                                                  "error": "cancelled while queued", "finished_at": now})
                    await self.engine.store.flush()
                    return True
        return False

    # -- when a run ends: its queue, the workflows after it ---------------------------

    def _run_ended(self, ended: RunEnded) -> None:
        task = asyncio.get_running_loop().create_task(self._follow_up(ended), name=f"after-{ended.run_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow_up(self, ended: RunEnded) -> None:
        try:
            if ended.parent_run_id is None:
                await self.release(ended.workflow)
            await self.chain(ended.run_id, ended.workflow, ended.status, ended.outputs, ended.trigger)
        except Exception:
            log.exception("after run %s ended", ended.run_id)

    async def chain(self, run_id: str, workflow: str, status: str, outputs: Any, trigger: str,
                    only: Callable[[str], bool] = lambda follower: True) -> list[Launch]:
        """Start the workflows that follow `workflow` ending with `status` (those
        `only` lets through)."""
        followers = [(d, spec) for d in self.definitions() if d.valid and d.spec and only(d.name)
                     for spec in d.spec.triggers.after if spec.workflow == workflow and status in spec.status]
        if not followers or self.engine.draining:
            return []
        if trigger == "after" and await self._chain_depth(run_id) >= MAX_CHAIN:
            log.error("%s: not following run %s: %d workflows already followed each other (a ring of "
                      "`after` triggers?)", workflow, run_id, MAX_CHAIN)
            return []
        upstream = {"id": run_id, "workflow": workflow, "status": status, "outputs": outputs}
        launches = []
        for definition, spec in followers:
            if not await self.state.advance_mark(definition.name, f"after:{run_id}", None, "fired"):
                continue  # already followed (another server, or before a restart)
            launch = await self.fire(definition, trigger="after", ref=run_id, mapping=spec.params,
                                     context={"upstream": upstream},
                                     default={"upstream_run_id": run_id, "upstream_outputs": outputs})
            if launch.status == "rejected":
                log.error("%s: could not start after %s run %s: %s", definition.name, workflow, run_id, launch.reason)
            launches.append(launch)
        return launches

    async def _chain_depth(self, run_id: str) -> int:
        await self.engine.store.flush()  # the runs of the chain may still sit in the writer's queue
        depth = 0
        run = await self.engine.store.get_run(run_id)
        while run is not None and run["trigger"] == "after" and run["trigger_ref"] and depth < MAX_CHAIN:
            depth += 1
            run = await self.engine.store.get_run(run["trigger_ref"])
        return depth

    async def catch_up_chains(self, now: float | None = None) -> int:
        """Follow runs that ended in the last day without their followers having been
        started (the process stopped between the two). Returns how many were started.

        Only runs that ended after a follower was first seen count: adding an `after`
        trigger does not start it for yesterday's runs."""
        now = time.time() if now is None else now
        pairs = {(d.name, spec.workflow) for d in self.definitions() if d.valid and d.spec
                 for spec in d.spec.triggers.after}
        since: dict[tuple[str, str], float] = {}
        for follower, upstream in pairs:
            key = f"after-since:{upstream}"
            first = await self.state.mark(follower, key)
            if first is None:
                await self.state.advance_mark(follower, key, None, repr(now))
                first = repr(now)
            since[(follower, upstream)] = float(first)
        started = 0
        for upstream in {u for _, u in pairs}:
            rows, _ = await self.engine.store.list_runs(workflow=upstream, limit=1000)
            for row in rows:
                finished = row["finished_at"]
                if finished is None or finished < now - CATCH_UP_SECONDS:
                    continue
                launches = await self.chain(
                    row["id"], upstream, row["status"], row["outputs"], row["trigger"],
                    only=lambda follower, f=finished, u=upstream: since.get((follower, u), now) <= f)
                started += sum(launch.status == "started" for launch in launches)
        return started

    # -- events --------------------------------------------------------------------

    async def emit(self, event_type: str, data: Any, *, event_id: str | None = None,
                   only: set[str] | None = None) -> list[Launch]:
        """Start every workflow listening to `event_type` (of `only`, if given), with
        `data` as params."""
        event_id = event_id or new_event_id()
        context = {"type": event_type, "data": data, "id": event_id}
        launches = []
        for definition in self.definitions():
            if not definition.valid or definition.spec is None or (only is not None and definition.name not in only):
                continue
            spec = next((e for e in definition.spec.triggers.event if fnmatch.fnmatchcase(event_type, e.type)), None)
            if spec is not None:
                launches.append(await self.fire(definition, trigger="event", ref=event_id, mapping=spec.params,
                                                context=context, default=data if isinstance(data, dict) else {}))
        return launches

    async def close(self) -> None:
        """Let follow-ups already going finish (they only start runs; quick)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
