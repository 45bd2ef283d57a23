"""uvicorn as `treadle serve` runs it (the tests' servers too: tests/web_server.py)."""

from __future__ import annotations

from typing import Any

import uvicorn

# open event streams must not hold a shutdown: they end when it begins (Server below),
# and uvicorn gives what still runs 2 s, then cancels it
GRACEFUL_SECONDS = 2


def server_config(app: Any, host: str, port: int, **options: Any) -> uvicorn.Config:
    """The uvicorn settings of a Treadle server.

    The stock asyncio loop, not uvloop: uvloop starts processes with a plain fork of
    this whole process, which stalls every request for ~15 ms per shell step started.
    """
    return uvicorn.Config(app, host=host, port=port, log_level="warning", loop="asyncio",
                          timeout_graceful_shutdown=GRACEFUL_SECONDS, **options)


class Server(uvicorn.Server):
    """uvicorn's server, ending the dashboard's event streams as soon as shutdown
    begins: uvicorn waits for open responses before the app's own shutdown, and an
    event stream never ends by itself (it would be cancelled mid-way, logged as an error)."""

    async def shutdown(self, sockets: Any = None) -> None:
        services = getattr(self.config.app.state, "services", None)
        if services is not None:
            services.stopping.set()
        await super().shutdown(sockets)
