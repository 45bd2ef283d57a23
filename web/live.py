"""The dashboard's page streams: broker events coalesced into a few refresh signals.

A page never reads state from these events; they only tell htmx when to re-fetch
fragments rendered from the database. A burst of changes (a 1,000-step run
finishing steps by the hundred) becomes one `state` signal per `window`, plus one
`log-<step id>` signal per step whose log grew. The stream opens with `resync`
(whatever was committed between the page render and the connection is fetched)
and ends with `done` when the run has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from litestar.response import ServerSentEventMessage

from runner.storage.models import RunStatus

from .services import Services
from .sse import queue_events

FINISHED = {s.value for s in RunStatus if s.finished}


def _message(event: str) -> ServerSentEventMessage:
    return ServerSentEventMessage(data="1", event=event)  # an event with no data is never dispatched


async def coalesced(
    services: Services, topics: list[str], signals: Callable[[list[dict[str, Any]]], tuple[list[str], bool]],
    *, window: float = 0.3, heartbeat: float = 15.0, already_done: Callable[[], Any] | None = None,
) -> AsyncIterator[ServerSentEventMessage]:
    """Yield `resync`, then per burst of broker events the names `signals(events)` gives.

    `signals` returns (event names, finished); after a finished burst the stream sends
    `done` and ends. `already_done` (awaitable) is asked once after subscribing.
    """
    stopping = services.stopping
    async with services.broker.subscribe(*topics) as queue:
        yield _message("resync")
        if already_done is not None and await already_done():
            yield _message("done")
            return
        async for first in queue_events(queue, stopping, heartbeat):
            if first is None:
                yield ServerSentEventMessage(comment="keep-alive")
                continue
            events = [first]
            # let the burst settle, so many commits become one refresh
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), window)
            while True:
                try:
                    events.append(queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            names, finished = signals(events)
            for name in names:
                yield _message(name)
            if finished:
                yield _message("done")
                return


def run_signals(events: list[dict[str, Any]]) -> tuple[list[str], bool]:
    """`state` when a run or step changed, `log-<step>` per step with new log text."""
    state = any(e.get("type") in ("run", "step") for e in events)
    logs = dict.fromkeys(e["step_id"] for e in events if e.get("type") == "log" and "step_id" in e)
    finished = any(e.get("type") == "run" and e.get("status") in FINISHED for e in events)
    return (["state"] if state or finished else []) + [f"log-{sid}" for sid in logs], finished


def runs_signals(events: list[dict[str, Any]]) -> tuple[list[str], bool]:
    return ["runs"], False


async def run_stream(services: Services, run_id: str) -> AsyncIterator[ServerSentEventMessage]:
    async def finished() -> bool:
        run = await services.store.get_run(run_id)
        return run is None or run["status"] in FINISHED

    async for message in coalesced(services, [f"run:{run_id}"], run_signals, already_done=finished):
        yield message


async def runs_stream(services: Services) -> AsyncIterator[ServerSentEventMessage]:
    async for message in coalesced(services, ["runs"], runs_signals, window=0.5):
        yield message


async def catalog_stream(services: Services) -> AsyncIterator[ServerSentEventMessage]:
    """`catalog` after the definitions changed (a save, a fix, a pull): workflow pages refresh."""
    async for message in coalesced(services, ["catalog"], lambda events: (["catalog"], False), window=0.3):
        yield message
