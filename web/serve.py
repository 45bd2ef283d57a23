"""`treadle serve`: registered into the CLI through the `treadle.commands` entry point."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from runner.cli import load_secrets_file, secrets_file_option

if TYPE_CHECKING:
    from .services import Settings


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
    p.add_argument("--apply", choices=["auto", "manual"], default="auto",
                   help="with --git: auto (default) puts each new commit in force; manual fetches it and shows "
                        "its plan on the dashboard (/plan) until an admin applies it")
    p.add_argument("--grace", default="30s",
                   help="on SIGTERM/SIGINT, how long running steps may finish before they are "
                        "interrupted (default 30s); unfinished runs resume at the next start")
    secrets_file_option(p)
    p.add_argument("--admin-token", default=os.environ.get("TREADLE_ADMIN_TOKEN"),
                   help="a known admin token for automation (env TREADLE_ADMIN_TOKEN); turns sign-in on")
    p.add_argument("--public-url", default=os.environ.get("TREADLE_PUBLIC_URL"),
                   help="the dashboard's address as people reach it, for links in notifications, e.g. "
                        "https://treadle.example.com (env TREADLE_PUBLIC_URL; default http://HOST:PORT)")
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   default=[h for h in os.environ.get("TREADLE_ALLOWED_HOSTS", "").split(",") if h.strip()],
                   help="a Host name the server answers to besides the bind address, e.g. the name behind "
                        "a proxy (repeatable; env TREADLE_ALLOWED_HOSTS, comma-separated)")
    p.add_argument("--executor", default=os.environ.get("TREADLE_EXECUTOR", "local"),
                   help="where run, python and http steps execute: local (default), dask://HOST:8786 (a Dask "
                        "scheduler), or dask-local (a Dask cluster in this process; see --workers) "
                        "(env TREADLE_EXECUTOR)")
    p.add_argument("--workers", type=int, default=2, help="with --executor dask-local: worker processes (default 2)")
    p.add_argument("--insecure", action="store_true",
                   help="allow running without tokens on an address other than loopback (anyone who reaches "
                        "it can start shell steps)")
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    from runner.dsl.durations import parse_duration
    from runner.errors import TreadleError

    from .app import create_app
    from .services import Settings

    try:
        interval, grace = parse_duration(args.interval), parse_duration(args.grace)
    except ValueError as exc:
        print(f"treadle serve: {exc}", file=sys.stderr)
        return 2
    try:  # read now, to stop with a clear message before anything starts; read again by the app
        load_secrets_file(args.secrets_file, "serve")
    except TreadleError as exc:
        print(f"treadle serve: {exc}", file=sys.stderr)
        return exc.cli_exit_code
    settings = Settings(definitions=Path(args.definitions), db=args.db, host=args.host, port=args.port,
                        watch=not args.no_watch, git_url=args.git, git_branch=args.branch,
                        git_interval=interval, git_apply=args.apply, grace=grace,
                        secrets_file=Path(args.secrets_file) if args.secrets_file else None,
                        admin_token=args.admin_token or None,
                        insecure=args.insecure, allowed_hosts=[h.strip() for h in args.allowed_host],
                        executor=args.executor, workers=args.workers, public_url=args.public_url)
    if not (settings.executor == "local" or settings.executor == "dask-local"
            or settings.executor.startswith(("dask://", "tcp://"))):
        print(f"treadle serve: --executor '{settings.executor}': use local, dask://HOST:PORT or dask-local",
              file=sys.stderr)
        return 2
    try:  # the database first: a wrong URL or a server that is down is one line, not a traceback
        refusal = asyncio.run(prepare_database(settings))
    except TreadleError as exc:
        print(f"treadle serve: {exc}", file=sys.stderr)
        return exc.cli_exit_code
    if refusal:
        print(f"treadle serve: {refusal}", file=sys.stderr)
        return 2
    unreachable = executor_unreachable(settings.executor)
    if unreachable:
        print(f"treadle serve: {unreachable}", file=sys.stderr)
        return 2
    app = create_app(settings)
    print(f"treadle: dashboard at http://{args.host}:{args.port}/ (definitions: {args.definitions}, db: {args.db})",
          file=sys.stderr, flush=True)
    from .server import Server, server_config  # uvicorn, as Treadle runs it (see there)

    Server(server_config(app, args.host, args.port)).run()
    return 0


async def prepare_database(settings: Settings) -> str | None:
    """Open the database (creating or upgrading its schema under a lock) before the
    server starts; returns why the server must not start: bound beyond loopback with
    nobody able to sign in. Raises DatabaseError when the database cannot be used."""
    from runner.security.tokens import Tokens
    from runner.storage.store import Store

    from .auth import is_loopback

    async with Store(settings.db) as store:
        if is_loopback(settings.host) or settings.insecure or settings.admin_token:
            return None
        if await Tokens(store).required():
            return None
    return (f"refusing to listen on {settings.host} without authentication: anyone who reaches it could start "
            "shell steps. Create a token first (`treadle token create admin --scope admin`), set "
            "TREADLE_ADMIN_TOKEN, or pass --insecure if this network is trusted.")


def executor_unreachable(executor: str) -> str | None:
    """Why the Dask scheduler of `--executor dask://HOST:PORT` cannot be used, or None."""
    import importlib.util
    import socket

    if executor in ("local",):
        return None
    if importlib.util.find_spec("distributed") is None:
        return (f"--executor {executor} needs Dask distributed, which is not installed: "
                'pip install "treadle[dask]"')
    if executor == "dask-local":
        return None
    host, _, port = executor.split("://", 1)[1].rpartition(":")
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port or 8786)), timeout=5).close()
    except (OSError, ValueError) as exc:
        return (f"cannot reach the Dask scheduler at {executor}: {exc}; start it with `dask scheduler` "
                "(docs/cluster.md)")
    return None
