"""Storage backends: persisted steps/s on SQLite and PostgreSQL, and SQLite against an
earlier commit, interleaved in one run.

    python bench/storage.py [--against REV] [--rounds 5] [--steps 1000] [--pg URL]

Each round runs the same workflows (a chain and a fan-out of `set` steps, every
attempt persisted, the final flush included) in fresh databases, in this order:
this tree on SQLite, REV's tree on SQLite (a `git worktree`, default HEAD~1), this
tree on PostgreSQL. Medians of the rounds, with min and max. PostgreSQL is the
session server of tests/pg_server.py (started from the machine's binaries, with
fsync off as in the tests) unless --pg gives the admin URL of another.

Targets: SQLite not lower than REV's (within noise: >= 95%); PostgreSQL >= 50% of SQLite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# measured in a child process so that each tree imports its own code
CHILD = r"""
import asyncio, json, sys, time
try:
    from runner.storage.store import Store
    from runner.engine.engine import Engine
    from runner.dsl.loader import load_text
except ImportError:  # a tree from before the layout change
    from runner.store import Store
    from runner.executor import Engine
    from runner.loader import load_text

async def main(db, text):
    if not text:  # prepare: create the schema in a process of its own, so that what
        async with Store(db):  # creating it imports (Alembic) does not weigh on the timed run
            return
    definition = load_text(text, "bench.yaml")
    async with Store(db) as store:
        engine = Engine(store)
        t0 = time.perf_counter()
        exe = await engine.run(definition)
        await store.flush()
        elapsed = time.perf_counter() - t0
        assert exe.status == "succeeded", exe.error
        await engine.close()
    print(json.dumps({"seconds": elapsed}))

asyncio.run(main(sys.argv[1], sys.stdin.read()))
"""


def workflow(shape: str, n: int) -> str:
    body = 'set: {i: "{{ run.id }}"}'
    if shape == "chain":
        steps = "\n".join(f"  - id: s{i}\n    {body}" for i in range(n))
    else:
        steps = "\n".join(f"  - id: s{i}\n    needs: []\n    {body}" for i in range(n))
    return f"name: bench\nmax_parallel: 16\nsteps:\n{steps}\n"


def measure(tree: Path, db: str, text: str) -> float:
    _child(tree, db, "")
    return json.loads(_child(tree, db, text).stdout.strip().splitlines()[-1])["seconds"]


def _child(tree: Path, db: str, text: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-c", CHILD, db], input=text, capture_output=True, text=True,
                          cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"measuring in {tree} failed:\n{done.stderr[-2000:]}")
    return done


def line(name: str, value: str, target: str = "", ok: bool | None = None) -> None:
    mark = "" if ok is None else ("  OK" if ok else "  MISSED")
    print(f"{name:<52} {value:>26}   {target}{mark}", flush=True)


def spread(rates: list[float]) -> str:
    return f"{statistics.median(rates):,.0f}/s ({min(rates):,.0f}-{max(rates):,.0f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="HEAD~1", help="the earlier commit (default HEAD~1)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--pg", help="admin URL of a PostgreSQL server (default: start one)")
    args = parser.parse_args()

    from tests import pg_server

    server = pg_server.PgServer(args.pg) if args.pg else pg_server.start()
    if isinstance(server, str):
        raise SystemExit(f"no PostgreSQL: {server}")
    tmp = Path(tempfile.mkdtemp(prefix="treadle-bench-storage-"))
    old = tmp / "old-tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(old), args.against], cwd=ROOT, check=True,
                   capture_output=True)
    rev = subprocess.run(["git", "rev-parse", "--short", args.against], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    try:
        pg_server.prepare_template(server)
        print(f"Storage benchmark: {args.steps} set steps per run, {args.rounds} interleaved rounds; "
              f"earlier tree {args.against} ({rev})")
        for shape in ("chain", "fan-out"):
            text = workflow(shape, args.steps)
            rates: dict[str, list[float]] = {"sqlite": [], "sqlite-old": [], "postgresql": []}
            for r in range(args.rounds):
                rates["sqlite"].append(args.steps / measure(ROOT, f"sqlite:///{tmp}/{shape}-{r}-new.db", text))
                rates["sqlite-old"].append(args.steps / measure(old, f"sqlite:///{tmp}/{shape}-{r}-old.db", text))
                name = pg_server.new_database(server)
                try:
                    rates["postgresql"].append(args.steps / measure(ROOT, server.url(name), text))
                finally:
                    pg_server.drop_database(server, name)
            new, before, pg = (statistics.median(rates[k]) for k in ("sqlite", "sqlite-old", "postgresql"))
            line(f"{shape}: SQLite, this tree", spread(rates["sqlite"]))
            line(f"{shape}: SQLite, {args.against} ({rev})", spread(rates["sqlite-old"]))
            line("  this tree / earlier", f"{new / before:.0%}", "target >= 95% (not lower)", new / before >= 0.95)
            line(f"{shape}: PostgreSQL, this tree", spread(rates["postgresql"]))
            line("  PostgreSQL / SQLite", f"{pg / new:.0%}", "target >= 50%", pg / new >= 0.5)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)
        if not args.pg:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
