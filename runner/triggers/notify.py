"""Outbound notifications: POST an event to the `notify:` webhooks when a run ends, or
when one of its steps fails, retries or succeeds, or an approval starts waiting.

The body is Treadle's JSON event (`format: json`, signed with `secret_env`), Slack
incoming-webhook blocks (`slack`), or a sandboxed template (`template`) for Teams,
Discord, Mattermost, PagerDuty or anything else. Every try is recorded (`record`) and
listed with the run.

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
import html
import json
import logging
import smtplib
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from .. import __version__
from .signing import signed_headers

if TYPE_CHECKING:
    from ..dsl.trigger_spec import NotifySpec
    from ..engine.engine import RunEnded

log = logging.getLogger("treadle.notify")
# one try: (what went wrong or None, worth retrying, Retry-After seconds, HTTP status or SMTP code)
Try = tuple[str | None, bool, float | None, int | None]
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


def run_event(ended: RunEnded, url: str | None = None) -> dict[str, Any]:
    """The event of a finished run (outputs and error masked already)."""
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
    if url:
        event["url"] = url
    return event


def step_event(event_type: str, workflow: str, run_id: str, trigger: str, detail: dict[str, Any],
               url: str | None = None) -> dict[str, Any]:
    """The event of a step (`step.failed`, `step.retrying`, ...) or a waiting approval."""
    event: dict[str, Any] = {"event_type": event_type, "workflow": workflow, "run_id": run_id,
                             "status": "running", "trigger": trigger, "at": _iso(time.time()), **detail}
    if url:
        event["url"] = url
    return event


def as_json(event: dict[str, Any]) -> bytes:
    # default=str: outputs are JSON already when recorded, but a notification must not be
    # lost to an odd value (a date from a python step) that the store would have coped with
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def event_body(ended: RunEnded) -> bytes:
    """The JSON document posted for a finished run (the exact bytes, as they are signed)."""
    return as_json(run_event(ended))


def _slack_text(text: str) -> str:
    # Slack's mrkdwn reads these three as markup; everything else is shown as written
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def what_happened(event: dict[str, Any]) -> str:
    """`failed`, `step load failed; retrying`, ...: the event in a few words."""
    step = event.get("step")
    return {"run.succeeded": "succeeded", "run.failed": "failed", "run.cancelled": "was cancelled",
            "step.failed": f"step {step} failed", "step.retrying": f"step {step} failed; retrying",
            "step.succeeded": f"step {step} succeeded",
            "approval.waiting": "waits for an approval"}[event["event_type"]]


def target_of(entry: NotifySpec) -> str:
    """The receiver as shown in logs, records and pages: never credentials or a query."""
    if entry.email is not None:
        return f"mailto:{','.join(entry.email.to)} via {entry.email.host}:{entry.email.port}"
    return redact_url(entry.webhook or "")


def email_message(entry: NotifySpec, event: dict[str, Any]) -> EmailMessage:
    """The e-mail of an event: a subject that says it all, a plain-text and an HTML body."""
    assert entry.email is not None
    what = what_happened(event)
    rows = [("Workflow", event["workflow"]), ("Run", event["run_id"]), ("Trigger", str(event.get("trigger")))]
    if "duration_ms" in event:
        rows.append(("Duration", f"{event['duration_ms'] / 1000:.1f} s"))
    if event.get("attempt"):
        rows.append(("Attempt", str(event["attempt"])))
    if event.get("error"):
        rows.append(("Error", str(event["error"])[:4000]))
    message = EmailMessage()
    message["Subject"] = f"[Treadle] {event['workflow']} {what}"[:200]
    message["From"] = entry.email.from_
    message["To"] = ", ".join(entry.email.to)
    message["X-Treadle-Event"] = event["event_type"]
    text = [f"{event['workflow']} {what}", ""] + [f"{k}: {v}" for k, v in rows]
    if event.get("url"):
        text += ["", f"Open the run: {event['url']}"]
    message.set_content("\n".join(text) + "\n")
    cells = "".join(f"<tr><th align=\"left\">{html.escape(k)}</th><td>{'<pre>' + html.escape(v) + '</pre>' if k == 'Error' else html.escape(v)}</td></tr>"
                    for k, v in rows)
    link = f'<p><a href="{html.escape(event["url"])}">Open the run</a></p>' if event.get("url") else ""
    message.add_alternative(f"<html><body><h2>{html.escape(event['workflow'])} {html.escape(what)}</h2>"
                            f"<table>{cells}</table>{link}</body></html>", subtype="html")
    return message


def slack_body(event: dict[str, Any]) -> bytes:
    """Slack incoming-webhook blocks: what happened, to which workflow, the error, a link."""
    kind = event["event_type"]
    what = what_happened(event)
    icon = {"run.succeeded": ":white_check_mark:", "step.succeeded": ":white_check_mark:",
            "step.retrying": ":repeat:", "approval.waiting": ":raised_hand:"}.get(kind, ":x:")
    title = f"{icon} *{_slack_text(event['workflow'])}* {_slack_text(what)}"
    fields = [f"*Run*\n`{_slack_text(event['run_id'])}`", f"*Trigger*\n{_slack_text(str(event.get('trigger')))}"]
    if "duration_ms" in event:
        fields.append(f"*Duration*\n{event['duration_ms'] / 1000:.1f} s")
    if event.get("attempt"):
        fields.append(f"*Attempt*\n{event['attempt']}")
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": title}},
                                    {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]}]
    if event.get("error"):
        blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                   "text": f"```{_slack_text(str(event['error'])[:1500])}```"}})
    if event.get("url"):
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Open the run"}, "url": event["url"]}]})
    fallback = f"{event['workflow']} {what}" + (f": {str(event['error'])[:200]}" if event.get("error") else "")
    return json.dumps({"text": fallback, "blocks": blocks}, ensure_ascii=False).encode()


def template_body(template: str, event: dict[str, Any]) -> bytes:
    """The entry's template rendered in the sandbox with `event`; a value that is not text
    is sent as JSON."""
    from ..templates import render

    value = render(template, {"event": event})
    return (value if isinstance(value, str) else json.dumps(value, default=str)).encode()


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
                 committed: Callable[[], Awaitable[None]] | None = None,
                 record: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
                 public_url: str | None = None):
        if not delays:
            raise ValueError("delays needs at least one value (the wait before a retry)")
        # awaited before the first try (the store's flush): a receiver that reads the run
        # back through the API must find it recorded as ended
        self.committed = committed
        self.record = record  # each try, for the run's list of deliveries (the store's)
        self.public_url = public_url.rstrip("/") if public_url else None  # links to the run page
        self.http = http
        self.environ = environ
        self.delays = tuple(delays)
        self.timeout = timeout
        self._tasks: set[asyncio.Task[None]] = set()  # strong references: asyncio keeps weak ones
        self._closed = False

    def pending(self) -> int:
        """Posts not finished yet (being sent or waiting for a retry)."""
        return len(self._tasks)

    def run_url(self, run_id: str) -> str | None:
        return f"{self.public_url}/runs/{quote(run_id, safe='')}" if self.public_url else None

    def on_run_ended(self, ended: RunEnded) -> None:
        """An `Engine.run_ended` callback: start one background post per matching notify entry."""
        spec = ended.definition.spec
        kind = f"run.{ended.status}"
        entries = [(i, n) for i, n in enumerate(spec.notify if spec else ()) if kind in n.events()]
        if entries:
            self._send(entries, run_event(ended, self.run_url(ended.run_id)), ended.run_id, f"{ended.run_id}")

    def on_step_event(self, kind: str, exe: Any, detail: dict[str, Any]) -> None:
        """An `Engine.step_events` callback: step.failed, step.retrying, step.succeeded,
        approval.waiting."""
        spec = exe.definition.spec
        entries = [(i, n) for i, n in enumerate(spec.notify if spec else ()) if kind in n.events()]
        if entries:
            event = step_event(kind, exe.definition.name, exe.id, exe.trigger, detail, self.run_url(exe.id))
            key = f"{exe.id}:{kind}:{detail.get('step')}:{detail.get('item')}:{detail.get('attempt')}"
            self._send(entries, event, exe.id, key)

    def _send(self, entries: list[tuple[int, NotifySpec]], event: dict[str, Any], run_id: str, key: str) -> None:
        if self._closed:
            log.warning("run %s: %s after notifications were shut down; %d not sent",
                        run_id, event["event_type"], len(entries))
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # only ever called by the engine, inside its loop; be safe anyway
            log.error("run %s: %s outside an event loop; notifications not sent", run_id, event["event_type"])
            return
        for index, entry in entries:
            if entry.email is not None:
                self._later(self._deliver(entry, event, run_id, self._mail_once(entry, event)),
                            name=f"treadle-mail-{run_id}-{index}")
                continue
            secret = None
            if entry.secret_env is not None:
                secret = self.environ.get(entry.secret_env)
                if not secret:
                    # unsigned, the post would be rejected by a receiver expecting signatures,
                    # or worse accepted by one that only checks when a signature is present
                    log.error("notification of run %s to %s not sent: %s (its secret_env) is not set "
                              "in the environment Treadle runs in", run_id,
                              redact_url(entry.webhook), entry.secret_env)
                    continue
            try:
                body, content_type = self.body(entry, event)
            except Exception as exc:  # a template that fails: recorded, never raised into the run
                self._later(self._remember(entry, event, run_id, 1, None, f"the body could not be made: {exc}",
                                           final=True))
                continue
            headers = {
                "Content-Type": content_type,
                "User-Agent": USER_AGENT,
                "X-Treadle-Event": event["event_type"],
                # run events keep the key they always had: `<run>:<entry>`
                "Idempotency-Key": f"{key}:{index}",
            }
            self._later(self._deliver(entry, event, run_id, self._post_once(entry, body, headers, secret)),
                        name=f"treadle-notify-{run_id}-{index}")

    @staticmethod
    def body(entry: NotifySpec, event: dict[str, Any]) -> tuple[bytes, str]:
        """The bytes posted for `event` in the entry's format, and their content type."""
        if entry.format == "slack":
            return slack_body(event), "application/json"
        if entry.format == "template":
            return template_body(entry.template or "", event), entry.content_type
        return as_json(event), "application/json"

    def _later(self, work: Awaitable[None], name: str = "treadle-notify") -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _remember(self, entry: NotifySpec, event: dict[str, Any], run_id: str, attempt: int,
                        status: int | None, error: str | None, *, final: bool) -> None:
        if self.record is None:
            return
        try:
            await self.record({
                "run_id": run_id, "event": event["event_type"], "step_id": event.get("step"),
                "target": target_of(entry), "format": "email" if entry.email else entry.format, "attempt": attempt,
                "ok": error is None, "http_status": status, "error": error[:500] if error else None,
                "final": final, "at": time.time()})
        except Exception:  # the record is a courtesy: a database hiccup must not stop the posts
            log.exception("could not record a notification of run %s", run_id)

    async def _deliver(self, entry: NotifySpec, event: dict[str, Any], run_id: str,
                       once: Callable[[], Awaitable[Try]]) -> None:
        """Try `once` until it succeeds, is not worth retrying, or the entry's retries are
        spent; every try recorded. The same loop for webhooks and e-mails."""
        shown = target_of(entry)
        tries = 0
        try:
            if self.committed is not None:
                await self.committed()
            while True:
                tries += 1
                outcome, retryable, wait, status = await once()
                final = outcome is None or not retryable or tries > entry.retries
                await self._remember(entry, event, run_id, tries, status, outcome, final=final)
                if outcome is None:
                    log.debug("run %s notified %s (%d tries)", run_id, shown, tries)
                    return
                if final:
                    log.error("notification of run %s to %s abandoned after %d tr%s: %s%s", run_id,
                              shown, tries, "y" if tries == 1 else "ies", outcome,
                              "" if retryable else " (not retried)")
                    return
                delay = max(self.delays[min(tries - 1, len(self.delays) - 1)], wait or 0.0)
                log.warning("notification of run %s to %s failed (try %d of %d): %s; retrying in %g s",
                            run_id, shown, tries, entry.retries + 1, outcome, delay)
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            log.error("notification of run %s to %s abandoned at shutdown after %d tr%s",
                      run_id, shown, tries, "y" if tries == 1 else "ies")
            raise
        except Exception:  # a bug here must not surface as "Task exception was never retrieved"
            log.exception("notification of run %s to %s crashed after %d tries", run_id, shown, tries)

    def _post_once(self, entry: NotifySpec, body: bytes, headers: dict[str, str],
                   secret: str | None) -> Callable[[], Awaitable[Try]]:
        url, shown = entry.webhook or "", target_of(entry)

        async def once() -> Try:
            outcome, retryable, wait, status = await self._try(url, body, headers, secret)
            return (outcome.replace(url, shown) if outcome else None), retryable, wait, status
        return once

    def _mail_once(self, entry: NotifySpec, event: dict[str, Any]) -> Callable[[], Awaitable[Try]]:
        message = email_message(entry, event)

        async def once() -> Try:
            outcome, retryable, code = await asyncio.to_thread(self._send_mail, entry, message)
            return outcome, retryable, None, code
        return once

    def _send_mail(self, entry: NotifySpec, message: EmailMessage) -> tuple[str | None, bool, int | None]:
        """One SMTP delivery (in a worker thread). Returns (what went wrong or None, worth
        retrying, the SMTP reply code)."""
        mail = entry.email
        assert mail is not None
        user = self.environ.get(mail.username_env) if mail.username_env else None
        password = self.environ.get(mail.password_env) if mail.password_env else None
        if (mail.username_env or mail.password_env) and not (user and password):
            return f"{mail.username_env} or {mail.password_env} is not set in the environment Treadle runs in", \
                False, None
        try:
            if mail.tls == "ssl":
                client = smtplib.SMTP_SSL(mail.host, mail.port, timeout=self.timeout,
                                          context=ssl.create_default_context())
            else:
                client = smtplib.SMTP(mail.host, mail.port, timeout=self.timeout)
            with client:
                if mail.tls == "starttls":
                    client.starttls(context=ssl.create_default_context())
                if user and password:
                    client.login(user, password)
                refused = client.send_message(message)
            if refused:
                return f"refused recipients: {', '.join(sorted(refused))}", False, None
            return None, False, 250
        except smtplib.SMTPResponseException as exc:  # 4xx: try again later; 5xx: it will not change
            text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
            return f"SMTP {exc.smtp_code} {text[:200]}", 400 <= exc.smtp_code < 500, exc.smtp_code
        except (smtplib.SMTPException, OSError) as exc:  # connection refused, TLS, timeout
            return f"{type(exc).__name__}: {exc}", True, None

    async def _try(self, url: str, body: bytes, headers: dict[str, str],
                   secret: str | None) -> tuple[str | None, bool, float | None, int | None]:
        """One POST. Returns (what went wrong or None, worth retrying, Retry-After seconds,
        the HTTP status answered)."""
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
                        return None, False, None, response.status_code
                    snippet = b""
                    async for chunk in response.aiter_bytes():
                        snippet += chunk
                        if len(snippet) >= _SNIPPET:
                            break
                    text = snippet[:_SNIPPET].decode("utf-8", "replace").strip()
                    outcome = f"HTTP {response.status_code}" + (f" {text!r}" if text else "")
                    retryable = response.status_code == 429 or response.status_code >= 500
                    return outcome, retryable, _retry_after(response) if retryable else None, response.status_code
        except (TimeoutError, httpx.TimeoutException):
            return f"no answer within {self.timeout:g} s", True, None, None
        except httpx.TransportError as exc:  # refused, reset, DNS: the receiver may come back
            return f"{type(exc).__name__}: {exc}", True, None, None
        except (httpx.HTTPError, httpx.InvalidURL, RuntimeError) as exc:  # bad URL, client closed
            return f"{type(exc).__name__}: {exc}", False, None, None

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
