"""A throwaway HTTP API on 127.0.0.1 for `demo/local-http.yaml`, so the `http`
step kind can be shown without any network or outside service.

`serve_once` binds a free port, writes the port number to a file named after the
run, answers one request and returns; `wait_for_port` reads that file. Both take
`ctx` (the step context) for the run id, which keeps concurrent runs apart.
"""

from __future__ import annotations

import json
import tempfile
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any


def _port_file(run_id: str) -> Path:
    return Path(tempfile.gettempdir()) / f"treadle-stub-{run_id}.port"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        length = int(self.headers.get("Content-Length") or 0)
        order = json.loads(self.rfile.read(length) or b"{}")
        body = json.dumps({
            "status": "accepted",
            "order": order,
            "idempotency_key": self.headers.get("Idempotency-Key"),
        }).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.served = self.path  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # keep stderr quiet
        pass


def serve_once(ctx: Any, timeout: float = 15.0) -> dict[str, Any]:
    """Answer one POST on a free loopback port, then stop."""
    port_file = _port_file(ctx.run_id)
    with HTTPServer(("127.0.0.1", 0), _Handler) as server:
        server.timeout = timeout
        server.served = None  # type: ignore[attr-defined]
        port = server.server_address[1]
        port_file.write_text(str(port))
        ctx.log(f"stub API listening on 127.0.0.1:{port}\n")
        try:
            server.handle_request()  # returns after one request or `timeout` seconds
        finally:
            port_file.unlink(missing_ok=True)
    if server.served is None:  # type: ignore[attr-defined]
        raise RuntimeError(f"no request came within {timeout:g}s")
    return {"port": port, "served": server.served}  # type: ignore[attr-defined]


def wait_for_port(ctx: Any, timeout: float = 10.0) -> int:
    """The stub's port, once `serve_once` has written it."""
    port_file = _port_file(ctx.run_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = port_file.read_text() if port_file.exists() else ""
        if text.strip():
            return int(text)
        time.sleep(0.02)
    raise RuntimeError(f"the stub API did not start within {timeout:g}s")
