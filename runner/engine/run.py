"""One run in flight: the ready-step loop, trigger rules, retries, foreach, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .. import limits
from ..dispatch.job import StepJob, hide_placeholders, placeholders, resources_of
from ..dsl.dag import Dag, build_dag, steps_of
from ..dsl.definition import RetrySpec, StepSpec
from ..dsl.durations import format_duration
from ..errors import StepFailed
from ..security.tokens import namespace_of
from ..steps import REGISTRY, StepContext, StepOutcome
from ..steps.base import StepServices
from ..storage.models import RunStatus, StepStatus
from ..templates import Masker, TemplateFailed, render, truthy
from .circuit import Permit, admit_call, settle
from .logsink import LogSink

if TYPE_CHECKING:
    from ..dsl.loader import Definition
    from .journal import Journal
    from .locks import SharedLocks
    from .mocks import Mocks
    from .replay import Recorded, Replay

log = logging.getLogger("treadle.run")
NO_RETRY = RetrySpec()
_FIELD_ATTR = {"with": "with_", "json": "json_body"}


INTERRUPTED = "interrupted: Treadle stopped while this ran; it runs again when the run resumes"


@dataclass
class Resumed:
    """What the database says an interrupted run had done, for resuming it."""

    finished: dict[str, tuple[StepStatus, dict[str, Any]]] = field(default_factory=dict)
    next_attempt: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)  # -> (attempt, failures)
    items: dict[str, dict[int, Any]] = field(default_factory=dict)  # foreach outputs already made
    failed_items: dict[str, dict[int, str]] = field(default_factory=dict)  # foreach items failed for good: error
    interrupted: list[str] = field(default_factory=list)  # attempts that were running (their cluster tokens)

    def attempt(self, step_id: str, item: int) -> tuple[int, int]:
        return self.next_attempt.get((step_id, item), (1, 0))


class _WouldRun(Exception):
    """A replay `--offline` reached a step whose input changed: reported, not executed."""

    def __init__(self, shown_input: Any):
        super().__init__("would run")
        self.input = shown_input


class _Failed(Exception):
    """A step failed for good (after its retries); its rows are already recorded."""

    def __init__(self, error: StepFailed):
        super().__init__(str(error))
        self.error = error


def handler_dag(definition: Definition, key: str, steps: list[StepSpec]) -> Dag:
    """The graph of one handler list (`on_failure`, ...), built once per definition."""
    cache = definition.__dict__.setdefault("_handler_dags", {})
    if key not in cache:
        dag = build_dag(steps_of(steps))
        assert dag is not None  # checked when the file loaded
        cache[key] = dag
    return cache[key]


def raw_inputs(definition: Definition, step: StepSpec) -> dict[str, Any]:
    """The step's kind fields as written (templates not rendered), cached per definition."""
    cache = definition.__dict__.setdefault("_raw_inputs", {})
    if step.id not in cache:
        kind = REGISTRY[step.kind]
        names = {_FIELD_ATTR.get(f, f) for f in kind.fields}
        cache[step.id] = step.model_dump(by_alias=True, include=names, exclude_none=True)
    return cache[step.id]


class Dispatcher(Protocol):
    """runner/dispatch/: local (the default) or a Dask cluster."""

    def remote(self, kind: str, executor: str | None) -> bool: ...
    async def execute(self, job: StepJob, ctx: StepContext, placement_timeout: float | None = None) -> StepOutcome: ...


class LeaseCheck(Protocol):
    async def confirm(self, run_id: str) -> bool:
        """Whether this process still holds the run's lease (the LeaseKeeper answers)."""
        ...


class RunHost(StepServices, Protocol):
    """What a run needs of the engine that drives it (the Engine is one)."""

    owner: str  # this process's name on the runs it drives
    leases: LeaseCheck
    dispatcher: Dispatcher  # where run, python and http steps execute
    locks: SharedLocks  # shared locks (`locks:`) of runs and steps

    def journal(self, run_id: str, epoch: int) -> Journal:
        """Where the run's writes go, fenced by its lease (this process, `epoch`)."""
        ...

    def run_finished(self, exe: RunExecution) -> None:
        """The run ended (not suspended): chaining, queues, notifications."""
        ...

    def step_event(self, exe: RunExecution, event: str, detail: dict[str, Any]) -> None:
        """`step.succeeded`, `step.failed` (for good), `step.retrying`: for notifications."""
        ...


class RunExecution:
    def __init__(
        self, engine: RunHost, run_id: str, definition: Definition, params: dict[str, Any],
        secrets: dict[str, str], reuse: dict[str, dict[str, Any]], *, depth: int = 0,
        parent: RunExecution | None = None, resumed: Resumed | None = None, epoch: int = 1,
    ):
        assert definition.spec is not None and definition.dag is not None
        self.engine = engine
        self.epoch = epoch  # of the lease this process drives the run under
        self.journal = engine.journal(run_id, epoch)
        self.lease_seen = resumed is not None  # a renewal has confirmed the lease (see LeaseKeeper)
        self.created_monotonic = time.monotonic()
        self.id, self.definition, self.params, self.depth = run_id, definition, params, depth
        self.spec, self.dag = definition.spec, definition.dag
        self.steps = {s.id: s for s in (*self.spec.steps, *self.spec.on_failure, *self.spec.on_success,
                                         *self.spec.finally_)}
        self._left = len(self.dag.order)  # steps of the current phase not finished yet
        self._completed_at: dict[str, float] = {}  # when main steps succeeded (compensation order)
        self._compensate_on_cancel = False
        self._encoded_env: dict[bytes, bytes] | None = None
        self.reuse = reuse
        self.secrets = secrets
        # a child run also masks its parent's secrets: they reach it through params
        self.mask_values: list[str] = [*secrets.values(), *(parent.mask_values if parent else ())]
        self.mask = Masker(self.mask_values)
        self.status = RunStatus.RUNNING
        self.trigger, self.started_at = "manual", time.time()  # set by Engine.start
        self.trigger_ref: str | None = None  # what exactly started it (a schedule slot: `cron zone @ utc`)
        self.finished_at: float | None = None  # set by _finish
        self.parent_run_id = parent.id if parent else None
        self.error: str | None = None
        self.outputs: Any = None
        self.state: dict[str, StepStatus] = {}
        self.results: dict[str, dict[str, Any]] = {}  # what templates see as steps.<id>
        self._sizes: dict[str, int] = {}  # bytes of each step's output as JSON, measured when it was made
        self._remaining = {sid: len(deps) for sid, deps in self.dag.deps.items()}
        self._sem = asyncio.Semaphore(self.spec.max_parallel)
        self._tasks: dict[str, asyncio.Task] = {}
        self._all_done: asyncio.Future | None = None
        self._stopping: StepStatus | None = None
        self._root_failure: tuple[str, str] | None = None
        self._cascading: set[str] = set()  # skipped steps whose dependents are skipped too (`skip: cascade`)
        self._inputs: dict[str, dict[int, Any]] = {}  # step -> item (-1: the step) -> its last input, masked
        self._cancel_request: tuple[str, RunStatus] | None = None
        self._task: asyncio.Task | None = None
        self._started = False  # _main is running (a task cancelled before it starts never runs it)
        self._done = asyncio.Event()
        self._done_callbacks: list[Callable[[], None]] = []
        self.resumed = resumed  # what an earlier process finished, when resuming after a crash
        self.draining = False  # shutting down: start no new step
        self._suspending = False
        self.context: dict[str, Any] = self._plain_context()  # `env` is rendered when the run starts
        self.replay: Replay | None = None  # set by Engine.launch for `treadle replay` (replay.py)
        self.mocks: Mocks | None = None  # set by Engine.launch for `treadle test` (mocks.py)

    @property
    def busy(self) -> bool:
        """Some step is executing now (an approval waiting for a person does not count:
        a shutdown need not wait for it, the run resumes waiting after the restart)."""
        running = sum(not t.done() for t in self._tasks.values())
        return running > self.engine.approvals.waiting(self.id)

    def lose_lease(self, reason: str) -> None:
        """Another server drives this run now (or may, any moment): stop its running
        steps at once and write nothing more for it; it is the new owner's."""
        if self.journal.closed:
            return
        log.warning("run %s of %s: %s; this process stops driving it", self.id, self.definition.name, reason)
        self.journal.close()
        self._suspending = True  # even a cancel, a timeout or a wind-up in progress gives way
        self._cancel_request = (INTERRUPTED, RunStatus.RUNNING)
        if self._task is None or self._task.done():
            return
        self._task.cancel()
        if not self._started:  # it never ran: nothing to stop
            self._set_done()
            return
        for task in self._tasks.values():
            task.cancel()

    def suspend(self) -> None:
        """Stop the running steps and leave the run unfinished, for the next start to resume."""
        if self._task is not None and not self._task.done() and self._cancel_request is None:
            self._suspending = True
            self._cancel_request = (INTERRUPTED, RunStatus.RUNNING)
            if self._started and self._stopping is None:
                self._task.cancel()

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._main(), name=f"run-{self.id}")

    def on_done(self, callback: Callable[[], None]) -> None:
        self._done_callbacks.append(callback)

    async def wait(self) -> RunStatus:
        await self._done.wait()
        return self.status

    def cancel(self, reason: str = "cancelled by request", status: RunStatus = RunStatus.CANCELLED,
               *, compensate: bool = False) -> None:
        """Stop the run; with `compensate`, undo what succeeded (like a failure would)."""
        if self._task is None or self._task.done() or self._cancel_request is not None:
            return
        self._cancel_request = (reason, status)
        self._compensate_on_cancel = compensate
        # before _main starts it sees the request itself; once the run is stopping
        # (timed out, ...) a cancel must not interrupt the stopping
        if self._started and self._stopping is None:
            self._task.cancel()

    async def _main(self) -> None:
        self._started = True
        try:
            await self._drive()
        finally:
            if not self._done.is_set():  # _drive was interrupted: never leave the run `running`
                self._finish(RunStatus.FAILED, "internal error: the run was interrupted while stopping", None)
            if self._uses_locks and not self.journal.closed and self.status.finished:
                # an end _drive did not reach: what it held is free anyway (claims count
                # only while a run is driven); this lets this process's waiters go at once
                with contextlib.suppress(Exception):
                    await self.engine.locks.release(self.id, self.epoch)

    @property
    def _uses_locks(self) -> bool:
        return bool(self.spec.locks) or any(s.locks for s in self.steps.values())

    def _waiting_for(self, message: str | None) -> None:
        """Show (None: clear) what a lock keeps the run waiting for, as its `reason`."""
        self.journal.run(reason=self.mask.text(message) if message else None)

    @contextlib.asynccontextmanager
    async def _step_locks(self, step: StepSpec) -> AsyncIterator[None]:
        """Hold the step's `locks:` while it runs (every attempt and item)."""
        if not step.locks or self.replay is not None:
            yield
            return
        try:
            await self.engine.locks.take(self.id, self.epoch, step.id, step.locks, self._waiting_for)
            yield
        finally:
            if not self.journal.closed:
                await self.engine.locks.release(self.id, self.epoch, step.id)

    async def _drive(self) -> None:
        status, error = RunStatus.SUCCEEDED, None
        try:
            if self._cancel_request is not None:  # cancelled before it began
                raise asyncio.CancelledError
            self.context = self._base_context()
            gate = self._preconditions() if self.resumed is None else None
            if gate is not None:  # before any step: nothing ran, nothing to undo or wind up
                self._skip_all()
                ended, why = gate
                if ended == RunStatus.SKIPPED:
                    self._finish(ended, None, None, reason=why)
                else:
                    self._finish(ended, why, None)
                return
            deadline, timed_out = self._deadline()
            async with asyncio.timeout_at(deadline):
                if self.spec.locks and self.replay is None:  # held from the first step to the run's end
                    await self.engine.locks.take(self.id, self.epoch, "", self.spec.locks, self._waiting_for)
                await self._execute_graph()
        except TimeoutError:
            status, error = RunStatus.FAILED, timed_out
            await self._stop_all()
        except asyncio.CancelledError:
            if self._suspending:
                await self._suspend_steps()
                return
            reason, status = self._cancel_request or ("cancelled", RunStatus.CANCELLED)
            error = reason
            await self._stop_all()
        except TemplateFailed as exc:
            status, error = RunStatus.FAILED, f"env: {exc}"
            await self._stop_all()
        except Exception as exc:  # a bug in Treadle: record it rather than leave the run running
            log.exception("run %s crashed", self.id)
            status, error = RunStatus.FAILED, f"internal error: {type(exc).__name__}: {exc}"
            await self._stop_all()
        if status == RunStatus.SUCCEEDED:
            failure = self._success_failure()
            if failure is not None:
                status, error = RunStatus.FAILED, failure
        outputs = self._outputs() if status == RunStatus.SUCCEEDED else None
        if isinstance(outputs, _OutputsFailed):
            status, error, outputs = RunStatus.FAILED, str(outputs), None
        try:
            compensated = await self._wind_up(status, error)
        except asyncio.CancelledError:
            if not self._suspending:
                raise
            await self._suspend_steps()  # the run resumes later and winds up again
            return
        if self._uses_locks and not self.journal.closed:  # before it says it ended: its waiters may go
            with contextlib.suppress(Exception):
                await self.engine.locks.release(self.id, self.epoch)
        self._finish(status, error, outputs, compensated)

    def _preconditions(self) -> tuple[RunStatus, str] | None:
        """None when every precondition holds; else how the run ends before any step:
        (skipped, the reason) for the first false one, (failed, the error) for one that
        cannot be rendered."""
        for i, pre in enumerate(self.spec.preconditions):
            try:
                if truthy(render(pre.check, self.context)):
                    continue
                written = pre.check if isinstance(pre.check, str) else str(pre.check).lower()
                why = render(pre.message, self.context) if pre.message is not None else f"{written} is false"
            except TemplateFailed as exc:
                return RunStatus.FAILED, f"preconditions[{i}]: {exc}"
            return RunStatus.SKIPPED, f"precondition not met: {why}"
        return None

    def _skip_all(self) -> None:
        """Every main step ends `skipped` without running (a precondition was not met)."""
        for sid in self.dag.order:
            self._record_not_run(sid, StepStatus.SKIPPED)
            self.state[sid] = StepStatus.SKIPPED

    def _success_failure(self) -> str | None:
        """Why the run failed by its `success` policy (None: it succeeded). `all`: no step
        failed for good; `any_of`: one of those steps succeeded; `min_succeeded`: enough did."""
        policy = self.spec.success
        succeeded = [sid for sid in self.definition.dag.order  # type: ignore[union-attr]
                     if self.state.get(sid) == StepStatus.SUCCEEDED]
        if policy.any_of is not None:
            if any(sid in succeeded for sid in policy.any_of):
                return None
            states = ", ".join(f"{sid} {self.state.get(sid, StepStatus.PENDING).value}" for sid in policy.any_of)
            return f"success policy any_of: none of its steps succeeded ({states})"
        if policy.min_succeeded is not None:
            if len(succeeded) >= policy.min_succeeded:
                return None
            return (f"success policy min_succeeded: {len(succeeded)} step{'s' if len(succeeded) != 1 else ''} "
                    f"succeeded, {policy.min_succeeded} needed")
        if self._root_failure:
            sid, message = self._root_failure
            return f"step '{sid}' failed: {message}"
        return None

    def _deadline(self) -> tuple[float, str]:
        """When the main steps must be done (event loop time), and the error saying so.

        Counted from the run's start, so a run resumed after a restart does not get
        more time; a run without `timeout` has the default limit."""
        limit = self.spec.timeout
        if limit is None:
            limit = limits.DEFAULT_RUN_TIMEOUT
            why = (f"run timed out after {limits.duration_text(limit)}, the limit for a run without `timeout`; "
                   f"set the workflow's `timeout` (at most {limits.duration_text(limits.MAX_RUN_TIMEOUT)}) "
                   "if it needs longer")
        else:
            why = f"run timed out after {format_duration(limit)}"
        left = self.started_at + limit - time.time()
        return asyncio.get_running_loop().time() + max(left, 0.0), why

    async def _wind_up(self, status: RunStatus, error: str | None) -> str | None:
        """Compensation (when the run failed) and the handlers, within WIND_UP_TIMEOUT;
        returns what `compensated` records."""
        compensating = status == RunStatus.FAILED or (status == RunStatus.CANCELLED and self._compensate_on_cancel)
        compensated = None
        try:
            async with asyncio.timeout(limits.WIND_UP_TIMEOUT):
                if compensating:
                    compensated = await self._compensate()
                    compensating = False
                await self._handlers(status, error)
        except TimeoutError:
            log.warning("run %s: compensation and handlers still running after %s; stopped", self.id,
                        limits.duration_text(limits.WIND_UP_TIMEOUT))
            await self._stop_all()
            if compensating:  # stopped in the middle of undoing
                compensated = "partial"
        return compensated

    def _finish(self, status: RunStatus, error: str | None, outputs: Any, compensated: str | None = None,
                *, reason: str | None = None) -> None:
        self.status, self.error, self.outputs = status, error, outputs
        self.finished_at = time.time()  # the run's end as recorded (its notification says the same)
        self.journal.run(status=status.value, error=self.mask.text(error) if error else None,
                         outputs=self.mask.data(outputs), finished_at=self.finished_at, lease_until=None,
                         compensated=compensated, **({"reason": self.mask.text(reason)} if reason else {}))
        self._set_done()
        if not self.journal.closed:  # a run given up to another server ends there, not here
            self.engine.run_finished(self)

    # -- after the main steps: compensation (SAGA) and handlers --------------------

    async def _compensate(self) -> str | None:
        """Undo what succeeded, newest first; "true" when every undo worked, else "partial"."""
        todo = [sid for sid in sorted(self._completed_at, key=self._completed_at.__getitem__, reverse=True)
                if self.steps[sid].compensate is not None]
        if not todo:
            return None
        self._stopping, ok = None, True
        for sid in todo:
            undo = self.steps[sid].compensate.model_copy(update={"id": f"{sid}.compensate"})  # type: ignore[union-attr]
            try:
                await self._attempts(undo, self.context, item=-1)
            except _Failed:
                ok = False  # the other undos still run: leave as little half-done as possible
        return "true" if ok else "partial"

    async def _handlers(self, status: RunStatus, error: str | None) -> None:
        """`on_failure` / `on_success`, then `finally`; they never change the run's result."""
        spec = self.spec
        phases = [("on_failure", spec.on_failure)] if status == RunStatus.FAILED else []
        phases += [("on_success", spec.on_success)] if status == RunStatus.SUCCEEDED else []
        phases += [("finally", spec.finally_)]
        failed = self._root_failure
        self.context["run"] = {**self.context["run"], "status": status.value, "error": error,
                               "failed_step": {"id": failed[0], "error": failed[1]} if failed else None}
        for key, steps in phases:
            if steps:
                self._stopping = None
                await self._run_phase(handler_dag(self.definition, key, steps))

    async def _run_phase(self, dag: Dag) -> None:
        self.dag, self._remaining, self._left = dag, {s: len(d) for s, d in dag.deps.items()}, len(dag.order)
        self._all_done = asyncio.get_running_loop().create_future()
        for sid in dag.roots():
            self._ready(sid)
        if self._left:
            await self._all_done

    def _set_done(self) -> None:
        if self._done.is_set():
            return
        self._done.set()
        for callback in self._done_callbacks:
            callback()

    async def _suspend_steps(self) -> None:
        """Shutdown: stop running steps (recorded as interrupted) and release the run,
        which stays `running` with no owner so that the next start resumes it."""
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.journal.run(owner=None, lease_until=0.0)
        self._set_done()

    def _process_env(self) -> dict[bytes, bytes]:
        if self._encoded_env is None:
            from ..steps.shell import encode_env

            # TREADLE_OWNER marks every process of the step (runner/engine/orphans.py)
            self._encoded_env = encode_env({**os.environ, **self.context["env"], "TREADLE_OWNER": self.engine.owner})
        return self._encoded_env

    def _plain_context(self) -> dict[str, Any]:
        run = {"id": self.id, "workflow": self.definition.name, "version": self.definition.version}
        return {"params": self.params, "trigger": self._trigger_context(), "secrets": self.secrets, "run": run,
                "steps": self.results, "env": {}}

    def _trigger_context(self) -> dict[str, Any]:
        """`trigger`: the params, and for a run of a schedule slot (by the schedule or a
        backfill) `scheduled_at`, the slot in the schedule's zone (a param of that name wins)."""
        ref = self.trigger_ref
        if self.trigger not in ("schedule", "backfill") or not ref or " @ " not in ref:
            return self.params
        spec, _, utc = ref.rpartition(" @ ")
        try:
            slot = datetime.fromisoformat(utc).astimezone(ZoneInfo(spec.rpartition(" ")[2]))
        except (ValueError, KeyError, ZoneInfoNotFoundError):
            return self.params
        return {"scheduled_at": slot.isoformat(), **self.params}

    def _base_context(self) -> dict[str, Any]:
        ctx = self._plain_context()
        ctx["env"] = {k: _env_text(render(v, ctx)) for k, v in self.spec.env.items()}
        return ctx

    async def _execute_graph(self) -> None:
        self._all_done = asyncio.get_running_loop().create_future()
        ready = self._apply_resumed(self.resumed) if self.resumed is not None else self.dag.roots()
        for sid in ready:
            self._ready(sid)
        if self._left:
            await self._all_done

    def _apply_resumed(self, resumed: Resumed) -> list[str]:
        """Take over the steps an earlier process finished; return what can start now."""
        for sid in self.dag.order:  # dependencies first, so results exist when read
            if sid in resumed.finished:
                status, result = resumed.finished[sid]
                self._complete(sid, status, result)
        return [s for s in self.dag.order if s not in self.state and self._remaining[s] == 0]

    async def _stop_all(self) -> None:
        """Cancel running steps; mark everything not yet finished `cancelled`."""
        self._stopping = StepStatus.CANCELLED
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sid in self.dag.order:
            if sid not in self.state and self._remaining[sid] == 0 and sid not in self._tasks:
                self._ready(sid)
        for sid in self.dag.order:  # steps whose dependencies never finished
            if sid not in self.state:
                self._record_not_run(sid, StepStatus.CANCELLED)
                self.state[sid] = StepStatus.CANCELLED

    def _outputs(self) -> Any:
        limit = limits.MAX_GATHERED_OUTPUT_BYTES
        if self.spec.outputs is None:
            outputs = {sid: self.results[sid].get("output") for sid in self.dag.leaves
                       if self.state.get(sid) == StepStatus.SUCCEEDED}
            # the steps' outputs were measured as they were made: add up, do not walk them again
            total = 2 * len(outputs) if outputs else 2
            for sid, value in outputs.items():
                size = self._sizes.get(sid)
                if size is None:  # reused, or finished before a restart
                    size, _ = limits.check_json(value, limit, "outputs", "")
                total += limits.json_size(sid, limit) + 2 + size
            if total <= limit:
                return outputs
            return _OutputsFailed(limits.too_big("outputs", limit, "write `outputs:` to keep only what matters "
                                                                  "(without it, the outputs are those of the last steps)"))
        try:
            outputs = render(self.spec.outputs, self.context)
        except TemplateFailed as exc:
            return _OutputsFailed(f"outputs: {exc}")
        _, problem = limits.check_json(outputs, limit, "outputs", "keep only what matters in `outputs`")
        return _OutputsFailed(problem) if problem else outputs

    # -- scheduling --------------------------------------------------------------

    def _ready(self, first: str) -> None:
        """Start `first` (all its dependencies are done) and settle what follows without running."""
        work = [first]
        while work:
            sid = work.pop()
            verdict = self._decide(sid)
            if verdict is None and sid in self.reuse:
                reused = self.reuse[sid]
                self._record_not_run(sid, StepStatus.SUCCEEDED, output=reused["output"],
                                     note={"reused_from": reused["run_id"]}, exit_code=reused.get("exit_code"))
                work.extend(self._complete(sid, StepStatus.SUCCEEDED, {
                    "output": reused["output"], "exit_code": reused.get("exit_code"), **reused.get("extra", {}),
                }))
            elif verdict is None:
                if self.draining:
                    continue  # shutting down: the step starts when the run resumes
                self._tasks[sid] = asyncio.create_task(self._step(sid), name=f"{self.id}:{sid}")
            else:
                self._record_not_run(sid, verdict)
                work.extend(self._complete(sid, verdict, {}))

    def _decide(self, sid: str) -> StepStatus | None:
        """None: run the step. Otherwise the state it ends in without running."""
        if self._stopping is not None:
            return self._stopping
        step = self.steps[sid]
        ups = [(d, self.state[d]) for d in self.dag.deps[sid]]
        if not ups:
            return None
        if self._cascades(sid):
            return StepStatus.SKIPPED
        blocked = any(s == StepStatus.UPSTREAM_FAILED or (s == StepStatus.FAILED and not self.steps[d].continue_on_failure) for d, s in ups)
        rule = step.trigger_rule
        if rule == "all_done":
            return None
        if rule == "any_failed":
            return None if any(s in (StepStatus.FAILED, StepStatus.UPSTREAM_FAILED) for _, s in ups) else StepStatus.SKIPPED
        if rule == "any_succeeded":
            if any(s == StepStatus.SUCCEEDED for _, s in ups):
                return None
            return StepStatus.UPSTREAM_FAILED if blocked else StepStatus.SKIPPED
        if blocked:
            return StepStatus.UPSTREAM_FAILED
        if any(s == StepStatus.CANCELLED for _, s in ups):
            return StepStatus.CANCELLED
        return None

    def _cascades(self, sid: str) -> bool:
        """A step that waits for all its dependencies to succeed is skipped when one of
        them was skipped with `skip: cascade` (or by such a cascade itself)."""
        return self.steps[sid].trigger_rule == "all_succeeded" and any(
            d in self._cascading for d in self.dag.deps[sid])

    def _complete(self, sid: str, status: StepStatus, result: dict[str, Any]) -> list[str]:
        """Record the end of a step; return the dependents that became ready."""
        self.state[sid] = status
        inputs = self._inputs.pop(sid, None)
        if inputs is not None and "input" not in result:  # what its (last) attempt was given, masked
            result["input"] = inputs.get(-1) if -1 in inputs else [inputs.get(i) for i in range(max(inputs) + 1)]
        if status == StepStatus.SKIPPED and (self.steps[sid].skip == "cascade" or self._cascades(sid)):
            self._cascading.add(sid)
        self.results[sid] = {"status": status.value, "output": None, "exit_code": None, "input": None, **result}
        if status in (StepStatus.SUCCEEDED, StepStatus.FAILED) and self.replay is None:
            self.engine.step_event(self, f"step.{status.value}", {
                "step": sid, "kind": self.steps[sid].kind, "error": self.mask.text(result["error"])
                if result.get("error") else None, "exit_code": result.get("exit_code")})
        if status == StepStatus.FAILED and not self.steps[sid].continue_on_failure and self._root_failure is None:
            self._root_failure = (sid, result.get("error") or "failed")
        if status == StepStatus.SUCCEEDED and sid in self.definition.dag.deps:  # type: ignore[union-attr]
            self._completed_at[sid] = result.pop("_at", None) or time.time()
        ready = []
        for dep in self.dag.dependents[sid]:
            self._remaining[dep] -= 1
            if self._remaining[dep] == 0:
                ready.append(dep)
        self._left -= 1
        if self._left == 0 and self._all_done is not None and not self._all_done.done():
            self._all_done.set_result(None)
        return ready

    def _record_not_run(self, sid: str, status: StepStatus, *, output: Any = None,
                        note: Any = None, exit_code: int | None = None) -> None:
        now = time.time()
        self.journal.step({
            "run_id": self.id, "step_id": sid, "item": -1, "attempt": 0, "status": status.value,
            "started_at": None, "finished_at": now, "input": note, "output": self.mask.data(output),
            "exit_code": exit_code,
        })

    # -- one step ----------------------------------------------------------------

    async def _step(self, sid: str) -> None:
        step = self.steps[sid]
        try:
            if self.replay is not None and self.replay.unknowable(sid, self.dag.deps.get(sid, ())):
                raise _WouldRun(None)  # offline, after a step that would run: its input cannot be known
            if step.when is not None and not truthy(render(step.when, self.context)):
                self._record_not_run(sid, StepStatus.SKIPPED)
                status, result = StepStatus.SKIPPED, {}
            elif step.foreach is not None:
                async with self._step_locks(step):
                    output = await self._foreach(step)
                status, result = StepStatus.SUCCEEDED, {"output": output}
            else:
                async with self._step_locks(step):
                    outcome = await self._attempts(step, self.context, item=-1)
                if outcome.size is not None:
                    self._sizes[sid] = outcome.size
                status = StepStatus.SUCCEEDED
                result = {"output": outcome.output, "exit_code": outcome.exit_code, **outcome.extra}
        except _Failed as exc:
            err = exc.error
            status, result = StepStatus.FAILED, {"output": err.output, "exit_code": err.exit_code, "error": str(err)}
        except _WouldRun as exc:
            self.replay.would_run(sid)  # type: ignore[union-attr]
            self._record_not_run(sid, StepStatus.SKIPPED, note={"replay": "would run", "input": exc.input})
            status, result = StepStatus.SKIPPED, {}
        except TemplateFailed as exc:
            error = f"when: {exc}" if step.when is not None else str(exc)
            self._record_failure_row(sid, -1, error)
            status, result = StepStatus.FAILED, {"error": error}
        except Exception as exc:  # a bug in Treadle: fail the step rather than leave the run hanging
            log.exception("step %s of run %s", sid, self.id)
            error = f"internal error: {type(exc).__name__}: {exc}"
            self._record_failure_row(sid, -1, error)
            status, result = StepStatus.FAILED, {"error": error}
        except asyncio.CancelledError:
            # attempt 0 only shows when no attempt started (it waited for a slot)
            if not self._suspending:
                self._record_not_run(sid, StepStatus.CANCELLED)
            self.state[sid] = StepStatus.CANCELLED
            self.results[sid] = {"status": "cancelled", "output": None}
            raise
        for dep in self._complete(sid, status, result):
            self._ready(dep)

    def _record_failure_row(self, sid: str, item: int, error: str, attempt: int = 1) -> None:
        now = time.time()
        self.journal.step({
            "run_id": self.id, "step_id": sid, "item": item, "attempt": attempt, "status": StepStatus.FAILED.value,
            "started_at": now, "finished_at": now, "error": self.mask.text(error),
        })

    async def _foreach(self, step: StepSpec) -> list[Any]:
        items = render(step.foreach_items, self.context)
        if isinstance(items, str):
            try:
                items = json.loads(items)
            except ValueError:
                pass
        if isinstance(items, dict):
            items = [{"key": k, "value": v} for k, v in items.items()]
        if not isinstance(items, list):
            raise _Failed(self._fail_parent(step.id, f"foreach: expected a list, got {type(items).__name__}"))
        most = limits.MAX_FOREACH_ITEMS
        if len(items) > most:
            raise _Failed(self._fail_parent(
                step.id, f"foreach: {len(items):,} items, more than the limit of {most:,} per step; split the list "
                         f"into batches of at most {most:,} (e.g. one child `workflow` run per batch)"))
        started = time.time()
        parent = {"run_id": self.id, "step_id": step.id, "item": -1, "attempt": 1,
                  "status": StepStatus.RUNNING.value, "started_at": started, "input": self.mask.data({"items": len(items)})}
        self.journal.step(parent)
        results: list[Any] = [None] * len(items)
        sizes: list[int | None] = [4] * len(items)  # JSON bytes of each output (`null` until it has one)
        failures: list[tuple[int, str]] = []

        done_items = self.resumed.items.get(step.id, {}) if self.resumed else {}
        failed_items = self.resumed.failed_items.get(step.id, {}) if self.resumed else {}
        # `foreach: {max_parallel: N}`: this step's own limit, inside the run's (each
        # item's attempts also take one of the run's slots); held for the item's retries too
        own_limit = asyncio.Semaphore(step.foreach_limit) if step.foreach_limit else contextlib.nullcontext()

        async def one(index: int, item: Any) -> None:
            if index in done_items:  # finished before a crash: keep its output
                results[index], sizes[index] = done_items[index], None
                return
            if index in failed_items:  # failed for good before a crash: no attempt beyond its retries
                failures.append((index, failed_items[index]))
                return
            ctx = {**self.context, "item": item, "index": index}
            try:
                async with own_limit:
                    outcome = await self._attempts(step, ctx, item=index)
                results[index], sizes[index] = outcome.output, outcome.size
            except _Failed as exc:
                failures.append((index, str(exc)))
            except _WouldRun as exc:  # replay --offline: this item's input changed
                self.replay.would_run(step.id)  # type: ignore[union-attr]
                self.journal.step({"run_id": self.id, "step_id": step.id, "item": index, "attempt": 0,
                                   "status": StepStatus.SKIPPED.value, "finished_at": time.time(),
                                   "input": {"replay": "would run", "input": exc.input}})

        try:
            await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
        except asyncio.CancelledError:
            self.journal.step({**parent, "status": StepStatus.CANCELLED.value, "finished_at": time.time()})
            raise
        size = self._gathered_size(results, sizes)
        limit = limits.MAX_GATHERED_OUTPUT_BYTES
        too_big = None if size <= limit else limits.too_big(
            "foreach", limit, "the outputs of all its items together are too big; return less from each item, "
                              "or split the list")
        if failures:
            failures.sort()
            index, message = failures[0]
            error = f"{len(failures)} of {len(items)} items failed; item {index}: {message}"
            if too_big:
                error += f" (the items' outputs were not kept: {too_big})"
            kept = None if too_big else results
            self.journal.step({**parent, "status": StepStatus.FAILED.value, "finished_at": time.time(),
                                 "error": self.mask.text(error), "output": self.mask.data(kept)})
            raise _Failed(StepFailed(error, output=kept))
        if too_big:
            self.journal.step({**parent, "status": StepStatus.FAILED.value, "finished_at": time.time(),
                                 "error": too_big})
            raise _Failed(StepFailed(too_big, retryable=False))
        self.journal.step({**parent, "status": StepStatus.SUCCEEDED.value, "finished_at": time.time(),
                             "output": self.mask.data(results)})
        self._sizes[step.id] = size
        return results

    @staticmethod
    def _gathered_size(results: list[Any], sizes: list[int | None]) -> int:
        """Bytes of a foreach's list of outputs as JSON (past the limit: limit + 1). The
        items' outputs were measured when each finished, so this adds them up."""
        limit = limits.MAX_GATHERED_OUTPUT_BYTES
        total = 2 * len(results) if results else 2  # [ ] and ", " between items
        for value, size in zip(results, sizes, strict=True):
            if size is None:  # an output kept from before a restart
                size, _ = limits.check_json(value, limit, "output", "")
            total += size
            if total > limit:
                return limit + 1
        return total

    def _fail_parent(self, sid: str, error: str) -> StepFailed:
        self._record_failure_row(sid, -1, error)
        return StepFailed(error, retryable=False)

    async def _attempts(self, step: StepSpec, ctx: dict[str, Any], *, item: int) -> StepOutcome:
        """Run one step (or one foreach item) with its retries; raise _Failed at the end."""
        defaults = self.spec.defaults
        retry = step.retry or defaults.retry or NO_RETRY
        # an approval waits for a person: only its own timeouts apply, not defaults.timeout
        timeout = step.timeout if step.timeout is not None else (None if step.approval else defaults.timeout)
        kind = REGISTRY[step.kind]
        raw = raw_inputs(self.definition, step)
        remote = self.engine.dispatcher.remote(step.kind, step.executor or self.spec.executor)
        if remote:  # the worker puts the secrets in: only placeholders leave the server
            ctx = {**ctx, "secrets": placeholders(list(self.spec.secrets))}
        key = {"run_id": self.id, "step_id": step.id, "item": item}
        logs = LogSink(self.journal.log, {**key, "attempt": 1}, self.mask.text,
                       safe_cut=self.mask.safe_cut if self.mask else None)
        # after a crash, attempts go on from where they were (an interrupted attempt
        # is not a failure, so it does not use up a retry)
        attempt, failures = self.resumed.attempt(step.id, item) if self.resumed else (1, 0)
        polls = 0  # `repeat`: attempts that succeeded and were checked against `until`
        try:
            while True:
                try:
                    inp = render(raw, ctx)
                except TemplateFailed as exc:
                    self._record_failure_row(step.id, item, f"input: {exc}", attempt)
                    raise _Failed(StepFailed(f"input: {exc}", retryable=False)) from None
                in_size, too_big = limits.check_json(inp, limits.MAX_INPUT_BYTES, "input", limits.INPUT_FIX)
                if too_big:  # recorded without the input, which the database could not take
                    self._record_failure_row(step.id, item, too_big, attempt)
                    raise _Failed(StepFailed(too_big, retryable=False))
                logs.set_attempt(attempt)
                # the input as recorded (secrets masked), also what later steps read as steps.<id>.input
                shown = self.mask.data(hide_placeholders(inp) if remote else inp)
                self._inputs.setdefault(step.id, {})[item] = shown
                if self.replay is not None:
                    answer = self.replay.answer(step.id, item, shown)
                    if answer is not None:
                        return self._replayed({**key, "attempt": attempt}, shown, answer, logs)
                    if self.replay.offline:
                        raise _WouldRun(shown)
                if self.mocks is not None and self.mocks.mocked(step.id):
                    row, outcome, error = self._mocked(step, shown, key, attempt, ctx, logs)
                else:
                    row, outcome, error = await self._execute(step, kind, inp, shown, key, attempt, timeout, remote,
                                                              logs)
                finished = time.time()
                if error is None and outcome.size is None and len(inp) == 1:
                    # `set` gives its input back as its output: its size is known already
                    (field, value), = inp.items()
                    if outcome.output is value:
                        outcome.size = in_size - 4 - limits.json_size(field, in_size)
                error = self._check_output(outcome if error is None else None, error)
                if error is None and step.repeat is not None:
                    polls += 1
                    error = self._poll_verdict(step, ctx, outcome, attempt, polls)
                    if error is False:  # `until` is still false: this poll is done, the next one waits
                        self.journal.step({**row, "status": StepStatus.SUCCEEDED.value, "finished_at": finished,
                                           "output": self.mask.data(outcome.output), "exit_code": outcome.exit_code,
                                           "http_status": outcome.http_status})
                        interval = step.repeat.interval if self.mocks is None else 0.0
                        logs.write("treadle", f"[treadle: poll {polls} of at most {step.repeat.limit}: `until` is "
                                              f"false; next poll in {format_duration(interval)}]\n")
                        attempt += 1
                        await self._pause_before(key, attempt, interval)
                        continue
                if error is None:
                    self.journal.step({**row, "status": StepStatus.SUCCEEDED.value, "finished_at": finished,
                                         "output": self.mask.data(outcome.output), "exit_code": outcome.exit_code,
                                         "http_status": outcome.http_status})
                    return outcome
                self.journal.step({**row, "status": StepStatus.FAILED.value, "finished_at": finished,
                                     "error": self.mask.text(str(error)), "output": self.mask.data(error.output),
                                     "exit_code": error.exit_code, "http_status": error.http_status})
                failures += 1
                if not (failures <= retry.limit and error.retryable and (retry.on is None or error.code in retry.on)):
                    raise _Failed(error)
                # `treadle test` makes every attempt but waits out no delay (mocks answer at once)
                delay = retry.delay_before(failures) if self.mocks is None else 0.0
                logs.write("treadle", f"[treadle: attempt {attempt} failed: {self.mask.text(str(error))}; "
                                      f"retry {failures} of {retry.limit} in {format_duration(delay)}]\n")
                if self.replay is None:
                    self.engine.step_event(self, "step.retrying", {
                        "step": step.id, "kind": step.kind, "item": None if item < 0 else item, "attempt": attempt,
                        "next_attempt": attempt + 1, "retry_in_s": delay, "error": self.mask.text(str(error)),
                        "exit_code": error.exit_code, "http_status": error.http_status})
                attempt += 1
                await self._pause_before(key, attempt, delay)
        finally:
            logs.close()

    async def _pause_before(self, key: dict[str, Any], attempt: int, seconds: float) -> None:
        """Wait before `attempt` (a retry, or the next poll), which shows as pending meanwhile."""
        pending = {**key, "attempt": attempt, "status": StepStatus.PENDING.value}
        self.journal.step(pending)
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.journal.step({**pending, "status": StepStatus.CANCELLED.value,
                               "finished_at": time.time(), "error": "cancelled"})
            raise

    def _poll_verdict(self, step: StepSpec, ctx: dict[str, Any], outcome: StepOutcome, attempt: int,
                      polls: int) -> StepFailed | Literal[False] | None:
        """`repeat`: None when `until` holds (the step is done), False when it does not and
        polls are left, else the failure (limit reached, or `until` cannot be rendered)."""
        assert step.repeat is not None
        try:
            done = truthy(render(step.repeat.until, {**ctx, "output": outcome.output, "attempt": attempt}))
        except TemplateFailed as exc:
            return StepFailed(f"repeat.until: {exc}", output=outcome.output, exit_code=outcome.exit_code,
                              http_status=outcome.http_status, retryable=False)
        if done:
            return None
        if polls < step.repeat.limit:
            return False
        return StepFailed(f"repeat: `until` was still false after {polls} poll{'s' if polls != 1 else ''} (the limit); "
                          "the last poll's output is kept", output=outcome.output, exit_code=outcome.exit_code,
                          http_status=outcome.http_status, retryable=False)

    async def _execute(self, step: StepSpec, kind: Any, inp: dict[str, Any], shown: Any, key: dict[str, Any],
                       attempt: int, timeout: float | None, remote: bool, logs: LogSink,
                       ) -> tuple[dict[str, Any], StepOutcome | None, StepFailed | None]:
        """One attempt of the step kind, in a slot of the run: (its row, outcome, error)."""
        outcome: StepOutcome | None = None
        item = key["item"]
        async with self._sem:
            if not await self.engine.leases.confirm(self.id):
                raise asyncio.CancelledError  # the run is another server's now (lose_lease stops it)
            row = {**key, "attempt": attempt, "status": StepStatus.RUNNING.value, "started_at": time.time(),
                   "input": shown}
            self.journal.step(row)
            sctx = StepContext(
                run_id=self.id, step_id=step.id, index=None if item < 0 else item, attempt=attempt,
                workflow=self.definition.name, base_dir=self.definition.base_dir,
                env=self.context["env"], http=self.engine.http, services=self.engine, logs=logs,
                timeout=timeout, process_env=None if remote else self._process_env(),
                started=self._on_worker(row) if remote else None,
            )
            limit = asyncio.timeout(timeout)
            permit: Permit | None = None
            try:
                permit = admit_call(self.engine.breakers, inp, mask=self.mask.text,  # CircuitOpen: a failed attempt
                                    namespace=namespace_of(self.definition.path))
                async with limit:
                    if remote:
                        outcome = await self.engine.dispatcher.execute(
                            self._job(step, sctx, inp, timeout), sctx, step.placement_timeout)
                    else:
                        outcome = await kind.execute(sctx, inp)
                error = None
                settle(permit, outcome=outcome)
            except StepFailed as exc:
                error = exc
                settle(permit, error=exc)
            except TimeoutError as exc:
                if limit.expired():
                    error = StepFailed(f"timed out after {format_duration(timeout)}; the step was stopped")
                    settle(permit, timed_out=timeout)
                else:  # raised by the step itself
                    error = StepFailed(f"TimeoutError: {exc}")
                    settle(permit)
            except asyncio.CancelledError:
                settle(permit)
                why = INTERRUPTED if self._suspending else "cancelled"
                self.journal.step({**row, "status": StepStatus.CANCELLED.value,
                                   "finished_at": time.time(), "error": why})
                raise
            except Exception as exc:
                settle(permit)
                log.exception("step %s of run %s", step.id, self.id)
                error = StepFailed(f"{type(exc).__name__}: {exc}", retryable=False)
        return row, outcome, error

    def _mocked(self, step: StepSpec, shown: Any, key: dict[str, Any], attempt: int, ctx: dict[str, Any],
                logs: LogSink) -> tuple[dict[str, Any], StepOutcome | None, StepFailed | None]:
        """One attempt answered by the step's mock (`treadle test`): recorded, never executed."""
        assert self.mocks is not None
        row = {**key, "attempt": attempt, "status": StepStatus.RUNNING.value, "started_at": time.time(),
               "input": shown}
        self.journal.step(row)
        logs.write("treadle", "[treadle test: mocked; nothing executed]\n")
        try:
            return row, self.mocks.answer(step, attempt, ctx), None
        except StepFailed as exc:
            return row, None, exc
        except TemplateFailed as exc:
            return row, None, StepFailed(f"mock output: {exc}", retryable=False)

    def _replayed(self, key: dict[str, Any], shown: Any, answer: Recorded, logs: LogSink) -> StepOutcome:
        """A replayed step: its input is the recorded one, so the recorded outcome answers."""
        assert self.replay is not None
        logs.write("treadle", f"[treadle: replay: input unchanged, answered from run {self.replay.of} "
                              f"(attempt {answer.attempt}); nothing executed]\n")
        now = time.time()
        row = {**key, "status": answer.status, "started_at": now, "finished_at": now, "input": shown,
               "output": answer.output, "exit_code": answer.exit_code, "http_status": answer.http_status}
        if answer.status == StepStatus.FAILED.value:
            self.journal.step({**row, "error": answer.error})
            raise _Failed(StepFailed(answer.error or "failed", output=answer.output, exit_code=answer.exit_code,
                                     http_status=answer.http_status, retryable=False))
        self.journal.step(row)
        return StepOutcome(output=answer.output, exit_code=answer.exit_code, http_status=answer.http_status,
                           extra=dict(answer.extra))

    def _on_worker(self, row: dict[str, Any]) -> Callable[[str], None]:
        """Record which cluster worker took the attempt (kept in `row` for its later writes)."""
        def started(worker: str) -> None:
            row["worker"] = worker
            self.journal.step(dict(row))
        return started

    def _job(self, step: StepSpec, sctx: StepContext, inp: dict[str, Any], timeout: float | None) -> StepJob:
        """One attempt of a cluster step as plain data (runner/dispatch/job.py)."""
        definition = self.definition
        base = definition.base_dir
        root = getattr(self.engine, "definitions_dir", None)
        try:
            base_dir = base.resolve().relative_to(root.resolve()).as_posix() if base and root else "."
        except ValueError:
            base_dir = "."
        resources = step.resources.model_dump(exclude_none=True) if step.resources else {}
        return StepJob(
            token=f"{self.id}.{step.id}.{sctx.index if sctx.index is not None else -1}.{sctx.attempt}",
            kind=step.kind, input=inp, run_id=self.id, step_id=step.id, index=sctx.index, attempt=sctx.attempt,
            workflow=definition.name, version=definition.version, commit=definition.revision,
            owner=self.engine.owner, env=dict(self.context["env"]), base_dir=base_dir, code=None, timeout=timeout,
            secret_names=list(self.spec.secrets), resources=resources_of(resources, list(step.labels)),
        )

    @staticmethod
    def _check_output(outcome: StepOutcome | None, error: StepFailed | None) -> StepFailed | None:
        """An output over the limit fails the attempt (not retried); a failed attempt's
        output over the limit is dropped. Sets `outcome.size` (JSON bytes) when it fits."""
        if outcome is not None:
            limit = limits.MAX_OUTPUT_BYTES
            if outcome.size is not None:  # measured by the kind (it encoded the value anyway)
                too_big = limits.too_big("output", limit, limits.OUTPUT_FIX) if outcome.size > limit else None
            else:
                outcome.size, too_big = limits.check_json(outcome.output, limit, "output", limits.OUTPUT_FIX)
            if too_big is None:
                return None
            return StepFailed(too_big, exit_code=outcome.exit_code, http_status=outcome.http_status, retryable=False)
        if error is not None and error.output is not None:
            _, too_big = limits.check_json(error.output, limits.MAX_OUTPUT_BYTES, "output", limits.OUTPUT_FIX)
            if too_big:
                return StepFailed(f"{error} (its output was not kept: {too_big})", exit_code=error.exit_code,
                                  http_status=error.http_status, retryable=error.retryable)
        return error


class _OutputsFailed(str):
    pass


def _env_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
