"""A real HTTP server on 127.0.0.1 for tests, with scripted behaviours.

Routes (every request is counted in `server.hits[path]` and kept in `server.requests`):

    /flaky/<key>?fail=N   503 for the first N hits of <key>, then 200 {"hits": n}
    /poll/<key>?pending=N 200 {"status": "pending", "hits": n} for the first N hits of <key>, then
                          200 {"status": "done", "hits": n}
    /status/<code>        answers <code> with a short text body
    /slow?s=SECONDS       sleeps, then 200 "late"
    /hold/<key>?s=SECONDS holds the request SECONDS (default 0.2), then 200 {"at_once": n}; `server.at_once[key]`
                          is how many requests of <key> were held together at most
    /json                 200 {"status": "ok", "items": [1, 2, 3]}
    /echo                 200 JSON: method, path, query, headers, body (text)
    /bytes?n=N            200 text/plain body of exactly N bytes ("x" repeated)
    anything else         404

Use the `http_server` fixture (import `http_server_fixture` into a test module) and `closed_port()`
for a port nothing listens on.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest


class _Handler(BaseHTTPRequestHandler):
    server: LoopbackServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def _answer(self, code: int, body: object, content_type: str = "application/json") -> None:
        data = (json.dumps(body) if content_type == "application/json" else str(body)).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _handle(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        seen = {"method": self.command, "path": url.path, "query": query,
                "headers": dict(self.headers.items()), "body": body}
        with self.server.lock:
            self.server.hits[url.path] += 1
            hits = self.server.hits[url.path]
            self.server.requests.append(seen)
        parts = url.path.strip("/").split("/")
        if parts[0] == "flaky":
            if hits <= int(query.get("fail", "1")):
                self._answer(503, "busy, try again", "text/plain")
            else:
                self._answer(200, {"hits": hits})
        elif parts[0] == "poll":
            key = f"poll/{parts[1]}"
            with self.server.lock:
                self.server.polls[key] += 1
                n = self.server.polls[key]
            self._answer(200, {"status": "pending" if n <= int(query.get("pending", "1")) else "done", "hits": n})
        elif parts[0] == "status":
            self._answer(int(parts[1]), f"status {parts[1]}", "text/plain")
        elif parts[0] == "slow":
            time.sleep(float(query.get("s", "2")))
            self._answer(200, "late", "text/plain")
        elif parts[0] == "hold":  # concurrency observed from outside Treadle
            key = parts[1] if len(parts) > 1 else ""
            with self.server.lock:
                self.server.holding[key] += 1
                now = self.server.holding[key]
                self.server.at_once[key] = max(self.server.at_once[key], now)
            try:
                time.sleep(float(query.get("s", "0.2")))
            finally:
                with self.server.lock:
                    self.server.holding[key] -= 1
            self._answer(200, {"at_once": now})
        elif parts[0] == "json":
            self._answer(200, {"status": "ok", "items": [1, 2, 3]})
        elif parts[0] == "echo":
            self._answer(200, seen)
        elif parts[0] == "bytes":
            self._answer(200, "x" * int(query.get("n", "0")), "text/plain")
        else:
            self._answer(404, "no such route", "text/plain")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a /slow handler must not hold up the end of a test

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.hits: Counter[str] = Counter()
        self.requests: list[dict] = []
        self.polls: Counter[str] = Counter()
        self.holding: Counter[str] = Counter()  # /hold requests of each key held now
        self.at_once: Counter[str] = Counter()  # ... and the most held together

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up (a timeout test) is expected, not worth a traceback

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def closed_port() -> int:
    """A loopback port with nothing listening (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(name="http_server")
def http_server_fixture():
    server = LoopbackServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
