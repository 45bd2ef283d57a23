"""A real uvicorn serving `create_app` on 127.0.0.1, in a thread, for API and browser tests."""

from __future__ import annotations

import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from web.app import create_app
from web.server import Server, server_config
from web.services import Settings


def write_definitions(folder: Path, files: dict[str, str]) -> Path:
    """Write `{relative path: dedented YAML}` under `folder`; returns the folder."""
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(definitions: Path, db: str, *, watch: bool = True, server_options: dict[str, Any] | None = None,
                   **settings: Any) -> Iterator[str]:
    """Start the app; yield its base URL (http://127.0.0.1:PORT); stop it afterwards.

    `settings`: more `Settings` fields (git_url, git_branch, git_interval, git_workdir).
    `server_options`: of `web.server.server_config` (header_seconds, max_connections, ...).
    """
    port = free_port()
    app = create_app(Settings(definitions=definitions, db=db, port=port, watch=watch, **settings))
    config = server_config(app, "127.0.0.1", port, **{"timeout_graceful_shutdown": 1, "lifespan": "on",
                                                       **(server_options or {})})  # as `serve`
    server = Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if server.started:
            try:
                httpx.get(base + "/health", timeout=1)
                break
            except httpx.HTTPError:
                pass
        if not thread.is_alive():
            raise RuntimeError("uvicorn exited during startup")
        time.sleep(0.02)
    else:
        raise RuntimeError("uvicorn did not start within 15 s")
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def serving(root: Path, definitions: dict[str, str], db: str | None = None, **settings: object) -> Iterator[str]:
    """`definitions` written under root/definitions, served with `db` (default: a SQLite file in root)."""
    defs = write_definitions(root / "definitions", definitions)
    with running_server(defs, db or f"sqlite:///{root / 'treadle.db'}", **settings) as base:
        yield base


def csrf_token(client: httpx.Client) -> str:
    """The CSRF token of the dashboard pages `client` sees (forms must send it)."""
    import re

    page = client.get("/runs").text
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', page)
    assert found, "no csrf-token meta on the page"
    return found.group(1)


def with_csrf(client: httpx.Client) -> httpx.Client:
    """Let `client` post dashboard forms, as a browser showing the page would."""
    client.headers["X-CSRF-Token"] = csrf_token(client)
    return client
