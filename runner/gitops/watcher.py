"""Follow the definitions folder with watchfiles and reload what changed.

Each batch of file events reloads only the files it names (a folder that comes or
goes triggers a rescan); the catalog swaps to the result in one assignment. Loading
runs in a worker thread so a big file never stalls the server's event loop; git
facts are read after the swap, so a save shows up without waiting for git.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from watchfiles import awatch

from .catalog import Catalog

log = logging.getLogger("treadle.watcher")


async def watch(catalog: Catalog, *, on_change: Callable[[list[str]], None] | None = None,
                stop: asyncio.Event | None = None, step_ms: int = 10, debounce_ms: int = 30,
                git: bool = True) -> None:
    """Reload `catalog` on every change below its root until `stop` is set.

    `on_change(touched)` is called once per batch that changed the catalog, after the
    git facts of the new texts were read (with `git`), so what it records is settled.
    When the folder itself is deleted or replaced (a checkout of a branch without it,
    a deploy renaming a new folder into place), the watch waits for it and starts again.
    """
    root = catalog.root
    stop = stop or asyncio.Event()
    root.mkdir(parents=True, exist_ok=True)
    rescan, failures = False, 0  # the caller loaded the catalog before the watch began
    while not stop.is_set():
        identity = _identity(root)
        if identity is None:  # gone: wait for it to come back, never create it behind the user
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
            rescan = True
            continue
        try:
            if await _watch_once(catalog, identity, rescan, on_change, stop, step_ms, debounce_ms, git):
                return
            failures, rescan = 0, True  # deleted or replaced: read it all again once it is back
        except asyncio.CancelledError:
            raise
        except Exception:  # too many watches, a folder gone while it was being set up, ...: try again
            failures += 1
            rescan = True
            log.exception("watching %s failed; watching again", root)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(0.1 * failures, 2.0))


async def _watch_once(catalog: Catalog, identity: tuple[int, int], rescan: bool,
                      on_change: Callable[[list[str]], None] | None, stop: asyncio.Event,
                      step_ms: int, debounce_ms: int, git: bool) -> bool:
    """Watch until `stop` (True) or until the folder is deleted or replaced (False)."""
    root = catalog.root
    changes_of = awatch(root, step=step_ms, debounce=debounce_ms, stop_event=stop, recursive=True)
    # the first step of the generator sets the watches up (before it waits in a thread);
    # a rescan after that misses nothing, one before it could miss a save in between
    batch = asyncio.ensure_future(anext(changes_of))
    try:
        for _ in range(3):
            await asyncio.sleep(0)
        if rescan:
            await _reload(catalog, catalog.load_all, ["*"], on_change, git)
        else:  # the catalog was loaded before: catch up with what changed since
            stale = await asyncio.to_thread(catalog.stale)
            if stale:
                await _reload(catalog, lambda: catalog.reload(stale), None, on_change, git)
        while True:
            try:
                changes = await batch
            except StopAsyncIteration:
                return True  # awatch ends only when `stop` is set
            paths = sorted({Path(p) for _, p in changes})
            await _reload(catalog, lambda paths=paths: catalog.reload(paths), None, on_change, git)
            if _identity(root) != identity:
                log.info("%s was deleted or replaced; watching it again", root)
                return False
            batch = asyncio.ensure_future(anext(changes_of))
    finally:
        if not batch.done():
            batch.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
                await batch
        with contextlib.suppress(Exception):
            await changes_of.aclose()


def _identity(root: Path) -> tuple[int, int] | None:
    try:
        st = root.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if root.is_dir() else None


async def _reload(catalog: Catalog, load: Callable[[], list[str] | None], touched: list[str] | None,
                  on_change: Callable[[list[str]], None] | None, git: bool) -> None:
    try:
        result = await asyncio.to_thread(load)
    except Exception:  # a reload must never kill the watcher
        log.exception("reloading %s failed", catalog.root)
        return
    touched = touched or result or []
    if touched:
        log.info("reloaded %s", ", ".join(touched))
        await _settle(catalog, touched, on_change, git)


async def _settle(catalog: Catalog, touched: list[str], on_change: Callable[[list[str]], None] | None,
                  git: bool) -> None:
    if git:
        try:
            await asyncio.to_thread(catalog.refresh_git)
        except Exception:
            log.exception("reading git state failed")
    if on_change is not None:
        try:
            on_change(touched)
        except Exception:
            log.exception("on_change after a reload failed")
