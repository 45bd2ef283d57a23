"""`GET /metrics`: Prometheus metrics through the official `prometheus_client`.

Two kinds of figures:
- **counted here** (counters, histograms): runs started and finished, step attempts,
  retries and durations, schedule lag, store batches. They count what *this* server
  did since it started (several servers: sum them in PromQL; a restart resets them,
  which `rate()` and `increase()` handle).
- **read at scrape time** (gauges): runs queued, running and waiting across the whole
  database, approvals waiting, circuit breakers, definitions loaded and broken, store
  write errors, SSE clients, leadership.

Labels are bounded: workflow names (at most MAX_WORKFLOWS, the rest as `other`), step
kinds, run and attempt states, trigger kinds, breaker hosts (at most MAX_HOSTS). No
run id, param or value ever becomes a label.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from runner import __version__

if TYPE_CHECKING:
    from runner.engine.engine import RunEnded
    from runner.engine.run import RunExecution

    from .services import Services

disable_created_metrics()  # no `_created` series beside each counter: noise for every dashboard
MAX_WORKFLOWS = 500
MAX_HOSTS = 100
FINAL_ATTEMPT = frozenset({"succeeded", "failed", "cancelled"})
RUN_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, float("inf"))
STEP_BUCKETS = (0.005, 0.025, 0.1, 0.5, 1, 5, 15, 60, 300, 1800, float("inf"))
LAG_BUCKETS = (0.1, 0.5, 1, 5, 30, 60, 300, 3600, float("inf"))
BATCH_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, float("inf"))
STREAMS = {"open": 0}  # server-sent event streams open now (sse.py counts them)


class Metrics:
    """The metrics of one app: its own registry (several apps may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._workflows: set[str] = set()
        r = self.registry
        self.runs_started = Counter("treadle_runs_started", "Runs this server started driving",
                                    ["workflow", "trigger"], registry=r)
        self.runs_finished = Counter("treadle_runs_finished", "Runs this server drove to their end",
                                     ["workflow", "status"], registry=r)
        self.run_duration = Histogram("treadle_run_duration_seconds", "Duration of finished runs",
                                      ["workflow"], buckets=RUN_BUCKETS, registry=r)
        self.attempts = Counter("treadle_step_attempts", "Step attempts that ended (foreach items included)",
                                ["workflow", "kind", "status"], registry=r)
        self.retries = Counter("treadle_step_retries", "Step attempts scheduled again after a failure",
                               ["workflow", "kind"], registry=r)
        self.step_duration = Histogram("treadle_step_duration_seconds", "Duration of step attempts that ended",
                                       ["workflow", "kind"], buckets=STEP_BUCKETS, registry=r)
        self.schedule_lag = Histogram("treadle_schedule_lag_seconds", "How long after its slot a schedule fired",
                                      ["workflow"], buckets=LAG_BUCKETS, registry=r)
        self.batch = Histogram("treadle_store_batch_seconds", "Time to write one batch of records",
                               buckets=BATCH_BUCKETS, registry=r)
        self.scrape: dict[str, Any] = {}  # the figures read at scrape time (see refresh)
        r.register(_Scraped(self))

    def workflow(self, name: str) -> str:
        if name in self._workflows or len(self._workflows) < MAX_WORKFLOWS:
            self._workflows.add(name)
            return name
        return "other"

    # -- what the engine tells ------------------------------------------------------

    def attach(self, services: Services) -> None:
        engine = services.engine
        engine.run_launched.append(self.on_launched)
        engine.step_written.append(self.on_step)
        engine.run_ended.append(self.on_ended)
        services.store.writer.on_batch = lambda seconds, _n: self.batch.observe(seconds)
        scheduler = services.scheduler
        if scheduler is not None:
            scheduler.on_fire = lambda workflow, lag: self.schedule_lag.labels(self.workflow(workflow)).observe(lag)

    def on_launched(self, exe: RunExecution) -> None:
        self.runs_started.labels(self.workflow(exe.definition.name), exe.trigger).inc()

    def on_step(self, exe: RunExecution, row: dict[str, Any]) -> None:
        status, attempt = row.get("status"), row.get("attempt", 0)
        step = exe.steps.get(row["step_id"])
        kind = step.kind if step is not None else "unknown"
        workflow = self.workflow(exe.definition.name)
        if status in FINAL_ATTEMPT and attempt > 0:
            self.attempts.labels(workflow, kind, status).inc()
            started, finished = row.get("started_at"), row.get("finished_at")
            if started and finished:
                self.step_duration.labels(workflow, kind).observe(max(0.0, finished - started))
        elif status == "pending" and attempt > 1:
            self.retries.labels(workflow, kind).inc()

    def on_ended(self, ended: RunEnded) -> None:
        workflow = self.workflow(ended.workflow)
        self.runs_finished.labels(workflow, ended.status).inc()
        self.run_duration.labels(workflow).observe(max(0.0, ended.finished_at - ended.started_at))

    # -- a scrape -------------------------------------------------------------------

    async def refresh(self, services: Services) -> None:
        """Read what the gauges show (the database is asked once per scrape)."""
        _, waiting = await services.engine.approvals.pending(limit=1)
        entries = services.catalog.entries()
        self.scrape = {
            "runs": await services.store.stats.unfinished(),
            "approvals": waiting,
            "breakers": [(b.host, b.current_state().value) for b in services.engine.breakers.all()[:MAX_HOSTS]],
            "definitions": {"valid": sum(1 for d in entries if d.valid),
                            "broken": sum(1 for d in entries if not d.healthy)},
            "write_errors": services.store.write_errors, "fenced": services.store.writer.fenced,
            "leader": services.leader_since is not None, "at": time.time(),
        }

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Scraped(Collector):
    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self):  # type: ignore[no-untyped-def]
        s = self.metrics.scrape
        info = GaugeMetricFamily("treadle_info", "This server's Treadle version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        if not s:
            return
        runs = GaugeMetricFamily("treadle_runs", "Runs not finished, by state, across the database", labels=["state"])
        for state, n in s["runs"].items():
            runs.add_metric([state], n)
        yield runs
        yield GaugeMetricFamily("treadle_approvals_waiting", "Approval steps waiting for a person", value=s["approvals"])
        breakers = GaugeMetricFamily("treadle_circuit_breaker_state",
                                     "1 for the state each circuit breaker is in", labels=["host", "state"])
        for host, state in s["breakers"]:
            for each in ("closed", "open", "half_open"):
                breakers.add_metric([host, each], 1 if each == state else 0)
        yield breakers
        definitions = GaugeMetricFamily("treadle_definitions", "Workflow files loaded: valid, and with problems",
                                        labels=["state"])
        for state, n in s["definitions"].items():
            definitions.add_metric([state], n)
        yield definitions
        yield CounterMetricFamily("treadle_store_write_errors", "Failed writes of a batch (each retried)",
                                  value=s["write_errors"])
        yield CounterMetricFamily("treadle_store_fenced_records",
                                  "Records refused because another server had taken their run over", value=s["fenced"])
        yield GaugeMetricFamily("treadle_sse_clients", "Server-sent event streams open", value=STREAMS["open"])
        yield GaugeMetricFamily("treadle_leader", "1 when this server runs schedules and file triggers",
                                value=1 if s["leader"] else 0)
