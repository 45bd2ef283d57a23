"""uvicorn as `treadle serve` runs it: timeouts and a connection cap against slow or
too many clients, and event streams ended when shutdown begins.

uvicorn times out idle keep-alive connections but not a request head that never
ends: a client sending its headers a byte at a time would hold its connection (and a
file descriptor) forever. `GuardedH11` closes a connection that has not sent a whole
request head `HEADER_SECONDS` after it opened (or after its previous answer), and
refuses connections beyond `MAX_CONNECTIONS`; past `MAX_CONCURRENCY` connections or
requests in progress uvicorn answers 503.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

GRACEFUL_SECONDS = 2  # open responses at shutdown (event streams end when it begins)
HEADER_SECONDS = 10.0  # from connect (or the previous answer) to a whole request head
KEEP_ALIVE_SECONDS = 5  # an idle keep-alive connection is closed after this
MAX_CONNECTIONS = 1000  # open connections; more are closed at once
MAX_CONCURRENCY = 1000  # connections or requests in progress before uvicorn answers 503


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for request heads and a connection cap."""

    header_seconds = HEADER_SECONDS
    max_connections = MAX_CONNECTIONS
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.close()  # too many already: this one is not served
            return
        self._expect_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._expect_head()  # the next request on this connection has the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def _expect_head(self) -> None:
        self._stop_timer()
        if not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.header_seconds, self._head_overdue)

    def _stop_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        # IDLE: no whole request head yet (a slow or stalled client, or an idle one)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def server_config(app: Any, host: str, port: int, *, header_seconds: float = HEADER_SECONDS,
                  max_connections: int = MAX_CONNECTIONS, **options: Any) -> uvicorn.Config:
    """The uvicorn settings of a Treadle server.

    The stock asyncio loop, not uvloop: uvloop starts processes with a plain fork of
    this whole process, which stalls every request for ~15 ms per shell step started.
    """
    protocol = type("GuardedH11", (GuardedH11,), {"header_seconds": header_seconds,
                                                  "max_connections": max_connections})
    settings: dict[str, Any] = {"log_level": "warning", "loop": "asyncio", "http": protocol,
                                "timeout_graceful_shutdown": GRACEFUL_SECONDS,
                                "timeout_keep_alive": KEEP_ALIVE_SECONDS, "limit_concurrency": MAX_CONCURRENCY}
    return uvicorn.Config(app, host=host, port=port, **{**settings, **options})


class Server(uvicorn.Server):
    """uvicorn's server, ending the dashboard's event streams as soon as shutdown
    begins: uvicorn waits for open responses before the app's own shutdown, and an
    event stream never ends by itself (it would be cancelled mid-way, logged as an error)."""

    async def shutdown(self, sockets: Any = None) -> None:
        services = getattr(self.config.app.state, "services", None)
        if services is not None:
            services.stopping.set()
        await super().shutdown(sockets)
