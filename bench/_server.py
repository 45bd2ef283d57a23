"""Helpers shared by the benchmarks that drive a real `treadle serve` (web.py, triggers.py).

The server runs in a subprocess on a free loopback port with a temporary definitions
folder and SQLite file; the bench reads times the engine recorded straight from that
file, so both sides share one clock. Not a benchmark itself.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

DEADLINE = time.monotonic() + 110  # the whole bench, server start included
FINISHED = {"succeeded", "failed", "cancelled"}


class OutOfTime(Exception):
    pass


def check_time() -> None:
    if time.monotonic() > DEADLINE:
        raise OutOfTime("the bench ran out of its time budget")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(defs: Path, db: Path, port: int,
                 env: dict[str, str] | None = None) -> subprocess.Popen:
    """`env`: the server's whole environment (None: this process's)."""
    cmd = [sys.executable, "-m", "runner", "serve", "--definitions", str(defs),
           "--db", f"sqlite:///{db}", "--port", str(port), "--no-watch"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)


@contextlib.contextmanager
def serving(defs: Path, db: Path, env: dict[str, str] | None = None,
            ) -> Iterator[tuple[subprocess.Popen, int]]:
    """A server for the length of the block: (the process, its port). Stopped on the way out."""
    port = free_port()
    server = start_server(defs, db, port, env)
    # a last resort: whatever happens, nothing outlives the time budget
    watchdog = threading.Timer(max(1.0, DEADLINE - time.monotonic() + 5), server.kill)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield server, port
    finally:
        watchdog.cancel()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def wait_up(client: httpx.Client, server: subprocess.Popen) -> None:
    while True:
        check_time()
        if server.poll() is not None:
            stderr = server.stderr.read() if server.stderr else ""
            raise RuntimeError(f"the server exited: {stderr}")
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)


def step_started_at(db: Path, run_id: str) -> float | None:
    """When the run's first step attempt started (epoch seconds), None until it has."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        row = conn.execute("SELECT min(started_at) FROM step_attempt "
                           "WHERE run_id = ? AND attempt >= 1", (run_id,)).fetchone()
    return row[0] if row else None


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def report(name: str, value: str, target: str) -> None:
    print(f"{name}: {value} (target {target})", flush=True)
