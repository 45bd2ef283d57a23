"""Runs as documents: the shape shared by the API (`GET /api/runs/{id}`) and the CLI."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ..dsl.durations import iso
from ..dsl.loader import Definition, load_text
from ..storage.store import Store


def duration_ms(start: float | None, end: float | None) -> int | None:
    return round((end - start) * 1000) if start is not None and end is not None else None


@lru_cache(maxsize=256)
def _definition(version: str, source: str, path: str, name: str) -> Definition:
    return load_text(source, path, name=name)


async def run_definition(store: Store, run: dict[str, Any]) -> Definition | None:
    """The exact definition a run was started with (parsed once per version)."""
    stored = await store.get_version(run["version"], run["workflow"])
    if stored is None:
        return None
    return _definition(stored["version"], stored["source"], stored["path"], run["workflow"])


def run_summary(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": run["id"], "workflow": run["workflow"], "version": run["version"], "commit": run.get("commit"), "status": run["status"],
        "params": run["params"], "trigger": run["trigger"], "trigger_ref": run.get("trigger_ref"),
        "reason": run.get("reason"), "error": run["error"], "outputs": run["outputs"],
        "parent_run_id": run["parent_run_id"], "parent_step_id": run["parent_step_id"],
        "retry_of": run["retry_of"], "compensated": run.get("compensated"), "retry_from": run["retry_from"],
        "backfill_id": run.get("backfill_id"),
        "created_at": iso(run["created_at"]), "started_at": iso(run["started_at"]),
        "finished_at": iso(run["finished_at"]), "duration_ms": duration_ms(run["started_at"], run["finished_at"]),
    }


def attempt_doc(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "attempt": row["attempt"], "item": None if row["item"] < 0 else row["item"], "status": row["status"],
        "started_at": iso(row["started_at"]), "finished_at": iso(row["finished_at"]),
        "duration_ms": duration_ms(row["started_at"], row["finished_at"]), "input": row["input"],
        "output": row["output"], "exit_code": row["exit_code"], "http_status": row["http_status"],
        "error": row["error"], "worker": row.get("worker"),
    }


def step_kinds(definition: Definition | None) -> dict[str, str]:
    """Step id -> kind, for every step a run of `definition` records (handlers and
    compensations, `<id>.compensate`, included)."""
    spec = definition.spec if definition is not None else None
    if spec is None:
        return {}
    kinds = definition.__dict__.get("_step_kinds")  # type: ignore[union-attr]
    if kinds is None:  # once per definition version (run_definition caches them)
        kinds = {}
        for step in (*spec.steps, *spec.on_failure, *spec.on_success, *spec.finally_):
            kinds[step.id] = step.kind
            if step.compensate is not None:
                kinds[f"{step.id}.compensate"] = step.compensate.kind
        definition.__dict__["_step_kinds"] = kinds  # type: ignore[union-attr]
    return kinds


async def run_document(store: Store, run_id: str, *, with_attempts: bool = True) -> dict[str, Any] | None:
    """The run and its steps in DAG order; steps that have not started are `pending`."""
    run = await store.get_run(run_id)
    if run is None:
        return None
    definition = await run_definition(store, run)
    rows = await store.step_attempts(run_id)
    by_step: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_step.setdefault(row["step_id"], []).append(row)
    order = list(definition.dag.order) if definition is not None and definition.dag else []
    kinds = step_kinds(definition)
    known = set(order)
    order += [s for s in by_step if s not in known]
    steps = []
    for sid in order:
        step_rows = by_step.get(sid, [])
        whole = [r for r in step_rows if r["item"] == -1]
        items = [r for r in step_rows if r["item"] >= 0]
        last = max(whole, key=lambda r: r["attempt"]) if whole else None
        real = [r for r in whole if r["attempt"] > 0]
        doc: dict[str, Any] = {
            "id": sid, "kind": kinds.get(sid), "status": last["status"] if last else "pending",
            "attempts": max((r["attempt"] for r in real), default=0),
            "started_at": iso(min((r["started_at"] for r in real if r["started_at"]), default=None)),
            "finished_at": iso(last["finished_at"]) if last else None,
            "duration_ms": duration_ms(min((r["started_at"] for r in real if r["started_at"]), default=None), last["finished_at"] if last else None),
            "input": last["input"] if last else None, "output": last["output"] if last else None,
            "exit_code": last["exit_code"] if last else None, "http_status": last["http_status"] if last else None,
            "error": last["error"] if last else None,
        }
        if definition is not None and definition.dag and sid in definition.dag.deps:
            doc["needs"] = list(definition.dag.deps[sid])
        if with_attempts:
            doc["attempt_list"] = [attempt_doc(r) for r in sorted(real, key=lambda r: r["attempt"])]
            if items:
                doc["items"] = [attempt_doc(r) for r in sorted(items, key=lambda r: (r["item"], r["attempt"]))]
        steps.append(doc)
    return {**run_summary(run), "steps": steps}
