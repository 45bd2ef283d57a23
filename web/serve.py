"""`treadle serve`: registered into the CLI through the `treadle.commands` entry point."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction, defaults: dict[str, str]) -> None:
    p = sub.add_parser("serve", help="dashboard + API + watcher + executor")
    p.add_argument("--definitions", default=defaults["definitions"], help="definitions folder (env TREADLE_DEFINITIONS)")
    p.add_argument("--db", default=defaults["db"], help="database URL (env TREADLE_DB)")
    p.add_argument("--host", default=os.environ.get("TREADLE_HOST", "127.0.0.1"), help="env TREADLE_HOST")
    # a string default is converted by `type` only when used, so a bad TREADLE_PORT
    # is reported by `serve` as a usage error instead of breaking every command
    p.add_argument("--port", type=int, default=os.environ.get("TREADLE_PORT", "8080"), help="env TREADLE_PORT")
    p.add_argument("--no-watch", action="store_true", help="do not reload definitions when files change")
    p.add_argument("--git", metavar="URL", help="follow this git repository (cloned into .treadle/git/); "
                   "--definitions is then the folder inside it")
    p.add_argument("--branch", default="main", help="branch to follow with --git (default main)")
    p.add_argument("--interval", default="30s", help="how often to pull with --git (default 30s)")
    p.add_argument("--grace", default="30s",
                   help="on SIGTERM/SIGINT, how long running steps may finish before they are "
                        "interrupted (default 30s); unfinished runs resume at the next start")
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from runner.durations import parse_duration

    from .app import create_app
    from .services import Settings

    try:
        interval, grace = parse_duration(args.interval), parse_duration(args.grace)
    except ValueError as exc:
        print(f"treadle serve: {exc}", file=sys.stderr)
        return 2
    settings = Settings(definitions=Path(args.definitions), db=args.db, host=args.host, port=args.port,
                        watch=not args.no_watch, git_url=args.git, git_branch=args.branch,
                        git_interval=interval, grace=grace)
    app = create_app(settings)
    print(f"treadle: dashboard at http://{args.host}:{args.port}/ (definitions: {args.definitions}, db: {args.db})",
          file=sys.stderr, flush=True)
    # open SSE streams must not hold a shutdown: give them 2 s, then close them
    # the stock asyncio loop, not uvloop: uvloop starts processes with a plain fork of
    # this whole process, which stalls every request for ~15 ms per shell step started
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2,
                loop="asyncio")
    return 0
