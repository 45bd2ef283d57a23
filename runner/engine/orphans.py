"""Step processes that outlived the server that started them (`kill -9` of `serve`).

A `run` step runs in a process group of its own, so that a timeout or a cancel can
stop everything it started. The flip side: when its server dies without a chance to
stop them, those processes go on, unsupervised, while another server (or the same
one, restarted) runs the step again: two attempts of one step at the same time.

Every step process carries TREADLE_OWNER (the server that drives the run) and
TREADLE_RUN_ID in its environment, inherited by everything it starts. Before a
server resumes a run it claimed, it stops every process on this machine that belongs
to that run and to another owner; and every few seconds it stops the processes of
owners that its own database knows and knows to be gone (no heartbeat, or a pid that
no longer exists here). An owner its database has never seen belongs to another
Treadle (another database on the same machine) and is left alone. What runs
on another machine is stopped by that machine's next Treadle, or by nobody: steps
stay at-least-once, and TREADLE_IDEMPOTENCY_KEY is there for steps that must not
repeat a side effect.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("treadle.orphans")
_MARKERS = (b"TREADLE_OWNER=", b"TREADLE_RUN_ID=")


def step_processes() -> Iterator[tuple[int, str, str]]:
    """(pid, owner, run id) of every process on this machine started by a Treadle step."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if b"TREADLE_OWNER=" not in environ:
            continue
        found = {}
        for item in environ.split(b"\0"):
            for marker in _MARKERS:
                if item.startswith(marker):
                    found[marker] = item[len(marker):].decode(errors="replace")
        if len(found) == 2:
            yield int(entry.name), found[_MARKERS[0]], found[_MARKERS[1]]


def stop(pids: list[int], why: str) -> int:
    """SIGKILL the process groups of `pids` (never this process's own group)."""
    own = os.getpgid(0)
    groups = set()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            groups.add(os.getpgid(pid))
    stopped = 0
    for group in groups - {own, 0, 1}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
            stopped += 1
    if stopped:
        log.warning("stopped %d process group(s) left running by %s", stopped, why)
    return stopped


def stop_for_runs(run_ids: set[str], keep_owner: str) -> int:
    """Stop the processes of these runs that another owner started (before resuming them here)."""
    if not run_ids:
        return 0
    pids = [pid for pid, owner, run_id in step_processes() if run_id in run_ids and owner != keep_owner]
    return stop(pids, f"an earlier owner of run(s) {', '.join(sorted(run_ids))}")


def owners_seen() -> set[str]:
    """The owners named by the step processes on this machine (of any Treadle, any database)."""
    return {owner for _, owner, _ in step_processes()}


def stop_of_owners(gone: set[str]) -> int:
    """Stop the step processes of these owners (servers of this database known to be gone)."""
    if not gone:
        return 0
    pids = [pid for pid, owner, _ in step_processes() if owner in gone]
    return stop(pids, "a server that is gone")
