"""Scale-out figures: several servers on one PostgreSQL, and steps on a Dask cluster.

    python bench/cluster.py [--failovers 5] [--kills 1000] [--runs 60] [--steps 1000] [--pg URL]

(0 turns a part off.)

- Failover: two servers, each in a pid namespace of its own (`unshare --pid`), so
  that neither can see the other's processes, as on two machines; a run's long step
  starts on one, that whole "machine" is killed (SIGKILL of its namespace), and the
  time until the step starts again on the other is measured. Target < 10 s.
- Kill campaign: two servers, runs started through both, one of them killed with
  SIGKILL at a random moment per round and started again; then every run must have
  ended, every step succeeded exactly once with its output, and no step run again
  after its success was recorded (tests/cluster_harness.py). Target: 0 problems.
- Throughput: the same runs (20 `set` steps each) started through the API of two
  servers on PostgreSQL, then of one server on SQLite, in the same run; runs/s and
  steps/s from the first start to the last end.
- Dask: a real scheduler and worker processes (`treadle worker`); the time one
  `run: true` step takes from start to end on a worker against in-process (the
  dispatch round trip, p50; target < 15 ms), and `--steps` `true` steps (n roots and a
  join) on 1 and 2 workers against local execution in the same run (target: 2 workers
  >= 70% of the local rate).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import pg_server  # noqa: E402
from tests.cluster_harness import run_cluster_campaign, servers  # noqa: E402
from tests.web_server import free_port, write_definitions  # noqa: E402

LONG = """\
params: {log: {type: string, required: true}}
steps:
  - id: long
    run: 'echo "start $(date +%s.%N)" >> "{{ params.log }}"; sleep 60'
"""
TWENTY = "steps:\n" + "\n".join(f"  - {{id: s{i}, set: {{i: {i}}}}}" for i in range(20)) + "\n"


def line(name: str, value: str, target: str = "", ok: bool | None = None) -> None:
    mark = "" if ok is None else ("  OK" if ok else "  MISSED")
    print(f"{name:<54} {value:>24}   {target}{mark}", flush=True)


class Machine:
    """A `treadle serve` alone in a pid namespace: killing it is like a machine dying."""

    def __init__(self, root: Path, db: str, defs: Path, name: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        log = open(root / f"{name}.log", "ab")  # noqa: SIM115 (kept by the child)
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", sys.executable, "-m", "runner", "serve",
             "--definitions", str(defs), "--db", db, "--port", str(self.port)], cwd=root, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise SystemExit(f"server {name} did not start; see {root / f'{name}.log'}")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def failover(server: pg_server.PgServer, tries: int) -> list[float]:
    times = []
    for n in range(tries):
        root = Path(tempfile.mkdtemp(prefix="treadle-failover-"))
        defs = write_definitions(root / "definitions", {"long.yaml": LONG})
        name = pg_server.new_database(server)
        log = root / "exec.log"
        log.touch()
        try:
            a, b = Machine(root, server.url(name), defs, "a"), Machine(root, server.url(name), defs, "b")
            httpx.post(f"{a.base}/api/workflows/long/runs", json={"params": {"log": str(log)}}, timeout=10)
            while log.read_text().count("start") < 1:
                time.sleep(0.01)
            time.sleep(0.5 + n * 0.3)  # kill at different points of the lease's renewal cycle
            a.kill()
            killed = time.time()
            while log.read_text().count("start") < 2:
                time.sleep(0.01)
            restarted = float(log.read_text().splitlines()[1].split()[1])
            times.append(restarted - killed)
            b.kill()
        finally:
            pg_server.drop_database(server, name)
    return times


def throughput(db: str, count: int, root: Path) -> float:
    """Seconds from the first start to the last end of `count` runs, through every server given."""
    ids: list[str] = []
    lock = threading.Lock()
    n_servers = 2 if db.startswith("postgresql") else 1
    with servers(root, db, {"twenty.yaml": TWENTY}, count=n_servers) as group:
        started = time.perf_counter()

        def fire(base: str, k: int) -> None:
            with httpx.Client(base_url=base, timeout=30) as client:
                for _ in range(k):
                    run_id = client.post("/api/workflows/twenty/runs", json={}).json()["run_id"]
                    with lock:
                        ids.append(run_id)

        share = count // len(group)
        threads = [threading.Thread(target=fire, args=(s.base, share)) for s in group]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with httpx.Client(base_url=group[0].base, timeout=30) as client:
            while True:
                active = client.get("/api/runs", params={"status": "running", "limit": 1}).json()["total"]
                if active == 0 and len(ids) == share * len(group):
                    break
                time.sleep(0.02)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--steps", type=int, default=1000, help="shell steps for the Dask rate (0: no Dask part)")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--pg", help="admin URL of a PostgreSQL server (default: start one)")
    args = parser.parse_args()
    server = pg_server.PgServer(args.pg) if args.pg else pg_server.start()
    if isinstance(server, str):
        raise SystemExit(f"no PostgreSQL: {server}")
    try:
        pg_server.prepare_template(server)
        print(f"Cluster benchmark: two `treadle serve` on one PostgreSQL ({server.admin_url.rsplit('@', 1)[-1]})")
        if args.failovers:
            times = failover(server, args.failovers)
            line("failover: kill -9 of a machine -> step restarted", f"median {statistics.median(times):.1f} s",
                 f"max {max(times):.1f} s; target < 10 s", max(times) < 10)
        if args.kills:
            name = pg_server.new_database(server)
            root = Path(tempfile.mkdtemp(prefix="treadle-cluster-soak-"))
            started = time.monotonic()
            report = run_cluster_campaign(root, server.url(name), args.kills, args.seed)
            pg_server.drop_database(server, name)
            print(f"  {report.summary()}; {time.monotonic() - started:.0f} s")
            dupes = sum("succeeded" in p and "times" in p for p in report.problems)
            line("kill campaign: duplicate completions", f"{dupes}", "target 0", dupes == 0)
            line("kill campaign: other problems", f"{len(report.problems) - dupes}", "target 0",
                 len(report.problems) == dupes)
            if report.takeovers:
                line("  takeover after a kill (same machine)", f"median {statistics.median(report.takeovers):.2f} s",
                     f"max {max(report.takeovers):.2f} s")
        if args.runs:
            name = pg_server.new_database(server)
            pg_seconds = throughput(server.url(name), args.runs, Path(tempfile.mkdtemp(prefix="treadle-tp-pg-")))
            pg_server.drop_database(server, name)
            tmp = Path(tempfile.mkdtemp(prefix="treadle-tp-sqlite-"))
            sq_seconds = throughput(f"sqlite:///{tmp / 'treadle.db'}", args.runs, tmp)
            line("throughput: two servers on PostgreSQL", f"{args.runs / pg_seconds:.1f} runs/s",
                 f"{args.runs * 20 / pg_seconds:,.0f} steps/s")
            line("throughput: one server on SQLite", f"{args.runs / sq_seconds:.1f} runs/s",
                 f"{args.runs * 20 / sq_seconds:,.0f} steps/s")
        if args.steps:
            asyncio.run(dask_figures(args.steps))
    finally:
        if not args.pg:
            server.stop()
    return 0


async def _sh_true() -> int:
    proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", "true", stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, start_new_session=True)
    await proc.communicate()
    return proc.returncode or 0


async def _bare_dask(client: object, n: int) -> tuple[float, float]:
    """Dask alone: the round trip of one `sh -c true` task (p50, ms), and n of them at once (tasks/s)."""
    trips = []
    for _ in range(30):
        started = time.perf_counter()
        await client.submit(_sh_true, pure=False)
        trips.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    await client.gather([client.submit(_sh_true, pure=False) for _ in range(n)])
    return statistics.median(trips), n / (time.perf_counter() - started)


def fanout(n: int) -> str:
    steps = "\n".join(f"  - {{id: s{i}, needs: [], run: 'true'}}" for i in range(n))
    return f"name: fan\nmax_parallel: 16\nsteps:\n{steps}\n  - {{id: join, needs: [{', '.join(f's{i}' for i in range(n))}], log: done}}\n"


async def _measure(text: str, dispatcher: object | None) -> tuple[float, list[float]]:
    """(seconds for the run, each `true` attempt's start-to-end in ms)."""
    from runner.dsl.loader import load_text
    from runner.engine.engine import Engine
    from runner.storage.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="treadle-bench-dask-"))
    definition = load_text(text, "bench.yaml", base_dir=tmp)
    async with Store(f"sqlite:///{tmp / 't.db'}") as store:
        engine = Engine(store, definitions_dir=tmp, dispatcher=dispatcher)
        started = time.perf_counter()
        exe = await engine.run(definition)
        elapsed = time.perf_counter() - started
        assert exe.status == "succeeded", exe.error
        await store.flush()
        spans = [(r["finished_at"] - r["started_at"]) * 1000 for r in await store.step_attempts(exe.id)
                 if r["status"] == "succeeded" and r["step_id"] != "join" and r["started_at"]]
        await engine.close()
    return elapsed, spans


async def dask_figures(n: int) -> None:
    from runner.dispatch.dask import DaskDispatcher
    from tests import dask_cluster

    root = Path(tempfile.mkdtemp(prefix="treadle-bench-dask-cluster-"))
    cluster = dask_cluster.start(root)  # two workers: `plain` and `special`
    try:
        dispatcher = DaskDispatcher(cluster.address, root)
        await dispatcher.start()
        one = "name: one\nsteps:\n" + "\n".join(f"  - {{id: s{i}, run: 'true'}}" for i in range(30)) + "\n"
        _, local_spans = await _measure(one, None)
        _, dask_spans = await _measure(one, dispatcher)
        bare_trip, bare_rate = await _bare_dask(dispatcher.client, n)
        local_p50, dask_p50 = statistics.median(local_spans), statistics.median(dask_spans)
        line("dask, bare: submit -> result of a `sh -c true` task, p50", f"{bare_trip:.1f} ms", "(Dask's own limit here)")
        line("dask: one `true` step, start to end, p50", f"{dask_p50:.1f} ms", f"local {local_p50:.1f} ms")
        line("  dispatch round trip (the difference), p50", f"{dask_p50 - local_p50:.1f} ms", "target < 15 ms",
             dask_p50 - local_p50 < 15)
        text = fanout(n)
        local_s, _ = await _measure(text, None)
        two_s, _ = await _measure(text, dispatcher)
        cluster.kill_worker("special")
        one_s, _ = await _measure(text, dispatcher)
        line(f"dask: {n} `true` steps (n roots + join), local", f"{n / local_s:,.0f} steps/s", "(the limit here)")
        line("  on 1 worker", f"{n / one_s:,.0f} steps/s", f"{local_s / one_s:.0%} of local")
        line("  on 2 workers", f"{n / two_s:,.0f} steps/s", f"{local_s / two_s:.0%} of local; target >= 70%",
             local_s / two_s >= 0.7)
        line("  bare Dask, the same tasks on 2 workers", f"{bare_rate:,.0f} tasks/s",
             f"(Dask's own limit here: {bare_rate * local_s / n:.0%} of local; Treadle is "
             f"{(n / two_s) / bare_rate:.0%} of it)")
        await dispatcher.close()
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
