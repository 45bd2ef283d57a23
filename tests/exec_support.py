"""Helpers for the engine tests: run a YAML workflow for real and read back what was recorded."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from runner.engine.engine import Engine
from runner.engine.report import run_document
from runner.engine.run import RunExecution
from tests.conftest import definition

# a shell fragment that records when a step (or foreach item) starts and ends
STAMP = "echo $TREADLE_STEP_ID${TREADLE_INDEX:+-$TREADLE_INDEX} EVENT $(date +%s%N) >> PATH"
_module_numbers = itertools.count()


async def run_yaml(engine: Engine, tmp_path: Path, text: str, params: dict[str, Any] | None = None,
                   name: str = "wf") -> tuple[RunExecution, dict[str, Any]]:
    """Run a workflow to its end; return the execution and the recorded run document."""
    exe = await asyncio.wait_for(engine.run(definition(text, tmp_path, name), params), 30)
    return exe, await recorded(engine, exe.id)


async def recorded(engine: Engine, run_id: str) -> dict[str, Any]:
    await engine.store.flush()
    doc = await run_document(engine.store, run_id)
    assert doc is not None
    return doc


def by_id(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in doc["steps"]}


async def log_text(engine: Engine, run_id: str, step_id: str, streams: tuple[str, ...] | None = None) -> str:
    await engine.store.flush()
    rows = await engine.store.logs(run_id, step_id)
    return "".join(r["text"] for r in rows if streams is None or r["stream"] in streams)


def stamp(path: Path, body: str) -> str:
    """A shell command that runs `body` between start and end stamps written to `path`."""
    start, end = (STAMP.replace("EVENT", event).replace("PATH", str(path)) for event in ("start", "end"))
    return f"{start}; {body}; {end}"


def max_overlap(path: Path) -> int:
    """The most steps that were running at one moment, from the stamps in `path`."""
    events = []
    for line in path.read_text().splitlines():
        _, event, ns = line.split()
        events.append((int(ns), 0 if event == "end" else 1))
    running = most = 0
    for _, starts in sorted(events):
        running += 1 if starts else -1
        most = max(most, running)
    return most


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


async def ends(pid_file: Path) -> None:
    """Wait until the process whose pid a step wrote to `pid_file` is gone (fail after 5 s)."""
    pid = int(pid_file.read_text())
    await eventually(lambda: not alive(pid), 5)


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0) -> None:
    """Wait until `check()` is true; fail the test after `timeout` seconds."""
    async def poll() -> None:
        while True:
            result = check()
            if isinstance(result, Awaitable):
                result = await result
            if result:
                return
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


def write_module(folder: Path, source: str) -> str:
    """Write a Python module with a name no other test uses; return that name."""
    name = f"treadle_test_mod_{os.getpid()}_{next(_module_numbers)}"
    (folder / f"{name}.py").write_text(source)
    return name
