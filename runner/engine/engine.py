"""The engine: starts runs and drives each one through its DAG on asyncio.

A run keeps the Definition object it started with, so a reload of the file never
changes a run in flight. Steps start as soon as their dependencies are done, at
most `max_parallel` executing at once per run (foreach items included). Every
state change is handed to the store's single writer; the store is the truth the
dashboard reads, the in-memory state here only drives the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets as pysecrets
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ..dispatch.local import LocalDispatcher
from ..dsl.loader import Definition, load_text
from ..dsl.params import validate_params
from ..errors import (
    ParamError,
    RunNotFound,
    SecretMissing,
    ShuttingDown,
    TreadleError,
    VersionNotFound,
    WorkflowDisabled,
    WorkflowInvalid,
    WorkflowNotFound,
)
from ..storage.models import RunStatus, StepStatus
from ..storage.store import Store
from ..templates import Masker
from . import orphans
from .approvals import Approvals
from .circuit import Breakers
from .journal import Journal
from .leases import LEASE_SECONDS, LeaseKeeper, pid_namespace, process_is_gone
from .locks import SharedLocks
from .mocks import Mocks
from .recovery import plan_resumes, reused_result
from .replay import Replay
from .run import RunExecution

log = logging.getLogger("treadle.engine")
MAX_CHILD_DEPTH = 10
SWEEP_SECONDS = 5.0  # how often `recover` also looks for step processes whose server is gone
VERSIONS_KEPT = 64  # earlier versions kept loaded for rollbacks and pins (each is one parsed file)


@dataclass
class FinishedRun:
    """A run that ended before this process started (what a resumed parent needs of it)."""

    id: str
    status: str
    outputs: Any
    error: str | None


@dataclass
class NewRun:
    """A checked run about to be recorded and started (see Engine.new_run)."""

    row: dict[str, Any]
    definition: Definition
    params: dict[str, Any]  # checked, with the real values (the row's are masked)
    secrets: dict[str, str]


@dataclass
class RunEnded:
    """What `Engine.run_ended` callbacks learn when a run finishes (outputs masked)."""

    run_id: str
    workflow: str
    status: str
    trigger: str
    started_at: float
    finished_at: float
    outputs: Any
    error: str | None
    definition: Definition
    parent_run_id: str | None


def version_row(definition: Definition, seen_at: float) -> dict[str, Any]:
    """The `workflow_version` row recording one text of a definition file."""
    return {
        "version": definition.version, "workflow": definition.name, "path": definition.path,
        "source": definition.source, "created_at": seen_at, "valid": definition.valid,
        "commit": definition.revision,
    }


def new_run_id() -> str:
    """Opaque, unique, and sorts by creation time (ms) as a bonus."""
    return f"{int(time.time() * 1000):011x}{pysecrets.token_hex(4)}"


class Engine:
    """Starts, cancels and retries runs. One per process; use `async with`.

    Args:
        store: where every state change is recorded.
        lookup: finds the current Definition of a workflow by name (child runs, retries).
        definitions_dir: the definitions folder; put on sys.path for `python` steps.
        environ: where secrets are read from (default: the process environment).
    """

    def __init__(
        self, store: Store, *, lookup: Callable[[str], Definition | None] | None = None,
        definitions_dir: Path | None = None, environ: dict[str, str] | None = None,
        http: httpx.AsyncClient | None = None, role: str = "serve", dispatcher: Any = None,
    ):
        self.store = store
        self.lookup = lookup or (lambda name: None)
        self.definitions_dir = definitions_dir
        self.environ = environ if environ is not None else os.environ
        self.http = http or httpx.AsyncClient(follow_redirects=True)
        self._own_http = http is None
        self.runs: dict[str, RunExecution] = {}
        self.breakers = Breakers()  # per-host circuit breakers of http steps, shared by all runs
        self.approvals = Approvals(store, on_waiting=self._waiting)  # approval steps' requests and decisions
        self._versions_written: set[tuple[str, str]] = set()
        self._at_versions: dict[tuple[str, str], Definition] = {}  # earlier versions loaded (see definition_at)
        # this process's name on the runs it drives (see leases in models.Run)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{pysecrets.token_hex(3)}"
        self.draining = False
        # called when a run finishes (not when it is suspended to be resumed): chaining,
        # queues, notifications; each callback must return quickly and never raise
        self.run_ended: list[Callable[[RunEnded], None]] = []
        # told of each run this process starts driving, and of each attempt row its runs
        # write (metrics); each must return quickly and never raise
        self.run_launched: list[Callable[[RunExecution], None]] = []
        self.step_written: list[Callable[[RunExecution, dict[str, Any]], None]] = []
        # step.succeeded / step.failed / step.retrying / approval.waiting of the runs this
        # process drives (notifications); quick, never raising
        self.step_events: list[Callable[[str, RunExecution, dict[str, Any]], None]] = []
        self.leases = LeaseKeeper(self, role)
        self.locks = SharedLocks(store, self.owner)  # `locks:` of runs and steps, held in the database
        self.dispatcher = dispatcher or LocalDispatcher()  # where run, python and http steps execute
        self._swept_at = 0.0
        self._ending: set[asyncio.Task] = set()  # announcements of ended runs (see run_finished)
        self._ended: dict[str, RunExecution] = {}  # runs ended here whose end is not committed yet
        store.writer.on_refused = self._refused
        store.feed.on_cancel = lambda run_id, compensate: self.cancel(run_id, compensate=compensate)
        if definitions_dir is not None and str(definitions_dir.resolve()) not in sys.path:
            sys.path.insert(0, str(definitions_dir.resolve()))

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop at once: running steps are interrupted and their runs left for the next
        start to resume (see `shutdown` for the graceful way)."""
        await self.shutdown(grace=0)

    def drain(self) -> None:
        """Start no new run or step from now on (what runs goes on); the first thing a
        stop does, before anything that may take a while."""
        self.draining = True
        for exe in self.runs.values():
            exe.draining = True

    async def shutdown(self, grace: float = 30.0, *, now: asyncio.Event | None = None) -> None:
        """Start no new run or step; let running steps finish for up to `grace` seconds
        (or until `now` is set: a second signal), then interrupt what still runs. Runs
        not finished stay `running` without an owner: the next start resumes them."""
        self.drain()
        deadline = time.monotonic() + grace
        stop_now = now or asyncio.Event()
        while any(exe.busy for exe in self.runs.values()) and time.monotonic() < deadline and not stop_now.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_now.wait(), min(0.05, max(deadline - time.monotonic(), 0)))
        for exe in list(self.runs.values()):
            exe.suspend()
        await asyncio.gather(*(exe.wait() for exe in list(self.runs.values())), return_exceptions=True)
        await self.store.flush()  # the runs' last records are committed while their leases are still held
        await self.announced()
        await self.leases.stop()
        if self._own_http:
            await self.http.aclose()
        await self.store.flush()

    def run_finished(self, exe: RunExecution) -> None:
        """A run this process drove has ended: once its end is committed (and not refused:
        the run may have been taken over meanwhile), tell the listeners."""
        self._ended[exe.id] = exe  # its last records may still be refused (see _refused)
        task = asyncio.get_running_loop().create_task(self._announce_end(exe), name=f"ended-{exe.id}")
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def announced(self) -> None:
        """Return once the runs that have ended so far are announced to the listeners."""
        while self._ending:
            await asyncio.gather(*self._ending, return_exceptions=True)

    async def _announce_end(self, exe: RunExecution) -> None:
        try:
            await self.store.flush()
        except Exception:
            log.exception("run %s: could not commit its end", exe.id)
            return
        finally:
            self._ended.pop(exe.id, None)
        if exe.journal.closed:  # refused: another server drives it now and will end it
            return
        if exe.trigger == "replay":  # a rehearsal: no notification, no chaining, no queue slot held
            return
        ended = RunEnded(exe.id, exe.definition.name, exe.status.value, exe.trigger, exe.started_at,
                         exe.finished_at if exe.finished_at is not None else time.time(),
                         exe.mask.data(exe.outputs), exe.mask.text(exe.error) if exe.error else None,
                         exe.definition, exe.parent_run_id)
        for callback in list(self.run_ended):
            try:
                callback(ended)
            except Exception:  # one broken listener must not stop the others or the run
                log.exception("run_ended callback %r failed", callback)

    def step_event(self, exe: RunExecution, event: str, detail: dict[str, Any]) -> None:
        for callback in self.step_events:
            try:
                callback(event, exe, detail)
            except Exception:
                log.exception("step_events callback %r failed", callback)

    def _launched(self, exe: RunExecution) -> None:
        for callback in self.run_launched:
            try:
                callback(exe)
            except Exception:
                log.exception("run_launched callback %r failed", callback)

    def _keep_leases(self) -> None:
        self.leases.start()

    def _refused(self, leases: set[tuple[str, tuple[str, int]]]) -> None:
        """The writer refused records written under these leases: they are held elsewhere now."""
        for run_id, fence in leases:
            exe = self.runs.get(run_id) or self._ended.get(run_id)
            if exe is not None and exe.journal.fence == fence:
                exe.lose_lease("its records were refused: another server holds its lease now")

    def _waiting(self, run_id: str, waiting: bool) -> None:
        """An approval of the run started (or stopped) waiting for a person."""
        exe = self.runs.get(run_id)
        if exe is not None:
            exe.journal.run(status=RunStatus.WAITING.value if waiting else RunStatus.RUNNING.value)
            if waiting:
                self.step_event(exe, "approval.waiting", {"step": None})

    async def recover(self, *, workflow: str | None = None) -> list[RunExecution]:
        """Resume the unfinished runs nobody drives (their process died or stopped).

        Steps that finished keep their outputs and do not run again; steps that were
        running run again (at least once: they carry a stable idempotency key).
        """
        if self.draining:
            return []
        self._keep_leases()
        local = await self.store.leases.same_machine(socket.gethostname(), pid_namespace())
        dead = [s["id"] for s in local if s["id"] != self.owner and process_is_gone(s["pid"])]
        claimed = await self.store.leases.claim_stale(self.owner, LEASE_SECONDS, workflow=workflow, dead_owners=dead)
        if claimed:  # what their earlier owner left running here must not overlap the steps run again
            await asyncio.to_thread(orphans.stop_for_runs, {r["id"] for r in claimed}, self.owner)
        if time.monotonic() - self._swept_at > SWEEP_SECONDS:
            await self._sweep_orphans()
        plans = await plan_resumes(self.store, claimed, self.stored_definition, self.environ, self.owner)
        # what still runs of them on cluster workers stops before their steps run again
        await self.dispatcher.forget([token for plan in plans for token in plan.state.interrupted])
        # every execution is registered before any starts, so a resumed parent run finds
        # its resumed child runs instead of starting them again
        resumed = []
        for plan in plans:
            run = plan.run
            exe = RunExecution(self, run["id"], plan.definition, run["params"] or {}, plan.secrets, {},
                               resumed=plan.state, epoch=run["lease_epoch"])
            exe.trigger, exe.started_at = run["trigger"], run["started_at"] or run["created_at"]
            exe.trigger_ref = run["trigger_ref"]
            exe.parent_run_id = run["parent_run_id"]
            self._register(exe)
            resumed.append(exe)
        for exe in resumed:
            exe.journal.run(status=RunStatus.RUNNING.value)
            exe.start()
            log.info("resuming run %s of %s (%d steps already finished)", exe.id, exe.definition.name,
                     len(exe.resumed.finished) if exe.resumed else 0)
        return resumed

    async def _sweep_orphans(self) -> None:
        """Stop step processes on this machine whose server is gone."""
        self._swept_at = time.monotonic()
        seen = await asyncio.to_thread(orphans.owners_seen)
        seen.discard(self.owner)
        if not seen:
            return
        host, ns = socket.gethostname(), pid_namespace()
        gone = set()
        for server in await self.store.leases.known(sorted(seen), within=LEASE_SECONDS):
            here = server["host"] == host and server["pid_ns"] == ns
            if not server["alive"] or (here and process_is_gone(server["pid"])):
                gone.add(server["id"])
        await asyncio.to_thread(orphans.stop_of_owners, gone)

    def _register(self, exe: RunExecution) -> None:
        self.runs[exe.id] = exe
        exe.on_done(lambda: self.runs.pop(exe.id, None))

    def journal(self, run_id: str, epoch: int) -> Journal:
        return Journal(self.store, run_id, (self.owner, epoch), observe=self._step_written)

    def _step_written(self, row: dict[str, Any]) -> None:
        exe = self.runs.get(row["run_id"])
        if exe is None or not self.step_written:
            return
        for callback in self.step_written:
            try:
                callback(exe, row)
            except Exception:  # an observer's bug must not stop a run
                log.exception("step_written callback %r failed", callback)

    def prepare(self, definition: Definition, params: dict[str, Any] | None, *, from_text: bool = False) -> tuple[dict, dict]:
        """Check that a run can start: valid definition, params, secrets. Returns (params, secrets)."""
        if not definition.valid:
            raise WorkflowInvalid(definition.name, definition.problems)
        spec = definition.spec
        assert spec is not None
        if not spec.enabled:
            raise WorkflowDisabled(definition.name, definition.path)
        checked = validate_params(spec.params, params, from_text=from_text)
        missing = [n for n in spec.secrets if not self.environ.get(n)]
        if missing:
            raise SecretMissing(missing)
        return checked, {n: self.environ[n] for n in spec.secrets}

    async def start(
        self, definition: Definition, params: dict[str, Any] | None = None, *, from_text: bool = False,
        trigger: str = "manual", parent_run_id: str | None = None, parent_step_id: str | None = None,
        retry_of: str | None = None, retry_from: str | None = None,
        reuse: dict[str, dict[str, Any]] | None = None, depth: int = 0, ref: str | None = None,
        backfill_id: str | None = None,
    ) -> RunExecution:
        """Validate and start a run; returns at once with the running execution.

        `ref`: what exactly started it (a schedule slot, a file, an upstream run).
        """
        new = self.new_run(definition, params, from_text=from_text, trigger=trigger, ref=ref,
                           parent_run_id=parent_run_id, parent_step_id=parent_step_id, retry_of=retry_of,
                           retry_from=retry_from, backfill_id=backfill_id)
        self.store.put_run(new.row, (self.owner, 1))
        return self.launch(new, reuse=reuse, depth=depth)

    def new_run(
        self, definition: Definition, params: dict[str, Any] | None = None, *, from_text: bool = False,
        trigger: str = "manual", ref: str | None = None, queued_reason: str | None = None,
        parent_run_id: str | None = None, parent_step_id: str | None = None,
        retry_of: str | None = None, retry_from: str | None = None, backfill_id: str | None = None,
    ) -> NewRun:
        """A checked run, not recorded yet: its row (running under this process's lease,
        epoch 1; or `queued` when `queued_reason` is given, with no owner). The caller
        inserts the row (the writer, or the launcher's admission transaction), then
        `launch`es a running one."""
        if self.draining and queued_reason is None:
            raise ShuttingDown()
        checked, secret_values = self.prepare(definition, params, from_text=from_text)
        now = time.time()
        self._write_version(definition, now)
        run_id = new_run_id()
        parent = self.runs.get(parent_run_id) if parent_run_id else None
        row = {
            "id": run_id, "workflow": definition.name, "version": definition.version,
            "commit": definition.revision, "trigger": trigger, "trigger_ref": ref,
            "params": self._recorded_params(run_id, definition, checked,
                                            [*secret_values.values(), *(parent.mask_values if parent else ())]),
            "parent_run_id": parent_run_id, "parent_step_id": parent_step_id,
            "retry_of": retry_of, "retry_from": retry_from, "created_at": now,
        }
        if backfill_id is not None:
            row["backfill_id"] = backfill_id
        if queued_reason is not None:
            row.update(status=RunStatus.QUEUED.value, reason=queued_reason, lease_epoch=0)
        else:
            row.update(status=RunStatus.RUNNING.value, started_at=now, owner=self.owner, lease_epoch=1,
                       lease_until=now + LEASE_SECONDS)
        return NewRun(row, definition, checked, secret_values)

    def launch(self, new: NewRun, *, reuse: dict[str, dict[str, Any]] | None = None, depth: int = 0,
               epoch: int = 1, replay: Replay | None = None, mocks: Mocks | None = None) -> RunExecution:
        """Drive a run whose row is recorded (or queued in the writer ahead of anything the
        run writes) as running under this process's lease, at `epoch`."""
        self._keep_leases()
        row = new.row
        parent_run_id = row.get("parent_run_id")
        exe = RunExecution(self, row["id"], new.definition, new.params, new.secrets, reuse or {}, depth=depth,
                           parent=self.runs.get(parent_run_id) if parent_run_id else None, epoch=epoch)
        exe.trigger, exe.started_at = row["trigger"], row.get("started_at") or time.time()
        exe.trigger_ref = row.get("trigger_ref")
        exe.lease_seen = epoch > 1  # a claimed row is committed already
        exe.replay = replay
        exe.mocks = mocks  # `treadle test`: steps answered without executing
        self._register(exe)
        self._launched(exe)
        exe.start()
        return exe

    async def start_claimed(self, row: dict[str, Any]) -> RunExecution:
        """Drive a queued run this process has just claimed (its row says running, owned
        here under `lease_epoch`). A run that can no longer start fails, saying why."""
        journal = self.journal(row["id"], row["lease_epoch"])
        try:
            definition = await self.stored_definition(row)
            if definition is None:
                raise TreadleError("its definition version is not in the database")
            definition.commit = row.get("commit")
            checked, secret_values = self.prepare(definition, row["params"] or {})
        except TreadleError as exc:  # e.g. a secret removed meanwhile: the run fails, the queue goes on
            journal.run(status=RunStatus.FAILED.value, error=f"could not start from the queue: {exc}",
                        reason=None, finished_at=time.time(), lease_until=None)
            raise
        journal.run(reason=None, started_at=time.time())
        return self.launch(NewRun(row, definition, checked, secret_values), epoch=row["lease_epoch"])

    def _recorded_params(self, run_id: str, definition: Definition, params: dict[str, Any],
                         secrets: list[str]) -> dict[str, Any]:
        """The params as stored: a secret's value in them (in any form the Masker finds)
        is masked. The run itself goes on with the real values (held in memory)."""
        if not secrets or not params:
            return params
        masked = Masker(secrets).data(params)
        if masked == params:
            return params
        log.warning("run %s of %s: a param holds the value of a secret; it is recorded masked (a retry, "
                    "or a resume after a restart, gets *** in its place)", run_id, definition.name)
        return masked

    def _write_version(self, definition: Definition, now: float) -> None:
        if (definition.name, definition.version) not in self._versions_written:
            self.store.put_version(version_row(definition, now))
            self._versions_written.add((definition.name, definition.version))

    async def run(self, definition: Definition, params: dict[str, Any] | None = None, **kw: Any) -> RunExecution:
        """Start a run and wait for it to end."""
        exe = await self.start(definition, params, **kw)
        await exe.wait()
        return exe

    async def request_cancel(self, run_id: str, *, by: str, compensate: bool = False) -> bool:
        """Cancel a run wherever it is driven: here at once; on another server through
        the cancel request it sees within a second. False when no server drives it."""
        if self.cancel(run_id, compensate=compensate):
            return True
        if not await self.store.leases.request_cancel(run_id, by, compensate):
            return False
        await self.store.feed.notify({"cancel": run_id, "compensate": compensate})  # its driver stops it at once
        return True

    def cancel(self, run_id: str, *, compensate: bool = False) -> bool:
        """Cancel a run of this engine (with `compensate`, undo what succeeded, newest
        first); False if it is not running here."""
        exe = self.runs.get(run_id)
        if exe is None:
            return False
        exe.cancel(compensate=compensate)
        return True

    async def run_child(self, name: str, params: dict[str, Any], *, parent_run_id: str, parent_step_id: str) -> RunExecution:
        parent = self.runs.get(parent_run_id)
        depth = parent.depth + 1 if parent else 1
        if depth > MAX_CHILD_DEPTH:
            raise TreadleError(f"workflows nested more than {MAX_CHILD_DEPTH} deep; does '{name}' call itself?")
        existing = await self._child_of(parent_run_id, parent_step_id)
        if existing is not None:  # the parent resumed after a crash: the child it started goes on
            exe = existing
        else:
            definition = self.lookup(name)
            if definition is None:
                raise WorkflowNotFound(name)
            exe = await self.start(definition, params, trigger="workflow", parent_run_id=parent_run_id,
                                   parent_step_id=parent_step_id, depth=depth)
        if isinstance(exe, FinishedRun):
            return exe
        try:
            await exe.wait()
        except asyncio.CancelledError:
            exe.cancel()
            await asyncio.shield(exe.wait())
            raise
        return exe

    async def stored_definition(self, run: dict[str, Any]) -> Definition | None:
        """The exact definition version `run` started with, from the database."""
        stored = await self.store.get_version(run["version"], run["workflow"])
        if stored is None:
            return None
        base = (self.definitions_dir / stored["path"]).parent if self.definitions_dir else Path.cwd()
        return load_text(stored["source"], stored["path"], name=run["workflow"], base_dir=base)

    async def definition_at(self, name: str, version: str) -> Definition:
        """The definition of `name` as it was at `version` (a recorded text of its file),
        to start a run of an earlier version (rollback, pins). Raises VersionNotFound,
        WorkflowInvalid when that text had problems."""
        key = (name, version)
        found = self._at_versions.get(key)
        if found is None:
            stored = await self.store.get_version(version, name)
            if stored is None:
                raise VersionNotFound(name, version)
            found = await self.stored_definition({"version": version, "workflow": name})
            assert found is not None
            found.commit = stored["commit"]  # as recorded (`abc..+dirty` stays as it was)
            if len(self._at_versions) >= VERSIONS_KEPT:
                self._at_versions.pop(next(iter(self._at_versions)))
            self._at_versions[key] = found
        if not found.valid:
            raise WorkflowInvalid(f"{name} (version {version})", found.problems)
        return found

    async def _child_of(self, parent_run_id: str, parent_step_id: str) -> RunExecution | FinishedRun | None:
        rows, _ = await self.store.list_runs(parent=parent_run_id, limit=500)
        for row in rows:
            if row["parent_step_id"] != parent_step_id:
                continue
            if row["id"] in self.runs:
                return self.runs[row["id"]]
            if row["status"] == RunStatus.SUCCEEDED.value:
                return FinishedRun(row["id"], row["status"], row["outputs"], row["error"])
        return None

    async def retry(self, run_id: str, from_step: str | None = None, *, version: str = "current") -> RunExecution:
        """Start a new run that reuses the outputs of what already succeeded upstream.

        `from_step`: run this step and everything after it again; without it, the
        steps that did not succeed and everything after them. `version`: "current"
        runs the workflow's current definition when it is valid (so a fix just saved
        is used), "same" the exact version the old run used; any other value is a
        version of the workflow to run (a pin).
        """
        new, reuse = await self.prepare_retry(run_id, from_step, version=version)
        self.store.put_run(new.row, (self.owner, 1))
        return self.launch(new, reuse=reuse)

    async def prepare_retry(self, run_id: str, from_step: str | None = None, *,
                            version: str = "current") -> tuple[NewRun, dict[str, dict[str, Any]]]:
        """The new run of a retry (not recorded yet) and what it reuses (see `retry`)."""
        run = await self.store.get_run(run_id)
        if run is None:
            raise RunNotFound(run_id)
        definition = self.lookup(run["workflow"]) if version == "current" else None
        if version not in ("current", "same"):  # an explicit version (the workflow's pin)
            definition = await self.definition_at(run["workflow"], version)
        elif definition is None or not definition.valid:
            definition = await self.stored_definition(run)
            if definition is None:  # pragma: no cover - versions are written with runs
                raise RunNotFound(run_id)
        if not definition.valid:
            raise WorkflowInvalid(definition.name, definition.problems)
        dag = definition.dag
        assert dag is not None
        final = {row["step_id"]: row for row in await self.store.step_states(run_id)}
        if from_step is not None:
            if from_step not in dag.dependents:
                raise ParamError({"from": f"no step '{from_step}' in workflow '{definition.name}'"})
            redo = {from_step} | dag.descendants(from_step)
        else:
            redo = set()
            for sid in dag.order:
                if final.get(sid, {}).get("status") != StepStatus.SUCCEEDED:
                    redo |= {sid} | dag.descendants(sid)
        reuse = {
            sid: await reused_result(self.store, run_id, row, definition)
            for sid, row in final.items()
            if row["status"] == StepStatus.SUCCEEDED and sid not in redo and sid in dag.dependents
        }
        new = self.new_run(definition, run["params"], trigger="retry", retry_of=run_id, retry_from=from_step)
        return new, reuse

