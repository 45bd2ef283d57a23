"""What the web app runs on: settings, and the engine parts living in its event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx
from jinja2 import Environment, TemplateSyntaxError, meta

from runner.dsl.loader import Definition
from runner.dsl.params import validate_params
from runner.engine.engine import Engine
from runner.engine.run import RunExecution, raw_inputs
from runner.errors import ParamError, RunNotFound, SecretMissing, TreadleError, WorkflowNotFound
from runner.gitops.catalog import Catalog
from runner.gitops.follower import Follower
from runner.gitops.gitsync import GitSync, default_workdir
from runner.security.secrets_file import with_secrets_file
from runner.security.tokens import Tokens
from runner.storage.events import Broker
from runner.storage.models import RunStatus
from runner.storage.store import DEFAULT_DB, Store
from runner.templates import TemplateFailed, is_template, render, truthy
from runner.triggers.file_triggers import FileTriggers
from runner.triggers.launcher import Launch, Launcher
from runner.triggers.notify import Notifier
from runner.triggers.schedules import Scheduler
from runner.triggers.trigger_state import TriggerState

from .auth import Gate


class RunConflict(TreadleError):
    """The run is not in a state that allows the action (HTTP 409)."""

    def __init__(self, message: str, code: str = "RUN_CONFLICT"):
        super().__init__(message)
        self.error_code = code


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
    grace: float = 30.0  # at shutdown, how long running steps may finish
    secrets_file: Path | None = None  # a dotenv file of secrets, besides the environment (which wins)
    admin_token: str | None = None  # a known admin token for automation (TREADLE_ADMIN_TOKEN)
    insecure: bool = False  # allow running open on a non-loopback address
    allowed_hosts: list[str] = field(default_factory=list)  # Host names answered besides the bind address


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
    started_at: float = field(default_factory=time.time)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)  # ends open SSE streams

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
            engine = Engine(store, lookup=catalog.get, definitions_dir=folder, http=http,
                            environ=with_secrets_file(settings.secrets_file))
            follower = Follower(catalog, store, gitsync=gitsync, watch_files=settings.watch)
            state = TriggerState(store)
            launcher = Launcher(engine, state, catalog.entries)
            notifier = Notifier(http, engine.environ, committed=store.flush)
            engine.run_ended.append(notifier.on_run_ended)
            files = FileTriggers(launcher, catalog.entries, state)
            scheduler = Scheduler(launcher, catalog.entries, state)
            follower.listeners += [files.refresh, scheduler.poke]
            tokens = Tokens(store, admin_token=settings.admin_token)
            gate = Gate(bind_host=settings.host, allowed_hosts=settings.allowed_hosts, insecure=settings.insecure)
            services = cls(settings, catalog, store, engine, broker, follower, state, launcher, tokens, gate,
                           notifier=notifier, files=files, scheduler=scheduler)
            await follower.start()
            resumed = await engine.recover()
            if resumed:
                print(f"treadle: resuming {len(resumed)} unfinished run(s): {', '.join(e.id for e in resumed)}",
                      file=sys.stderr, flush=True)
            await launcher.load_queued()
            await launcher.catch_up_chains()
            recovery = asyncio.create_task(_recover_forever(engine))
            await files.start()
            schedules = asyncio.create_task(scheduler.run_forever(), name="treadle-schedules")
            try:
                yield services
            finally:
                services.stopping.set()
                recovery.cancel()
                schedules.cancel()
                await files.stop()
                await follower.stop()
                await _graceful_shutdown(engine, settings.grace)
                await launcher.close()
                await notifier.close()
                await http.aclose()


async def _recover_forever(engine: Engine) -> None:
    """Take over runs whose process died (their lease ran out) while this one runs."""
    from runner.engine.engine import LEASE_SECONDS

    while True:
        await asyncio.sleep(LEASE_SECONDS)
        try:
            await engine.recover()
        except Exception:  # keep trying; the next round may succeed
            logging.getLogger("treadle.recovery").exception("recovery failed")


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
    gitsync = GitSync(settings.git_url, workdir, branch=settings.git_branch, interval=settings.git_interval)
    await gitsync.sync()
    if gitsync.state.commit is None:
        raise TreadleError(f"cannot follow {settings.git_url} ({settings.git_branch}): {gitsync.state.error}")
    inside = workdir / settings.definitions
    return gitsync, inside if not settings.definitions.is_absolute() and inside.is_dir() else workdir


# -- actions shared by the JSON API and the dashboard forms ------------------------


async def start_run(services: Services, name: str, params: dict | None, *, from_text: bool = False,
                    trigger: str = "api") -> Launch:
    """Start (or queue) a run of the current version of `name` for a person or an API
    client; raises TreadleError subclasses, RunConflict when the concurrency policy
    skips it. Returns once the run row is committed, so a client that reads it next
    finds it."""
    definition = services.catalog.get(name)
    if definition is None:
        raise WorkflowNotFound(name, services.catalog.names())
    launch = await services.launcher.launch(definition, params, from_text=from_text, trigger=trigger, manual=True)
    if launch.status == "skipped":
        raise RunConflict(f"workflow '{name}': {launch.reason}; try again when a run has ended", "CONCURRENCY_LIMIT")
    await services.store.flush()
    return launch


async def cancel_run(services: Services, run_id: str, *, compensate: bool = False) -> bool:
    """Cancel a run (a queued one too); False when it had already finished. Raises RunNotFound."""
    if services.engine.cancel(run_id, compensate=compensate) or await services.launcher.cancel_queued(run_id):
        return True
    if await services.store.get_run(run_id) is None:
        raise RunNotFound(run_id)
    return False


async def cancel_conflict(services: Services, run_id: str) -> RunConflict:
    """Why a run that `cancel_run` did not cancel cannot be cancelled."""
    run = await services.store.get_run(run_id)
    status = run["status"] if run else "unknown"
    if RunStatus(status).finished:
        return RunConflict(f"run '{run_id}' already finished ({status}); nothing to cancel", "RUN_FINISHED")
    # recorded as active, but no executor of this server holds it: `treadle run` in
    # another process, or a server that stopped before the run could be marked
    return RunConflict(f"run '{run_id}' is {status} but not executing in this server "
                       "(started by `treadle run` in another process?); cancel it there", "RUN_NOT_HERE")


async def retry_run(services: Services, run_id: str, from_step: str | None) -> RunExecution:
    """Start a new run reusing what succeeded upstream of `from_step` (or of the failures).

    Raises RunNotFound, RunConflict (the run is still going), ParamError (no such step).
    """
    if run_id in services.engine.runs or run_id in services.launcher.queued_ids():
        raise RunConflict(f"run '{run_id}' has not ended; cancel it or wait for it to end, "
                          "then retry", "RUN_ACTIVE")
    run = await services.store.get_run(run_id)
    definition = services.catalog.get(run["workflow"]) if run else None
    limits = definition.spec.concurrency if definition and definition.spec else None
    if limits is not None and limits.policy != "cancel_previous":
        # a retry is not queued (what it reuses lives in memory): it starts now or not at all
        going = services.launcher.active(definition.name)
        if len(going) >= limits.limit:
            raise RunConflict(f"workflow '{definition.name}': concurrency limit {limits.limit} reached (going: "
                              f"{', '.join(e.id for e in going)}); retry when a run has ended", "CONCURRENCY_LIMIT")
    elif limits is not None:
        await services.launcher.make_room(definition.name, limits.limit)
    exe = await services.engine.retry(run_id, from_step)
    await services.store.flush()
    return exe


# -- dry run -------------------------------------------------------------------------

_NEVER_KNOWN = frozenset({"steps"})  # step results exist only once the run is going
_PER_ITEM = frozenset({"item", "index"})


@lru_cache(maxsize=4096)
def _names(template: str) -> frozenset[str]:
    """The top-level names a template reads (`params`, `steps`, ...)."""
    try:
        return frozenset(meta.find_undeclared_variables(_PARSER.parse(template)))
    except TemplateSyntaxError:
        return frozenset()


_PARSER = Environment()


class _Renderer:
    """Renders what is known before a run starts; leaves the rest as written."""

    def __init__(self, context: dict[str, Any], unknown: frozenset[str]):
        self.context, self.unknown = context, unknown
        self.problems: list[str] = []

    def value(self, value: Any, where: str, pending: list[str], unknown: frozenset[str] = frozenset()) -> Any:
        if isinstance(value, dict):
            return {k: self.value(v, f"{where}.{k}", pending, unknown) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, f"{where}[{i}]", pending, unknown) for i, v in enumerate(value)]
        if not is_template(value):
            return value
        unknown = self.unknown | unknown
        if any(name in value for name in unknown) and _names(value) & unknown:  # parse only when it may
            pending.append(where)
            return value
        try:
            return render(value, self.context)
        except TemplateFailed as exc:
            self.problems.append(f"{where}: {exc}")
            pending.append(where)
            return value


def plan_run(definition: Definition, params: dict[str, Any] | None, environ: Mapping[str, str]) -> dict[str, Any]:
    """What a run of `definition` with `params` would do, without doing any of it.

    Steps come in the order the engine would start them on one worker. Inputs are
    rendered where they depend only on params, env and the run; what reads
    `steps.*` (or `item`/`index` of a foreach) is left as written and its field
    listed under `pending`. Secrets show as `***`.
    """
    plan: dict[str, Any] = {"workflow": definition.name, "version": definition.version, "path": definition.path,
                            "valid": definition.valid, "params": None, "param_errors": {}, "order": [],
                            "steps": [], "problems": [str(p) for p in definition.problems]}
    spec, dag = definition.spec, definition.dag
    if not definition.valid or spec is None or dag is None:
        return plan
    unknown = set(_NEVER_KNOWN)
    try:
        plan["params"] = validate_params(spec.params, params)
    except ParamError as exc:
        plan["param_errors"] = exc.errors
        plan["problems"] += [f"param '{k}': {v}" for k, v in exc.errors.items()]
        unknown |= {"params", "trigger"}
    missing = [n for n in spec.secrets if not environ.get(n)]
    if missing:
        plan["problems"].append(str(SecretMissing(missing)))
    run = {"id": "(dry-run)", "workflow": definition.name, "version": definition.version}
    context = {"params": plan["params"], "trigger": plan["params"], "run": run, "env": {},
               "secrets": {n: "***" for n in spec.secrets}, "steps": {}}
    renderer = _Renderer(context, frozenset(unknown))
    env_pending: list[str] = []
    env = renderer.value(dict(spec.env), "env", env_pending)
    context["env"] = {k: v if isinstance(v, str) else json.dumps(v) for k, v in env.items()}
    if env_pending:
        renderer.unknown |= {"env"}
    plan["env"] = context["env"]
    plan["order"] = list(dag.order)
    steps = {s.id: s for s in spec.steps}
    for sid in dag.order:
        step = steps[sid]
        pending: list[str] = []
        where = f"steps.{sid}"
        when = renderer.value(step.when, f"{where}.when", pending)
        foreach = renderer.value(step.foreach, f"{where}.foreach", pending)
        per_item = _PER_ITEM if step.foreach is not None else frozenset()
        inputs = renderer.value(raw_inputs(definition, step), where, pending, per_item)
        known_when = step.when is None or f"{where}.when" not in pending
        plan["steps"].append({
            "id": sid, "kind": step.kind, "needs": list(dag.deps[sid]), "trigger_rule": step.trigger_rule,
            "continue_on_failure": step.continue_on_failure, "when": when,
            "runs": (step.when is None or truthy(when)) if known_when else None,
            "foreach": foreach, "input": inputs, "pending": pending,
        })
    plan["problems"] += renderer.problems
    return plan
