"""The worker side of the cluster executor: what a Dask worker runs for a Treadle step.

`execute_job` is the task function (an async task on the worker's event loop). It
- takes its attempt's ticket first: when Dask runs the task again on another worker
  after the first one died, the ticket is gone and the task refuses at once (the
  server records the attempt failed, "worker lost", and retries it by its policy);
- fills in the secrets from this worker's environment (or `treadle worker
  --secrets-file`) and masks every form of them in what it sends back;
- executes the step with the same step kinds as the server (`run` in its own process
  group, `http` with a client per worker, `python` in a child process with the
  definitions folder as the server had it), streaming log chunks to the server as
  Dask events;
- stops the step's processes as soon as the server gives the attempt up (a timeout, a
  cancel, its server gone): Dask marks the task cancelled, which the task watches.

`TreadleWorker` is the worker plugin `treadle worker` installs (the same as
`dask worker --preload runner.dispatch.worker`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import socket
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

LOG_TOPIC = "treadle-logs"
START_TOPIC = "treadle-start"
TICKET_WAIT = 2.0  # seconds a task waits for its ticket (put by the server just before submitting)
WATCH_SECONDS = 0.2  # how often a running task looks whether the server gave it up
SWEEP_SECONDS = 2.0  # how often a worker stops the step processes of workers that died on its machine
CODE_CACHE = Path(os.environ.get("TREADLE_WORKER_CACHE", Path(tempfile.gettempdir()) / "treadle-worker-code"))


class _WorkerServices:
    """StepServices on a worker: only what run, python and http steps use."""

    def __init__(self, http: Any):
        self.http = http
        self.breakers = None  # asked by the server before it dispatches (runner/engine/circuit.py)
        self.approvals = None
        self.draining = False

    async def run_child(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never dispatched
        raise RuntimeError("workflow steps run on the server")


def _worker_state() -> dict[str, Any]:
    from distributed import get_worker

    worker = get_worker()
    state = getattr(worker, "_treadle", None)
    if state is None:  # a plain `dask worker` without the plugin: the same defaults
        state = worker._treadle = {"environ": dict(os.environ), "http": None}
    return state


async def execute_job(job: dict[str, Any]) -> dict[str, Any]:
    """Execute one step attempt; returns its outcome as plain data (masked)."""
    from distributed import Queue, get_worker

    from ..errors import StepFailed
    from ..steps.base import StepContext
    from ..templates import Masker
    from .job import fill_secrets

    worker = get_worker()
    token = job["token"]
    key = f"treadle-{token}"
    try:
        ticket = await Queue(key)
        await ticket.get(timeout=TICKET_WAIT)
    except Exception:
        return {"lost": True, "worker": worker.address}  # Dask ran it again after its first worker died
    worker.log_event(START_TOPIC, {"token": token, "worker": worker.address, "host": socket.gethostname()})
    state = _worker_state()
    environ = state["environ"]
    missing = [n for n in job["secret_names"] if not environ.get(n)]
    masker = Masker([environ[n] for n in job["secret_names"] if environ.get(n)])
    sent = {"logs": 0}

    def emit(row: dict[str, Any]) -> None:
        sent["logs"] += 1
        worker.log_event(LOG_TOPIC, {"token": token, "text": row["text"], "stream": row["stream"], "at": row["at"]})

    from ..engine.logsink import LogSink

    logs = LogSink(emit, {"run_id": job["run_id"], "step_id": job["step_id"], "item": -1, "attempt": job["attempt"]},
                   masker.text, safe_cut=masker.safe_cut)
    result: dict[str, Any]
    try:
        if missing:
            raise StepFailed(f"secret{'s' if len(missing) > 1 else ''} {', '.join(missing)} not set on worker "
                             f"{worker.address}; set it in the worker's environment or its --secrets-file",
                             retryable=False)
        try:
            inp = fill_secrets(job["input"], {n: environ[n] for n in job["secret_names"]})
        except ValueError as exc:
            raise StepFailed(f"{exc}: a cluster step receives a secret only as it is; give this step "
                             "`executor: local` to transform it on the server", retryable=False) from None
        base_dir = await _code_dir(job) / job["base_dir"] if job["kind"] == "run" else Path.cwd()
        if state.get("http") is None:
            import httpx

            state["http"] = httpx.AsyncClient(follow_redirects=True)
        from ..steps.shell import encode_env

        ctx = StepContext(
            run_id=job["run_id"], step_id=job["step_id"], index=job["index"], attempt=job["attempt"],
            workflow=job["workflow"], base_dir=base_dir, env=job["env"], http=state["http"],
            services=_WorkerServices(state["http"]), logs=logs, timeout=job["timeout"],
            process_env=encode_env({**environ, **job["env"], "TREADLE_OWNER": job["owner"],
                                    "TREADLE_WORKER": worker.address, "TREADLE_SCHEDULER": worker.scheduler.address}),
        )
        outcome = await _run_watched(worker, key, job, ctx, inp)
        result = {"ok": True, "output": masker.data(outcome.output), "exit_code": outcome.exit_code,
                  "http_status": outcome.http_status, "extra": masker.data(outcome.extra),
                  "host_answered": outcome.host_answered}
    except StepFailed as exc:
        result = {"ok": False, "error": masker.text(str(exc)), "output": masker.data(exc.output),
                  "exit_code": exc.exit_code, "http_status": exc.http_status, "retryable": exc.retryable,
                  "host_error": masker.text(exc.host_error) if exc.host_error else None}
    except _GivenUp:
        result = {"given_up": True}
    except Exception as exc:  # a bug: say it, do not lose the worker
        result = {"ok": False, "error": masker.text(f"{type(exc).__name__}: {exc}"), "retryable": False}
    finally:
        logs.close()
    return {**result, "worker": worker.address, "logs": sent["logs"]}


class _GivenUp(Exception):
    pass


async def _run_watched(worker: Any, key: str, job: dict[str, Any], ctx: Any, inp: dict[str, Any]) -> Any:
    """The step, stopped (its processes killed) once the server no longer wants it, or
    past its own timeout if the server cannot say so."""
    from ..steps import REGISTRY

    if job["kind"] == "python":
        from .python_child import execute as run_python

        step = asyncio.ensure_future(run_python(ctx, inp, await _code_dir(job)))
    else:
        step = asyncio.ensure_future(REGISTRY[job["kind"]].execute(ctx, inp))
    deadline = time.monotonic() + job["timeout"] + 30 if job["timeout"] else None
    try:
        while True:
            done, _ = await asyncio.wait({step}, timeout=WATCH_SECONDS)
            if done:
                return step.result()
            task = worker.state.tasks.get(key)
            wanted = task is not None and task.state in ("executing", "long-running")
            if not wanted or (deadline is not None and time.monotonic() > deadline):
                step.cancel()  # a `run` step kills its whole process group
                with contextlib.suppress(BaseException):
                    await step
                raise _GivenUp
    finally:
        if not step.done():
            step.cancel()


async def _code_dir(job: dict[str, Any]) -> Path:
    """The definitions folder as the server had it, unpacked once per worker (the
    server publishes it as a Dask dataset named by its hash)."""
    code = job.get("code")
    if not code:
        return Path.cwd()
    folder = CODE_CACHE / code
    if folder.is_dir():
        return folder
    from distributed import get_client

    blob = await get_client().get_dataset(f"treadle-code-{code}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{code}-", dir=_ensure(CODE_CACHE)))
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        archive.extractall(tmp)
    try:
        tmp.rename(folder)  # atomic: a concurrent task unpacking the same code loses the race harmlessly
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


class TreadleWorker(WorkerPlugin):
    """Worker plugin: the worker's secrets (its environment and `--secrets-file`) and
    the http client its steps share."""

    name = "treadle"

    def __init__(self, secrets_file: str | None = None):
        self.secrets_file = secrets_file

    def setup(self, worker: Any) -> None:
        from tornado.ioloop import PeriodicCallback

        from ..security.secrets_file import with_secrets_file

        worker._treadle = {"environ": with_secrets_file(self.secrets_file) or dict(os.environ), "http": None}
        sweep = PeriodicCallback(lambda: asyncio.ensure_future(_stop_orphans(worker)), SWEEP_SECONDS * 1000)
        worker.periodic_callbacks["treadle-orphans"] = sweep
        sweep.start()
        asyncio.ensure_future(_stop_orphans(worker))

    def teardown(self, worker: Any) -> None:
        state = getattr(worker, "_treadle", None)
        if state and state.get("http") is not None:
            with contextlib.suppress(Exception):
                asyncio.get_event_loop().create_task(state["http"].aclose())


async def dask_setup(worker: Any) -> None:
    """`dask worker --preload runner.dispatch.worker`: install the plugin."""
    await worker.plugin_add(TreadleWorker(os.environ.get("TREADLE_SECRETS_FILE")), name="treadle")


async def _stop_orphans(worker: Any) -> None:
    """Stop step processes on this machine whose worker is no longer in the cluster (it
    was killed mid-step: its tasks run again elsewhere, its processes must not go on)."""
    from ..engine.orphans import step_processes, stop

    try:
        seen = await asyncio.to_thread(_worker_processes, step_processes)
        if not seen:
            return
        identity = await worker.scheduler.identity(n_workers=-1)
    except Exception:  # the scheduler is away: try again later
        return
    live = set(identity.get("workers", {}))
    ours = worker.scheduler.address  # another cluster's workers on this machine are not ours to judge
    gone = [pid for pid, address, scheduler in seen if scheduler == ours and address not in live]
    if gone:
        await asyncio.to_thread(stop, gone, "a Dask worker that died")


def _worker_processes(step_processes: Any) -> list[tuple[int, str, str]]:
    """(pid, worker, scheduler) of the step processes started by Treadle workers on this machine."""
    out = []
    for pid, _owner, _run in step_processes():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        found = {}
        for item in environ.split(b"\0"):
            name, _, value = item.partition(b"=")
            if name in (b"TREADLE_WORKER", b"TREADLE_SCHEDULER"):
                found[name] = value.decode(errors="replace")
        if len(found) == 2:
            out.append((pid, found[b"TREADLE_WORKER"], found[b"TREADLE_SCHEDULER"]))
    return out
