"""`treadle worker`: a Dask worker ready for Treadle's cluster steps (docs/cluster.md).

The same as `dask worker SCHEDULER --preload runner.dispatch.worker`, with the
resources steps ask for (`cpu`, `memory`, `gpu`, `labels`) declared for it: the
process becomes that Dask worker (exec), so signals and exit codes are Dask's.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..dsl.definition import parse_size


def register(sub: argparse._SubParsersAction, defaults: dict[str, str]) -> None:
    p = sub.add_parser("worker", help="run a Dask worker for cluster steps (serve --executor dask://...)")
    p.add_argument("--scheduler", required=True, metavar="tcp://HOST:8786", help="the Dask scheduler's address")
    p.add_argument("--nthreads", type=int, default=4, help="steps the worker runs at once (default 4)")
    p.add_argument("--resources", default="",
                   help="what it offers to steps' `resources`, e.g. cpu=8,memory=32GiB,gpu=1 "
                        "(default: cpu = CPU cores, memory = RAM)")
    p.add_argument("--labels", default="", help="comma-separated labels steps may ask for (`labels: [...]`)")
    p.add_argument("--name", help="the worker's name (default: Dask's)")
    from . import secrets_file_option

    secrets_file_option(p)
    p.set_defaults(func=cmd_worker)


def dask_resources(resources: str, labels: str) -> str:
    """`cpu=8,memory=32GiB,gpu=1` and `ssd,eu` as Dask's `--resources` text."""
    offered: dict[str, float] = {"cpu": float(os.cpu_count() or 1)}
    try:
        import psutil

        offered["memory"] = float(psutil.virtual_memory().total)
    except ImportError:  # pragma: no cover - psutil comes with distributed
        pass
    for part in filter(None, (p.strip() for p in resources.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name not in ("cpu", "memory", "gpu"):
            raise SystemExit(f"treadle worker: --resources '{part}': write cpu=N, memory=SIZE or gpu=N")
        try:
            offered[name] = parse_size(value) if name == "memory" else float(value)
        except ValueError as exc:
            raise SystemExit(f"treadle worker: --resources '{part}': {exc}") from None
    for label in filter(None, (x.strip() for x in labels.split(","))):
        offered[f"label-{label}"] = 1.0
    return ",".join(f"{k}={v:g}" for k, v in offered.items())


def cmd_worker(args: argparse.Namespace) -> int:
    argv = [sys.executable, "-m", "distributed.cli.dask_worker", args.scheduler, "--nthreads", str(args.nthreads),
            "--preload", "runner.dispatch.worker", "--resources", dask_resources(args.resources, args.labels),
            "--no-dashboard"]
    if args.name:
        argv += ["--name", args.name]
    if args.secrets_file:
        os.environ["TREADLE_SECRETS_FILE"] = args.secrets_file
    os.execv(sys.executable, argv)
    return 0  # pragma: no cover - exec does not return
