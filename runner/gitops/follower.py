"""Keeps a catalog in step with its folder while a server runs.

Three loops: the file watcher (saves show up in well under a second), a git
refresh (commits change no file, so the watcher cannot see them: HEAD and the index
are looked at every `git_poll` seconds, and git read again when they moved, or
every `git_refresh` seconds anyway), and, when the server follows a repository, the
git sync. Every text of a file that the catalog loads is recorded in the store once,
with its git revision, so the dashboard can list versions and diff them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from ..engine.engine import version_row
from ..storage.store import Store
from .catalog import Catalog
from .gitinfo import head_stamp
from .gitsync import GitSync
from .watcher import watch

log = logging.getLogger("treadle.follower")


class Follower:
    def __init__(self, catalog: Catalog, store: Store, *, gitsync: GitSync | None = None,
                 watch_files: bool = True, git_refresh: float = 10.0, git_poll: float = 0.25):
        self.catalog, self.store, self.gitsync = catalog, store, gitsync
        self.watch_files, self.git_refresh, self.git_poll = watch_files, git_refresh, git_poll
        self._recorded: set[tuple[str, str]] = set()
        self._tasks: list[asyncio.Task] = []
        self._stop = asyncio.Event()
        # told after the catalog may have changed (schedules and file triggers re-read it)
        self.listeners: list[Callable[[], None]] = []

    def record_versions(self, _touched: list[str] | None = None) -> None:
        """Store each text of each file once (valid or not), with when it was first seen.

        Called once the git facts of the catalog's texts were read, so that the
        revision stored with a version is the one of that text."""
        now = time.time()
        for definition in self.catalog.entries():
            for d in (definition, definition.broken):
                # an empty text is no version anyone wants back: most often a save caught
                # between truncating the file and writing it (the next event loads the rest)
                if d is not None and (d.name, d.version) not in self._recorded and d.source.strip():
                    self._recorded.add((d.name, d.version))
                    self.store.put_version(version_row(d, now))
        for listener in self.listeners:
            try:
                listener()
            except Exception:  # a listener's bug must not stop reloads
                log.exception("catalog listener %r failed", listener)

    @property
    def watching(self) -> bool:
        """The file watcher is on and alive."""
        return self.watch_files and any(not t.done() and t.get_name() == "treadle-watch" for t in self._tasks)

    async def start(self) -> None:
        await asyncio.to_thread(self.catalog.refresh_git)
        self.record_versions()
        if self.watch_files:
            self._tasks.append(asyncio.create_task(watch(self.catalog, on_change=self.record_versions, stop=self._stop),
                                                   name="treadle-watch"))
        self._tasks.append(asyncio.create_task(self._refresh_git_loop()))
        if self.gitsync is not None:
            self._tasks.append(asyncio.create_task(self.gitsync.run_forever(self._synced, self._stop)))

    async def sync_now(self) -> bool:
        """Pull now (POST /api/sync); True when a new commit was loaded."""
        if self.gitsync is None:
            return False
        changed = await self.gitsync.sync()
        if changed:
            await self._reload_all()
        return changed

    async def apply_incoming(self, commit: str) -> str:
        """Manual mode (`serve --git URL --apply manual`): put the fetched commit in force."""
        if self.gitsync is None:
            from ..errors import GitSyncError

            raise GitSyncError("this server does not follow a git repository (start it with --git URL)")
        applied = await self.gitsync.apply_incoming(commit)
        await self._reload_all()
        return applied

    def _synced(self) -> None:
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.create_task(self._reload_all()))

    async def _reload_all(self) -> None:
        # the watcher sees the files change too; a full load makes the result certain
        await asyncio.to_thread(self.catalog.load_all)
        await asyncio.to_thread(self.catalog.refresh_git)
        self.record_versions()

    async def _refresh_git_loop(self) -> None:
        git = self.catalog.git
        stamp = head_stamp(git.git_dir if git else None)
        last = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), min(self.git_poll, self.git_refresh))
                return
            git = self.catalog.git
            now_stamp = head_stamp(git.git_dir if git else None)
            if now_stamp == stamp and time.monotonic() - last < self.git_refresh:
                continue
            stamp, last = now_stamp, time.monotonic()
            try:
                await asyncio.to_thread(self.catalog.refresh_git)
                self.record_versions()
            except Exception:
                log.exception("reading git state failed")

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
