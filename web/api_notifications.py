"""The notifications of a run: every try to deliver one, as recorded."""

from __future__ import annotations

from typing import Any, TypedDict

from litestar import Request, get
from litestar.params import FromPath

from runner.engine.report import iso
from runner.errors import RunNotFound

from .api import _errors, _services


class Delivery(TypedDict):
    event: str  # run.failed, step.retrying, ...
    step_id: str | None
    target: str  # the receiver, without credentials or query
    format: str
    attempt: int
    ok: bool
    http_status: int | None
    error: str | None
    final: bool  # no further try follows
    at: str


class Deliveries(TypedDict):
    items: list[Delivery]


def delivery_doc(row: dict[str, Any]) -> Delivery:
    return {"event": row["event"], "step_id": row["step_id"], "target": row["target"], "format": row["format"],
            "attempt": row["attempt"], "ok": bool(row["ok"]), "http_status": row["http_status"],
            "error": row["error"], "final": bool(row["final"]), "at": iso(row["at"]) or ""}


@get("/api/runs/{run_id:str}/notifications", tags=["runs"], responses=_errors(404))
async def run_notifications(request: Request, run_id: FromPath[str]) -> Deliveries:
    """Every try to deliver a notification of the run (or its steps), oldest first."""
    store = _services(request).store
    if await store.get_run(run_id) is None:
        raise RunNotFound(run_id)
    return {"items": [delivery_doc(r) for r in await store.notifications.of_run(run_id)]}


NOTIFICATION_ROUTES = [run_notifications]
