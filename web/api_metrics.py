"""Observability over HTTP: Prometheus metrics (`/metrics`) and per-workflow statistics
(`/api/workflows/{name}/stats`)."""

from __future__ import annotations

import math
import time
from typing import Annotated, Any, Literal, TypedDict

from litestar import Request, get
from litestar.params import FromPath, QueryParameter
from litestar.response import Response
from prometheus_client import CONTENT_TYPE_LATEST

from runner.engine.report import iso
from runner.errors import WorkflowNotFound

from .api import _errors, _services
from .services import Services

WINDOWS = {"24h": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400}
ENDED = ("succeeded", "failed", "cancelled", "skipped")


@get("/metrics", tags=["health"], include_in_schema=False)
async def metrics(request: Request) -> Response[bytes]:
    """Prometheus text format; `read` scope (or the open loopback mode), like the API."""
    services = _services(request)
    await services.metrics.refresh(services)
    return Response(services.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


class WorkflowStats(TypedDict):
    workflow: str
    window: str
    runs: int  # created in the window
    by_status: dict[str, int]
    success_rate: float | None  # succeeded / (succeeded + failed + cancelled); null without ended runs
    duration_p50_s: float | None  # of ended runs
    duration_p95_s: float | None
    failing_steps: list[dict[str, Any]]  # [{step, failed_attempts}], most first
    recent: list[dict[str, Any]]  # the last 50 runs, oldest first: {id, status, created_at, duration_s}


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile by nearest rank (q in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q * len(ordered))))
    return ordered[rank - 1]


async def workflow_stats(services: Services, name: str, window: str) -> WorkflowStats:
    since = time.time() - WINDOWS[window]
    rows = await services.store.stats.history(name, since)
    if not rows and services.catalog.get(name) is None:
        raise WorkflowNotFound(name, services.catalog.names())
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    ended = sum(by_status.get(s, 0) for s in ENDED)
    durations = [r["finished_at"] - r["started_at"] for r in rows
                 if r["status"] in ENDED and r["started_at"] and r["finished_at"]]
    p50, p95 = percentile(durations, 0.5), percentile(durations, 0.95)
    failing = await services.store.stats.failing_steps(name, since)
    return {
        "workflow": name, "window": window, "runs": len(rows), "by_status": by_status,
        "success_rate": round(by_status.get("succeeded", 0) / ended, 4) if ended else None,
        "duration_p50_s": round(p50, 3) if p50 is not None else None,
        "duration_p95_s": round(p95, 3) if p95 is not None else None,
        "failing_steps": [{"step": s, "failed_attempts": n} for s, n in failing],
        "recent": [{"id": r["id"], "status": r["status"], "created_at": iso(r["created_at"]),
                    "duration_s": round(r["finished_at"] - r["started_at"], 3)
                    if r["started_at"] and r["finished_at"] else None} for r in rows[-50:]],
    }


@get("/api/workflows/{name:str}/stats", tags=["workflows"], responses=_errors(400, 404))
async def get_stats(
    request: Request, name: FromPath[str],
    window: Annotated[Literal["24h", "7d", "30d"], QueryParameter(description="how far back")] = "24h",
) -> WorkflowStats:
    """Runs in the window, success rate, p50/p95 duration, the steps that fail most, and
    the last 50 runs (for a chart)."""
    return await workflow_stats(_services(request), name, window)


METRICS_ROUTES = [metrics, get_stats]
