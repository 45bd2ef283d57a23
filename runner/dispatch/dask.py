"""The cluster executor: `run`, `python` and `http` steps on Dask distributed workers.

The server keeps driving the run; for each attempt of a cluster step it
1. puts the attempt's ticket in a Dask queue named after the attempt (the task takes
   it before anything else, so a second execution of the same attempt, which Dask
   starts by itself when a worker dies, refuses at once);
2. submits `runner.dispatch.worker.execute_job` with the attempt as plain data, with
   the step's `resources` and `labels` as Dask worker resources;
3. follows it: the worker that took it (recorded with the attempt), its log chunks
   (Dask events, into the step's log as they come), its result. A step no worker has
   taken after `placement_timeout` fails saying what it needs. A timeout or a cancel
   on the server cancels the task, and the worker stops the step's processes.
4. A worker that dies mid-step makes the attempt fail with "worker lost" (Dask's own
   re-run of the task is refused by the ticket), and the step's retry policy decides.

Connecting: `dask://HOST:8786` (a running scheduler), or `dask-local` for a
LocalCluster in this process (`--workers N`), for trying it on one machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import time
import zipfile
from pathlib import Path
from typing import Any

from ..errors import ExecutorError, StepFailed
from ..steps.base import StepContext, StepOutcome
from .job import REMOTE_KINDS, StepJob
from .worker import LOG_TOPIC, START_TOPIC, execute_job

log = logging.getLogger("treadle.dask")
DEFAULT_PLACEMENT_TIMEOUT = 600.0
MAX_CODE_BYTES = 50 * 2**20  # the definitions folder shipped to workers, zipped


class _Attempt:
    def __init__(self, ctx: StepContext):
        self.ctx = ctx
        self.worker: str | None = None
        self.started = asyncio.Event()
        self.lost: str | None = None  # a second worker started it: the first one died
        self.logs_seen = 0


class DaskDispatcher:
    """Args:
        address: `dask://HOST:PORT` / `tcp://HOST:PORT`, or `dask-local`.
        definitions_dir: the folder whose Python files `python` steps import.
        workers: for `dask-local`, how many worker processes.
    """

    name = "dask"

    def __init__(self, address: str, definitions_dir: Path | None, *, workers: int = 2):
        self.address, self.definitions_dir, self.workers = address, definitions_dir, workers
        self.client: Any = None
        self._cluster: Any = None
        self._attempts: dict[str, _Attempt] = {}
        self._code: tuple[float, str] | None = None  # (checked at, hash) of the published code
        self._publishing = asyncio.Lock()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        from distributed import Client, LocalCluster

        try:
            if self.address == "dask-local":
                import psutil

                offered = {"cpu": float(os.cpu_count() or 1), "memory": float(psutil.virtual_memory().total)}
                self._cluster = await LocalCluster(n_workers=self.workers, threads_per_worker=4, processes=True,
                                                   asynchronous=True, dashboard_address=None, resources=offered)
                self.client = await Client(self._cluster, asynchronous=True)
                await self.client.register_plugin(_plugin(), name="treadle")
            else:
                target = "tcp://" + self.address.split("://", 1)[1] if "://" in self.address else self.address
                self.client = await asyncio.wait_for(Client(target, asynchronous=True), 20)
        except (OSError, TimeoutError) as exc:
            raise ExecutorError(f"cannot reach the Dask scheduler at {self.address}: {exc}; start it with "
                                "`dask scheduler` (see docs/cluster.md)") from None
        self.client.subscribe_topic(START_TOPIC, self._on_start)
        self.client.subscribe_topic(LOG_TOPIC, self._on_log)

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                await self._cluster.close()

    def remote(self, kind: str, executor: str | None) -> bool:
        return kind in REMOTE_KINDS and executor != "local"

    # -- one attempt -------------------------------------------------------------------------

    async def execute(self, job: StepJob, ctx: StepContext, placement_timeout: float | None = None) -> StepOutcome:
        from distributed import KilledWorker, Queue
        from distributed.client import FutureCancelledError

        key = f"treadle-{job.token}"
        if job.kind in ("python", "run"):
            job.code = await self._publish_code()
        attempt = self._attempts[job.token] = _Attempt(ctx)
        future = None
        try:
            # the ticket travels while the task is scheduled: the task waits for it (TICKET_WAIT)
            ticket = asyncio.ensure_future(_put_ticket(Queue, key))
            future = self.client.submit(execute_job, job.as_dict(), key=key, pure=False, retries=0,
                                        resources=job.resources or None)
            placed = asyncio.ensure_future(attempt.started.wait())
            outcome = asyncio.ensure_future(_result_of(future))
            try:
                done, _ = await asyncio.wait({placed, outcome}, timeout=placement_timeout or DEFAULT_PLACEMENT_TIMEOUT,
                                             return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    raise StepFailed(await self._unplaceable(job, placement_timeout or DEFAULT_PLACEMENT_TIMEOUT),
                                     retryable=False)
                await ticket
                try:
                    result = await outcome
                except FutureCancelledError:
                    result = {"lost": True}
                except KilledWorker as exc:  # the scheduler gave the task up after workers died with it
                    raise StepFailed(f"worker lost: {exc}") from None
                except Exception as exc:  # a bug in Treadle's worker side: say so, let retries decide
                    raise StepFailed(f"internal error on the worker: {type(exc).__name__}: {exc}") from None
            finally:
                placed.cancel()
                outcome.cancel()
            if result.get("lost") or attempt.lost:
                raise StepFailed(f"worker lost: {attempt.lost or attempt.worker or 'the worker'} died while "
                                 "running the step")
            await self._logs_arrived(attempt, result.get("logs", 0))
            return _outcome(result)
        except asyncio.CancelledError:  # a timeout or a cancel on the server: the worker stops the step
            if future is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(future.cancel())
            raise
        finally:
            self._attempts.pop(job.token, None)
            if future is not None and not future.done():
                with contextlib.suppress(Exception):
                    await future.cancel()

    async def forget(self, tokens: list[str]) -> None:
        """Stop the tasks of these attempts wherever they run (attempts given up by a
        server that died: their run now goes on here)."""
        from distributed import Future

        if self.client is None or not tokens:
            return
        futures = [Future(f"treadle-{t}", client=self.client) for t in tokens]
        with contextlib.suppress(Exception):
            await self.client.cancel(futures, force=True)

    # -- what workers say ------------------------------------------------------------------

    def _on_start(self, event: tuple[float, dict[str, Any]]) -> None:
        body = event[1]
        attempt = self._attempts.get(body.get("token"))
        if attempt is None:
            return
        if attempt.worker is not None and attempt.worker != body["worker"]:
            attempt.lost = attempt.worker  # Dask started it again elsewhere: the first worker died
            return
        attempt.worker = body["worker"]
        attempt.started.set()
        if attempt.ctx.started is not None:
            attempt.ctx.started(body["worker"])

    def _on_log(self, event: tuple[float, dict[str, Any]]) -> None:
        body = event[1]
        attempt = self._attempts.get(body.get("token"))
        if attempt is not None:
            attempt.logs_seen += 1
            attempt.ctx.logs.write(body["stream"], body["text"])

    async def _logs_arrived(self, attempt: _Attempt, sent: int) -> None:
        """Log events travel apart from the result: wait a moment for the last ones."""
        deadline = time.monotonic() + 2.0
        while attempt.logs_seen < sent and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def _unplaceable(self, job: StepJob, waited: float) -> str:
        needs = ", ".join(f"{k}={v:g}" for k, v in job.resources.items()) or "nothing special"
        offered = []
        with contextlib.suppress(Exception):
            identity = await self.client.scheduler.identity(n_workers=-1)
            for address, info in identity["workers"].items():
                have = ", ".join(f"{k}={v:g}" for k, v in (info.get("resources") or {}).items()) or "no resources"
                offered.append(f"{address} ({have})")
        return (f"no worker took the step within {waited:g}s: it needs {needs}; the workers offer "
                f"{'; '.join(offered) or 'nothing (no worker is connected)'}. Start a worker with "
                "`treadle worker --resources ...`, or change the step's `resources`/`labels`")

    # -- the definitions' code, for python steps ------------------------------------------

    async def _publish_code(self) -> str | None:
        """Zip the definitions folder (scripts and modules that steps use) and publish it
        once per content."""
        if self.definitions_dir is None:
            return None
        if self._code is not None and time.monotonic() - self._code[0] < 1.0:
            return self._code[1]
        async with self._publishing:  # one zip and one publication at a time, however many steps ask
            if self._code is not None and time.monotonic() - self._code[0] < 1.0:
                return self._code[1]
            blob, digest = await asyncio.to_thread(_zip_code, self.definitions_dir)
            name = f"treadle-code-{digest}"
            if name not in await self.client.list_datasets():
                with contextlib.suppress(KeyError):  # another server published the same content meanwhile
                    await self.client.publish_dataset(blob, name=name)
            self._code = (time.monotonic(), digest)
            return digest


def _zip_code(root: Path) -> tuple[bytes, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file()
                   and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(root).parts))
    digest = hashlib.sha256()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            rel = path.relative_to(root).as_posix()
            data = path.read_bytes()
            digest.update(rel.encode() + b"\0" + data)
            archive.writestr(rel, data)
    blob = buffer.getvalue()
    if len(blob) > MAX_CODE_BYTES:
        raise StepFailed(f"the definitions folder is {len(blob):,} bytes zipped, more than the "
                         f"{MAX_CODE_BYTES // 2**20} MiB shipped to cluster workers; keep data and big modules "
                         "out of it (an installed package, object storage)", retryable=False)
    return blob, digest.hexdigest()[:16]


async def _put_ticket(queue: Any, key: str) -> None:
    await (await queue(key)).put(1)


async def _result_of(future: Any) -> Any:
    return await future


def _outcome(result: dict[str, Any]) -> StepOutcome:
    if result.get("given_up"):
        raise StepFailed("the worker stopped the step: the server no longer waited for it")
    if not result.get("ok"):
        raise StepFailed(result.get("error") or "failed", exit_code=result.get("exit_code"),
                         http_status=result.get("http_status"), output=result.get("output"),
                         retryable=result.get("retryable", True), host_error=result.get("host_error"))
    return StepOutcome(output=result.get("output"), exit_code=result.get("exit_code"),
                       http_status=result.get("http_status"), extra=result.get("extra") or {},
                       host_answered=bool(result.get("host_answered")))


def _plugin() -> Any:
    from .worker import TreadleWorker

    return TreadleWorker()
