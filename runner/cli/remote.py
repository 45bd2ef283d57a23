"""The commands that steer runs on a Treadle server through its API, so a terminal user
never needs curl: `cancel`, `retry`, `approve`, `reject`, `logs [-f]`, and `runs` /
`show` with `--server URL` (the token from `--token` or TREADLE_TOKEN). They print
what the local commands print; `treadle start` (runner/cli/start.py) starts runs."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any
from urllib.parse import quote

FOLLOW_POLL_SECONDS = 0.5  # `logs -f`: how often new lines are asked for
FINISHED = ("succeeded", "failed", "cancelled", "skipped")


def remote_options(p: argparse.ArgumentParser, required: bool = False) -> None:
    """`--server` (opt-in for commands that also read a local database) and `--token`."""
    from .start import DEFAULT_SERVER

    if required:
        p.add_argument("--server", default=os.environ.get("TREADLE_SERVER") or DEFAULT_SERVER,
                       help=f"the Treadle server's URL (default {DEFAULT_SERVER}; env TREADLE_SERVER)")
    else:
        p.add_argument("--server", metavar="URL", help="read from this Treadle server's API instead of --db")
    p.add_argument("--token", default=os.environ.get("TREADLE_TOKEN"),
                   help="API token (env TREADLE_TOKEN); not needed for a local open server")


def register(sub: argparse._SubParsersAction, defaults: dict[str, str]) -> None:
    p = sub.add_parser("cancel", help="cancel a run on a Treadle server")
    p.add_argument("run_id")
    p.add_argument("--compensate", action="store_true", help="run the `compensate:` steps of what succeeded")
    remote_options(p, required=True)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("retry", help="retry a failed or cancelled run on a Treadle server")
    p.add_argument("run_id")
    p.add_argument("--from", dest="from_step", metavar="STEP", help="run again from this step (and what follows)")
    remote_options(p, required=True)
    p.set_defaults(func=cmd_retry)

    for verb in ("approve", "reject"):
        p = sub.add_parser(verb, help=f"{verb} a step waiting for approval, on a Treadle server")
        p.add_argument("run_id")
        p.add_argument("step_id")
        p.add_argument("--comment", help="recorded with the decision")
        p.add_argument("--item", type=int, metavar="N", help="the foreach item, for an approval inside a foreach")
        remote_options(p, required=True)
        p.set_defaults(func=cmd_decide, verb=verb)

    p = sub.add_parser("logs", help="a step's log, from a Treadle server; -f follows it")
    p.add_argument("run_id")
    p.add_argument("step_id")
    p.add_argument("-f", "--follow", action="store_true", help="print new lines as they come, until the run ends")
    remote_options(p, required=True)
    p.set_defaults(func=cmd_logs)


def _api(args: argparse.Namespace) -> Any:
    from .start import Api

    return Api(args.server, args.token)


def _run_path(run_id: str) -> str:
    return f"/api/runs/{quote(run_id, safe='')}"


def cmd_cancel(args: argparse.Namespace) -> int:
    with _api(args) as api:
        _, answer, _ = api.call("POST", f"{_run_path(args.run_id)}/cancel", json={"compensate": args.compensate})
    print(f"run {args.run_id}: cancel asked ({answer.get('status', 'cancelling')})", file=sys.stderr)
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    body = {"from": args.from_step} if args.from_step else {}
    with _api(args) as api:
        _, answer, _ = api.call("POST", f"{_run_path(args.run_id)}/retry", json=body)
    print(f"run {answer['run_id']} retries {args.run_id}" + (f" from {args.from_step}" if args.from_step else ""),
          file=sys.stderr)
    print(answer["run_id"])
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.comment:
        body["comment"] = args.comment
    if args.item is not None:
        body["index"] = args.item
    with _api(args) as api:
        _, answer, _ = api.call("POST", f"{_run_path(args.run_id)}/steps/{quote(args.step_id, safe='')}/{args.verb}",
                                json=body)
    done = "approved" if args.verb == "approve" else "rejected"
    who = answer.get("by") if isinstance(answer, dict) else None
    print(f"run {args.run_id} step {args.step_id} {done}" + (f" by {who}" if who else ""), file=sys.stderr)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    path = f"{_run_path(args.run_id)}/steps/{quote(args.step_id, safe='')}/logs"
    with _api(args) as api:
        _, text, headers = api.call("GET", path)
        sys.stdout.write(text)
        sys.stdout.flush()
        cursor = headers.get("x-log-cursor", "0")
        while args.follow:
            _, run, _ = api.call("GET", _run_path(args.run_id), params={"attempts": "false"})
            _, more, headers = api.call("GET", path, params={"after": cursor})
            sys.stdout.write(more)
            sys.stdout.flush()
            cursor = headers.get("x-log-cursor", cursor)
            if run["status"] in FINISHED:  # its last lines were committed before it ended
                break
            time.sleep(FOLLOW_POLL_SECONDS)
    return 0


def server_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    query = {k: v for k, v in (("workflow", args.workflow), ("status", args.status)) if v}
    with _api(args) as api:
        _, page, _ = api.call("GET", "/api/runs", params={**query, "limit": min(args.limit, 500)})
    return page["items"]


def server_show(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str], str]:
    with _api(args) as api:
        _, doc, _ = api.call("GET", _run_path(args.run_id))
        logs = {}
        if args.logs:
            for step in doc["steps"]:
                _, logs[step["id"]], _ = api.call("GET", f"{_run_path(args.run_id)}/steps/"
                                                         f"{quote(step['id'], safe='')}/logs")
    return doc, logs, doc["status"]
