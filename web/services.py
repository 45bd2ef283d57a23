"""What the web app runs on: settings, and the engine parts living in its event loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from runner.catalog import Catalog
from runner.errors import RunNotFound, WorkflowNotFound
from runner.events import Broker
from runner.executor import Engine
from runner.run_execution import RunExecution
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


# -- actions shared by the JSON API and the dashboard forms ------------------------


async def start_run(services: Services, name: str, params: dict | None, *, from_text: bool = False,
                    trigger: str = "api") -> RunExecution:
    """Start a run of the current version of `name`; raises TreadleError subclasses.

    Returns once the run row is committed, so a client that reads it next finds it.
    """
    definition = services.catalog.get(name)
    if definition is None:
        raise WorkflowNotFound(name, services.catalog.names())
    exe = await services.engine.start(definition, params, from_text=from_text, trigger=trigger)
    await services.store.flush()
    return exe


async def cancel_run(services: Services, run_id: str) -> bool:
    """Cancel a run; False when it had already finished. Raises RunNotFound."""
    if services.engine.cancel(run_id):
        return True
    if await services.store.get_run(run_id) is None:
        raise RunNotFound(run_id)
    return False


async def retry_run(services: Services, run_id: str, from_step: str | None) -> RunExecution:
    exe = await services.engine.retry(run_id, from_step)
    await services.store.flush()
    return exe
