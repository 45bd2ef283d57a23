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

Admission is decided in the database (runner/storage/admission.py), under a lock
per workflow that every server shares: several servers on one database never run
more than the limit together, and any of them starts the next queued run (by
compare-and-set, oldest first) when a slot frees up. Every server also looks for
queued runs with room every `PUMP_SECONDS`, so a slot freed by a run that ended on
a server that died is used too.

When a run ends the launcher releases the queue of its workflow and starts the
workflows that follow it (`triggers.after`). A follow-up is marked before it
starts (the upstream run id, compare-and-set), so a restart never starts it twice;
runs that ended while nobody could chain them (a crash right at the end) are
caught up at the next start.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import secrets as pysecrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..dsl.loader import Definition
from ..engine.engine import Engine, RunEnded
from ..engine.leases import LEASE_SECONDS
from ..errors import ParamError, TreadleError
from ..storage.admission import MANUAL_TRIGGERS
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


class Launcher:
    """Args:
        engine: starts the runs.
        state: pause flags and trigger marks.
        definitions: the current valid and broken definitions (the catalog).
    """

    def __init__(self, engine: Engine, state: TriggerState, definitions: Callable[[], Iterable[Definition]]):
        self.engine, self.state, self.definitions = engine, state, definitions
        self.store = engine.store
        self._tasks: set[asyncio.Task] = set()
        engine.run_ended.append(self._run_ended)

    # -- starting ------------------------------------------------------------------

    async def launch(self, definition: Definition, params: dict[str, Any] | None, *, trigger: str,
                     ref: str | None = None, from_text: bool = False, manual: bool = False,
                     version: str | None = None, backfill_id: str | None = None) -> Launch:
        """Start, queue or skip a run of `definition` as its concurrency says.

        `version`: run that recorded version of the workflow instead (a rollback);
        without it, a workflow pinned to a version runs that one.
        Raises the engine's errors for bad params, an invalid workflow or missing
        secrets (a caller answering a person shows them).
        """
        name = definition.name
        if not manual and await self.state.is_paused(name):
            return Launch(name, "paused", reason=f"workflow '{name}' is paused; resume it to let triggers start it")
        definition = await self.version_to_run(definition, version)
        limits = definition.spec.concurrency if definition.spec else None
        if limits is None:
            exe = await self.engine.start(definition, params, from_text=from_text, trigger=trigger, ref=ref,
                                          backfill_id=backfill_id)
            return Launch(name, "started", exe.id)
        new = self.engine.new_run(definition, params, from_text=from_text, trigger=trigger, ref=ref,  # bad params raise
                                  backfill_id=backfill_id)
        for _ in range(3):  # cancel_previous: the cancelled runs may lose their slot to another start meanwhile
            async with self.store.admission.admit(name) as adm:
                going, waiting = await adm.running(), await adm.queued()
                if len(going) < limits.limit and not waiting:
                    await adm.insert(new.row)
                    victims = []
                else:
                    busy = f"concurrency limit {limits.limit} reached (going: {', '.join(r['id'] for r in going) or 'none'}"
                    busy += f"; queued: {len(waiting)})" if waiting else ")"
                    if limits.policy == "skip":
                        log.info("%s: %s start skipped: %s", name, trigger, busy)
                        return Launch(name, "skipped", reason=f"skipped: {busy}")
                    if limits.policy == "queue":
                        reason = f"waiting for a free slot: {busy}"
                        queued = self.engine.new_run(definition, params, from_text=from_text, trigger=trigger, ref=ref,
                                                     queued_reason=reason, backfill_id=backfill_id)
                        await adm.insert(queued.row)
                        launch = Launch(name, "queued", queued.row["id"], reason)
                        break
                    # cancel_previous: the oldest going runs make room for the new one
                    victims = [r["id"] for r in going[:max(len(going) - limits.limit + 1, 0)]]
                    await adm.request_cancel(victims, f"cancel_previous of {name}")
            if victims:
                await self._wait_cancelled(victims, name)
                continue
            launch = Launch(name, "started", self.engine.launch(new).id)
            break
        else:
            return Launch(name, "skipped", reason=f"skipped: the runs cancelled to make room were replaced meanwhile "
                                                  f"(concurrency limit {limits.limit})")
        await self.store.changed(launch.run_id)
        return launch

    async def version_to_run(self, definition: Definition, version: str | None = None) -> Definition:
        """The definition a start uses: `version` when asked for, else the version the
        workflow is pinned to, else `definition` (the file's version in force)."""
        if version is None:
            pin = await self.state.pin(definition.name)
            version = pin["version"] if pin else None
        if version is None or version == definition.version:
            return definition
        return await self.engine.definition_at(definition.name, version)

    async def fire(self, definition: Definition, *, trigger: str, ref: str | None, mapping: dict[str, Any] | None,
                   context: dict[str, Any], default: dict[str, Any] | None, manual: bool = False,
                   backfill_id: str | None = None) -> Launch:
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
            return await self.launch(definition, params, trigger=trigger, ref=ref, manual=manual,
                                     backfill_id=backfill_id)
        except TemplateFailed as exc:
            return Launch(name, "rejected", reason=f"the trigger's params: {exc}", errors={"triggers": str(exc)})
        except ParamError as exc:
            return Launch(name, "rejected", reason="; ".join(f"param '{k}': {v}" for k, v in exc.errors.items()),
                          errors=exc.errors)
        except TreadleError as exc:
            return Launch(name, "rejected", reason=str(exc))

    async def active(self, name: str) -> list[dict[str, Any]]:
        """The going runs of `name` that count against its limit (on any server), oldest first."""
        return await self.store.admission.running(name)

    async def _wait_cancelled(self, run_ids: list[str], name: str) -> None:
        """Cancel these runs (here at once, elsewhere through their cancel request) and wait
        until they have ended, at most CANCEL_WAIT_SECONDS."""
        log.info("%s: cancel_previous cancels %s", name, ", ".join(run_ids))
        for run_id in run_ids:
            self.engine.cancel(run_id)
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        while time.monotonic() < deadline:
            await self.store.flush()
            runs = [await self.store.get_run(run_id) for run_id in run_ids]
            if all(r is None or RunStatus(r["status"]).finished for r in runs):
                return
            await asyncio.sleep(0.05)

    # -- the queue -------------------------------------------------------------------

    async def release(self, name: str) -> list[str]:
        """Start queued runs of `name` while there is room; returns their ids."""
        definition = next((d for d in self.definitions() if d.name == name and d.valid), None)
        limits = definition.spec.concurrency if definition is not None and definition.spec else None
        if self.engine.draining:
            return []
        paused = await self.state.is_paused(name)
        claimed: list[dict[str, Any]] = []
        async with self.store.admission.admit(name) as adm:
            going = len(await adm.running())
            for item in await adm.queued():
                if limits is not None and going + len(claimed) >= limits.limit:
                    break
                if paused and item["trigger"] not in MANUAL_TRIGGERS:
                    break
                row = await adm.claim_queued(item["id"], self.engine.owner, LEASE_SECONDS)
                if row is not None:
                    claimed.append(row)
        started = []
        for row in claimed:
            try:
                started.append((await self.engine.start_claimed(row)).id)
            except TreadleError as exc:
                log.error("%s: queued run %s could not start: %s", name, row["id"], exc)
            await self.store.changed(row["id"])
        return started

    async def queued(self, name: str) -> list[str]:
        """Ids of the queued runs of `name`, in the order they will start."""
        return [r["id"] for r in await self.store.admission.queued(name)]

    async def pump(self) -> list[str]:
        """Start queued runs of every workflow that has room (any server's freed slot)."""
        started: list[str] = []
        for name in dict.fromkeys(r["workflow"] for r in await self.store.admission.queued()):
            started += await self.release(name)
        return started

    async def make_room(self, name: str, limit: int) -> None:
        """cancel_previous for a start that does not go through `launch` (a retry)."""
        going = await self.active(name)
        victims = [r["id"] for r in going[:max(len(going) - limit + 1, 0)]]
        if victims:
            async with self.store.admission.admit(name) as adm:
                await adm.request_cancel(victims, f"cancel_previous of {name}")
            await self._wait_cancelled(victims, name)

    async def cancel_queued(self, run_id: str) -> bool:
        """Cancel a queued run; False when it is not queued."""
        if not await self.store.admission.cancel_queued(run_id):
            return False
        await self.store.changed(run_id)
        return True

    # -- when a run ends: its queue, the workflows after it ---------------------------

    def _run_ended(self, ended: RunEnded) -> None:
        task = asyncio.get_running_loop().create_task(self._follow_up(ended), name=f"after-{ended.run_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow_up(self, ended: RunEnded) -> None:
        try:
            if ended.parent_run_id is None:
                await self.store.flush()  # the end of the run is committed: its slot shows free
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
