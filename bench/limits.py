"""Speed of the hardening: the times that the tests no longer assert (tests check what
happens, never how long it takes; a loaded machine must not fail them).

    python bench/limits.py

Prints `name: value (target ...)` lines and exits 1 when a figure misses its target:
- loading a 600 KB file with a problem in each of its 30,000 steps (target < 15 s;
  the problems were once kept in a list searched on every add: 6 minutes)
- json_size of 100 GB of JSON made of references to one string (target < 0.5 s: the
  walk stops at the limit instead of expanding the references)
- templates refused by the sandbox (huge ranges, `*`, `**`): the slowest (target < 1 s)
- masking 10 MB of log with nothing to mask, and with two secrets (target < 1.0 / 1.5 s)
"""

from __future__ import annotations

import base64
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner import limits  # noqa: E402
from runner.dsl.loader import load_text  # noqa: E402
from runner.limits import json_size  # noqa: E402
from runner.templates import Masker, TemplateFailed, render  # noqa: E402

REFUSED = [
    "{{ range(10**9) | length }}", "{{ range(100001) | list | length }}", "{{ 'a' * 10**9 }}",
    "{{ [1] * 10**9 }}", "{{ 10 ** 100000 }}", "{{ (range(100000) | list | join(',') * 10) | length }}",
]
CONTEXT = {"params": {"xs": [1, 2], "s": "abc"}, "steps": {}, "run": {"id": "r"}, "env": {}, "secrets": {}}


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> int:
    figures: list[tuple[str, float, float]] = []  # name, seconds, target

    text = "steps:\n" + "".join("  - {id: x, log: a}\n" for _ in range(30_000))
    figures.append(("load 30,000 duplicate steps", timed(lambda: load_text(text, "dup.yaml")), 15.0))

    shared = ["x" * 1_000_000] * 100_000
    figures.append(("json_size of 100 GB of shared references",
                    timed(lambda: json_size(shared, limits.MAX_OUTPUT_BYTES)), 0.5))

    def refuse(template: str) -> None:
        try:
            render(template, dict(CONTEXT))
        except TemplateFailed:
            return
        raise SystemExit(f"not refused: {template}")
    figures.append(("slowest refused template", max(timed(lambda t=t: refuse(t)) for t in REFUSED), 1.0))

    secret, odd = "s3cr3t-Value-42", "p@ss w0rd/&?>>>~~x"
    masker = Masker([secret, odd, "another-secret-value-0123456789", "tok_" + "A1b2" * 10, "pw!" * 6])
    line = "2024-05-01T12:00:00Z INFO worker-3 processed item 48213 in 12 ms (queue 7, retries 0)\n"
    log = line * (10_000_000 // len(line))
    encoded = base64.b64encode(odd.encode()).decode()
    leaky = log[:5_000_000] + f"token {secret}\n" + "\n".join(encoded[i:i + 4] for i in range(0, len(encoded), 4)) \
        + "\n" + log[5_000_000:]
    figures.append(("mask 10 MB of log, nothing to mask", timed(lambda: masker.text(log)), 1.0))
    figures.append(("mask 10 MB of log with two secrets", timed(lambda: masker.text(leaky)), 1.5))

    missed = 0
    for name, seconds, target in figures:
        ok = seconds < target
        missed += not ok
        print(f"{name}: {seconds:.3f} s (target < {target:g} s){'' if ok else '  MISSED'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
