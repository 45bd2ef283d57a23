"""Follow a git repository: clone it once, then fetch and fast-forward on an interval.

The working folder belongs to Treadle: each sync resets it hard to the remote
branch, so a server always runs exactly what is committed there. A failed fetch
keeps the files (and so the loaded catalog) as they were and records the error.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GitSyncError

log = logging.getLogger("treadle.gitsync")
INCOMING_REF = "refs/treadle/incoming"


@dataclass
class SyncState:
    url: str
    branch: str
    commit: str | None = None
    last_attempt_at: float | None = None
    last_success_at: float | None = None
    error: str | None = None
    history: list[dict] = field(default_factory=list)  # newest last, bounded
    apply: str = "auto"  # manual: new commits are fetched, and put in force by a person (apply)
    incoming: str | None = None  # manual: the fetched tip, when it is not the commit in force
    incoming_subject: str = ""


def default_workdir(url: str, base: Path = Path(".treadle/git")) -> Path:
    return base / hashlib.sha256(url.encode()).hexdigest()[:12]


class GitSync:
    """Keeps `workdir` at the tip of `branch` of `url`."""

    def __init__(self, url: str, workdir: Path, *, branch: str = "main", interval: float = 30.0,
                 apply: str = "auto"):
        if apply not in ("auto", "manual"):
            raise GitSyncError(f"--apply {apply!r}: use auto (put each new commit in force) or manual")
        self.url, self.workdir, self.branch, self.interval = url, workdir, branch, interval
        self.state = SyncState(url=url, branch=branch, apply=apply)
        self._lock = asyncio.Lock()

    def _git(self, *args: str, cwd: Path | None = None, timeout: float = 120) -> str:
        cmd = ["git", *args]
        try:
            done = subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=timeout, check=False,
                                  env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})  # never wait on a prompt
        except subprocess.TimeoutExpired:
            raise GitSyncError(f"git {args[0]} took longer than {timeout:g}s") from None
        except OSError as exc:
            raise GitSyncError(f"cannot run git: {exc}") from None
        if done.returncode != 0:
            lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
            fatal = [ln for ln in lines if ln.startswith(("fatal:", "error:"))] or lines[-1:]
            raise GitSyncError(f"git {args[0]} failed: {' '.join(fatal) or 'exit ' + str(done.returncode)}")
        return done.stdout.decode("utf-8", "replace").strip()

    def _sync_blocking(self) -> str:
        if not (self.workdir / ".git").is_dir():
            self.workdir.parent.mkdir(parents=True, exist_ok=True)
            self._git("clone", "--quiet", "--branch", self.branch, "--single-branch", self.url, str(self.workdir))
        else:
            # from the URL, not `origin`: a working folder kept from another URL (or
            # a --git changed between starts) still follows what it is told to
            self._git("fetch", "--quiet", "--no-tags", self.url, self.branch, cwd=self.workdir)
            if self.state.apply == "manual":  # a fresh clone is in force; after that, a person applies
                # kept under a ref of ours (FETCH_HEAD is overwritten by the next fetch)
                self._git("update-ref", INCOMING_REF, "FETCH_HEAD", cwd=self.workdir)
                incoming = self._git("rev-parse", INCOMING_REF, cwd=self.workdir)
                head = self._git("rev-parse", "HEAD", cwd=self.workdir)
                self.state.incoming = incoming if incoming != head else None
                self.state.incoming_subject = (self._git("log", "-1", "--format=%s", incoming, cwd=self.workdir)
                                               if self.state.incoming else "")
                return head
            self._reset("FETCH_HEAD")
        return self._git("rev-parse", "HEAD", cwd=self.workdir)

    def _reset(self, commit: str) -> None:
        self._git("reset", "--quiet", "--hard", commit, cwd=self.workdir)
        self._git("clean", "--quiet", "-d", "--force", cwd=self.workdir)  # files no commit has

    async def apply_incoming(self, commit: str) -> str:
        """Manual mode: put the fetched commit in force. `commit` is the one the person
        saw the plan of; a newer fetch since then is refused (its plan was not seen)."""
        async with self._lock:
            if self.state.apply != "manual":
                raise GitSyncError("this server applies new commits itself (--apply auto); nothing to apply")
            if self.state.incoming is None:
                raise GitSyncError("no incoming commit: the commit in force is the newest fetched")
            if commit != self.state.incoming:
                raise GitSyncError(f"the incoming commit is now {self.state.incoming[:10]}, not {commit[:10]}; "
                                   "review its plan, then apply it")
            await asyncio.to_thread(self._reset, commit)
            self.state.commit, self.state.incoming, self.state.incoming_subject = commit, None, ""
            self._remember(ok=True, detail=f"applied {commit}")
            return commit

    def _local_head(self) -> str | None:
        if not (self.workdir / ".git").is_dir():
            return None
        try:
            return self._git("rev-parse", "--verify", "--quiet", "HEAD", cwd=self.workdir) or None
        except GitSyncError:
            return None

    async def sync(self) -> bool:
        """Bring the working folder up to date. True when the commit changed."""
        async with self._lock:
            self.state.last_attempt_at = time.time()
            try:
                commit = await asyncio.to_thread(self._sync_blocking)
            except GitSyncError as exc:
                self.state.error = str(exc)
                if self.state.commit is None:  # a clone kept from an earlier start serves meanwhile
                    self.state.commit = await asyncio.to_thread(self._local_head)
                self._remember(ok=False, detail=str(exc))
                log.error("git sync of %s (%s): %s", self.url, self.branch, exc)
                return False
            changed = commit != self.state.commit
            self.state.commit, self.state.error = commit, None
            self.state.last_success_at = time.time()
            self._remember(ok=True, detail=commit)
            return changed

    def _remember(self, *, ok: bool, detail: str) -> None:
        self.state.history.append({"at": time.time(), "ok": ok, "detail": detail})
        del self.state.history[:-20]

    async def run_forever(self, on_change, stop: asyncio.Event) -> None:
        """Sync every `interval` seconds until `stop`; call `on_change()` after a new commit."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
                return
            except TimeoutError:
                pass
            if await self.sync():
                on_change()
