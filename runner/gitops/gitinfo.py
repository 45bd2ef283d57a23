"""Where each definition file stands in git: the commit that last touched it, and
whether it has uncommitted changes. A few `git` calls cover a whole folder.

The blob id of each file at HEAD is kept too, so that a text loaded after the last
read can be told apart from the committed one without calling git again (a save is
reloaded at once; git is read just after).

Everything here degrades to "unknown" (None) when the folder is not in a git work
tree or git is missing: versions by content hash work without git.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GitFile:
    commit: str | None  # full hash of the last commit touching the file; None if never committed
    dirty: bool  # uncommitted changes (modified, staged, or untracked)
    blob: str | None = None  # the file's blob id at HEAD; None when HEAD has no such file


@dataclass(frozen=True)
class GitState:
    top: Path  # the work tree's top folder
    head: str | None
    files: dict[str, GitFile]  # by path relative to the definitions folder
    git_dir: Path | None = None  # the repository folder (`.git`), for `head_stamp`

    def of(self, rel: str) -> GitFile | None:
        return self.files.get(rel)


def blob_id(data: bytes, like: str | None = None) -> str:
    """The id git gives `data` as a blob (sha256 when `like` is a 64-digit id)."""
    algo = hashlib.sha256 if like is not None and len(like) == 64 else hashlib.sha1
    return algo(b"blob %d\0" % len(data) + data).hexdigest()


def head_stamp(git_dir: Path | None) -> tuple:
    """Changes whenever HEAD moves or the index is written (commit, checkout, reset,
    pull, add): a cheap way to know git must be read again, without running it."""
    if git_dir is None:
        return ()
    stamp = []
    for name in ("HEAD", "index", "logs/HEAD", "packed-refs"):
        try:
            st = (git_dir / name).stat()
            stamp.append((st.st_mtime_ns, st.st_size))
        except OSError:
            stamp.append(None)
    return tuple(stamp)


# Treadle reads git behind the user's back: `git status` must not take the index lock
# to refresh the index, or the user's own `git checkout`/`commit` fails with
# "index.lock: File exists" while it runs. Never prompt, never page.
def _env() -> dict[str, str]:
    return {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat"}


def _git(cwd: Path, *args: str, timeout: float = 10) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, timeout=timeout, check=False,
                              env=_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.decode("utf-8", "replace") if done.returncode == 0 else None


def read_state(root: Path, rel_paths: list[str]) -> GitState | None:
    """Git facts for `rel_paths` (relative to `root`), or None outside a work tree."""
    if shutil.which("git") is None or not root.is_dir():
        return None
    top_text = _git(root, "rev-parse", "--show-toplevel", "--absolute-git-dir")
    if not top_text or len(top_text.splitlines()) < 2:
        return None  # outside a work tree (or inside a bare repository / a .git folder)
    top_line, git_dir_line = top_text.splitlines()[:2]
    top = Path(top_line.strip()).resolve()
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
    blobs: dict[str, str] = {}
    if head:
        tree = _git(top, "ls-tree", "-r", "-z", "HEAD", "--", prefix or ".") or ""
        for entry in tree.split("\0"):
            meta, _, name = entry.partition("\t")
            parts = meta.split()
            if name in wanted and len(parts) == 3 and parts[1] == "blob":
                blobs[name] = parts[2]
    # the last commit touching each file HEAD has; a file HEAD lacks (new, or deleted
    # and written again) has no commit to name, and would make the walk read all history
    commits = _last_commits(top, prefix or ".", set(blobs)) if blobs else {}
    return GitState(
        top=top, head=head, git_dir=Path(git_dir_line.strip()),
        files={rel: GitFile(commit=commits.get(full), dirty=full in dirty, blob=blobs.get(full))
               for full, rel in wanted.items()},
    )


def _last_commits(top: Path, pathspec: str, names: set[str], timeout: float = 30) -> dict[str, str]:
    """The newest commit touching each of `names`; reads `git log` only as far as needed."""
    commits: dict[str, str] = {}
    try:
        proc = subprocess.Popen(["git", "-C", str(top), "log", "--format=%x01%H", "--name-only", "-z", "--", pathspec],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_env())
    except OSError:
        return commits
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    pending = b""
    try:
        while len(commits) < len(names) and time.monotonic() < deadline:
            chunk = proc.stdout.read1(65536)
            pending += chunk
            blocks = pending.split(b"\x01")
            pending = blocks.pop() if chunk else b""  # the last block may still be growing
            for block in blocks:
                sha, _, listed = block.decode("utf-8", "replace").lstrip("\0").partition("\n")
                for name in listed.replace("\n", "\0").split("\0"):
                    if name in names and name not in commits:
                        commits[name] = sha.strip("\0\n ")
            if not chunk:
                break
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    return commits
