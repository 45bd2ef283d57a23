"""OpenTelemetry traces: a span per run, a child span per step attempt (optional).

Off unless an OTLP endpoint is configured with the standard variables
(`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; the other
`OTEL_*` variables apply as usual) and the `otel` extra is installed (`pip install
treadle[otel]`). Spans are made from the engine's hooks: the run's span when this
process starts driving it, an attempt's span from its `running` row to its last one.
While an attempt runs, its span is the current one in the step's task, so an `http`
step sends its W3C `traceparent` and the called service joins the trace.

Attributes: workflow, version, run id, trigger, step, kind, attempt, item, status, and
the error of a failed attempt as recorded (masked). Never params, inputs or outputs.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from .. import __version__

if TYPE_CHECKING:
    from .engine import Engine, RunEnded
    from .run import RunExecution

log = logging.getLogger("treadle.tracing")
FINAL = frozenset({"succeeded", "failed", "cancelled", "skipped"})


def _ns(seconds: float | None) -> int | None:
    return int(seconds * 1e9) if seconds else None


class Tracing:
    """Args:
        provider: an OpenTelemetry TracerProvider (default: the global one).
    """

    def __init__(self, provider: Any = None):
        from opentelemetry import context, trace

        self._trace, self._context = trace, context
        self.provider = provider
        self.tracer = (provider or trace.get_tracer_provider()).get_tracer("treadle", __version__)
        self._runs: dict[str, Any] = {}  # run id -> its span, while it is driven here
        self._attempts: dict[tuple, tuple[Any, Any]] = {}  # (run, step, item, attempt) -> (span, context token)

    @classmethod
    def from_environment(cls) -> Tracing | None:
        """Tracing to the OTLP endpoint of the `OTEL_*` variables, or None when none is set."""
        if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
            return None
        if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
            return None
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed: "
                        "pip install 'treadle[otel]' to send traces")
            return None
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "treadle"),
                                    "service.version": __version__})
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return cls(provider)

    def attach(self, engine: Engine) -> None:
        engine.run_launched.append(self.on_launched)
        engine.step_written.append(self.on_step)
        engine.run_ended.append(self.on_ended)

    def shutdown(self) -> None:
        """Send what is buffered (at exit)."""
        for span in self._runs.values():  # runs left unfinished (resumed by the next start)
            span.set_attribute("treadle.status", "interrupted")
            span.end()
        self._runs.clear()
        if self.provider is not None and hasattr(self.provider, "shutdown"):
            self.provider.shutdown()

    # -- hooks ------------------------------------------------------------------------

    def _run_span(self, exe: RunExecution) -> Any:
        span = self._runs.get(exe.id)
        if span is None:
            span = self.tracer.start_span(
                f"run {exe.definition.name}", start_time=_ns(exe.started_at),
                attributes={"treadle.workflow": exe.definition.name, "treadle.version": exe.definition.version,
                            "treadle.run_id": exe.id, "treadle.trigger": exe.trigger})
            self._runs[exe.id] = span
        return span

    def on_launched(self, exe: RunExecution) -> None:
        self._run_span(exe)

    def on_step(self, exe: RunExecution, row: dict[str, Any]) -> None:
        attempt = row.get("attempt", 0)
        if attempt < 1:
            return  # a step that never ran has no attempt to trace
        key = (row["run_id"], row["step_id"], row["item"], attempt)
        status = row.get("status")
        if status == "running" and key not in self._attempts:
            step = exe.steps.get(row["step_id"])
            attributes = {"treadle.workflow": exe.definition.name, "treadle.run_id": exe.id,
                          "treadle.step": row["step_id"], "treadle.kind": step.kind if step else "unknown",
                          "treadle.attempt": attempt}
            if row["item"] >= 0:
                attributes["treadle.item"] = row["item"]
            parent = self._trace.set_span_in_context(self._run_span(exe))
            span = self.tracer.start_span(f"step {row['step_id']}", context=parent,
                                          start_time=_ns(row.get("started_at")), attributes=attributes)
            # the current span of the step's task while it runs: an http step's traceparent
            token = self._context.attach(self._trace.set_span_in_context(span))
            self._attempts[key] = (span, token)
        elif status in FINAL:
            span, token = self._attempts.pop(key, (None, None))
            if span is None:  # no running row seen here (answered by a replay, or resumed)
                return
            span.set_attribute("treadle.status", status)
            if status == "failed":
                from opentelemetry.trace import Status, StatusCode

                span.set_status(Status(StatusCode.ERROR, (row.get("error") or "failed")[:500]))
            span.end(end_time=_ns(row.get("finished_at")))
            try:
                self._context.detach(token)
            except Exception:  # written from another task than the running row: nothing to undo
                pass

    def on_ended(self, ended: RunEnded) -> None:
        span = self._runs.pop(ended.run_id, None)
        if span is None:
            return
        span.set_attribute("treadle.status", ended.status)
        if ended.status == "failed":
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, (ended.error or "failed")[:500]))
        span.end(end_time=_ns(ended.finished_at))
