"""`treadle backfill NAME --from DAY --to DAY`: the runs the workflow's schedule would
have made for each slot of a past range, started on a server as one group; and
`treadle backfills [ID]` to watch, pause, resume or cancel one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any
from urllib.parse import quote

WATCH_SECONDS = 1.0  # --wait: how often the backfill is asked how far it got


def register(sub: argparse._SubParsersAction, defaults: dict[str, str]) -> None:
    from .start import server_options

    p = sub.add_parser("backfill", help="run a workflow's schedule over a past range (one run per slot)")
    p.add_argument("name", help="workflow name (it must have a schedule)")
    p.add_argument("--from", dest="start", required=True, metavar="WHEN",
                   help="first day (2026-11-01) or time (2026-11-01T06:00), in the schedule's zone")
    p.add_argument("--to", dest="end", required=True, metavar="WHEN", help="last day or time, included")
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="runs of the backfill at once (default 1)")
    p.add_argument("--rerun", action="store_true",
                   help="also run slots that already have a run that succeeded or goes on")
    p.add_argument("--schedule", type=int, metavar="I", help="which schedule (0, 1, ...) when there are several")
    p.add_argument("--wait", action="store_true", help="wait until every slot has run; exit 1 if a run failed")
    p.add_argument("--json", action="store_true")
    server_options(p)
    p.set_defaults(func=cmd_backfill)

    p = sub.add_parser("backfills", help="backfills: list them, show one, pause, resume or cancel it")
    p.add_argument("id", nargs="?", help="a backfill id (without: the newest backfills)")
    action = p.add_mutually_exclusive_group()
    for verb in ("pause", "resume", "cancel"):
        action.add_argument(f"--{verb}", dest="action", action="store_const", const=verb, help=f"{verb} it")
    p.add_argument("--workflow", help="only the backfills of this workflow (listing)")
    p.add_argument("--json", action="store_true")
    server_options(p)
    p.set_defaults(func=cmd_backfills)


def _line(doc: dict[str, Any]) -> str:
    runs = ", ".join(f"{n} {s}" for s, n in sorted(doc["runs"].items())) or "no run yet"
    return (f"backfill {doc['id']} of {doc['workflow']}: {doc['status']}; {doc['slots']} slots "
            f"({doc['started']} started, {doc['skipped']} skipped, {doc['remaining']} to go); runs: {runs}")


def _ended(doc: dict[str, Any]) -> bool:
    going = sum(doc["runs"].get(s, 0) for s in ("queued", "running", "waiting"))
    return doc["status"] in ("done", "cancelled") and going == 0


def cmd_backfill(args: argparse.Namespace) -> int:
    from .start import Api

    body = {"from": args.start, "to": args.end, "parallel": args.parallel, "rerun": args.rerun}
    if args.schedule is not None:
        body["schedule"] = args.schedule
    with Api(args.server, args.token) as api:
        _, doc, _ = api.call("POST", f"/api/workflows/{quote(args.name, safe='')}/backfill", json=body)
        if not args.json:
            print(_line(doc), file=sys.stderr)
        if args.wait:
            while not _ended(doc):
                time.sleep(WATCH_SECONDS)
                _, doc, _ = api.call("GET", f"/api/backfills/{quote(doc['id'], safe='')}")
                if not args.json:
                    print(_line(doc), file=sys.stderr)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(doc["id"])
    if args.wait:
        return 1 if doc["runs"].get("failed", 0) or doc["status"] == "cancelled" else 0
    return 0


def cmd_backfills(args: argparse.Namespace) -> int:
    from .start import Api

    with Api(args.server, args.token) as api:
        if args.id is None:
            _, page, _ = api.call("GET", "/api/backfills", params={"workflow": args.workflow} if args.workflow else {})
            if args.json:
                print(json.dumps(page["items"], indent=2))
            for doc in [] if args.json else page["items"]:
                print(_line(doc))
            return 0
        path = f"/api/backfills/{quote(args.id, safe='')}"
        if args.action:
            _, doc, _ = api.call("POST", f"{path}/{args.action}")
            if not doc.get("changed"):
                print(f"backfill {args.id} is {doc['status']}; nothing to {args.action}", file=sys.stderr)
        else:
            _, doc, _ = api.call("GET", path)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(_line(doc))
    return 0
