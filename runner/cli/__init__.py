"""The `treadle` command line (SPEC §3).

`serve` lives in the `web` package and is found through the `treadle.commands`
entry point group, so the engine never imports the web layer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import DEFAULT_DB, __version__
from ..dsl.durations import format_duration
from ..dsl.loader import Definition, load_file
from ..errors import ParamError, Problem, TreadleError
from ..gitops.catalog import Catalog, relative_to_root

if TYPE_CHECKING:
    from ..engine.engine import Engine

# the database layer (SQLAlchemy) is imported by the commands that use it, so that
# `treadle validate` (a pre-commit hook) starts fast


def _defaults() -> dict[str, str]:
    return {
        "definitions": os.environ.get("TREADLE_DEFINITIONS", "definitions"),
        "db": os.environ.get("TREADLE_DB", DEFAULT_DB),
    }


def build_parser() -> argparse.ArgumentParser:
    from .remote import remote_options
    d = _defaults()
    parser = argparse.ArgumentParser(prog="treadle", description="Declarative workflow runner.")
    parser.add_argument("--version", action="version", version=f"treadle {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check definition files; one path:line:column line per problem")
    p.add_argument("paths", nargs="*", help=f"files or folders (default: {d['definitions']})")
    p.add_argument("--format", choices=["text", "github", "json"], default="text",
                   help="github: GitHub Actions annotations")
    p.add_argument("--server", metavar="URL", help="also warn about declared secrets this Treadle server does not "
                                                   "have (asks POST URL/api/secrets/check; names only)")
    p.add_argument("--token", default=os.environ.get("TREADLE_TOKEN"),
                   help="API token for --server, scope run (env TREADLE_TOKEN)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("schema", help="print the JSON Schema of definition files (for editors)")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("run", help="run one workflow here, with live progress")
    p.add_argument("name", help="workflow name, or the path of a definition file")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print the finished run as JSON")
    p.add_argument("--grace", type=_duration_arg, default="30s",
                   help="on Ctrl-C/SIGTERM, how long running steps may finish (default 30s)")
    secrets_file_option(p)
    _common(p, d)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("runs", help="run history, newest first")
    p.add_argument("--workflow")
    p.add_argument("--status")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.add_argument("--db", default=d["db"], help=f"database URL (default {d['db']}; env TREADLE_DB)")
    remote_options(p)
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("show", help="one run and its step traces")
    p.add_argument("run_id")
    p.add_argument("--logs", action="store_true", help="also print every step's log")
    p.add_argument("--json", action="store_true")
    p.add_argument("--db", default=d["db"], help=f"database URL (default {d['db']}; env TREADLE_DB)")
    remote_options(p)
    p.set_defaults(func=cmd_show)

    from .backfill import register as register_backfill
    from .db import register as register_db
    from .notify import register as register_notify
    from .pin import register as register_pin
    from .plan import register as register_plan
    from .remote import register as register_remote
    from .replay import register as register_replay
    from .start import register as register_start
    from .testing import register as register_test
    from .tokens import register as register_tokens
    from .worker import register as register_worker

    register_start(sub, d)
    register_remote(sub, d)
    register_pin(sub, d)
    register_backfill(sub, d)
    register_tokens(sub, d)
    register_db(sub, d)
    register_plan(sub, d)
    register_replay(sub, d)
    register_test(sub, d)
    register_notify(sub, d)
    register_worker(sub, d)
    for ep in entry_points(group="treadle.commands"):
        ep.load()(sub, d)
    return parser


def _duration_arg(text: str) -> float:
    from ..dsl.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def secrets_file_option(p: argparse.ArgumentParser) -> None:
    """`--secrets-file` (also used by `serve`)."""
    from ..security.secrets_file import ENV_VAR

    p.add_argument("--secrets-file", metavar="PATH", default=os.environ.get(ENV_VAR) or None,
                   help=f"a dotenv file (KEY=value lines) of secrets, besides the environment, which wins "
                        f"(env {ENV_VAR})")


def load_secrets_file(path: str | None, command: str) -> dict[str, str] | None:
    """The environment completed by the secrets file (None without one); warns on stderr
    when other users can read the file. Raises SecretsFileError (exit code 2)."""
    from ..security.secrets_file import loose_permissions, with_secrets_file

    environ = with_secrets_file(path)
    if path and (warning := loose_permissions(path)):
        print(f"treadle {command}: warning: {warning}", file=sys.stderr)
    return environ


def _common(p: argparse.ArgumentParser, d: dict[str, str]) -> None:
    p.add_argument("--definitions", default=d["definitions"], help="definitions folder (env TREADLE_DEFINITIONS)")
    p.add_argument("--db", default=d["db"], help=f"database URL (default {d['db']}; env TREADLE_DB)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TreadleError as exc:
        print(f"treadle: {exc}", file=sys.stderr)
        return exc.cli_exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `treadle schema | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the exit's flush does not fail again
        return 0


# -- validate --------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    from ..dsl.casefile import is_test_file
    from .testing import check_test_files

    paths = [Path(p) for p in (args.paths or [_defaults()["definitions"]])]
    problems: list[Problem] = []
    checked: list[tuple[str, Definition]] = []  # (path as shown, definition), for --server
    count = 0
    folder = Path(_defaults()["definitions"])
    folder_catalog: Catalog | None = None
    for path in paths:
        if path.is_dir():
            catalog = Catalog(path)
            catalog.load_all()
            count += len(catalog.entries())
            problems += [Problem(str(path / p.path), p.line, p.column, p.message) for p in catalog.problems()]
            checked += [(str(path / d.path), d.broken or d) for d in catalog.entries()]
            tests, found = check_test_files([path], catalog)  # NAME.test.yaml: checked as tests, not workflows
            count += tests
            problems += found
        elif path.exists() and is_test_file(path.name):
            if folder_catalog is None:
                folder_catalog = Catalog(folder if folder.is_dir() and relative_to_root(path, folder) else path.parent)
                folder_catalog.load_all()
            count += 1
            problems += check_test_files([path], folder_catalog)[1]
        elif path.exists():
            count += 1
            rel = relative_to_root(path, folder) if folder.is_dir() else None
            if rel is None:
                alone = load_file(path)
                problems += alone.problems
                checked.append((str(path), alone))
                continue
            # a file of the definitions folder (a pre-commit hook passes files): checked
            # with the others, so that what it says about them is checked too
            if folder_catalog is None:
                folder_catalog = Catalog(folder)
                folder_catalog.load_all()
            problems += [Problem(str(path), p.line, p.column, p.message) for p in folder_catalog.problems()
                         if p.path == rel.as_posix()]
            checked += [(str(path), d.broken or d) for d in folder_catalog.entries() if d.path == rel.as_posix()]
        else:
            problems.append(Problem(str(path), 1, 1, "no such file or folder"))
    warnings = _missing_secrets(args.server, args.token, checked) if args.server else []
    for p, severity in [*((p, "error") for p in problems), *((w, "warning") for w in warnings)]:
        if args.format == "github":
            print(f"::{severity} file={_gh_property(p.path)},line={p.line},col={p.column}::{_gh_escape(p.message)}")
        elif args.format == "text":
            print(p if severity == "error" else f"{p.path}:{p.line}:{p.column}: warning: {p.message}")
    if args.format == "json":
        print(json.dumps([{"path": p.path, "line": p.line, "column": p.column, "message": p.message,
                           "severity": severity}
                          for p, severity in [*((p, "error") for p in problems), *((w, "warning") for w in warnings)]],
                         indent=2))
    elif args.format == "text":
        files = {p.path for p in problems}
        summary = f"{count} file{'s' if count != 1 else ''} checked: "
        summary += f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {len(files)} file{'s' if len(files) != 1 else ''}" if problems else "all valid"
        if warnings:
            summary += f"; {len(warnings)} secret{'s' if len(warnings) != 1 else ''} missing on {args.server}"
        print(summary, file=sys.stderr)
    return 1 if problems else 0


def _missing_secrets(server: str, token: str | None, checked: list[tuple[str, Definition]]) -> list[Problem]:
    """A warning on each declared secret the server does not have (it would refuse to
    start the workflow): asks the server by name, never sending or reading a value."""
    import httpx

    from ..dsl.yaml_source import parse
    from ..errors import ServerCheckFailed

    declared = [(shown, d, i, name) for shown, d in checked if d.parsed is not None
                for i, name in enumerate(d.parsed.secrets)]
    if not declared:
        return []
    url = server.rstrip("/") + "/api/secrets/check"
    try:
        answer = httpx.post(url, json={"names": sorted({n for *_, n in declared})}, timeout=30,
                            headers={"Authorization": f"Bearer {token}"} if token else {})
    except httpx.HTTPError as exc:
        raise ServerCheckFailed(f"--server {server}: cannot reach it ({exc})") from None
    if answer.status_code in (401, 403):
        raise ServerCheckFailed(f"--server {server}: answered {answer.status_code}; pass a token with scope run "
                                "(--token or TREADLE_TOKEN)")
    if answer.status_code != 200:
        raise ServerCheckFailed(f"--server {server}: answered {answer.status_code} to {url}")
    missing = set(answer.json().get("missing", []))
    out = []
    for shown, d, i, name in declared:
        if name in missing:
            line, column = parse(d.source).where(("secrets", i))
            out.append(Problem(shown, line, column, f"secrets[{i}]: {server} does not have secret '{name}'; set it "
                                                    "there (environment or --secrets-file) before a run needs it"))
    return out



def _gh_escape(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(text: str) -> str:
    """Workflow-command properties also reserve ':' and ','."""
    return _gh_escape(text).replace(":", "%3A").replace(",", "%2C")


def cmd_schema(args: argparse.Namespace) -> int:
    from ..dsl.definition import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


# -- run -------------------------------------------------------------------------


def _parse_params(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ParamError({key or pair: f"-p {pair!r}: write params as -p key=value"})
        out[key.strip()] = value
    return out


def _find_definition(name: str, definitions: Path) -> tuple[Definition, Catalog]:
    catalog = Catalog(definitions)
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        root = definitions if definitions.is_dir() and candidate.resolve().is_relative_to(definitions.resolve()) else candidate.parent
        catalog = Catalog(root)
        catalog.load_all()
        definition = catalog.get(load_file(candidate).name) or load_file(candidate)
        return definition, catalog
    catalog.load_all()
    definition = catalog.get(name)
    if definition is None:
        from ..errors import WorkflowNotFound

        raise WorkflowNotFound(name, catalog.names())
    return definition, catalog


def cmd_run(args: argparse.Namespace) -> int:
    args.environ = load_secrets_file(args.secrets_file, "run")
    definition, catalog = _find_definition(args.name, Path(args.definitions))
    params = _parse_params(args.param)
    return asyncio.run(_run(definition, catalog, params, args))


async def _run(definition: Definition, catalog: Catalog, params: dict[str, str], args: argparse.Namespace) -> int:
    from ..engine.engine import Engine
    from ..engine.report import run_document
    from ..storage.store import Store

    quiet = args.json
    async with Store(args.db) as store:
        engine = Engine(store, lookup=catalog.get, definitions_dir=catalog.root, role="run",
                        environ=getattr(args, "environ", None))
        from ..engine.tracing import Tracing

        tracing = Tracing.from_environment()  # OTEL_EXPORTER_OTLP_ENDPOINT: traces
        if tracing is not None:
            tracing.attach(engine)
        stopping = _GracefulStop(engine, args.grace)
        try:
            # runs of this workflow that an earlier `treadle run` left unfinished go on first
            for old in await engine.recover(workflow=definition.name):
                if not quiet:
                    print(f"resuming run {old.id} of {definition.name}, interrupted earlier", file=sys.stderr)
            exe = await engine.start(definition, params, from_text=True, trigger="cli")
            if not quiet:
                print(f"run {exe.id} of {definition.name} (version {definition.version})", file=sys.stderr)
            async with store.broker.subscribe(f"run:{exe.id}") as events:
                printer = asyncio.create_task(_print_progress(events, exe.id, quiet))
                await asyncio.gather(*(e.wait() for e in list(engine.runs.values())), exe.wait())
                await store.flush()
                await asyncio.sleep(0)
                printer.cancel()
        finally:
            stopping.remove()
            await engine.close()
            if tracing is not None:
                await asyncio.to_thread(tracing.shutdown)
        doc = await run_document(store, exe.id)
    assert doc is not None
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    elif doc["status"] == "running":
        print(f"run {exe.id} interrupted; it resumes where it stopped at the next `treadle run "
              f"{definition.name}` or `treadle serve`", file=sys.stderr)
    else:
        line = f"run {exe.id} {doc['status']} in {format_duration((doc['duration_ms'] or 0) / 1000)}"
        print(line + (f": {doc['error']}" if doc["error"] else "") +
              (f": {doc['reason']}" if doc["status"] == "skipped" and doc.get("reason") else ""), file=sys.stderr)
        if doc["outputs"] is not None:  # what the run made, on stdout for a script to read
            outputs = doc["outputs"]
            print(outputs if isinstance(outputs, str) else json.dumps(outputs, indent=2, default=str))
    if doc["status"] == "running":
        return 130
    return 0 if doc["status"] in ("succeeded", "skipped") else 1  # skipped: its preconditions said so


class _GracefulStop:
    """SIGINT/SIGTERM: let running steps finish for `grace` seconds, then interrupt
    them (the run resumes at the next start); a second signal stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, engine: Engine, grace: float):
        self.engine, self.grace = engine, grace
        self.now = asyncio.Event()
        self.task: asyncio.Task | None = None
        loop = asyncio.get_running_loop()
        for sig in self.SIGNALS:
            loop.add_signal_handler(sig, self._signalled)

    def _signalled(self) -> None:
        if self.task is None:
            print(f"\nstopping: running steps get {format_duration(self.grace)} to finish "
                  "(press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
            self.task = asyncio.create_task(self.engine.shutdown(self.grace, now=self.now))
        else:
            self.now.set()

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self.SIGNALS:
            loop.remove_signal_handler(sig)


_MARK = {"running": "…", "succeeded": "✓", "failed": "✗", "skipped": "-", "upstream_failed": "↑",
         "cancelled": "⊘", "pending": "·"}


async def _print_progress(events: asyncio.Queue, run_id: str, quiet: bool) -> None:
    while True:
        event = await events.get()
        if quiet or event["type"] != "step" or event.get("run_id") != run_id:
            continue
        status = event["status"]
        label = event["step_id"] + (f"[{event['item']}]" if event["item"] >= 0 else "")
        detail = ""
        if event["attempt"] > 1:
            detail += f" (attempt {event['attempt']})"
        if status in ("succeeded", "failed") and event.get("started_at") and event.get("finished_at"):
            detail += f" in {format_duration(event['finished_at'] - event['started_at'])}"
        if event.get("error") and status == "failed":
            detail += f": {event['error']}"
        print(f"  {_MARK.get(status, '?')} {label} {status}{detail}", file=sys.stderr, flush=True)


# -- runs / show ---------------------------------------------------------------


def cmd_runs(args: argparse.Namespace) -> int:
    if args.server:  # the same list, from a server's API (runner/cli/remote.py)
        from .remote import server_runs

        rows = server_runs(args)
        raw = [{"status": r["status"], "lease_until": float("inf")} for r in rows]  # the server drives them
    else:
        raw, rows = _local_runs(args)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no runs yet", file=sys.stderr)
        return 0
    now = time.time()
    table = [["RUN", "WORKFLOW", "STATUS", "STARTED (UTC)", "DURATION"]]
    for row, r in zip(raw, rows, strict=True):
        took = format_duration(r["duration_ms"] / 1000) if r["duration_ms"] is not None else "-"
        started = (r["created_at"] or "-")[:19].replace("T", " ")
        table.append([r["id"], r["workflow"], shown_status(row, now), started, took])
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]  # from the data
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)) + "  " + line[-1])
    return 0


def _local_runs(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from ..engine.report import run_summary
    from ..storage.store import Store

    async def go() -> list[dict[str, Any]]:
        async with Store(args.db, must_exist=True) as store:
            rows, _ = await store.list_runs(workflow=args.workflow, status=args.status, limit=args.limit)
            return rows

    raw = asyncio.run(go())
    return raw, [run_summary(r) for r in raw]


def shown_status(run: dict[str, Any], now: float) -> str:
    """A `running` run whose lease ran out has nobody driving it (a Ctrl-C'd `treadle
    run`, a killed server): the next start or a server picks it up, so say so."""
    if run["status"] == "running" and (run.get("lease_until") or 0) < now:
        return "interrupted (resumes at next start)"
    return run["status"]


def cmd_show(args: argparse.Namespace) -> int:
    from ..engine.report import run_document
    from ..storage.store import Store

    async def go() -> tuple[dict[str, Any] | None, dict[str, str], str]:
        async with Store(args.db, must_exist=True) as store:
            doc = await run_document(store, args.run_id)
            logs = {}
            if doc and args.logs:
                for step in doc["steps"]:
                    logs[step["id"]] = "".join(c["text"] for c in await store.logs(args.run_id, step["id"]))
            row = await store.get_run(args.run_id) if doc else None
            return doc, logs, shown_status(row, time.time()) if row else ""

    if args.server:  # the same document, from a server's API (runner/cli/remote.py)
        from .remote import server_show

        doc, logs, status = server_show(args)
    else:
        doc, logs, status = asyncio.run(go())
    if doc is None:
        from ..errors import RunNotFound

        raise RunNotFound(args.run_id)
    if args.json:
        print(json.dumps({**doc, **({"logs": logs} if args.logs else {})}, indent=2, default=str))
        return 0
    took = format_duration(doc["duration_ms"] / 1000) if doc["duration_ms"] is not None else "-"
    print(f"run {doc['id']}  {doc['workflow']}  {status}  version {doc['version']}  {took}")
    print(f"started {doc['started_at']}  trigger {doc['trigger']}  params {json.dumps(doc['params'])}")
    if doc["error"]:
        print(f"error: {doc['error']}")
    print()
    print(f"{'STEP':<24} {'STATUS':<16} {'TRIES':>5} {'DURATION':>9} {'CODE':>5}  OUTPUT / ERROR")
    for s in doc["steps"]:
        took = format_duration(s["duration_ms"] / 1000) if s["duration_ms"] is not None else "-"
        code = s["exit_code"] if s["exit_code"] is not None else (s["http_status"] if s["http_status"] is not None else "")
        detail = s["error"] if s["error"] else ("-" if s["output"] is None else json.dumps(s["output"], default=str))
        if len(detail) > 70:
            detail = detail[:67] + "..."
        print(f"{s['id']:<24} {s['status']:<16} {s['attempts']:>5} {took:>9} {code!s:>5}  {detail}")
        if args.logs and logs.get(s["id"]):
            for line in logs[s["id"]].rstrip("\n").splitlines():
                print(f"    | {line}")
    return 0
