"""The definitions folder as a catalog: every file loaded, valid or not.

A file that fails to load stays in the catalog carrying its problems, so it can be
shown; it never stops the others from loading. Names must be unique across the
folder: two files with one name are both reported. Updates build a new mapping
and swap it in one assignment, so readers never see a half-reloaded catalog.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from .errors import Problem
from .gitinfo import GitState, read_state
from .loader import Definition, load_file

SUFFIXES = (".yaml", ".yml")


def relative_to_root(path: Path, root: Path) -> Path | None:
    """`path` relative to `root`, also when one is absolute and the other not; None if outside.

    watchfiles reports absolute paths while the root is often given relative (`definitions`).
    """
    for p, r in ((path, root), (path.absolute(), root.absolute()), (path.resolve(), root.resolve())):
        try:
            return p.relative_to(r)
        except ValueError:
            continue
    return None


def _visible(rel: Path) -> bool:
    return not any(part.startswith(".") for part in rel.parts)


def is_definition_file(path: Path, root: Path) -> bool:
    rel = relative_to_root(path, root)
    return rel is not None and path.suffix in SUFFIXES and _visible(rel)


def find_files(root: Path) -> list[Path]:
    """Definition files under `root`, never entering hidden folders (.git can be large)."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        base = Path(folder)
        found += [base / f for f in files if Path(f).suffix in SUFFIXES and not f.startswith(".") and (base / f).is_file()]
    return sorted(found)


class Catalog:
    def __init__(self, root: Path):
        self.root = root
        self._by_path: dict[str, Definition] = {}  # as loaded, before name checks
        self._view: dict[str, Definition] = {}  # path -> definition with name problems added
        self._by_name: dict[str, Definition] = {}
        self._good: dict[str, Definition] = {}  # path -> last version that loaded cleanly
        self.git: GitState | None = None
        self.generation = 0

    def load_all(self) -> None:
        loaded = {self._rel(p): load_file(p, self._rel(p)) for p in find_files(self.root)} if self.root.is_dir() else {}
        self._swap(loaded)

    def reload(self, paths: Iterable[Path]) -> list[str]:
        """Reload changed files (removed ones leave); returns the relative paths touched."""
        loaded = dict(self._by_path)
        touched = []
        for path in paths:
            relative = relative_to_root(path, self.root)
            if relative is None or not _visible(relative):
                continue  # outside the folder, or hidden (.git): never a definition
            if path.is_dir() or (not path.exists() and path.suffix not in SUFFIXES):
                self.load_all()  # a folder came or went: rescan, it is cheap enough
                return ["*"]
            if path.suffix not in SUFFIXES:
                continue
            rel = relative.as_posix()
            touched.append(rel)
            if path.is_file():
                loaded[rel] = load_file(path, rel)
            else:
                loaded.pop(rel, None)
        if touched:
            self._swap(loaded)
        return touched

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()  # paths found under the root itself

    def _swap(self, loaded: dict[str, Definition]) -> None:
        counts = Counter(d.name for d in loaded.values())
        view: dict[str, Definition] = {}
        good = {rel: d for rel, d in self._good.items() if rel in loaded}  # deleted files leave
        for rel, definition in loaded.items():
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
        self._good = good
        self._by_path = loaded
        self._view, self._by_name = view, {d.name: d for d in view.values()}
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
        """Read where each file stands in git (two `git` calls); safe in a worker thread."""
        self.git = read_state(self.root, list(self._view))
        for rel, definition in list(self._view.items()):
            self._apply_git(rel, definition)

    def _apply_git(self, rel: str, definition: Definition) -> None:
        facts = self.git.of(rel) if self.git is not None else None
        if facts is None:
            return
        # the git facts describe the file's current text; an older version kept in
        # force after a broken edit keeps what it had when it loaded
        current = definition.broken if definition.broken is not None else definition
        current.commit, current.dirty = facts.commit, facts.dirty
