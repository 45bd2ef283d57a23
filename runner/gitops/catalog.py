"""The definitions folder as a catalog: every file loaded, valid or not.

A file that fails to load stays in the catalog carrying its problems, so it can be
shown; it never stops the others from loading. Names must be unique across the
folder: two files with one name are both reported. Updates build a new mapping
and swap it in one assignment, so readers never see a half-reloaded catalog; writers
(the watcher, a git sync) take a lock, so one never swaps in a mapping built from
what another replaced.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from ..dsl import crossfile
from ..dsl.casefile import is_test_file
from ..dsl.loader import Definition, load_file, load_text
from ..errors import Problem
from .gitinfo import GitState, blob_id, read_state

SUFFIXES = (".yaml", ".yml")
log = logging.getLogger("treadle.catalog")


def relative_to_root(path: Path, root: Path) -> Path | None:
    """`path` relative to `root`, also when one is absolute and the other not; None if outside.

    watchfiles reports absolute paths while the root is often given relative (`definitions`).
    """
    forms = ((lambda: path), (lambda: root)), ((lambda: path.absolute()), (lambda: root.absolute())), \
        ((lambda: path.resolve()), (lambda: root.resolve()))
    for p, r in forms:  # built one at a time: resolving a link loop raises
        try:
            return p().relative_to(r())
        except (ValueError, OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
            continue
    return None


def _visible(rel: Path) -> bool:
    return not any(part.startswith(".") for part in rel.parts)


def is_definition_file(path: Path, root: Path) -> bool:
    rel = relative_to_root(path, root)
    return rel is not None and path.suffix in SUFFIXES and _visible(rel) and not is_test_file(path.name)


def find_files(root: Path) -> list[Path]:
    """Definition files under `root`, never entering hidden folders (.git can be large)."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        base = Path(folder)
        # links that lead nowhere (a loop, a deleted target) are listed too: load_file
        # gives them their problem, so they are seen rather than silently missing
        found += [base / f for f in files if Path(f).suffix in SUFFIXES and not f.startswith(".")
                  and not is_test_file(f)  # `x.test.yaml` tests a workflow: it is not one (treadle test)
                  and ((base / f).is_file() or ((base / f).is_symlink() and not (base / f).is_dir()))]
    return sorted(found)


def find_test_files(root: Path) -> list[Path]:
    """The test files (`NAME.test.yaml`) under `root`, hidden folders left out."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(folder) / f for f in files if is_test_file(f) and not f.startswith(".")]
    return sorted(found)


class Catalog:
    def __init__(self, root: Path):
        self.root = root
        self._by_path: dict[str, Definition] = {}  # as loaded, before name checks
        self._view: dict[str, Definition] = {}  # path -> definition with name problems added
        self._by_name: dict[str, Definition] = {}
        self._good: dict[str, Definition] = {}  # path -> last version that loaded cleanly
        self.git: GitState | None = None
        self._git_seen: dict[str, str] = {}  # path -> version of the text the git facts were read for
        self.generation = 0
        self.loaded = False  # a first full load has happened (/ready)
        # reloads come from the watcher's thread and from a git sync's: one at a time
        self._lock = threading.RLock()
        self._git_lock = threading.Lock()

    def load_all(self) -> None:
        with self._lock:  # a reload waits: files it read must not be replaced by an older scan
            loaded = {self._rel(p): load_file(p, self._rel(p), self.root) for p in find_files(self.root)} if self.root.is_dir() else {}
            self._swap(loaded)
            self.loaded = True

    def load_texts(self, texts: dict[str, str]) -> None:
        """Load the folder as given in memory, relative path -> text (a git revision's
        files for `treadle plan`): the same checks as files on disk."""
        with self._lock:
            self._swap({rel: load_text(text, rel, base_dir=self.root) for rel, text in texts.items()
                        if Path(rel).suffix in SUFFIXES and _visible(Path(rel)) and not is_test_file(rel)})

    def reload(self, paths: Iterable[Path]) -> list[str]:
        """Reload changed files (removed ones leave); returns the relative paths touched.

        A folder that appears is scanned, one that goes takes its files with it: a
        folder moved in or out (or created by `git checkout`) brings no event per file.
        """
        with self._lock:
            loaded = dict(self._by_path)
            touched: list[str] = []
            for path in paths:
                try:
                    self._reload_one(path, loaded, touched)
                except Exception as exc:  # one bad entry never keeps the others of the change out
                    log.warning("cannot reload %s: %s", path, exc)
            if touched:
                self._swap(loaded)
            return list(dict.fromkeys(touched))

    def _reload_one(self, path: Path, loaded: dict[str, Definition], touched: list[str]) -> None:
        """Bring `loaded` up to date with one changed path (a file or a folder)."""
        relative = relative_to_root(path, self.root)
        if relative is None or not _visible(relative) or relative == Path("."):
            return  # outside the folder, or hidden (.git): never a definition
        rel = relative.as_posix()
        inside = [r for r in loaded if r.startswith(rel + "/")]
        if path.is_dir():
            found = {self._rel_of(p) for p in find_files(path)}
            found.discard(None)
            for r in inside:
                if r not in found:
                    loaded.pop(r)
                    touched.append(r)
            for r in sorted(r for r in found if r is not None):
                loaded[r] = load_file(self.root / r, r, self.root)
                touched.append(r)
            if rel in loaded:  # a file became a folder
                loaded.pop(rel)
                touched.append(rel)
            return
        for r in inside:  # a folder went (moved away, deleted, or now a file)
            loaded.pop(r)
            touched.append(r)
        if path.suffix not in SUFFIXES or is_test_file(path.name):
            return
        if path.is_file() or path.is_symlink():  # a link that leads nowhere is listed with its problem
            loaded[rel] = load_file(path, rel, self.root)
            touched.append(rel)
        elif loaded.pop(rel, None) is not None:
            touched.append(rel)

    def stale(self, slack: float = 0.1) -> list[Path]:
        """Files added, changed or gone since they were loaded: what a watch that
        began after the load must reload so that no save in between is missed."""
        with self._lock:
            loaded_at = {rel: d.loaded_at for rel, d in self._by_path.items()}
        out = []
        for path in find_files(self.root) if self.root.is_dir() else []:
            at = loaded_at.pop(self._rel(path), None)
            try:
                if at is None or path.stat().st_mtime >= at - slack:  # timestamps are coarse: some slack
                    out.append(path)
            except OSError:
                out.append(path)
        return out + [self.root / rel for rel in loaded_at]

    def _rel_of(self, path: Path) -> str | None:
        relative = relative_to_root(path, self.root)
        return relative.as_posix() if relative is not None else None

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()  # paths found under the root itself

    def _swap(self, loaded: dict[str, Definition]) -> None:
        counts = Counter(d.name for d in loaded.values())
        view: dict[str, Definition] = {}
        good = {rel: d for rel, d in self._good.items() if rel in loaded}  # deleted files leave
        loaded = dict(sorted(loaded.items()))
        # what a file says about another (a `workflow:` step's target and params, `after`)
        across = crossfile.check(d for d in loaded.values() if counts[d.name] == 1)
        for rel, definition in loaded.items():
            if rel in across:
                definition = replace(definition, spec=None, dag=None, problems=sorted(
                    [*definition.problems, *across[rel]], key=lambda p: (p.line, p.column)))
            if counts[definition.name] > 1:
                others = sorted(r for r, d in loaded.items() if d.name == definition.name and r != rel)
                problem = Problem(rel, *definition.name_at, f"workflow name '{definition.name}' is also used by {', '.join(others)}; names must be unique (rename a file or set `name:`)")
                definition = replace(definition, problems=[*definition.problems, problem], spec=None, dag=None)
            if definition.valid:
                good[rel] = definition
            elif rel in good:
                # a broken edit never takes a working workflow away: the last good
                # version stays in force, carrying the new text's problems
                definition = replace(good[rel], broken=definition)
            self._apply_git(rel, definition)
            view[rel] = definition
        by_name: dict[str, Definition] = {}
        for definition in view.values():  # a name clash: the one still in force answers
            if definition.name not in by_name or (definition.valid and not by_name[definition.name].valid):
                by_name[definition.name] = definition
        self._good = good
        self._by_path = loaded
        self._view, self._by_name = view, by_name
        self.generation += 1

    # -- reading -----------------------------------------------------------------

    def get(self, name: str) -> Definition | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return sorted({d.name for d in self._view.values()})

    def entries(self) -> list[Definition]:
        return sorted(self._view.values(), key=lambda d: (d.name, d.path))

    def problems(self) -> list[Problem]:
        """Problems of the files as they are on disk."""
        return [p for d in self.entries() for p in d.current_problems]

    # -- git -------------------------------------------------------------------

    def refresh_git(self) -> None:
        """Read where each file stands in git (a few `git` calls); safe in a worker thread."""
        with self._git_lock:  # one read at a time: the last applied is the last read
            with self._lock:
                seen = {rel: (d.broken or d).version for rel, d in self._view.items()}
            state = read_state(self.root, list(seen))  # slow: reloads go on meanwhile
            with self._lock:
                self.git, self._git_seen = state, seen
                for rel, definition in self._view.items():
                    self._apply_git(rel, definition)

    def _apply_git(self, rel: str, definition: Definition) -> None:
        if self.git is None:
            return  # not in a work tree (or not read yet)
        # the git facts describe the file's current text; an older version kept in
        # force after a broken edit keeps what it had when it loaded
        current = definition.broken if definition.broken is not None else definition
        facts = self.git.of(rel)
        if facts is None:  # a file that came after the last read: untracked, as far as is known
            current.commit, current.dirty = None, True
        elif self._git_seen.get(rel) == current.version:
            current.commit, current.dirty = facts.commit, facts.dirty
        else:
            # a text loaded after git was read: compare it with the committed blob
            # rather than hand it the facts of the text git saw
            data = current.source.encode("utf-8")
            current.commit, current.dirty = facts.commit, facts.blob is None or blob_id(data, facts.blob) != facts.blob
