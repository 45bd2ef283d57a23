"""Outbound notifications: POST a JSON event to the `notify:` webhooks when a run ends.

A notification is a side effect of a run, never part of it: posts run as background
tasks after the run's result is recorded, a failing receiver only produces log lines,
and nothing here raises into the engine. Delivery is at least once (a receiver that
times out may have processed the event), so every post carries an `Idempotency-Key`
that stays the same across retries for receivers to de-duplicate on.

    notifier = Notifier(engine.http, engine.environ)
    engine.run_ended.append(notifier.on_run_ended)
    ...
    await notifier.close()   # before the http client is closed
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import httpx

from .. import __version__
from .signing import signed_headers

if TYPE_CHECKING:
    from ..dsl.trigger_spec import NotifySpec
    from ..engine.engine import RunEnded

log = logging.getLogger("treadle.notify")
USER_AGENT = f"treadle/{__version__}"
MAX_RETRY_AFTER = 300.0  # a receiver's Retry-After is honoured up to this many seconds
_SNIPPET = 200  # bytes of a failing receiver's answer kept for the log


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def redact_url(url: str) -> str:
    """`url` fit for a log: no user:password, no query (webhook tokens often live there)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=netloc, query="..." if parts.query else ""))


def event_body(ended: RunEnded) -> bytes:
    """The JSON document posted for a finished run (the exact bytes, as they are signed)."""
    event = {
        "event_type": f"run.{ended.status}",
        "workflow": ended.workflow,
        "run_id": ended.run_id,
        "status": ended.status,
        "trigger": ended.trigger,
        "started_at": _iso(ended.started_at),
        "finished_at": _iso(ended.finished_at),
        "duration_ms": max(0, round((ended.finished_at - ended.started_at) * 1000)),
        "outputs": ended.outputs,
        "error": ended.error,
    }
    # default=str: outputs are JSON already when recorded, but a notification must not be
    # lost to an odd value (a date from a python step) that the store would have coped with
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    return min(float(value), MAX_RETRY_AFTER) if value.isdigit() else None


class Notifier:
    """Posts run events to the `notify:` webhooks of finished runs, with retries.

    Args:
        http: the shared client (its connection pool is reused; it is not closed here).
        environ: where `secret_env` keys are read from (the engine's `environ`).
        delays: seconds to wait before each retry; the last one repeats.
        timeout: seconds one try may take in total (connect, send, answer).
    """

    def __init__(self, http: httpx.AsyncClient, environ: Mapping[str, str], *,
                 delays: Sequence[float] = (1, 4, 16, 60), timeout: float = 10.0,
                 committed: Callable[[], Awaitable[None]] | None = None):
        if not delays:
            raise ValueError("delays needs at least one value (the wait before a retry)")
        # awaited before the first try (the store's flush): a receiver that reads the run
        # back through the API must find it recorded as ended
        self.committed = committed
        self.http = http
        self.environ = environ
        self.delays = tuple(delays)
        self.timeout = timeout
        self._tasks: set[asyncio.Task[None]] = set()  # strong references: asyncio keeps weak ones
        self._closed = False

    def pending(self) -> int:
        """Posts not finished yet (being sent or waiting for a retry)."""
        return len(self._tasks)

    def on_run_ended(self, ended: RunEnded) -> None:
        """An `Engine.run_ended` callback: start one background post per matching notify entry."""
        spec = ended.definition.spec
        entries = [(i, n) for i, n in enumerate(spec.notify if spec else ()) if ended.status in n.on]
        if not entries:
            return
        if self._closed:
            log.warning("run %s ended after notifications were shut down; %d not sent",
                        ended.run_id, len(entries))
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # only ever called by the engine, inside its loop; be safe anyway
            log.error("run %s ended outside an event loop; notifications not sent", ended.run_id)
            return
        body = event_body(ended)
        for index, entry in entries:
            secret = None
            if entry.secret_env is not None:
                secret = self.environ.get(entry.secret_env)
                if not secret:
                    # unsigned, the post would be rejected by a receiver expecting signatures,
                    # or worse accepted by one that only checks when a signature is present
                    log.error("notification of run %s to %s not sent: %s (its secret_env) is not set "
                              "in the environment Treadle runs in", ended.run_id,
                              redact_url(entry.webhook), entry.secret_env)
                    continue
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "X-Treadle-Event": f"run.{ended.status}",
                "Idempotency-Key": f"{ended.run_id}:{index}",
            }
            task = loop.create_task(self._deliver(entry, body, headers, secret, ended.run_id),
                                    name=f"treadle-notify-{ended.run_id}-{index}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, entry: NotifySpec, body: bytes, headers: dict[str, str],
                       secret: str | None, run_id: str) -> None:
        shown = redact_url(entry.webhook)
        tries = 0
        try:
            if self.committed is not None:
                await self.committed()
            while True:
                tries += 1
                outcome, retryable, wait = await self._try(entry.webhook, body, headers, secret)
                if outcome is None:
                    log.debug("run %s notified %s (%d tries)", run_id, shown, tries)
                    return
                outcome = outcome.replace(entry.webhook, shown)
                if not retryable or tries > entry.retries:
                    log.error("notification of run %s to %s abandoned after %d tr%s: %s%s", run_id,
                              shown, tries, "y" if tries == 1 else "ies", outcome,
                              "" if retryable else " (not retried)")
                    return
                delay = self.delays[min(tries - 1, len(self.delays) - 1)]
                delay = max(delay, wait or 0.0)
                log.warning("notification of run %s to %s failed (try %d of %d): %s; retrying in %g s",
                            run_id, shown, tries, entry.retries + 1, outcome, delay)
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            log.error("notification of run %s to %s abandoned at shutdown after %d tr%s",
                      run_id, shown, tries, "y" if tries == 1 else "ies")
            raise
        except Exception:  # a bug here must not surface as "Task exception was never retrieved"
            log.exception("notification of run %s to %s crashed after %d tries", run_id, shown, tries)

    async def _try(self, url: str, body: bytes, headers: dict[str, str],
                   secret: str | None) -> tuple[str | None, bool, float | None]:
        """One POST. Returns (what went wrong or None, worth retrying, Retry-After seconds)."""
        if secret is not None:
            # signed at each try: retries can outlast the receiver's timestamp tolerance
            headers = {**headers, **signed_headers(secret, body, time.time())}
        try:
            async with asyncio.timeout(self.timeout):
                # redirects not followed: a POST would turn into a GET, or carry a signed
                # body to another host; streamed so a huge answer is never read into memory
                async with self.http.stream("POST", url, content=body, headers=headers,
                                            timeout=self.timeout, follow_redirects=False) as response:
                    if response.is_success:
                        return None, False, None
                    snippet = b""
                    async for chunk in response.aiter_bytes():
                        snippet += chunk
                        if len(snippet) >= _SNIPPET:
                            break
                    text = snippet[:_SNIPPET].decode("utf-8", "replace").strip()
                    outcome = f"HTTP {response.status_code}" + (f" {text!r}" if text else "")
                    retryable = response.status_code == 429 or response.status_code >= 500
                    return outcome, retryable, _retry_after(response) if retryable else None
        except (TimeoutError, httpx.TimeoutException):
            return f"no answer within {self.timeout:g} s", True, None
        except httpx.TransportError as exc:  # refused, reset, DNS: the receiver may come back
            return f"{type(exc).__name__}: {exc}", True, None
        except (httpx.HTTPError, httpx.InvalidURL, RuntimeError) as exc:  # bad URL, client closed
            return f"{type(exc).__name__}: {exc}", False, None

    async def close(self, timeout: float = 5.0) -> None:
        """Wait up to `timeout` seconds for pending posts, then cancel the rest.

        Call it before the http client is closed (posts still going would fail on it).
        Runs ending after this are not notified.
        """
        self._closed = True
        tasks = set(self._tasks)
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)
            log.warning("%d notification%s still pending at shutdown dropped",
                        len(late), "" if len(late) == 1 else "s")
