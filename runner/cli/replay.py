"""`treadle replay RUN_ID`: a recorded run again, against the current definition.

Steps whose rendered input equals the recorded one are answered from the recorded
outcome (nothing executes: no side effects); the others execute, or with `--offline`
are reported as "would run". Prints, step by step, what changed (status, input,
output). The replay is recorded as a run with trigger `replay` (engine/replay.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction, defaults: dict[str, str]) -> None:
    from . import secrets_file_option

    p = sub.add_parser("replay", help="run a recorded run again against the current definition, "
                                      "answering unchanged steps from the record")
    p.add_argument("run_id")
    p.add_argument("--rev", help="the definition at this git revision (default: the working tree)")
    p.add_argument("--offline", action="store_true",
                   help="execute nothing: steps whose input changed are reported as 'would run'")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.add_argument("--definitions", default=defaults["definitions"],
                   help=f"the definitions folder (default {defaults['definitions']}; env TREADLE_DEFINITIONS)")
    p.add_argument("--db", default=defaults["db"], help=f"database URL (default {defaults['db']}; env TREADLE_DB)")
    secrets_file_option(p)
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    from . import load_secrets_file

    args.environ = load_secrets_file(args.secrets_file, "replay")
    return asyncio.run(_replay(args))


async def _replay(args: argparse.Namespace) -> int:
    from ..engine.engine import Engine
    from ..engine.report import run_document
    from ..errors import RunNotFound, WorkflowInvalid, WorkflowNotFound
    from ..gitops.catalog import Catalog
    from ..gitops.revisions import Repository
    from ..storage.store import Store

    folder = Path(args.definitions)
    async with Store(args.db, must_exist=True) as store:
        run = await store.get_run(args.run_id)
        if run is None:
            raise RunNotFound(args.run_id)
        if args.rev:
            repo = Repository(folder)
            catalog = repo.catalog(repo.resolve(args.rev))
        else:
            catalog = Catalog(folder)
            catalog.load_all()
        definition = catalog.get(run["workflow"])
        if definition is None:
            raise WorkflowNotFound(run["workflow"], catalog.names())
        if not definition.valid:
            raise WorkflowInvalid(definition.name, definition.current_problems)
        replay = await _recorded(store, run, offline=args.offline)
        engine = Engine(store, lookup=catalog.get, definitions_dir=catalog.root, role="run", environ=args.environ)
        try:
            new = engine.new_run(definition, run["params"], trigger="replay", ref=run["id"])
            store.put_run(new.row, (engine.owner, 1))
            exe = engine.launch(new, replay=replay)
            if not args.json:
                where = f"revision {args.rev}" if args.rev else "the working tree"
                print(f"replay of run {run['id']} ({run['workflow']}, version {run['version']}) as run {exe.id}, "
                      f"against {where} (version {definition.version}){' offline' if args.offline else ''}",
                      file=sys.stderr)
            await exe.wait()
            await store.flush()
        finally:
            await engine.close()
        before, after = await run_document(store, run["id"]), await run_document(store, exe.id)
    assert before is not None and after is not None
    report = compare(before, after, replay.actions)
    if args.json:
        print(json.dumps({"run": after["id"], "replay_of": before["id"], "status": after["status"],
                          "recorded_status": before["status"], "offline": args.offline, "steps": report},
                         indent=2, default=str))
    else:
        _print(report, before, after)
    return 0 if after["status"] == "succeeded" else 1


async def _recorded(store: Any, run: dict[str, Any], *, offline: bool) -> Any:
    """The recorded run as a Replay: its last attempts, and the stdout/stderr of its
    `run` steps (templates may read them) as a retry would reuse them."""
    from ..engine.recovery import reused_result
    from ..engine.replay import Replay, last_attempts
    from ..engine.report import run_definition

    rows = await store.step_attempts(run["id"])
    definition = await run_definition(store, run)
    extras = {}
    if definition is not None:
        for (sid, item), row in last_attempts(rows).items():
            if item == -1 and row["status"] == "succeeded":
                extras[sid] = (await reused_result(store, run["id"], row, definition)).get("extra", {})
    return Replay.of_attempts(run["id"], rows, extras, offline=offline)


def compare(before: dict[str, Any], after: dict[str, Any], actions: dict[tuple[str, int], str]) -> list[dict[str, Any]]:
    """Step by step: what the replay did (replayed, executed, would run, not run) and
    what changed against the record."""
    old = {s["id"]: s for s in before["steps"]}
    new = {s["id"]: s for s in after["steps"]}
    out = []
    for sid in [*new, *(s for s in old if s not in new)]:
        a, b = old.get(sid), new.get(sid)
        items = {k[1] for k in actions if k[0] == sid}
        done = [actions[(sid, i)] for i in sorted(items)]
        if b is None:
            action = "not in this definition"
        elif not done:
            action = "not run" if b["status"] in ("skipped", "upstream_failed", "cancelled", "pending") else "evaluated"
        elif len(set(done)) == 1:
            action = done[0]
        else:
            action = ", ".join(f"{done.count(x)} items {x}" for x in dict.fromkeys(done))
        if b is not None and b["status"] == "skipped" and isinstance(b["input"], dict) and \
                b["input"].get("replay") == "would run":
            action = "would run"
        entry: dict[str, Any] = {"step": sid, "action": action if a is not None or b is None else f"{action} (new step)",
                                 "status": {"before": a["status"] if a else None, "after": b["status"] if b else None}}
        for field in ("input", "output"):
            was, now = (a or {}).get(field), (b or {}).get(field)
            if field == "input" and isinstance(now, dict) and now.get("replay") == "would run":
                now = now.get("input")
            known = action != "would run" or (field == "input" and now is not None)  # not run: unknown
            entry[f"{field}_changed"] = known and a is not None and b is not None and was != now
            if entry[f"{field}_changed"]:
                entry[field] = {"before": was, "after": now}
        out.append(entry)
    return out


_SIGN = {"replayed": "=", "executed": "~", "would run": "?", "not in this definition": "-"}


def _short(value: Any, limit: int = 100) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _print(report: list[dict[str, Any]], before: dict[str, Any], after: dict[str, Any]) -> None:
    width = max((len(e["step"]) for e in report), default=4)
    for e in report:
        sign = _SIGN.get(e["action"].split(" (")[0], "+" if "new step" in e["action"] else " ")
        status = e["status"]
        moved = status["after"] if status["before"] == status["after"] else f"{status['before']} -> {status['after']}"
        changed = [f for f in ("input", "output") if e[f"{f}_changed"]]
        line = f"  {sign} {e['step']:<{width}}  {e['action']}; {moved}"
        if changed:
            line += f"; {' and '.join(changed)} changed"
        print(line)
        for f in changed:
            print(f"      {f}: {_short(e[f]['before'])}")
            print(f"      {' ' * len(f)}  -> {_short(e[f]['after'])}")
    counts = {a: sum(1 for e in report if e["action"] == a) for a in ("replayed", "executed", "would run")}
    print(f"replay run {after['id']} {after['status']} (recorded run {before['id']}: {before['status']}); "
          f"{counts['replayed']} replayed, {counts['executed']} executed, {counts['would run']} would run")
