"""OpenTelemetry traces: spans collected in memory (a run span with a child per step
attempt, attributes, failures), the W3C traceparent received by a real loopback HTTP
server, and `treadle run` exporting over OTLP/HTTP to a real loopback receiver."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runner.engine.tracing import Tracing
from tests.exec_support import run_yaml
from tests.http_server import http_server_fixture  # noqa: F401  (the fixture)


async def test_a_run_span_has_a_child_per_attempt_and_http_steps_send_traceparent(
        engine, tmp_path: Path, http_server) -> None:  # noqa: F811
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    Tracing(provider).attach(engine)
    flow = f"""
        secrets: [TOKEN]
        steps:
          - id: call
            http: {{url: "{http_server.url}/echo?t={{{{ secrets.TOKEN }}}}"}}
          - id: flaky
            run: 'exit 4'
            retry: {{limit: 1, delay: 0s}}
    """
    engine.environ = {"TOKEN": "tok-secret-77"}
    exe, doc = await run_yaml(engine, tmp_path, flow)
    await engine.announced()
    assert doc["status"] == "failed"
    spans = {s.name + (f"#{s.attributes.get('treadle.attempt')}" if s.name.startswith("step") else ""): s
             for s in exporter.get_finished_spans()}
    assert set(spans) == {"run wf", "step call#1", "step flaky#1", "step flaky#2"}
    run = spans["run wf"]
    assert run.parent is None and run.attributes["treadle.status"] == "failed"
    for name in ("step call#1", "step flaky#1", "step flaky#2"):
        assert spans[name].parent.span_id == run.context.span_id
        assert spans[name].context.trace_id == run.context.trace_id
    assert spans["step flaky#2"].status.status_code.name == "ERROR"
    assert spans["step flaky#2"].attributes["treadle.kind"] == "run"
    call = spans["step call#1"]
    assert call.attributes["treadle.status"] == "succeeded" and call.start_time <= call.end_time
    [request] = [r for r in http_server.requests if r["path"] == "/echo"]
    version, trace_id, span_id, flags = request["headers"]["traceparent"].split("-")
    assert (version, trace_id, span_id) == ("00", f"{call.context.trace_id:032x}", f"{call.context.span_id:016x}")
    assert int(flags, 16) & 1  # sampled
    text = repr([dict(s.attributes) for s in spans.values()]) + repr([s.status.description for s in spans.values()])
    assert "tok-secret-77" not in text


class _Receiver(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.posts.append((self.path, self.headers.get("Content-Type"), body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_treadle_run_exports_spans_to_an_otlp_receiver(tmp_path: Path) -> None:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    receiver.posts = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        (tmp_path / "definitions").mkdir()
        (tmp_path / "definitions" / "hello.yaml").write_text("steps:\n  - {id: a, set: {v: 1}}\n  - {id: b, run: 'true'}\n")
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_address[1]}",
               "OTEL_SERVICE_NAME": "treadle-test", "TREADLE_DEFINITIONS": "definitions",
               "TREADLE_DB": f"sqlite:///{tmp_path / 't.db'}"}
        done = subprocess.run([sys.executable, "-m", "runner", "run", "hello"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    finally:
        receiver.shutdown()
        receiver.server_close()
    posts = receiver.posts  # type: ignore[attr-defined]
    assert posts and all(path == "/v1/traces" and kind == "application/x-protobuf" for path, kind, _ in posts)
    names, service = [], None
    for _, _, body in posts:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
            names += [span.name for scope in resource_spans.scope_spans for span in scope.spans]
    assert service == "treadle-test"
    assert sorted(names) == ["run hello", "step a", "step b"]
