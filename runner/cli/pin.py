"""`treadle pin NAME VERSION` and `treadle unpin NAME`, through a server's API.

A pin makes every start of the workflow (people, API, triggers, retries) run one
recorded version until it is unpinned: for the minutes between a bad merge and its
revert. It lives in the database, so every server on it follows (within a second).
"""

from __future__ import annotations

import argparse
import json
import sys
from urllib.parse import quote


def register(sub: argparse._SubParsersAction, defaults: dict[str, str]) -> None:
    from .start import server_options

    p = sub.add_parser("pin", help="make every start of a workflow run one recorded version, until unpinned")
    p.add_argument("name", help="workflow name")
    p.add_argument("version", help="a recorded version (its page, or GET /api/workflows/NAME/versions, lists them)")
    p.add_argument("--reason", help="why, shown with the pin (e.g. the incident)")
    p.add_argument("--json", action="store_true")
    server_options(p)
    p.set_defaults(func=cmd_pin)

    p = sub.add_parser("unpin", help="let a pinned workflow run the version in force again")
    p.add_argument("name", help="workflow name")
    p.add_argument("--json", action="store_true")
    server_options(p)
    p.set_defaults(func=cmd_unpin)


def _show(answer: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(answer, indent=2))
        return 0
    pinned = answer["pinned"]
    state = f"pinned to version {pinned['version']}" if pinned else "not pinned: starts use the version in force"
    print(f"{answer['workflow']}: {state}" + ("" if answer["changed"] else " (it already was)"), file=sys.stderr)
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    from .start import Api

    with Api(args.server, args.token) as api:
        _, answer, _ = api.call("POST", f"/api/workflows/{quote(args.name, safe='')}/pin",
                                json={"version": args.version, "reason": args.reason})
    return _show(answer, args.json)


def cmd_unpin(args: argparse.Namespace) -> int:
    from .start import Api

    with Api(args.server, args.token) as api:
        _, answer, _ = api.call("POST", f"/api/workflows/{quote(args.name, safe='')}/unpin")
    return _show(answer, args.json)
