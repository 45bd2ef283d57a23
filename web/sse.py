"""Server-sent events from the broker, shared by the API stream and the dashboard.

A stream ends when the client goes away or when the app shuts down (the services'
`stopping` event), so open streams never hold up uvicorn's shutdown. A comment line
every `heartbeat` seconds keeps proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from litestar.response import ServerSentEvent, ServerSentEventMessage

from runner.events import Broker


async def broker_messages(
    broker: Broker, topics: list[str], stopping: asyncio.Event, *,
    render: Callable[[dict[str, Any]], ServerSentEventMessage | None] | None = None,
    heartbeat: float = 15.0, until: Callable[[dict[str, Any]], bool] | None = None,
) -> AsyncIterator[ServerSentEventMessage]:
    """Yield one message per broker event on `topics` (default: the event as JSON).

    `render` may return None to skip an event; `until` ends the stream after the
    event for which it returns True (e.g. the run finished).
    """
    async with broker.subscribe(*topics) as queue:
        stop = asyncio.ensure_future(stopping.wait())
        try:
            while not stopping.is_set():
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, stop}, timeout=heartbeat, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    if stop in done:
                        return
                    yield ServerSentEventMessage(comment="keep-alive")
                    continue
                event = getter.result()
                message = render(event) if render else ServerSentEventMessage(
                    data=json.dumps(event, default=str), event=event.get("type", "message"))
                if message is not None:
                    yield message
                if until is not None and until(event):
                    return
        finally:
            stop.cancel()


def sse_response(messages: AsyncIterator[ServerSentEventMessage]) -> ServerSentEvent:
    return ServerSentEvent(messages, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
