"""Follow the definitions folder with watchfiles and reload what changed.

Each batch of file events reloads only the files it names (a folder that comes or
goes triggers a rescan); the catalog swaps to the result in one assignment. Loading
runs in a worker thread so a big file never stalls the server's event loop; git
facts are read after the swap, so a save shows up without waiting for git.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from watchfiles import awatch

from .catalog import Catalog

log = logging.getLogger("treadle.watcher")


async def watch(catalog: Catalog, *, on_change: Callable[[list[str]], None] | None = None,
                stop: asyncio.Event | None = None, step_ms: int = 10, debounce_ms: int = 30,
                git: bool = True) -> None:
    """Reload `catalog` on every change below its root until `stop` is set."""
    root = catalog.root
    root.mkdir(parents=True, exist_ok=True)
    lock = asyncio.Lock()  # reloads apply in the order the changes came
    async for changes in awatch(root, step=step_ms, debounce=debounce_ms, stop_event=stop, recursive=True):
        paths = sorted({Path(p) for _, p in changes})
        async with lock:
            try:
                touched = await asyncio.to_thread(catalog.reload, paths)
            except Exception:  # a reload must never kill the watcher
                log.exception("reload of %s failed", [str(p) for p in paths])
                continue
            if not touched:
                continue
            log.info("reloaded %s", ", ".join(touched))
            if on_change is not None:
                on_change(touched)
            if git:
                try:
                    await asyncio.to_thread(catalog.refresh_git)
                except Exception:
                    log.exception("reading git state failed")
                if on_change is not None:
                    on_change(touched)
