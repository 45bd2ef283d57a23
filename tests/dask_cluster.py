"""A real Dask cluster on loopback for the tests: `dask scheduler` and two `treadle
worker` processes (one of them offering the label `special`), stopped by pid at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.web_server import free_port

WORKER_SECRET = "worker-only-Secret-77"  # in the workers' environment, never in the server's


@dataclass
class DaskCluster:
    address: str
    root: Path
    scheduler: subprocess.Popen
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)  # name -> process

    def start_worker(self, name: str, *extra: str) -> subprocess.Popen:
        env = {**os.environ, "WORKER_TOKEN": WORKER_SECRET, "PYTHONUNBUFFERED": "1"}
        log = open(self.root / f"worker-{name}.log", "ab")  # noqa: SIM115 (kept by the child)
        proc = subprocess.Popen([sys.executable, "-m", "runner", "worker", "--scheduler", self.address,
                                 "--name", name, "--nthreads", "4", *extra], env=env, stdout=log, stderr=log,
                                cwd=self.root)
        self.workers[name] = proc
        return proc

    def wait_for_workers(self, count: int, timeout: float = 60) -> dict[str, str]:
        """name -> address of the connected workers, once `count` are there."""
        from distributed import Client

        deadline = time.monotonic() + timeout
        with Client(self.address, timeout=30) as client:
            while True:
                info = client.scheduler_info(n_workers=-1)["workers"]
                if len(info) >= count:
                    return {w["name"]: address for address, w in info.items()}
                assert time.monotonic() < deadline, f"{len(info)} of {count} workers connected"
                time.sleep(0.1)

    def kill_worker(self, name: str) -> None:
        proc = self.workers.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for proc in [*self.workers.values(), self.scheduler]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)


def start(root: Path) -> DaskCluster:
    port = free_port()
    log = open(root / "scheduler.log", "ab")  # noqa: SIM115
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", str(port), "--no-dashboard"], stdout=log, stderr=log, cwd=root)
    cluster = DaskCluster(f"tcp://127.0.0.1:{port}", root, scheduler)
    cluster.start_worker("plain")
    cluster.start_worker("special", "--labels", "special")
    cluster.wait_for_workers(2)
    return cluster
