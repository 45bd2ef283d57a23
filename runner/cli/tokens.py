"""`treadle token create | list | revoke`: API tokens, managed on the database directly.

The token is printed once, on stdout alone (so `T=$(treadle token create ci --scope run)`
works); only its hash is stored. Each change is written to the audit log as done by
`cli:<user>`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from datetime import UTC, datetime

from ..security import audit
from ..security.tokens import SCOPES, Tokens


def register(sub: argparse._SubParsersAction, defaults: dict[str, str]) -> None:
    p = sub.add_parser("token", help="create, list and revoke API tokens")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a token and print it (once)")
    create.add_argument("name", help="who or what uses it (shown in the audit log)")
    create.add_argument("--scope", choices=SCOPES, default="read",
                        help="read: see; run: also start, cancel, retry, approve; admin: also tokens and pause")
    create.add_argument("--namespace", help="limit it to the workflows of this top-level folder of the definitions")
    listing = actions.add_parser("list", help="the tokens (never their secret)")
    listing.add_argument("--json", action="store_true")
    revoke = actions.add_parser("revoke", help="revoke a token; its dashboard sessions end")
    revoke.add_argument("name")
    for q in (create, listing, revoke):
        q.add_argument("--db", default=defaults["db"], help=f"database URL (default {defaults['db']}; env TREADLE_DB)")
    p.set_defaults(func=cmd_token)


def cmd_token(args: argparse.Namespace) -> int:
    return asyncio.run(_token(args))


async def _token(args: argparse.Namespace) -> int:
    from ..storage.store import Store

    who = f"cli:{getpass.getuser()}"
    async with Store(args.db) as store:
        tokens = Tokens(store)
        if args.action == "create":
            plain = await tokens.create(args.name, args.scope, args.namespace)
            audit.record(store, who=who, action="token.create", result="ok", target=args.name,
                         detail={"scope": args.scope, "namespace": args.namespace})
            print(plain)
            print(f"treadle: token '{args.name}' ({args.scope}{', namespace ' + args.namespace if args.namespace else ''}) "
                  "created; it is shown this once. Send it as 'Authorization: Bearer <token>'.", file=sys.stderr)
            return 0
        if args.action == "revoke":
            done = await tokens.revoke(args.name)
            audit.record(store, who=who, action="token.revoke", result="ok" if done else "failed", target=args.name)
            if not done:
                print(f"treadle: no active token named '{args.name}'", file=sys.stderr)
                return 1
            print(f"treadle: token '{args.name}' revoked", file=sys.stderr)
            return 0
        rows = await tokens.list()
        if args.json:
            print(json.dumps(rows))
            return 0
        for r in rows:
            state = "revoked" if r["revoked_at"] else "active"
            used = _when(r["last_used_at"]) or "never used"
            print(f"{r['name']:<24} {r['scope']:<6} {r['namespace'] or '-':<16} {state:<8} {used}")
        return 0


def _when(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None
