"""`treadle db upgrade | current`: the database's schema (Alembic revisions).

`serve`, `run` and the other commands upgrade the schema themselves when they open
the database (under a lock, so many processes may start at once); `db upgrade`
does it alone, e.g. as a deployment step before new servers start.
"""

from __future__ import annotations

import argparse
import asyncio
import json

_STATES = {
    "current": "at the newest revision",
    "behind": "behind: `treadle db upgrade` (or the next `treadle serve`) brings it to {head}",
    "new": "empty: the first start creates the schema",
    "release-0.1": "made by Treadle 0.1 (before migrations): the next start upgrades it in place",
    "ahead": "upgraded by a newer Treadle than this one ({head} is the newest known here)",
    "missing": "no database file there yet: the first `treadle serve` or `treadle run` creates it",
}


def register(sub: argparse._SubParsersAction, defaults: dict[str, str]) -> None:
    p = sub.add_parser("db", help="the database schema: upgrade it, or say where it stands")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    upgrade = actions.add_parser("upgrade", help="create or upgrade the schema to the newest revision")
    current = actions.add_parser("current", help="print the schema revision of the database (changes nothing)")
    current.add_argument("--json", action="store_true")
    for q in (upgrade, current):
        q.add_argument("--db", default=defaults["db"], help=f"database URL (default {defaults['db']}; env TREADLE_DB)")
    p.set_defaults(func=cmd_db)


def cmd_db(args: argparse.Namespace) -> int:
    from ..storage.schema import HEAD, describe

    if args.action == "upgrade":
        from ..storage.store import Store

        async def go() -> str | None:
            store = Store(args.db)
            await store.open()
            await store.close()
            return (await describe(args.db))["revision"]

        before = asyncio.run(describe(args.db))
        after = asyncio.run(go())
        if before["revision"] == after:
            print(f"{before['url']}: already at {after}")
        else:
            print(f"{before['url']}: upgraded from {before['revision'] or 'nothing'} to {after}")
        return 0
    found = asyncio.run(describe(args.db))
    if args.json:
        print(json.dumps(found))
        return 0
    state = _STATES[found["state"]].format(head=HEAD)
    print(f"{found['url']} ({found['backend']}): revision {found['revision'] or '-'}; {state}")
    return 0
