"""The definitions folder as it was at a git revision, read without checking anything out.

`treadle plan` compares two such snapshots (or one and the working tree): the texts
come straight from git's object store (`ls-tree` + one `cat-file --batch`), so the
working tree, the index and the checked-out branch are never touched.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import RevisionError
from .catalog import Catalog

_TIMEOUT = 60.0


@dataclass(frozen=True)
class Revision:
    rev: str | None  # as the user wrote it; None: the working tree
    commit: str | None  # full id; None for the working tree
    subject: str = ""

    @property
    def label(self) -> str:
        if self.commit is None:
            return "working tree"
        short = self.commit[:10]
        shown = short if self.rev in (None, self.commit, short) else f"{self.rev} ({short})"
        return f"{shown} \"{self.subject}\"" if self.subject else shown

    def as_json(self) -> dict:
        return {"rev": self.rev or "working tree", "commit": self.commit, "subject": self.subject}


class Repository:
    """The git work tree a definitions folder lives in."""

    def __init__(self, folder: Path):
        self.folder = folder
        if not folder.is_dir():
            raise RevisionError(f"{folder}: no such folder; pass --definitions DIR (the folder your workflows are in)")
        try:
            top = self._git(folder, "rev-parse", "--show-toplevel").strip()
        except RevisionError:
            raise RevisionError(f"{folder} is not inside a git repository; plan compares git revisions "
                                "(run it in your repository's clone)") from None
        self.top = Path(top)
        # the folder's path inside the repository, as git names it in a tree
        self.prefix = os.path.relpath(folder.resolve(), self.top.resolve()).replace(os.sep, "/")
        if self.prefix == ".":
            self.prefix = ""

    @staticmethod
    def _git(cwd: Path, *args: str, data: bytes | None = None) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=cwd, input=data, capture_output=True, timeout=_TIMEOUT,
                                  check=False, env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"})
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RevisionError(f"cannot run git: {exc}") from None
        if done.returncode != 0:
            raise RevisionError(done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:][0]
                                if done.stderr.strip() else f"git {args[0]} failed")
        return done.stdout.decode("utf-8", "replace")

    def resolve(self, rev: str | None) -> Revision:
        """`rev` (a branch, tag, commit, `HEAD~2`, ...) as a commit; None is the working tree."""
        if rev is None:
            return Revision(None, None)
        if rev.startswith("-"):
            raise RevisionError(f"'{rev}' is not a revision")
        try:
            commit = self._git(self.top, "rev-parse", "--verify", "--quiet", "--end-of-options",
                               f"{rev}^{{commit}}").strip()
        except RevisionError:
            raise RevisionError(f"unknown revision '{rev}': name a commit, branch or tag "
                                "(git log --oneline shows them)") from None
        subject = self._git(self.top, "log", "-1", "--format=%s", commit).strip()
        return Revision(rev, commit, subject)

    def texts(self, revision: Revision) -> dict[str, str] | None:
        """Relative path -> text of the folder's files at `revision`; None for the
        working tree (read it from disk)."""
        if revision.commit is None:
            return None
        spec = f"{revision.commit}:{self.prefix}" if self.prefix else f"{revision.commit}:"
        try:
            listing = self._git(self.top, "ls-tree", "-r", "-z", spec)
        except RevisionError:
            return {}  # the folder did not exist at that revision
        blobs: list[tuple[str, str]] = []
        for entry in filter(None, listing.split("\0")):
            meta, _, path = entry.partition("\t")
            mode, kind, sha = meta.split()
            if kind == "blob" and mode != "120000":  # a symlink's blob is its target's name, not a file
                blobs.append((path, sha))
        if not blobs:
            return {}
        raw = subprocess.run(["git", "cat-file", "--batch"], cwd=self.top, capture_output=True, timeout=_TIMEOUT,
                             input="".join(f"{sha}\n" for _, sha in blobs).encode(), check=True).stdout
        out: dict[str, str] = {}
        at = 0
        for path, _sha in blobs:  # each answer: "<sha> blob <size>\n<bytes>\n"
            header_end = raw.index(b"\n", at)
            size = int(raw[at:header_end].split()[2])
            out[path] = raw[header_end + 1:header_end + 1 + size].decode("utf-8", "replace")
            at = header_end + 1 + size + 1
        return out

    def catalog(self, revision: Revision) -> Catalog:
        """The folder at `revision`, loaded and checked like the live catalog."""
        catalog = Catalog(self.folder)
        texts = self.texts(revision)
        if texts is None:
            catalog.load_all()
        else:
            catalog.load_texts(texts)
        return catalog
