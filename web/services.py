"""What the web app runs on: settings, and the engine parts living in its event loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from runner.catalog import Catalog
from runner.events import Broker
from runner.executor import Engine
from runner.store import DEFAULT_DB, Store
from runner.watcher import watch


@dataclass
class Settings:
    definitions: Path = Path("definitions")
    db: str = DEFAULT_DB
    host: str = "127.0.0.1"
    port: int = 8080
    watch: bool = True


@dataclass
class Services:
    """Held in `app.state.services`; one per app, never a module global."""

    settings: Settings
    catalog: Catalog
    store: Store
    engine: Engine
    broker: Broker
    started_at: float = field(default_factory=time.time)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)  # ends open SSE streams

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, settings: Settings) -> AsyncIterator[Services]:
        catalog = Catalog(settings.definitions)
        catalog.load_all()
        broker = Broker()
        async with Store(settings.db, broker) as store:
            engine = Engine(store, lookup=catalog.get, definitions_dir=settings.definitions)
            services = cls(settings, catalog, store, engine, broker)
            stop = asyncio.Event()
            watcher = asyncio.create_task(watch(catalog, stop=stop)) if settings.watch else None
            try:
                yield services
            finally:
                services.stopping.set()
                stop.set()
                if watcher is not None:
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await watcher
                await engine.close()
