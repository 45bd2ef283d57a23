"""`treadle notify test NAME`: send a sample event to each `notify:` entry of a workflow,
once, and print what each receiver answered (a new receiver, a template, a Slack
channel, checked before a real failure needs them)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

EVENTS = ("run.failed", "run.succeeded", "run.cancelled", "step.failed", "step.retrying", "step.succeeded",
          "approval.waiting")


def register(sub: argparse._SubParsersAction, defaults: dict[str, str]) -> None:
    from . import secrets_file_option

    p = sub.add_parser("notify", help="notifications: send a sample event to a workflow's receivers")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    test = actions.add_parser("test", help="send a sample event to each notify entry of a workflow, once")
    test.add_argument("name", help="the workflow")
    test.add_argument("--event", choices=EVENTS, default="run.failed", help="the sample's event (default run.failed)")
    test.add_argument("--definitions", default=defaults["definitions"],
                      help=f"the definitions folder (default {defaults['definitions']}; env TREADLE_DEFINITIONS)")
    test.add_argument("--public-url", default=None, help="the dashboard's address, for the link in the sample")
    secrets_file_option(test)
    p.set_defaults(func=cmd_notify)


def cmd_notify(args: argparse.Namespace) -> int:
    from . import _find_definition, load_secrets_file

    environ = load_secrets_file(args.secrets_file, "notify") or {}
    definition, _ = _find_definition(args.name, Path(args.definitions))
    if not definition.valid or definition.spec is None:
        from ..errors import WorkflowInvalid

        raise WorkflowInvalid(definition.name, definition.current_problems)
    if not definition.spec.notify:
        print(f"treadle: workflow '{definition.name}' has no `notify:` entries", file=sys.stderr)
        return 2
    return asyncio.run(_send(definition, args.event, environ, args.public_url))


async def _send(definition, kind: str, environ: dict[str, str], public_url: str | None) -> int:  # type: ignore[no-untyped-def]
    import os

    import httpx

    from ..dsl.durations import iso
    from ..triggers.notify import Notifier, email_message, step_event, target_of
    from ..triggers.signing import signed_headers

    spec = definition.spec
    run_id = f"test-{int(time.time())}"
    now = time.time()
    first = spec.steps[0].id
    if kind.startswith("run."):
        event = {"event_type": kind, "workflow": definition.name, "run_id": run_id, "status": kind[4:],
                 "trigger": "manual", "started_at": iso(now - 12.5), "finished_at": iso(now),
                 "duration_ms": 12_500, "outputs": {},
                 "error": f"step '{first}' failed: a sample error from `treadle notify test`"
                 if kind == "run.failed" else None}
    else:
        event = step_event(kind, definition.name, run_id, "manual",
                           {"step": first, "kind": spec.steps[0].kind, "attempt": 1,
                            "error": "a sample error from `treadle notify test`" if kind != "step.succeeded" else None})
    if public_url:
        event["url"] = f"{public_url.rstrip('/')}/runs/{run_id}"
    everything = {**os.environ, **environ}
    failures = 0
    async with httpx.AsyncClient() as http:
        notifier = Notifier(http, everything, delays=(0,))
        for index, entry in enumerate(spec.notify):
            shown = target_of(entry)
            listening = kind in entry.events()
            note = "" if listening else f" (this entry is not sent {kind} in real runs: its `on` is {', '.join(entry.on)})"
            if entry.email is not None:
                outcome, _, code = await asyncio.to_thread(notifier._send_mail, entry, email_message(entry, event))
                if outcome is None:
                    print(f"notify[{index}] {shown} (email): sent, SMTP {code}{note}")
                else:
                    failures += 1
                    print(f"notify[{index}] {shown} (email): failed: {outcome}{note}")
                continue
            body, content_type = Notifier.body(entry, event)
            headers = {"Content-Type": content_type, "User-Agent": "treadle notify test",
                       "X-Treadle-Event": kind, "Idempotency-Key": f"{run_id}:{index}"}
            if entry.secret_env is not None:
                secret = everything.get(entry.secret_env)
                if not secret:
                    print(f"notify[{index}] {shown}: not sent: {entry.secret_env} (its secret_env) is not set")
                    failures += 1
                    continue
                headers.update(signed_headers(secret, body, time.time()))
            outcome, _, _, status = await notifier._try(entry.webhook or "", body, headers, None)
            if outcome is None:
                print(f"notify[{index}] {shown} ({entry.format}): sent, HTTP {status}{note}")
            else:
                failures += 1
                print(f"notify[{index}] {shown} ({entry.format}): failed: {outcome.replace(entry.webhook or '', shown)}{note}")
    return 1 if failures else 0

