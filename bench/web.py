"""Web figures: page render time for big runs, POST -> first step, SSE delay, graph layout.

    python bench/web.py [--quick]

Starts `treadle serve` in a subprocess on a free loopback port with a temporary
definitions folder and SQLite file, drives it with httpx from this process, and
prints `name: value (target ...)` lines; with Playwright and /usr/bin/chromium, also how long
the browser takes to lay out and draw each big run's graph (no target: it happens in a
Web Worker after the page is shown). Times of steps are read from the SQLite
file itself (epoch floats the engine recorded), so the two processes share one
clock. Stops by itself well inside two minutes (`--quick` makes the big run
smaller for a smoke check).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from _server import (
    DEADLINE,
    FINISHED,
    OutOfTime,
    check_time,
    ms,
    pct,
    report,
    serving,
    step_started_at,
    wait_up,
)


def big_yaml(n: int) -> str:
    """n log steps in 10 parallel chains (a wide, deep graph like a real pipeline)."""
    lines = ["max_parallel: 16", "steps:"]
    for i in range(n):
        needs = f"[s{i - 10}]" if i >= 10 else "[]"
        lines += [f"  - id: s{i}", f"    needs: {needs}", f'    log: "step {i} of run {{{{ run.id }}}}"']
    return "\n".join(lines) + "\n"


TICKS = 30
DEFINITIONS = {
    "first.yaml": 'steps:\n  - id: only\n    run: "true"\n',
    "ticks.yaml": "steps:\n  - id: warmup\n    wait: 300ms\n" + "".join(
        f"  - id: t{i}\n    wait: 20ms\n" for i in range(TICKS)),
}


def wait_finished(client: httpx.Client, workflow: str, run_id: str) -> None:
    """Poll the run list (cheap) rather than the run (5,000 steps) until the run ends."""
    while True:
        check_time()
        runs = client.get("/api/runs", params={"workflow": workflow, "limit": 5}).json()["items"]
        status = next((r["status"] for r in runs if r["id"] == run_id), None)
        if status in FINISHED:
            if status != "succeeded":
                raise RuntimeError(f"run {run_id} of {workflow} {status}")
            return
        time.sleep(0.05)


def start_run(client: httpx.Client, workflow: str) -> str:
    r = client.post(f"/api/workflows/{workflow}/runs", json={"params": {}})
    r.raise_for_status()
    return r.json()["run_id"]


def timed(fn: Callable[[], Any], times: int) -> list[float]:
    out = []
    for _ in range(times):
        check_time()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


# -- the figures ---------------------------------------------------------------------


def run_page(client: httpx.Client, n: int, target: str) -> None:
    t0 = time.perf_counter()
    run_id = start_run(client, f"big{n}")
    wait_finished(client, f"big{n}", run_id)
    took = time.perf_counter() - t0
    page = client.get(f"/runs/{run_id}")
    targets = [(f"/api/runs/{run_id}", "GET /api/runs/{id}")]
    if page.status_code == 200 and page.headers["content-type"].startswith("text/html"):
        targets.insert(0, (f"/runs/{run_id}", "page GET /runs/{id}"))
    else:
        print("    (no run page at /runs/{id} yet: the JSON run document stands in)", flush=True)
    for i, (url, what) in enumerate(targets):
        cold = timed(lambda url=url: fetch(client, url), 1)[0]
        warm = timed(lambda url=url: fetch(client, url), 5)
        size = len(client.get(url).content)
        line = f"{what}, finished {n:,}-step run, median of 5"
        if i == 0:
            report(line, ms(statistics.median(warm)), target)
        else:
            print(f"{line}: {ms(statistics.median(warm))} (for comparison)", flush=True)
        print(f"    first request {ms(cold)}; {size / 1e6:.2f} MB; the run itself took {took:.1f} s", flush=True)
    if len(targets) == 2:
        graph_layout(str(client.base_url), run_id, n)


def graph_layout(base: str, run_id: str, n: int) -> None:
    """The browser's side of the run page: page load -> the graph laid out (dagre, in a
    worker) and drawn. No target: the page answers and is usable first (docs/architecture.md)."""
    chromium = Path("/usr/bin/chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("    (graph layout in the browser: skipped, no playwright)", flush=True)
        return
    if not chromium.exists():
        print(f"    (graph layout in the browser: skipped, no {chromium})", flush=True)
        return
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    check_time()
    left, shown = DEADLINE - time.monotonic(), float("nan")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            t0 = time.perf_counter()
            page.goto(f"{base}/runs/{run_id}", wait_until="domcontentloaded")
            shown = time.perf_counter() - t0
            page.wait_for_selector(".dag-view[data-ready]", timeout=max(1.0, left - shown) * 1000)
            drawn: float | None = time.perf_counter() - t0
        except PlaywrightTimeout:
            drawn = None
        finally:
            browser.close()
    after = f"after {drawn:.1f} s" if drawn is not None else f"not within the bench's last {left:.0f} s"
    print(f"    in Chromium: page shown after {ms(shown)}; graph of {n:,} steps laid out and drawn {after} "
          "(no target: dagre in a worker, the page stays usable meanwhile)", flush=True)


def fetch(client: httpx.Client, url: str) -> None:
    r = client.get(url)
    r.raise_for_status()
    assert r.content


def defs_dir(db: Path) -> Path:
    return db.parent / "definitions"


def post_to_first_step(client: httpx.Client, db: Path, samples: int) -> None:
    delays, answers = [], []
    for _ in range(samples):
        check_time()
        sent = time.time()
        t0 = time.perf_counter()
        run_id = start_run(client, "first")
        answers.append(time.perf_counter() - t0)
        while (started := step_started_at(db, run_id)) is None:
            check_time()
            time.sleep(0.005)
        delays.append(started - sent)
        time.sleep(0.01)
    report(f"POST /api/workflows/{{name}}/runs -> first step started, p50 of {samples}",
           ms(statistics.median(delays)), "p50 < 20 ms")
    print(f"    p95 {ms(pct(delays, 0.95))}; the POST answered in p50 {ms(statistics.median(answers))}, "
          f"p95 {ms(pct(answers, 0.95))}", flush=True)


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    event, data = "message", ""
    for line in response.iter_lines():
        check_time()
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
        elif not line and data:
            yield event, json.loads(data)
            event, data = "message", ""


def sse_delay(client: httpx.Client, db: Path) -> None:
    """A step's state recorded by the engine -> its event read by a client.

    The engine's timestamp is taken just before the row is handed to the store's
    writer, so each figure includes the commit: it is an upper bound of commit ->
    client.
    """
    run_id = start_run(client, "ticks")
    received: dict[tuple[str, str], float] = {}
    with client.stream("GET", f"/api/runs/{run_id}/events", params={"logs": "false"}, timeout=30) as r:
        for event, data in sse_events(r):
            if event == "step":
                received.setdefault((data["step_id"], data["status"]), time.time())
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        rows = conn.execute("SELECT step_id, started_at, finished_at FROM step_attempt WHERE run_id = ? "
                            "AND attempt = 1", (run_id,)).fetchall()
    delays = []
    for step_id, started, finished in rows:
        if step_id == "warmup":  # may have started before the stream opened
            continue
        for status, at in (("running", started), ("succeeded", finished)):
            if (step_id, status) in received and at is not None:
                delays.append(received[(step_id, status)] - at)
    report(f"SSE delay, step state recorded (commit included) -> event at the client, p50 of {len(delays)}",
           ms(statistics.median(delays)), "p50 < 50 ms")
    print(f"    p95 {ms(pct(delays, 0.95))}; max {ms(max(delays))}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke check")
    args = parser.parse_args()
    sizes = [(100, "< 300 ms"), (500, "< 1 s")] if args.quick else [(1000, "< 300 ms"), (5000, "< 1 s")]
    with tempfile.TemporaryDirectory(prefix="treadle-bench-web-") as tmp:
        db = Path(tmp) / "bench.db"
        defs = defs_dir(db)
        defs.mkdir()
        for name, text in DEFINITIONS.items():
            (defs / name).write_text(text)
        for n, _ in sizes:  # written before the server starts: it does not watch the folder
            (defs / f"big{n}.yaml").write_text(big_yaml(n))
        with serving(defs, db) as (server, port):
            try:
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                    wait_up(client, server)
                    print(f"treadle serve on :{port}, {os.cpu_count()} CPUs, SQLite at {db}", flush=True)
                    post_to_first_step(client, db, samples=30)
                    sse_delay(client, db)
                    for n, target in sizes:
                        run_page(client, n, target)
            except OutOfTime as exc:
                print(f"stopped: {exc}", flush=True)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
