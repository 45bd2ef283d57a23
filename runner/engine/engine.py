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

from ..dsl.loader import Definition, load_text
from ..dsl.params import validate_params
from ..errors import (
    ParamError,
    RunNotFound,
    SecretMissing,
    ShuttingDown,
    TreadleError,
    WorkflowInvalid,
    WorkflowNotFound,
)
from ..storage.models import RunStatus, StepStatus
from ..storage.store import Store
from ..templates import Masker
from .approvals import Approvals
from .circuit import Breakers
from .journal import Journal
from .recovery import owner_is_dead_here, plan_resumes, reused_result
from .run import RunExecution

log = logging.getLogger("treadle.engine")
MAX_CHILD_DEPTH = 10
LEASE_SECONDS = 5.0  # a run whose lease is older than this has nobody working on it
HEARTBEAT_SECONDS = 1.0


@dataclass
class FinishedRun:
    """A run that ended before this process started (what a resumed parent needs of it)."""

    id: str
    status: str
    outputs: Any
    error: str | None


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
        http: httpx.AsyncClient | None = None,
    ):
        self.store = store
        self.lookup = lookup or (lambda name: None)
        self.definitions_dir = definitions_dir
        self.environ = environ if environ is not None else os.environ
        self.http = http or httpx.AsyncClient(follow_redirects=True)
        self._own_http = http is None
        self.runs: dict[str, RunExecution] = {}
        self.breakers = Breakers()  # per-host circuit breakers of http steps, shared by all runs
        self.approvals = Approvals(store)  # approval steps' requests and decisions
        self._versions_written: set[tuple[str, str]] = set()
        # this process's name on the runs it drives (see leases in models.Run)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{pysecrets.token_hex(3)}"
        self.draining = False
        # called when a run finishes (not when it is suspended to be resumed): chaining,
        # queues, notifications; each callback must return quickly and never raise
        self.run_ended: list[Callable[[RunEnded], None]] = []
        self._heartbeat: asyncio.Task | None = None
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

    async def shutdown(self, grace: float = 30.0, *, now: asyncio.Event | None = None) -> None:
        """Start no new run or step; let running steps finish for up to `grace` seconds
        (or until `now` is set: a second signal), then interrupt what still runs. Runs
        not finished stay `running` without an owner: the next start resumes them."""
        self.draining = True
        for exe in self.runs.values():
            exe.draining = True
        deadline = time.monotonic() + grace
        stop_now = now or asyncio.Event()
        while any(exe.busy for exe in self.runs.values()) and time.monotonic() < deadline and not stop_now.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_now.wait(), min(0.05, max(deadline - time.monotonic(), 0)))
        for exe in list(self.runs.values()):
            exe.suspend()
        await asyncio.gather(*(exe.wait() for exe in list(self.runs.values())), return_exceptions=True)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._own_http:
            await self.http.aclose()
        await self.store.flush()

    def run_finished(self, exe: RunExecution) -> None:
        ended = RunEnded(exe.id, exe.definition.name, exe.status.value, exe.trigger, exe.started_at, time.time(),
                         exe.mask.data(exe.outputs), exe.mask.text(exe.error) if exe.error else None,
                         exe.definition, exe.parent_run_id)
        for callback in list(self.run_ended):
            try:
                callback(ended)
            except Exception:  # one broken listener must not stop the others or the run
                log.exception("run_ended callback %r failed", callback)

    def _keep_leases(self) -> None:
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.create_task(self._renew_leases(), name="treadle-leases")

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            if self.runs:
                self.store.renew_leases(self.owner, time.time() + LEASE_SECONDS)

    async def recover(self, *, workflow: str | None = None) -> list[RunExecution]:
        """Resume the unfinished runs nobody drives (their process died or stopped).

        Steps that finished keep their outputs and do not run again; steps that were
        running run again (at least once: they carry a stable idempotency key).
        """
        if self.draining:
            return []
        self._keep_leases()
        now = time.time()
        dead = [o for o in await self.store.active_owners() if owner_is_dead_here(o)]
        claimed = await self.store.claim_stale_runs(self.owner, now + LEASE_SECONDS, now=now,
                                                    workflow=workflow, dead_owners=dead)
        plans = await plan_resumes(self.store, claimed, self.stored_definition, self.environ)
        # every execution is registered before any starts, so a resumed parent run finds
        # its resumed child runs instead of starting them again
        resumed = []
        for plan in plans:
            run = plan.run
            exe = RunExecution(self, run["id"], plan.definition, run["params"] or {}, plan.secrets, {},
                               resumed=plan.state)
            exe.trigger, exe.started_at = run["trigger"], run["started_at"] or run["created_at"]
            exe.parent_run_id = run["parent_run_id"]
            self._register(exe)
            resumed.append(exe)
        for exe in resumed:
            exe.journal.run(status=RunStatus.RUNNING.value)
            exe.start()
            log.info("resuming run %s of %s (%d steps already finished)", exe.id, exe.definition.name,
                     len(exe.resumed.finished) if exe.resumed else 0)
        return resumed

    def _register(self, exe: RunExecution) -> None:
        self.runs[exe.id] = exe
        exe.on_done(lambda: self.runs.pop(exe.id, None))

    def journal(self, run_id: str) -> Journal:
        return Journal(self.store, run_id)

    def prepare(self, definition: Definition, params: dict[str, Any] | None, *, from_text: bool = False) -> tuple[dict, dict]:
        """Check that a run can start: valid definition, params, secrets. Returns (params, secrets)."""
        if not definition.valid:
            raise WorkflowInvalid(definition.name, definition.problems)
        spec = definition.spec
        assert spec is not None
        checked = validate_params(spec.params, params, from_text=from_text)
        missing = [n for n in spec.secrets if not self.environ.get(n)]
        if missing:
            raise SecretMissing(missing)
        return checked, {n: self.environ[n] for n in spec.secrets}

    async def start(
        self, definition: Definition, params: dict[str, Any] | None = None, *, from_text: bool = False,
        trigger: str = "manual", parent_run_id: str | None = None, parent_step_id: str | None = None,
        retry_of: str | None = None, retry_from: str | None = None,
        reuse: dict[str, dict[str, Any]] | None = None, depth: int = 0,
        ref: str | None = None, queued_id: str | None = None,
    ) -> RunExecution:
        """Validate and start a run; returns at once with the running execution.

        `ref`: what exactly started it (a schedule slot, a file, an upstream run).
        `queued_id`: start this queued run (see `enqueue`) instead of a new one.
        """
        if self.draining:
            raise ShuttingDown()
        checked, secret_values = self.prepare(definition, params, from_text=from_text)
        self._keep_leases()
        now = time.time()
        self._write_version(definition, now)
        lease = {"status": RunStatus.RUNNING.value, "started_at": now, "owner": self.owner,
                 "lease_until": now + LEASE_SECONDS}
        if queued_id is not None:
            run_id = queued_id
            self.store.update_run({"id": run_id, "reason": None, **lease})
        else:
            run_id = new_run_id()
            parent = self.runs.get(parent_run_id) if parent_run_id else None
            self.store.put_run({
                "id": run_id, "workflow": definition.name, "version": definition.version,
                "commit": definition.revision, "trigger": trigger, "trigger_ref": ref,
                "params": self._recorded_params(run_id, definition, checked,
                                                [*secret_values.values(), *(parent.mask_values if parent else ())]),
                "parent_run_id": parent_run_id, "parent_step_id": parent_step_id,
                "retry_of": retry_of, "retry_from": retry_from, "created_at": now, **lease,
            })
        exe = RunExecution(self, run_id, definition, checked, secret_values, reuse or {}, depth=depth,
                           parent=self.runs.get(parent_run_id) if parent_run_id else None)
        exe.trigger, exe.started_at = trigger, now
        self._register(exe)
        exe.start()
        return exe

    def enqueue(self, definition: Definition, params: dict[str, Any] | None, *, trigger: str,
                ref: str | None = None, reason: str, from_text: bool = False) -> tuple[str, dict[str, Any]]:
        """Record a `queued` run (params checked now, so a bad start fails at once);
        `start(..., queued_id=)` starts it later. Returns (run id, checked params)."""
        checked, secret_values = self.prepare(definition, params, from_text=from_text)
        now = time.time()
        self._write_version(definition, now)
        run_id = new_run_id()
        self.store.put_run({
            "id": run_id, "workflow": definition.name, "version": definition.version,
            "commit": definition.revision, "status": RunStatus.QUEUED.value,
            "params": self._recorded_params(run_id, definition, checked, list(secret_values.values())),
            "trigger": trigger, "trigger_ref": ref, "reason": reason, "created_at": now,
        })
        return run_id, checked

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
        is used), "same" the exact version the old run used.
        """
        run = await self.store.get_run(run_id)
        if run is None:
            raise RunNotFound(run_id)
        definition = self.lookup(run["workflow"]) if version == "current" else None
        if definition is None or not definition.valid:
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
        return await self.start(definition, run["params"], trigger="retry", retry_of=run_id,
                                retry_from=from_step, reuse=reuse)

