"""Resuming runs that a process left unfinished (killed, crashed, or shut down).

The database is the only memory: a run is `running` with a lease nobody renews, and
its step attempts say what finished (with outputs) and what did not. Recovery claims
such runs atomically, rebuilds the run from the exact definition version it started
with, and continues it: finished steps keep their results, steps that were running
run again under a new attempt number (same idempotency key), and retry budgets
carry on where they were.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from .loader import Definition
from .models import RunStatus, StepStatus
from .run_execution import INTERRUPTED, NO_RETRY, Resumed, RunExecution

if TYPE_CHECKING:
    from .executor import Engine

log = logging.getLogger("treadle.recovery")
_DONE = {StepStatus.SUCCEEDED.value, StepStatus.SKIPPED.value, StepStatus.UPSTREAM_FAILED.value}


async def resume_stale_runs(engine: Engine, *, workflow: str | None = None) -> list[RunExecution]:
    from .executor import LEASE_SECONDS

    now = time.time()
    dead = [o for o in await engine.store.active_owners() if _dead_here(o)]
    claimed = await engine.store.claim_stale_runs(engine.owner, now + LEASE_SECONDS, now=now,
                                                  workflow=workflow, dead_owners=dead)
    plans = []
    for run in claimed:
        try:
            plans.append(await _plan(engine, run))
        except _CannotResume as exc:
            _fail(engine, run, str(exc))
    # every execution is registered before any starts, so a resumed parent run finds
    # its resumed child runs instead of starting them again
    resumed = []
    for run, definition, state, secrets in plans:
        exe = RunExecution(engine, run["id"], definition, run["params"] or {}, secrets, {}, resumed=state)
        exe.trigger, exe.started_at = run["trigger"], run["started_at"] or run["created_at"]
        exe.parent_run_id = run["parent_run_id"]
        engine.runs[run["id"]] = exe
        exe.on_done(lambda rid=run["id"]: engine.runs.pop(rid, None))
        resumed.append(exe)
    for exe in resumed:
        engine.store.update_run({"id": exe.id, "status": RunStatus.RUNNING.value})
        exe.start()
        log.info("resuming run %s of %s (%d steps already finished)", exe.id, exe.definition.name,
                    len(exe.resumed.finished) if exe.resumed else 0)
    return resumed


def _dead_here(owner: str) -> bool:
    """An owner on this machine whose process is gone: no need to wait for its lease
    to run out (a restart right after a kill -9 resumes at once)."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class _CannotResume(Exception):
    pass


def _fail(engine: Engine, run: dict[str, Any], error: str) -> None:
    engine.store.update_run({"id": run["id"], "status": RunStatus.FAILED.value, "error": error,
                             "finished_at": time.time(), "lease_until": None})
    log.warning("run %s of %s not resumed: %s", run["id"], run["workflow"], error)


async def _plan(engine: Engine, run: dict[str, Any]) -> tuple[dict, Definition, Resumed, dict[str, str]]:
    definition = await engine.stored_definition(run)
    if definition is None:
        raise _CannotResume("interrupted, and its definition version is not in the database")
    if not definition.valid:  # pragma: no cover - versions are stored when they start runs
        raise _CannotResume("interrupted, and its definition no longer loads")
    definition.commit = run.get("commit")
    spec = definition.spec
    assert spec is not None
    rows = await engine.store.step_attempts(run["id"])
    if not spec.resume:
        _mark_interrupted(engine, rows)
        raise _CannotResume("interrupted: Treadle stopped while the run was in progress (the workflow says resume: false)")
    missing = [n for n in spec.secrets if not engine.environ.get(n)]
    if missing:
        raise _CannotResume(f"interrupted, and cannot resume: secret {', '.join(missing)} not set")
    secrets = {n: engine.environ[n] for n in spec.secrets}
    return run, definition, await _resumed_state(engine, run["id"], definition, rows), secrets


def _mark_interrupted(engine: Engine, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        if row["status"] in (StepStatus.RUNNING.value, StepStatus.PENDING.value):
            engine.store.put_step({**row, "status": StepStatus.CANCELLED.value, "finished_at": time.time(),
                                   "error": INTERRUPTED.split(";")[0]})


async def _resumed_state(engine: Engine, run_id: str, definition: Definition, rows: list[dict[str, Any]]) -> Resumed:
    spec = definition.spec
    assert spec is not None
    steps = {s.id: s for s in spec.steps}
    by_key: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["step_id"] in steps:
            by_key[(row["step_id"], row["item"])].append(row)
    state = Resumed()
    for (sid, item), attempts in by_key.items():
        attempts.sort(key=lambda r: r["attempt"])
        last = attempts[-1]
        failures = sum(r["status"] == StepStatus.FAILED.value for r in attempts)
        step = steps[sid]
        retry = step.retry or spec.defaults.retry or NO_RETRY
        code = last["http_status"] if last["http_status"] is not None else last["exit_code"]
        exhausted = failures > retry.limit or (retry.on is not None and code not in retry.on)
        if last["status"] in _DONE or (last["status"] == StepStatus.FAILED.value and exhausted):
            if item >= 0:
                if last["status"] == StepStatus.SUCCEEDED.value:
                    state.items.setdefault(sid, {})[item] = last["output"]
                else:
                    state.next_attempt[(sid, item)] = (last["attempt"] + 1, failures)
                continue
            result: dict[str, Any] = {"output": last["output"], "exit_code": last["exit_code"]}
            if last["status"] == StepStatus.FAILED.value:
                result["error"] = last["error"]
            elif last["status"] == StepStatus.SUCCEEDED.value and last["attempt"] > 0:
                result.update((await engine._reused(run_id, last, definition)).get("extra", {}))
            state.finished[sid] = (StepStatus(last["status"]), result)
            continue
        # unfinished: interrupted, waiting for a retry, or failed with retries left
        if last["status"] == StepStatus.RUNNING.value:
            engine.store.put_step({**last, "status": StepStatus.CANCELLED.value, "finished_at": time.time(),
                                   "error": INTERRUPTED})
        next_attempt = last["attempt"] if last["status"] == StepStatus.PENDING.value else last["attempt"] + 1
        state.next_attempt[(sid, item)] = (max(next_attempt, 1), failures)
    return state
