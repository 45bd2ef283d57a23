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
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..dsl.loader import Definition
from ..storage.models import RunStatus, StepStatus
from .run import INTERRUPTED, Resumed

if TYPE_CHECKING:
    from ..storage.store import Store

log = logging.getLogger("treadle.recovery")
_DONE = {StepStatus.SUCCEEDED.value, StepStatus.SKIPPED.value, StepStatus.UPSTREAM_FAILED.value}


@dataclass
class ResumePlan:
    """How to go on with one claimed run."""

    run: dict[str, Any]
    definition: Definition
    state: Resumed
    secrets: dict[str, str]


async def plan_resumes(store: Store, claimed: list[dict[str, Any]],
                       stored_definition: Callable[[dict[str, Any]], Awaitable[Definition | None]],
                       environ: Mapping[str, str], owner: str) -> list[ResumePlan]:
    """Plans for the runs `owner` just claimed; a run that cannot go on (its definition
    is gone, a secret is missing, `resume: false`) is marked failed. What is written
    here is fenced by the lease of the claim."""
    plans = []
    for run in claimed:
        fence = (owner, run["lease_epoch"])
        try:
            plans.append(await _plan(store, run, stored_definition, environ, fence))
        except _CannotResume as exc:
            _fail(store, run, str(exc), fence)
    return plans


class _CannotResume(Exception):
    pass


def _fail(store: Store, run: dict[str, Any], error: str, fence: tuple[str, int]) -> None:
    store.update_run({"id": run["id"], "status": RunStatus.FAILED.value, "error": error,
                      "finished_at": time.time(), "lease_until": None}, fence)
    log.warning("run %s of %s not resumed: %s", run["id"], run["workflow"], error)


async def _plan(store: Store, run: dict[str, Any],
                stored_definition: Callable[[dict[str, Any]], Awaitable[Definition | None]],
                environ: Mapping[str, str], fence: tuple[str, int]) -> ResumePlan:
    definition = await stored_definition(run)
    if definition is None:
        raise _CannotResume("interrupted, and its definition version is not in the database")
    if not definition.valid:  # pragma: no cover - versions are stored when they start runs
        raise _CannotResume("interrupted, and its definition no longer loads")
    definition.commit = run.get("commit")
    spec = definition.spec
    assert spec is not None
    rows = await store.step_attempts(run["id"])
    if run.get("trigger") == "replay":  # its recorded answers were in the process that stopped
        _mark_interrupted(store, rows, fence)
        raise _CannotResume("interrupted: a replay is not resumed; run `treadle replay` again")
    if not spec.resume:
        _mark_interrupted(store, rows, fence)
        raise _CannotResume("interrupted: Treadle stopped while the run was in progress (the workflow says resume: false)")
    missing = [n for n in spec.secrets if not environ.get(n)]
    if missing:
        raise _CannotResume(f"interrupted, and cannot resume: secret {', '.join(missing)} not set")
    secrets = {n: environ[n] for n in spec.secrets}
    return ResumePlan(run, definition, await _resumed_state(store, run["id"], definition, rows, fence), secrets)


def _mark_interrupted(store: Store, rows: list[dict[str, Any]], fence: tuple[str, int]) -> None:
    for row in rows:
        if row["status"] in (StepStatus.RUNNING.value, StepStatus.PENDING.value):
            store.put_step({**row, "status": StepStatus.CANCELLED.value, "finished_at": time.time(),
                            "error": INTERRUPTED.split(";")[0]}, fence)


async def _resumed_state(store: Store, run_id: str, definition: Definition, rows: list[dict[str, Any]],
                         fence: tuple[str, int]) -> Resumed:
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
        # when the engine retries a failed attempt it writes the next one's `pending` row
        # in the same breath: a failed attempt that is the last row is the step's end
        # (retries used up, a code `retry.on` does not name, or a failure that is never
        # retried, such as a command not found, which must not run again after a restart)
        if last["status"] in _DONE or last["status"] == StepStatus.FAILED.value:
            if item >= 0:
                if last["status"] == StepStatus.SUCCEEDED.value:
                    state.items.setdefault(sid, {})[item] = last["output"]
                elif last["status"] == StepStatus.FAILED.value:  # for good, as a whole step's above
                    state.failed_items.setdefault(sid, {})[item] = last["error"] or "failed"
                else:
                    state.next_attempt[(sid, item)] = (last["attempt"] + 1, failures)
                continue
            result: dict[str, Any] = {"output": last["output"], "exit_code": last["exit_code"]}
            if last["status"] == StepStatus.FAILED.value:
                result["error"] = last["error"]
            elif last["status"] == StepStatus.SUCCEEDED.value and last["attempt"] > 0:
                result.update((await reused_result(store, run_id, last, definition)).get("extra", {}))
            state.finished[sid] = (StepStatus(last["status"]), result)
            continue
        # unfinished: interrupted, waiting for a retry, or failed with retries left
        if last["status"] == StepStatus.RUNNING.value:
            store.put_step({**last, "status": StepStatus.CANCELLED.value, "finished_at": time.time(),
                            "error": INTERRUPTED}, fence)
            state.interrupted.append(f"{run_id}.{sid}.{item}.{last['attempt']}")
        next_attempt = last["attempt"] if last["status"] == StepStatus.PENDING.value else last["attempt"] + 1
        state.next_attempt[(sid, item)] = (max(next_attempt, 1), failures)
    return state


async def reused_result(store: Store, run_id: str, row: dict[str, Any], definition: Definition) -> dict[str, Any]:
    """What a retry (or a resumed run) takes over from a succeeded step: output, exit
    code and, for a `run` step, stdout/stderr (from the log of the run where the step
    really ran)."""
    note = row["input"] if row["attempt"] == 0 and isinstance(row["input"], dict) else {}
    origin = note.get("reused_from") or run_id
    reused = {"output": row["output"], "exit_code": row["exit_code"], "run_id": origin}
    step = next((s for s in definition.spec.steps if s.id == row["step_id"]), None) if definition.spec else None
    if step is not None and step.kind == "run" and step.foreach is None:
        attempt = row["attempt"]
        if origin != run_id:
            attempt = max((r["attempt"] for r in await store.step_states(origin) if r["step_id"] == row["step_id"]),
                          default=0)
        chunks = [c for c in await store.logs(origin, row["step_id"]) if c["item"] == -1 and c["attempt"] == attempt]
        reused["extra"] = {stream: "".join(c["text"] for c in chunks if c["stream"] == stream)
                           for stream in ("stdout", "stderr")}
    return reused
