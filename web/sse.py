"""Server-sent events from the broker, shared by the API stream and the dashboard.

A stream ends when the client goes away or when the app shuts down (the services'
`stopping` event), so open streams never hold up uvicorn's shutdown. A comment line
every `heartbeat` seconds keeps proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from litestar.response import ServerSentEvent, ServerSentEventMessage

from runner.storage.events import Broker

from .metrics import STREAMS


async def broker_messages(
    broker: Broker, topics: list[str], stopping: asyncio.Event, *,
    render: Callable[[dict[str, Any]], ServerSentEventMessage | None] | None = None,
    heartbeat: float = 15.0, until: Callable[[dict[str, Any]], bool] | None = None,
    first: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None,
) -> AsyncIterator[ServerSentEventMessage]:
    """Yield one message per broker event on `topics` (default: the event as JSON).

    `render` may return None to skip an event; `until` ends the stream after the
    event for which it returns True (e.g. the run finished). `first` gives events
    to send before the live ones (the state as it is now); it is called once the
    subscription is in place, so no change between the two is lost.
    """
    render = render or _as_json
    STREAMS["open"] += 1
    try:
        async with contextlib.aclosing(_messages(broker, topics, stopping, render, heartbeat, until, first)) as inner:
            async for message in inner:
                yield message
    finally:
        STREAMS["open"] -= 1


async def _messages(broker: Broker, topics: list[str], stopping: asyncio.Event,
                    render: Callable[[dict[str, Any]], ServerSentEventMessage | None], heartbeat: float,
                    until: Callable[[dict[str, Any]], bool] | None,
                    first: Callable[[], Awaitable[list[dict[str, Any]]]] | None,
                    ) -> AsyncIterator[ServerSentEventMessage]:
    async with broker.subscribe(*topics) as queue:
        now = await first() if first is not None else []

        async def events() -> AsyncIterator[dict[str, Any] | None]:
            for event in now:
                yield event
            async for event in queue_events(queue, stopping, heartbeat):
                yield event

        async with contextlib.aclosing(events()) as stream:
            async for event in stream:
                if event is None:
                    yield ServerSentEventMessage(comment="keep-alive")
                    continue
                message = render(event)
                if message is not None:
                    yield message
                if until is not None and until(event):
                    return


async def queue_events(queue: asyncio.Queue, stopping: asyncio.Event, heartbeat: float = 15.0,
                       ) -> AsyncIterator[dict[str, Any] | None]:
    """The events of a broker subscription as they come, and None after each
    `heartbeat` seconds without one (time for a keep-alive); ends once `stopping` is set.
    """
    stop = asyncio.ensure_future(stopping.wait())
    getter: asyncio.Future | None = None
    try:
        while not stopping.is_set():
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, stop}, timeout=heartbeat, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
                continue
            getter.cancel()
            if stop in done:
                return
            yield None
    finally:
        # both helpers end here, whatever ended the stream (the client went, the server
        # stops, the response was cancelled): a helper left pending is destroyed with
        # the loop ("Task was destroyed but it is pending!")
        helpers = [t for t in (stop, getter) if t is not None and not t.done()]
        for task in helpers:
            task.cancel()
        if helpers:
            await asyncio.wait(helpers)


def _as_json(event: dict[str, Any]) -> ServerSentEventMessage:
    return ServerSentEventMessage(data=json.dumps(event, default=str), event=event.get("type", "message"))


def sse_response(messages: AsyncIterator[ServerSentEventMessage]) -> ServerSentEvent:
    return ServerSentEvent(messages, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
