"""What the web app runs on: settings, and the engine parts living in its event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from runner.engine.engine import Engine
from runner.engine.run import RunExecution
from runner.engine.tracing import Tracing
from runner.errors import (
    RunConflict,
    RunNotFound,
    TreadleError,
    WorkflowNotFound,
)
from runner.gitops.catalog import Catalog
from runner.gitops.follower import Follower
from runner.gitops.gitsync import GitSync, default_workdir
from runner.security.secrets_file import with_secrets_file
from runner.security.tokens import Tokens
from runner.storage.events import Broker
from runner.storage.models import RunStatus
from runner.storage.store import DEFAULT_DB, Store
from runner.triggers.backfill import Backfills
from runner.triggers.file_triggers import FileTriggers
from runner.triggers.launcher import Launch, Launcher
from runner.triggers.notify import Notifier
from runner.triggers.schedules import Scheduler
from runner.triggers.trigger_state import TriggerState

from .auth import Gate
from .metrics import Metrics

log = logging.getLogger("treadle.services")


@dataclass
class Settings:
    definitions: Path = Path("definitions")
    db: str = DEFAULT_DB
    host: str = "127.0.0.1"
    port: int = 8080
    watch: bool = True
    git_url: str | None = None  # follow this repository instead of a local folder
    git_branch: str = "main"
    git_interval: float = 30.0
    git_workdir: Path | None = None  # default: .treadle/git/<hash of the url>
    public_url: str | None = None  # how people reach the dashboard (links in notifications)
    git_apply: str = "auto"  # manual: fetched commits wait for a person to apply them (their plan shown)
    grace: float = 30.0  # at shutdown, how long running steps may finish
    secrets_file: Path | None = None  # a dotenv file of secrets, besides the environment (which wins)
    admin_token: str | None = None  # a known admin token for automation (TREADLE_ADMIN_TOKEN)
    insecure: bool = False  # allow running open on a non-loopback address
    allowed_hosts: list[str] = field(default_factory=list)  # Host names answered besides the bind address
    executor: str = "local"  # local | dask://HOST:PORT | dask-local (docs/cluster.md)
    workers: int = 2  # dask-local: worker processes


@dataclass
class Services:
    """Held in `app.state.services`; one per app, never a module global."""

    settings: Settings
    catalog: Catalog
    store: Store
    engine: Engine
    broker: Broker
    follower: Follower
    state: TriggerState
    launcher: Launcher
    tokens: Tokens
    gate: Gate
    scheduler: Scheduler | None = None
    files: FileTriggers | None = None
    notifier: Notifier | None = None
    backfills: Backfills | None = None
    metrics: Metrics = field(default_factory=Metrics)
    started_at: float = field(default_factory=time.time)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)  # ends open SSE streams
    leader_since: float | None = None  # this server leads (runs schedules and file triggers) since
    _schedules: asyncio.Task | None = None

    @property
    def gitsync(self) -> GitSync | None:
        return self.follower.gitsync

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, settings: Settings) -> AsyncIterator[Services]:
        gitsync, folder = await _follow_repository(settings)
        catalog = Catalog(folder)
        await asyncio.to_thread(catalog.load_all)
        broker = Broker()
        async with Store(settings.db, broker) as store:
            # one client for http steps and notifications, closed after both are done
            http = httpx.AsyncClient(follow_redirects=True)
            dispatcher = await _dispatcher(settings, folder)
            engine = Engine(store, lookup=catalog.get, definitions_dir=folder, http=http,
                            environ=with_secrets_file(settings.secrets_file), dispatcher=dispatcher)
            follower = Follower(catalog, store, gitsync=gitsync, watch_files=settings.watch)
            state = TriggerState(store)
            launcher = Launcher(engine, state, catalog.entries)
            notifier = Notifier(http, engine.environ, committed=store.flush, record=store.notifications.record,
                                public_url=settings.public_url or f"http://{_url_host(settings.host)}:{settings.port}")
            engine.run_ended.append(notifier.on_run_ended)
            engine.step_events.append(notifier.on_step_event)
            files = FileTriggers(launcher, catalog.entries, state)
            scheduler = Scheduler(launcher, catalog.entries, state)
            follower.listeners += [files.refresh, scheduler.poke,
                                   lambda: broker.publish("catalog", {"type": "catalog"})]  # live workflow pages
            tokens = Tokens(store, admin_token=settings.admin_token)
            gate = Gate(bind_host=settings.host, allowed_hosts=settings.allowed_hosts, insecure=settings.insecure)
            services = cls(settings, catalog, store, engine, broker, follower, state, launcher, tokens, gate,
                           notifier=notifier, files=files, scheduler=scheduler)
            services.backfills = Backfills(launcher, catalog.get, leading=lambda: services.leader_since is not None,
                                           cancel=lambda run_id: cancel_run(services, run_id, by="backfill"))
            services.metrics.attach(services)
            tracing = Tracing.from_environment()  # OTEL_EXPORTER_OTLP_ENDPOINT: traces (docs/observability.md)
            if tracing is not None:
                tracing.attach(engine)
            await follower.start()
            await store.feed.start()
            engine.leases.start()
            resumed = await engine.recover()
            if resumed:
                print(f"treadle: resuming {len(resumed)} unfinished run(s): {', '.join(e.id for e in resumed)}",
                      file=sys.stderr, flush=True)
            await launcher.pump()
            stopping = services.stopping
            loops = [asyncio.create_task(_every(RECOVER_SECONDS, stopping, engine.recover, "recovery"),
                                         name="treadle-recovery"),
                     asyncio.create_task(_every(PUMP_SECONDS, stopping, launcher.pump, "queue"), name="treadle-queue"),
                     asyncio.create_task(_every(PUMP_SECONDS, stopping, services.backfills.pump, "backfills"),
                                         name="treadle-backfills"),
                     asyncio.create_task(_every(LEADER_POLL_SECONDS, stopping, services.lead_once, "leadership"),
                                         name="treadle-leader")]
            async def wind_down() -> None:
                await asyncio.gather(*loops, return_exceptions=True)  # each finishes what it was doing
                await services.step_down()
                await follower.stop()
                await _graceful_shutdown(engine, settings.grace)
                await launcher.close()
                await services.backfills.close()
                await notifier.close()
                if tracing is not None:
                    await asyncio.to_thread(tracing.shutdown)
                await dispatcher.close()

            try:
                yield services
            finally:
                stopping.set()
                engine.drain()  # at once: stepping down and the loops' last rounds take a while
                # bounded, always: a database that does not answer, a step that ignores its
                # cancel or a notification that hangs must not keep the server up
                limit = settings.grace + SHUTDOWN_SLACK_SECONDS
                try:
                    await asyncio.wait_for(wind_down(), limit)
                except TimeoutError:
                    log.error("shutdown did not finish within %gs (--grace %gs + %gs); stopping anyway: "
                              "unfinished runs resume at the next start", limit, settings.grace,
                              SHUTDOWN_SLACK_SECONDS)
                await http.aclose()
                store.close_timeout = SHUTDOWN_SLACK_SECONDS

    async def lead_once(self) -> None:
        """Try to become the leader (called every second); while leading, run the
        schedules, the file triggers and the catch-up of chains; when leadership is
        lost, stop them."""
        try:
            leading = await self.store.leadership.try_acquire()
        except Exception as exc:  # the database is away: lead nothing meanwhile
            logging.getLogger("treadle.leader").warning("leadership check failed: %s", exc)
            leading = False
        if leading and self.leader_since is None:
            await self._take_lead()
        elif not leading and self.leader_since is not None:
            logging.getLogger("treadle.leader").warning("lost the leadership; schedules stop here")
            await self.step_down()

    async def _take_lead(self) -> None:
        self.leader_since = time.time()
        logging.getLogger("treadle.leader").info("this server leads: it runs schedules and file triggers")
        with contextlib.suppress(Exception):
            await self.store.leases.set_leader(self.engine.owner, True)
        await self.launcher.catch_up_chains()
        if self.files is not None:
            await self.files.start()
        if self.scheduler is not None:
            self._schedules = asyncio.create_task(self.scheduler.run_forever(), name="treadle-schedules")
        if self.backfills is not None:
            self.backfills.poke()  # the backfills the last leader was driving go on

    async def step_down(self) -> None:
        """Stop what only the leader runs, and let another server lead."""
        if self._schedules is not None:
            self._schedules.cancel()
            await asyncio.gather(self._schedules, return_exceptions=True)
            self._schedules = None
        if self.files is not None:
            await self.files.stop()
        if self.leader_since is not None:
            self.leader_since = None
            with contextlib.suppress(Exception):
                await self.store.leases.set_leader(self.engine.owner, False)
        await self.store.leadership.release()


async def _dispatcher(settings: Settings, folder: Path) -> Any:
    """Where steps execute: this process, or a Dask cluster (connected before serving)."""
    if settings.executor == "local":
        from runner.dispatch.local import LocalDispatcher

        return LocalDispatcher()
    from runner.dispatch.dask import DaskDispatcher

    dispatcher = DaskDispatcher(settings.executor, folder, workers=settings.workers)
    await dispatcher.start()
    return dispatcher


LEADER_POLL_SECONDS = 1.0
# at shutdown, after the grace period: for the rest (runs' last records, leases,
# notifications), and again for the database to take the last records
SHUTDOWN_SLACK_SECONDS = 5.0
RECOVER_SECONDS = 1.0  # how often a server looks for runs whose lease ran out (and takes them)
PUMP_SECONDS = 1.0  # how often a server looks for queued runs that have room


async def _every(seconds: float, stopping: asyncio.Event, action: Callable[[], Awaitable[Any]], what: str) -> None:
    """Call `action` every `seconds` until `stopping` is set. An action in progress is
    let finish, never cancelled halfway: that could leave its transaction (and the row
    locks it holds) open on the database. A failing action is logged and tried again."""
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), seconds)
        if stopping.is_set():
            return
        try:
            await action()
        except Exception:  # the database may be away for a moment: the next round may succeed
            logging.getLogger("treadle.services").exception("%s failed", what)


async def _graceful_shutdown(engine: Engine, grace: float) -> None:
    """Let running steps finish for `grace` seconds; a second SIGINT/SIGTERM stops at once."""
    now = asyncio.Event()
    loop = asyncio.get_running_loop()
    busy = any(exe.busy for exe in engine.runs.values())
    if busy:
        print(f"treadle: stopping; running steps get {grace:g}s to finish (signal again to stop at once)",
              file=sys.stderr, flush=True)
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
            loop.add_signal_handler(sig, now.set)
            installed.append(sig)
    try:
        await engine.shutdown(grace, now=now)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def _follow_repository(settings: Settings) -> tuple[GitSync | None, Path]:
    """With `git_url`: clone (or update) the repository; the definitions folder is
    `settings.definitions` inside it when that exists, else the clone's top."""
    if not settings.git_url:
        return None, settings.definitions
    workdir = settings.git_workdir or default_workdir(settings.git_url)
    gitsync = GitSync(settings.git_url, workdir, branch=settings.git_branch, interval=settings.git_interval,
                      apply=settings.git_apply)
    await gitsync.sync()
    if gitsync.state.commit is None:
        raise TreadleError(f"cannot follow {settings.git_url} ({settings.git_branch}): {gitsync.state.error}")
    inside = workdir / settings.definitions
    return gitsync, inside if not settings.definitions.is_absolute() and inside.is_dir() else workdir


# -- actions shared by the JSON API and the dashboard forms ------------------------


async def start_run(services: Services, name: str, params: dict | None, *, from_text: bool = False,
                    trigger: str = "api", version: str | None = None) -> Launch:
    """Start (or queue) a run of `name` for a person or an API client: of `version` when
    given (a rollback), else of the version it is pinned to, else of its current one.
    Raises TreadleError subclasses, RunConflict when the concurrency policy skips it.
    Returns once the run row is committed, so a client that reads it next finds it."""
    definition = services.catalog.get(name)
    if definition is None:
        raise WorkflowNotFound(name, services.catalog.names())
    launch = await services.launcher.launch(definition, params, from_text=from_text, trigger=trigger, manual=True,
                                            version=version)
    if launch.status == "skipped":
        raise RunConflict(f"workflow '{name}': {launch.reason}; try again when a run has ended", "CONCURRENCY_LIMIT")
    await services.store.flush()
    return launch


WAIT_RECHECK_SECONDS = 1.0  # a wait also reads the run this often: events of a run another server drives may be late


async def wait_for_end(services: Services, run_id: str, seconds: float) -> dict[str, Any] | None:
    """The run's row once it has ended, waiting at most `seconds`; None when it has not
    ended by then (or the server is stopping). Raises RunNotFound.

    Woken by the run's committed changes (this server's, and other servers' through
    the database feed), and reads the run every WAIT_RECHECK_SECONDS in case an event
    was missed: the database says when it has ended, never the event alone."""
    deadline = time.monotonic() + seconds
    async with services.broker.subscribe(f"run:{run_id}") as events:  # before reading: no end is missed
        while True:
            run = await services.store.get_run(run_id)
            if run is None:
                raise RunNotFound(run_id)
            if RunStatus(run["status"]).finished:
                return run
            left = deadline - time.monotonic()
            if left <= 0 or services.stopping.is_set():
                return None
            await _next_run_change(events, min(left, WAIT_RECHECK_SECONDS))


async def _next_run_change(events: asyncio.Queue, seconds: float) -> None:
    """Wait until a run-level event arrives (steps and logs do not end a run), at most `seconds`."""
    end = time.monotonic() + seconds
    with contextlib.suppress(TimeoutError):
        while (left := end - time.monotonic()) > 0:
            event = await asyncio.wait_for(events.get(), left)
            if event.get("type") == "run":
                return


async def cancel_run(services: Services, run_id: str, *, compensate: bool = False, by: str = "api") -> bool:
    """Cancel a run (a queued one too), whichever server drives it; False when it had
    already finished. Raises RunNotFound."""
    if await services.engine.request_cancel(run_id, by=by, compensate=compensate):
        return True
    if await services.launcher.cancel_queued(run_id):
        return True
    if await services.store.get_run(run_id) is None:
        raise RunNotFound(run_id)
    return False


async def cancel_conflict(services: Services, run_id: str) -> RunConflict:
    """Why a run that `cancel_run` did not cancel cannot be cancelled."""
    run = await services.store.get_run(run_id)
    status = run["status"] if run else "unknown"
    if status == "unknown" or RunStatus(status).finished:
        return RunConflict(f"run '{run_id}' already finished ({status}); nothing to cancel", "RUN_FINISHED")
    return RunConflict(f"run '{run_id}' is {status} and could not be cancelled; try again", "RUN_CONFLICT")


async def retry_run(services: Services, run_id: str, from_step: str | None) -> RunExecution:
    """Start a new run reusing what succeeded upstream of `from_step` (or of the failures).

    Raises RunNotFound, RunConflict (the run is still going), ParamError (no such step).
    """
    run = await services.store.get_run(run_id)
    if run is not None and not RunStatus(run["status"]).finished:
        raise RunConflict(f"run '{run_id}' has not ended; cancel it or wait for it to end, "
                          "then retry", "RUN_ACTIVE")
    definition = services.catalog.get(run["workflow"]) if run else None
    limits = definition.spec.concurrency if definition and definition.spec else None
    if limits is not None and limits.policy == "cancel_previous":
        await services.launcher.make_room(definition.name, limits.limit)
    pin = await services.state.pin(run["workflow"]) if run else None
    new, reuse = await services.engine.prepare_retry(run_id, from_step, version=pin["version"] if pin else "current")
    if limits is None:
        services.store.put_run(new.row, (services.engine.owner, 1))
    else:
        # a retry is not queued (what it reuses lives in memory): it starts now or not at all
        async with services.store.admission.admit(definition.name) as adm:
            going = await adm.running()
            if len(going) >= limits.limit:
                raise RunConflict(f"workflow '{definition.name}': concurrency limit {limits.limit} reached (going: "
                                  f"{', '.join(r['id'] for r in going)}); retry when a run has ended",
                                  "CONCURRENCY_LIMIT")
            await adm.insert(new.row)
    exe = services.engine.launch(new, reuse=reuse)
    await services.store.flush()
    return exe


def _url_host(host: str) -> str:
    """The bind address as a URL's host: an IPv6 address in brackets, 0.0.0.0 as this machine's name."""
    if host in ("0.0.0.0", "::"):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host
