"""File triggers: `file: {path: "inbox/*.csv"}` starts a run per new or changed file.

Events from watchfiles only say *where* to look; what fires is decided by looking:
a file fires once its (size, mtime_ns) has stayed the same for `settle` seconds, so a
file still being written is never picked up half-written. Events get lost (a folder
created later, a queue overflow, Treadle being down), so every start, watch restart
and periodic rescan walks the folders too. The durable mark (`file:<relative path>`
-> `size:mtime_ns`) moves by compare-and-set *before* the run starts: a restart, a
rescan or a second server never fires the same version of a file twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING

from watchfiles import Change, awatch

if TYPE_CHECKING:
    from ..dsl.loader import Definition
    from ..dsl.trigger_spec import FileTriggerSpec
    from .launcher import Launch, Launcher
    from .trigger_state import TriggerState

log = logging.getLogger("treadle.files")

# names editors, downloaders and copy tools give files they have not finished yet
_TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp", "~")
_MAGIC = re.compile(r"[*?[{]")
_STOP_GRACE = 5.0  # seconds a run being started may take to finish starting at stop()
# thousands of files found at once must not queue thousands of transactions on the
# store's small connection pool (its checkout times out after 30 s)
_FIRE_AT_ONCE = 8

Fingerprint = tuple[int, int]  # (size, mtime_ns)
RootKey = tuple[tuple[str, int, int], ...]  # existing watch roots with (device, inode)


@dataclass(frozen=True)
class _Watch:
    """One `file:` trigger of one definition, resolved to a folder and a pattern."""

    definition: Definition
    spec: FileTriggerSpec
    base: str  # the definition's folder, absolute and normalised
    root: str  # the longest folder prefix of the glob without wildcards
    regex: re.Pattern[str]  # matches the posix path below `root`
    depth: int | None  # how many folders below `root` a match can be; None: any (`**`)

    def below_root(self, path: str) -> str | None:
        """`path` relative to the root in posix form, or None when it is not below it."""
        prefix = self.root if self.root.endswith(os.sep) else self.root + os.sep
        if not path.startswith(prefix):
            return None
        return path[len(prefix):].replace(os.sep, "/")

    def relative(self, path: str) -> str:
        """`path` relative to the definition's folder, posix: the mark key and `ref`."""
        return PurePath(os.path.relpath(path, self.base)).as_posix()


class FileTriggers:
    """Watches the folders of every valid definition's `file:` triggers and fires runs.

    Args:
        launcher: starts runs (`await launcher.fire(...)`).
        definitions: returns the current definitions; read again by `refresh()`.
        state: durable trigger marks.
        poll_interval: seconds between full rescans (missed events, new folders).
    """

    def __init__(self, launcher: Launcher, definitions: Callable[[], Iterable[Definition]],
                 state: TriggerState, *, poll_interval: float = 30.0):
        self.launcher = launcher
        self.definitions = definitions
        self.state = state
        self.poll_interval = poll_interval
        self._watches: tuple[_Watch, ...] = ()
        self._signature: tuple = ()
        self._watched: RootKey | None = None  # what the running watch covers
        self._watch_stop = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()  # the watch, the rescan loop, scans
        self._pending: dict[tuple[str, str], asyncio.Task] = {}  # (workflow, path) -> settling
        self._again: set[tuple[str, str]] = set()  # touched after their last look
        self._firing: set[tuple[str, str]] = set()  # mark moved or moving: let these finish
        self._scan_lock = asyncio.Lock()
        self._fire_slots = asyncio.Semaphore(_FIRE_AT_ONCE)
        self._running = False

    # -- public ------------------------------------------------------------------

    async def start(self) -> None:
        """Start watching; files already there (arrived while Treadle was down) fire too."""
        if self._running:
            return
        self._running = True
        self._stopping, self._watched = asyncio.Event(), None
        self._recompute()
        self._spawn(self._watch_loop(), "watch")
        self._spawn(self._rescan_loop(), "rescan")

    async def stop(self) -> None:
        """Stop watching: cancel every task and wait for them.

        Runs whose mark has already moved get a few seconds to start, since a mark
        moved without its run would make that file version never fire.
        """
        if not self._running:
            return
        self._running = False
        self._stopping.set()
        self._watch_stop.set()
        for task in list(self._tasks):
            task.cancel()
        firing = [t for key, t in self._pending.items() if key in self._firing]
        for key, task in self._pending.items():
            if key not in self._firing:
                task.cancel()
        if firing:
            await asyncio.wait(firing, timeout=_STOP_GRACE)
        everything = [*self._tasks, *self._pending.values()]
        for task in everything:
            task.cancel()
        await asyncio.gather(*everything, return_exceptions=True)

    def refresh(self) -> None:
        """The definitions changed: recompute what to watch.

        Cheap (a few stats) and safe to call from the event loop. A new set of folders
        restarts the watch; new patterns over the same folders start a scan.
        """
        self._recompute()

    def rescan(self) -> None:
        """Look at every matching file now (a workflow was resumed: what arrived while
        it was paused was left unmarked and starts now)."""
        if self._running:
            self._spawn(self._scan(), "scan")

    # -- what to watch -----------------------------------------------------------

    def _recompute(self) -> str:
        """Read the definitions again; "restart", "rescan" or "" for what it set off."""
        try:
            watches = tuple(_watches_of(self.definitions()))
        except Exception:  # a broken catalog must not take the watcher down; keep the old set
            log.exception("reading the definitions for file triggers failed")
            return ""
        signature = tuple((w.definition.name, w.root, w.regex.pattern) for w in watches)
        changed = signature != self._signature
        self._watches, self._signature = watches, signature
        if not self._running:
            return ""
        if self._root_key() != self._watched:
            self._watch_stop.set()  # the watch loop starts again on the new folders, and scans
            return "restart"
        if changed:
            self._spawn(self._scan(), "scan")
            return "rescan"
        return ""

    def _root_key(self) -> RootKey:
        """The folders to watch that exist, with their identity (a replaced folder differs)."""
        roots = sorted({w.root for w in self._watches})
        # watches are recursive: a folder below another one adds nothing
        outer = [r for r in roots if not any(r != o and _is_below(r, o) for o in roots)]
        key = []
        for root in outer:
            with contextlib.suppress(OSError):
                st = os.stat(root)
                if stat.S_ISDIR(st.st_mode):
                    key.append((root, st.st_dev, st.st_ino))
        return tuple(key)

    def _match(self, path: str) -> dict[str, _Watch]:
        return _match(self._watches, path)

    # -- watching ----------------------------------------------------------------

    async def _watch_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            roots = self._root_key()
            stop = self._watch_stop = asyncio.Event()
            self._watched = roots
            if not roots:  # nothing exists yet: refresh() or the rescan set `stop` when it does
                await stop.wait()
                continue
            try:
                await self._watch_once(roots, stop)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:  # too many watches, a folder gone while being set up, ...
                failures += 1
                log.exception("watching %s failed; watching again", ", ".join(r for r, _, _ in roots))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(0.2 * failures, 5.0))

    async def _watch_once(self, roots: RootKey, stop: asyncio.Event) -> None:
        """Watch `roots` until `stop` is set or one of them is deleted or replaced."""
        changes_of = awatch(*(r for r, _, _ in roots), watch_filter=_wanted, step=50,
                            debounce=400, stop_event=stop, recursive=True)
        # as in watcher.py: the first step sets the watches up before it waits in a
        # thread; a scan after that misses nothing, one before it could miss a file
        batch = asyncio.ensure_future(anext(changes_of))
        try:
            for _ in range(3):
                await asyncio.sleep(0)
            if batch.done() and not batch.cancelled():
                error = batch.exception()
                if error is not None and not isinstance(error, StopAsyncIteration):
                    raise error  # the setup failed: the loop tries again
            await self._scan()
            while True:
                try:
                    changes = await batch
                except StopAsyncIteration:
                    return  # `stop` was set
                await self._on_changes({p for _, p in changes})
                if self._root_key() != roots:
                    log.info("file trigger folders changed; watching again")
                    return
                batch = asyncio.ensure_future(anext(changes_of))
        finally:
            if not batch.done():
                stop.set()  # the watch thread only notices this, not a cancel
                batch.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
                    await batch
            with contextlib.suppress(Exception):
                await changes_of.aclose()

    async def _on_changes(self, paths: set[str]) -> None:
        watches = self._watches
        try:
            found = await asyncio.to_thread(_collect, paths, watches)
        except Exception:
            log.exception("looking at changed files failed")
            return
        for workflow, path, _, _ in found:
            self._consider(workflow, path)

    async def _rescan_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                if not self._recompute():  # a restart or a new pattern scans by itself
                    await self._scan()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("rescanning file trigger folders failed")

    async def _scan(self) -> None:
        """Walk every watched folder; files whose version has no mark start settling."""
        async with self._scan_lock:
            watches = self._watches
            try:
                found = await asyncio.to_thread(_scan, watches)
            except Exception:
                log.exception("scanning file trigger folders failed")
                return
            by_workflow: dict[str, list[tuple[str, str, str]]] = {}
            for workflow, path, rel, (size, mtime_ns) in found:
                by_workflow.setdefault(workflow, []).append((path, rel, f"{size}:{mtime_ns}"))
            for workflow, files in by_workflow.items():
                try:
                    # one query per workflow, so thousands of old files cost no settle task each
                    marks = await self.state.marks(workflow, "file:")
                except Exception:
                    log.exception("reading the file marks of %s failed", workflow)
                    continue
                for path, rel, fingerprint in files:
                    if marks.get(f"file:{rel}") != fingerprint:
                        self._consider(workflow, path)

    # -- settling and firing -----------------------------------------------------

    def _consider(self, workflow: str, path: str) -> None:
        """Make sure `path` is being settled for `workflow` (one task per pair)."""
        key = (workflow, path)
        if key in self._pending:
            self._again.add(key)  # it looks once more after its current look
            return
        if not self._running:
            return
        self._pending[key] = asyncio.create_task(self._settle(workflow, path),
                                                 name=f"treadle-file-settle:{workflow}:{path}")

    async def _settle(self, workflow: str, path: str) -> None:
        key = (workflow, path)
        try:
            while True:
                watch = self._match(path).get(workflow)
                if watch is None:  # the definition changed or went while this waited
                    return
                before = await asyncio.to_thread(_fingerprint, path)
                while True:
                    if before is None:  # gone (or now a folder): nothing to fire
                        return
                    await asyncio.sleep(watch.spec.settle)
                    # events up to here are covered by the look that follows
                    self._again.discard(key)
                    after = await asyncio.to_thread(_fingerprint, path)
                    if after == before:
                        break
                    before = after
                async with self._fire_slots:
                    await self._fire(workflow, path, after)
                if key not in self._again:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:  # a database hiccup: the next rescan tries this file again
            log.exception("file trigger of %s for %s failed", workflow, path)
        finally:
            # here and not in a done callback: between the end of the task and its
            # callback, a new event would be taken as covered by this task and lost
            self._pending.pop(key, None)
            self._again.discard(key)
            self._firing.discard(key)

    async def _fire(self, workflow: str, path: str, fingerprint: Fingerprint) -> None:
        watch = self._match(path).get(workflow)
        if watch is None:
            return
        size, mtime_ns = fingerprint
        rel = watch.relative(path)
        key, new = f"file:{rel}", f"{size}:{mtime_ns}"
        old = await self.state.mark(workflow, key)
        if old == new:
            return
        if await self.state.is_paused(workflow):
            return  # left unmarked: the rescan after resuming starts it
        self._firing.add((workflow, path))
        try:
            if not await self.state.advance_mark(workflow, key, old, new):
                log.debug("%s: %s was taken by another server or pass", workflow, rel)
                return
            name = os.path.basename(path)
            context = {"file": {"path": path, "name": name, "relative": rel, "size": size}}
            try:
                launch: Launch = await self.launcher.fire(
                    watch.definition, trigger="file", ref=rel, mapping=watch.spec.params,
                    context=context, default={"path": path})
            except Exception:  # one bad start must not stop the files after it
                log.exception("%s: starting a run for %s failed", workflow, rel)
                return
            log.info("%s: file %s -> %s %s", workflow, rel, getattr(launch, "status", "?"),
                     getattr(launch, "run_id", None) or getattr(launch, "reason", None) or "")
        finally:
            self._firing.discard((workflow, path))

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.create_task(coro, name=f"treadle-files-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


# -- globs ---------------------------------------------------------------------


def _watches_of(definitions: Iterable[Definition]) -> Iterator[_Watch]:
    for definition in definitions:
        if not definition.valid or definition.spec is None:
            continue
        base = os.path.normpath(os.path.abspath(definition.base_dir))
        for spec in definition.spec.triggers.file:
            root, regex, depth = compile_glob(spec.path, base)
            yield _Watch(definition, spec, base, root, regex, depth)


def compile_glob(pattern: str, base: str) -> tuple[str, re.Pattern[str], int | None]:
    """Split a glob into the folder to watch and a regex for the path below it.

    Args:
        pattern: `*`, `?`, `[..]` (`[!..]` negates), `{a,b}` (either) within one name,
            `**` for any number of folders; relative to `base` unless absolute.
        base: the absolute folder relative patterns start from.

    Returns:
        (root folder, regex over the posix path below it, how many folders below the
        root a match can be, or None with `**`).
    """
    parts = pattern.replace(os.sep, "/").split("/")
    lead = [""] if pattern.startswith("/") else []
    parts = lead + [p for p in parts if p and p != "."]
    # the file name itself is never the root, even when it has no wildcard
    magic = next((i for i, part in enumerate(parts) if _MAGIC.search(part)), len(parts))
    literal = min(magic, len(parts) - 1)
    prefix, rest = parts[:literal], parts[literal:] or [""]
    root = os.path.normpath(os.path.join(base, "/".join(prefix) or "."))
    regex = ""
    for i, part in enumerate(rest):
        last = i == len(rest) - 1
        if part == "**":
            regex += ".+" if last else "(?:[^/]+/)*"
        else:
            regex += _translate_name(part) + ("" if last else "/")
    depth = None if "**" in rest else len(rest) - 1
    return root, re.compile(regex), depth


def _translate_name(part: str) -> str:
    """One path segment of a glob as a regex that never crosses a `/`."""
    out, i, n = [], 0, len(part)
    while i < n:
        c = part[i]
        i += 1
        if c == "*":
            while i < n and part[i] == "*":
                i += 1
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "{" and (choices := brace_choices(part, i - 1)) is not None:
            alternatives, i = choices
            out.append("(?:" + "|".join(_translate_name(a) for a in alternatives) + ")")
        elif c == "[":
            j = i
            if j < n and part[j] in "!^":
                j += 1
            if j < n and part[j] == "]":  # a leading ] is a member, not the end
                j += 1
            while j < n and part[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a plain [
                out.append(re.escape(c))
                continue
            body = part[i:j]
            i = j + 1
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            # only ranges (a-z) keep their meaning; anything re could read as syntax is escaped
            body = re.sub(r"([\\^\[\]&~|])", r"\\\1", body)
            out.append(f"(?!/)[{'^' if negate else ''}{body}]")
        else:
            out.append(re.escape(c))
    return "".join(out)


def brace_choices(text: str, start: int) -> tuple[list[str], int] | None:
    """The alternatives of the brace group opening at `text[start]` (`{pdf,csv}`, nested
    groups kept whole for the caller to expand) and the index after its `}`; None when
    it is not a group (no closing brace, or no comma: `{x}` is plain text, as in a shell)."""
    depth, parts, begin = 0, [], start + 1
    for j in range(start, len(text)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                parts.append(text[begin:j])
                return (parts, j + 1) if len(parts) > 1 else None
        elif c == "," and depth == 1:
            parts.append(text[begin:j])
            begin = j + 1
    return None


def _match(watches: Iterable[_Watch], path: str) -> dict[str, _Watch]:
    """The trigger each workflow has for `path` (its first one that matches)."""
    found: dict[str, _Watch] = {}
    for w in watches:
        if w.definition.name in found:
            continue
        below = w.below_root(path)
        if below is not None and not _ignored(below) and w.regex.fullmatch(below):
            found[w.definition.name] = w
    return found


def _is_below(path: str, folder: str) -> bool:
    prefix = folder if folder.endswith(os.sep) else folder + os.sep
    return path.startswith(prefix)


def _ignored_name(name: str) -> bool:
    """Dotfiles (also `.#lock` files) and names of files still being written."""
    return name.startswith(".") or name.lower().endswith(_TEMP_SUFFIXES)


def _ignored(below_root: str) -> bool:
    # a hidden folder below the root (.git, .cache, a sync tool's staging) is never a source
    return any(_ignored_name(p) for p in below_root.split("/"))


def _wanted(change: Change, path: str) -> bool:
    """watchfiles filter: a deleted file starts nothing."""
    return change != Change.deleted and not _ignored_name(os.path.basename(path))


# -- the file system (these run in worker threads) ---------------------------------


def _fingerprint(path: str) -> Fingerprint | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


def _walk(top: str, depth: int | None) -> Iterator[str]:
    """Files below `top`, at most `depth` folders down, skipping hidden folders."""
    top_depth = top.rstrip(os.sep).count(os.sep)
    for folder, dirs, files in os.walk(top, onerror=lambda _: None):  # never follows links
        dirs[:] = [d for d in dirs if not _ignored_name(d)]
        if depth is not None and folder.rstrip(os.sep).count(os.sep) - top_depth >= depth:
            dirs[:] = []
        for name in files:
            if not _ignored_name(name):
                yield os.path.join(folder, name)


def _found(paths: Iterable[str], watches: tuple[_Watch, ...]
           ) -> list[tuple[str, str, str, Fingerprint]]:
    """(workflow, path, path relative to its definition, fingerprint) of matching files."""
    out = []
    for path in paths:
        matches = _match(watches, path)
        if not matches:
            continue
        fingerprint = _fingerprint(path)
        if fingerprint is None:
            continue
        for workflow, w in matches.items():
            out.append((workflow, path, w.relative(path), fingerprint))
    return out


def _scan(watches: tuple[_Watch, ...]) -> list[tuple[str, str, str, Fingerprint]]:
    """Every matching file below the watched folders."""
    depths: dict[str, int | None] = {}
    for w in watches:
        if w.root not in depths:
            depths[w.root] = w.depth
        elif depths[w.root] is not None:
            depths[w.root] = None if w.depth is None else max(depths[w.root], w.depth)
    paths: set[str] = set()
    for root, depth in depths.items():
        paths.update(_walk(root, depth))
    return _found(sorted(paths), watches)


def _collect(paths: set[str], watches: tuple[_Watch, ...]) -> list[tuple[str, str, str, Fingerprint]]:
    """Matching files among changed paths; a folder moved in brings files without events."""
    files: set[str] = set()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            if any(_is_below(path, w.root) for w in watches) and not _ignored_name(os.path.basename(path)):
                files.update(_walk(path, None))
        else:
            files.add(path)
    return _found(sorted(files), watches)
