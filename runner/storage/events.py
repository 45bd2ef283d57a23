"""In-process publish/subscribe, fed by the store after each commit.

Topics: `run:<id>` (every change of that run: run, step and log events) and `runs`
(run-level changes of any run). Subscribers read from an asyncio.Queue; a
subscriber that stops reading only loses its own oldest events, never blocks others.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any


class Broker:
    def __init__(self, max_backlog: int = 10_000):
        self._subs: dict[str, set[asyncio.Queue]] = defaultdict(set)
        self._max = max_backlog

    def publish(self, topic: str, event: dict[str, Any]) -> None:
        for queue in self._subs.get(topic, ()):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    def has_subscribers(self, topic: str) -> bool:
        return bool(self._subs.get(topic))

    @asynccontextmanager
    async def subscribe(self, *topics: str) -> AsyncIterator[asyncio.Queue]:
        queue: asyncio.Queue = asyncio.Queue(self._max)
        for topic in topics:
            self._subs[topic].add(queue)
        try:
            yield queue
        finally:
            for topic in topics:
                self._subs[topic].discard(queue)
                if not self._subs[topic]:
                    del self._subs[topic]
