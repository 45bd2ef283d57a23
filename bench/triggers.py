"""Trigger figures: signed webhook -> first step, and an event burst under a concurrency limit.

    python bench/triggers.py [--quick]

Starts `treadle serve` in a subprocess (see _server.py) with two workflows:

- `hooked`: a signed webhook (`secret_env: BENCH_HOOK_SECRET`, set only in the
  server's environment) and one `run: "true"` step. Signed POSTs go one after
  another, each waiting for its run to end, so no run queues behind another; the
  figure is from just before the request is sent to the first step's `started_at`
  as the engine recorded it in the SQLite file (one machine, one clock).
- `burst`: listens to `bench.burst` with `concurrency: {limit: 4, policy: queue}`
  and a 20 ms wait step. 200 events go out from 8 threads at once; afterwards the
  SQLite file must hold exactly one succeeded run per `n`, and no moment may have
  had more than 4 of them running.

Prints `name: value (target ...)` lines, exits 1 when a check fails (a webhook
answer other than 202, a lost or doubled event, the limit passed, a failed run) or
the time budget runs out. `--quick` sends fewer webhooks for a smoke check.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import secrets
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
from _server import (  # noqa: E402
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

from runner.triggers.signing import signed_headers  # noqa: E402

HOOK_ENV = "BENCH_HOOK_SECRET"
EVENT_TYPE = "bench.burst"
EVENTS = 200
CLIENTS = 8
LIMIT = 4
STALL_SECONDS = 15  # no run of the burst ended for this long: stop waiting, count what is there

DEFINITIONS = {
    # `seq` goes through a `params:` template, as a real hook's params would
    "hooked.yaml": f"""
params: {{seq: integer}}
triggers:
  webhook: {{secret_env: {HOOK_ENV}, params: {{seq: "{{{{ body.seq }}}}"}}}}
steps:
  - id: only
    run: "true"
""",
    # no `params:` mapping: the event's data are the params (unknown keys would be errors)
    "burst.yaml": f"""
params: {{n: integer}}
triggers:
  event: [{EVENT_TYPE}]
concurrency: {{limit: {LIMIT}, policy: queue}}
steps:
  - id: tick
    wait: 20ms
""",
}


def read_only(db: Path) -> sqlite3.Connection:
    # the server writes in WAL mode: every SELECT here sees its latest commit
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)


# -- 1. webhook call -> first step started ------------------------------------------------


def wait_run_ended(conn: sqlite3.Connection, run_id: str) -> str:
    while True:
        check_time()
        row = conn.execute("SELECT status FROM run WHERE id = ?", (run_id,)).fetchone()
        if row and row[0] in FINISHED:
            return row[0]
        time.sleep(0.005)


def webhook_latency(client: httpx.Client, db: Path, secret: str, samples: int) -> list[str]:
    """Returns the problems found (empty when every call was answered 202 and its run succeeded)."""
    problems: list[str] = []
    delays, answers = [], []
    first_call = None
    refused: Counter[int] = Counter()  # status codes other than 202
    first_refusal = ""
    calls = samples + 1
    with read_only(db) as conn:
        # one call more than measured: the first pays one-off costs (the definition version
        # row, the first process spawn); it is shown apart, not mixed into the percentiles
        for i in range(calls):
            check_time()
            body = json.dumps({"seq": i}).encode()
            headers = {**signed_headers(secret, body, time.time()),
                       "Content-Type": "application/json"}
            sent = time.time()
            t0 = time.perf_counter()
            r = client.post("/hooks/hooked", content=body, headers=headers)
            answered = time.perf_counter() - t0
            if r.status_code != 202:
                refused[r.status_code] += 1
                first_refusal = first_refusal or r.text[:200]
                continue
            run_id = r.json()["run_id"]
            status = wait_run_ended(conn, run_id)
            if status != "succeeded":
                problems.append(f"webhook run {run_id} {status}")
            started = step_started_at(db, run_id)
            if started is None:
                problems.append(f"webhook run {run_id}: no step started")
                continue
            if i == 0:
                first_call = started - sent
            else:
                delays.append(started - sent)
                answers.append(answered)
    if delays:
        report(f"webhook call (signed) -> first step started, p50 of {len(delays)}",
               ms(statistics.median(delays)), "p50 < 20 ms")
        print(f"    p95 {ms(pct(delays, 0.95))}; the 202 came back in p50 "
              f"{ms(statistics.median(answers))}, p95 {ms(pct(answers, 0.95))}; "
              f"first call (not counted) {ms(first_call or 0)}", flush=True)
    else:
        problems.append("no webhook call could be measured")
    report("    webhook answers other than 202", f"{sum(refused.values())} of {calls}", "0")
    if refused:
        problems.insert(0, f"webhook calls answered {dict(refused)}; first: {first_refusal}")
    return problems


# -- 2. an event burst under a concurrency limit ------------------------------------------


def send_events(base_url: str) -> tuple[list[tuple[int, dict] | None], list[float], float]:
    """POST the EVENTS events from CLIENTS threads.

    Returns (the answer per n, how long each answer took, seconds for them all)."""
    todo: queue.Queue[int] = queue.Queue()
    for n in range(EVENTS):
        todo.put(n)
    answers: list[tuple[int, dict] | None] = [None] * EVENTS
    took: list[float] = []  # list.append is atomic: the threads can share it

    def client_loop() -> None:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            while True:
                try:
                    n = todo.get_nowait()
                except queue.Empty:
                    return
                t0 = time.perf_counter()
                r = client.post("/api/events", json={"type": EVENT_TYPE, "data": {"n": n}})
                took.append(time.perf_counter() - t0)
                try:
                    answers[n] = (r.status_code, r.json())
                except ValueError:
                    answers[n] = (r.status_code, {"text": r.text[:200]})

    threads = [threading.Thread(target=client_loop, name=f"client-{i}") for i in range(CLIENTS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers, took, time.perf_counter() - t0


def wait_burst_ended(conn: sqlite3.Connection) -> None:
    """Until no run of `burst` is queued or going; gives up when nothing moves for a while.

    Every accepted event's run row (queued ones included) is committed before its
    answer, so once all answers are in, nothing unfinished means nothing more to come."""
    last_done, moved = -1, time.monotonic()
    while True:
        check_time()
        done, going = conn.execute(
            "SELECT sum(status IN ('succeeded', 'failed', 'cancelled')), "
            "sum(status NOT IN ('succeeded', 'failed', 'cancelled')) FROM run "
            "WHERE workflow = 'burst'").fetchone()
        if not going:
            return
        if done != last_done:
            last_done, moved = done, time.monotonic()
        elif time.monotonic() - moved > STALL_SECONDS:
            print(f"    (gave up waiting: {going} runs still unfinished, none ended for "
                  f"{STALL_SECONDS} s)", flush=True)
            return
        time.sleep(0.02)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    # a run that ends at the very moment another starts does not overlap it: at equal
    # times the end (-1) sorts before the start (+1)
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def event_burst(base_url: str, db: Path) -> list[str]:
    problems: list[str] = []
    sent_at = time.time()
    answers, took, sending = send_events(base_url)
    outcomes: Counter[str] = Counter()
    for n, answer in enumerate(answers):
        if answer is None:
            problems.append(f"event {n}: no answer")
            continue
        status, doc = answer
        runs = doc.get("runs", []) if status == 202 else []
        if status != 202 or len(runs) != 1:
            problems.append(f"event {n}: answered {status}: {json.dumps(doc)[:200]}")
            continue
        outcomes[runs[0]["status"]] += 1
    with read_only(db) as conn:
        wait_burst_ended(conn)
        rows = conn.execute("SELECT id, status, params, started_at, finished_at FROM run "
                            "WHERE workflow = 'burst'").fetchall()
    seen = Counter(json.loads(params or "{}").get("n") for _, _, params, _, _ in rows)
    lost = [n for n in range(EVENTS) if seen[n] == 0]
    doubled = sum(count - 1 for n, count in seen.items() if count > 1)
    doubled += sum(count for n, count in seen.items() if n not in range(EVENTS))  # strays
    not_ok = Counter(status for _, status, _, _, _ in rows if status != "succeeded")
    # a run that never ended counts as going on forever: it still held its slot
    intervals = [(started, finished if finished is not None else float("inf"))
                 for _, _, _, started, finished in rows if started is not None]
    at_once = max_overlap(intervals)
    started = len(intervals)
    last_end = max((f for _, _, _, _, f in rows if f is not None), default=time.time())
    wall = last_end - sent_at

    print(f"event burst: {EVENTS} events from {CLIENTS} clients to a workflow with "
          f"concurrency {{limit: {LIMIT}, policy: queue}}, a 20 ms step", flush=True)
    print(f"    runs started: {started} of {EVENTS} ({len(rows)} recorded; answers: "
          f"{', '.join(f'{k} {v}' for k, v in sorted(outcomes.items())) or 'none'})", flush=True)
    report("    lost", str(len(lost)), "0")
    report("    doubled", str(doubled), "0")
    report("    max at once", str(at_once), f"<= {LIMIT}, the limit")
    report("    not succeeded", str(sum(not_ok.values())), "0")
    print(f"    total {wall:.2f} s from the first event sent to the last run ended: "
          f"{started / wall:.0f} runs/s (at best {LIMIT / 0.020:.0f}: {LIMIT} at once x 20 ms); "
          f"sending the {EVENTS} events took {sending:.2f} s", flush=True)
    if took:
        print(f"    POST /api/events answered in p50 {ms(statistics.median(took))}, "
              f"p95 {ms(pct(took, 0.95))} ({CLIENTS} at a time)", flush=True)
    if lost:
        problems.append(f"{len(lost)} events lost (n = {lost[:20]})")
    if doubled:
        problems.append(f"{doubled} runs doubled")
    if at_once > LIMIT:
        problems.append(f"{at_once} runs at once, over the limit of {LIMIT}")
    if not_ok:
        problems.append(f"runs not succeeded: {dict(not_ok)}")
    if at_once < LIMIT:
        print("    (note: the limit was never reached, so it was not really tested)", flush=True)
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer webhook calls, a smoke check")
    args = parser.parse_args()
    samples = 20 if args.quick else 100
    secret = secrets.token_hex(32)
    # the key lives only in the server's environment and in this process's memory
    env = {**os.environ, HOOK_ENV: secret}
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="treadle-bench-triggers-") as tmp:
        db = Path(tmp) / "bench.db"
        defs = Path(tmp) / "definitions"
        defs.mkdir()
        for name, text in DEFINITIONS.items():  # before the server starts: it does not watch
            (defs / name).write_text(text)
        with serving(defs, db, env) as (server, port):
            base_url = f"http://127.0.0.1:{port}"
            try:
                with httpx.Client(base_url=base_url, timeout=30) as client:
                    wait_up(client, server)
                    print(f"treadle serve on :{port}, {os.cpu_count()} CPUs, SQLite at {db}",
                          flush=True)
                    problems += webhook_latency(client, db, secret, samples)
                problems += event_burst(base_url, db)
            except OutOfTime as exc:
                print(f"stopped: {exc}", flush=True)
                return 1
    for problem in problems:
        print(f"FAILED: {problem}", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
