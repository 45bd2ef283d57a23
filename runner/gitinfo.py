"""Where each definition file stands in git: the commit that last touched it, and
whether it has uncommitted changes. Two `git` calls cover a whole folder.

Everything here degrades to "unknown" (None) when the folder is not in a git work
tree or git is missing: versions by content hash work without git.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GitFile:
    commit: str | None  # full hash of the last commit touching the file; None if never committed
    dirty: bool  # uncommitted changes (modified, staged, or untracked)


@dataclass(frozen=True)
class GitState:
    top: Path  # the work tree's top folder
    head: str | None
    files: dict[str, GitFile]  # by path relative to the definitions folder

    def of(self, rel: str) -> GitFile | None:
        return self.files.get(rel)


def _git(cwd: Path, *args: str, timeout: float = 10) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.decode("utf-8", "replace") if done.returncode == 0 else None


def read_state(root: Path, rel_paths: list[str]) -> GitState | None:
    """Git facts for `rel_paths` (relative to `root`), or None outside a work tree."""
    if shutil.which("git") is None or not root.is_dir():
        return None
    top_text = _git(root, "rev-parse", "--show-toplevel")
    if not top_text:
        return None
    top = Path(top_text.strip()).resolve()
    prefix = root.resolve().relative_to(top).as_posix()
    prefix = "" if prefix == "." else prefix + "/"
    head = (_git(root, "rev-parse", "HEAD") or "").strip() or None
    wanted = {prefix + rel: rel for rel in rel_paths}
    dirty: set[str] = set()
    status = _git(top, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--", prefix or ".")
    entries = (status or "").split("\0")
    i = 0
    while i < len(entries):
        entry = entries[i]
        if len(entry) > 3:
            dirty.add(entry[3:])
            if entry[0] in "RC":  # renames carry the old path as the next entry
                i += 1
        i += 1
    commits: dict[str, str] = {}
    if head:
        log = _git(top, "log", "--format=%x01%H", "--name-only", "-z", "--", prefix or ".", timeout=30) or ""
        for block in log.split("\x01")[1:]:
            sha, _, names = block.lstrip("\0").partition("\n")
            for name in names.replace("\n", "\0").split("\0"):
                if name and name in wanted and name not in commits:
                    commits[name] = sha.strip("\0\n ")
            if len(commits) == len(wanted):
                break
    return GitState(
        top=top, head=head,
        files={rel: GitFile(commit=commits.get(full), dirty=full in dirty) for full, rel in wanted.items()},
    )
