"""Soak: `treadle serve` killed with SIGKILL at 1,000 random moments, then checked.

    python bench/soak.py [--kills 1000] [--seed N] [--db postgresql://USER@HOST:PORT/DB]

The same campaign as tests/test_crash.py (which CI runs with 30 kill points), longer:
every run must end, every step must succeed exactly once with its output, and no
step may run again once its success was recorded. Prints the counts and the seed.
At about 4 s per kill (a server start), 1,000 kills take a bit over an hour.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.crash_harness import run_campaign  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--db", help="database URL (default: a SQLite file in the campaign's folder); "
                                     "a PostgreSQL database should be empty")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="treadle-soak-"))
    started = time.monotonic()
    report = run_campaign(root, args.kills, args.seed, db=args.db)
    print(report.summary())
    print(f"kill points: {len(set(report.kills))} distinct, from {min(report.kills):.3f}s to {max(report.kills):.3f}s after ready")
    print(f"time: {time.monotonic() - started:.0f}s; files in {root}")
    print("invariants (every run ended, each step succeeded exactly once, nothing finished ran again): "
          + ("held" if not report.problems else f"BROKEN: {report.problems[:20]}"))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
