"""Git facts of definition files (runner/gitinfo.py) and how the catalog applies them,
with the real `git` binary on real repositories in a temp folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from runner.gitops.catalog import Catalog
from runner.gitops.gitinfo import read_state

from .git_support import commit_all, git

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git binary")


WF = "steps:\n  - id: a\n    log: {}\n"


def committed(repo: Path) -> tuple[Catalog, str]:
    """wf.yaml committed in `repo`, and a catalog of `repo` that has read git."""
    (repo / "wf.yaml").write_text(WF.format("one"))
    sha = commit_all(repo, "one")
    catalog = Catalog(repo)
    catalog.load_all()
    catalog.refresh_git()
    return catalog, sha


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    top = tmp_path / "repo"
    top.mkdir()
    git(top, "init", "-q")
    return top


def test_outside_a_work_tree_there_are_no_git_facts(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(WF.format("x"))
    assert read_state(tmp_path, ["wf.yaml"]) is None
    assert read_state(tmp_path / "missing", ["wf.yaml"]) is None
    catalog = Catalog(tmp_path)
    catalog.load_all()
    catalog.refresh_git()
    d = catalog.get("wf")
    assert d is not None and d.revision is None and not d.dirty


def test_last_commit_per_file_dirty_and_untracked(repo: Path) -> None:
    defs = repo / "defs"
    (defs / "team").mkdir(parents=True)
    (defs / "a.yaml").write_text(WF.format("a"))
    (defs / "team" / "b c é.yaml").write_text(WF.format("b"))  # a space and an accent: paths go through -z
    (repo / "outside.yaml").write_text(WF.format("o"))
    first = commit_all(repo, "one")
    (defs / "a.yaml").write_text(WF.format("a2"))
    second = commit_all(repo, "two")
    (defs / "team" / "b c é.yaml").write_text(WF.format("b2"))  # modified, not committed
    (defs / "new.yaml").write_text(WF.format("n"))  # untracked
    state = read_state(defs, ["a.yaml", "team/b c é.yaml", "new.yaml"])
    assert state is not None
    assert state.top == repo.resolve() and state.head == second
    assert state.of("a.yaml").commit == second and not state.of("a.yaml").dirty
    assert state.of("team/b c é.yaml").commit == first and state.of("team/b c é.yaml").dirty
    assert state.of("new.yaml").commit is None and state.of("new.yaml").dirty
    assert state.of("outside.yaml") is None


def test_staged_rename_is_dirty_under_its_new_name(repo: Path) -> None:
    (repo / "old.yaml").write_text(WF.format("r"))
    sha = commit_all(repo, "one")
    git(repo, "mv", "old.yaml", "new.yaml")
    state = read_state(repo, ["new.yaml"])
    assert state is not None
    assert state.of("new.yaml").dirty
    # the content was committed under the old name; the new path has no commit yet
    assert state.of("new.yaml").commit in (None, sha)


def test_catalog_revision_is_commit_plus_dirty(repo: Path) -> None:
    catalog, sha = committed(repo)
    assert catalog.get("wf").revision == sha
    (repo / "wf.yaml").write_text(WF.format("two"))
    catalog.refresh_git()
    assert catalog.get("wf").revision == sha + "+dirty"
    (repo / "fresh.yaml").write_text(WF.format("f"))
    catalog.load_all()
    catalog.refresh_git()
    assert catalog.get("fresh").revision == "uncommitted"


def test_a_reload_never_gives_new_text_the_old_texts_git_facts(repo: Path) -> None:
    """Between a save and the next git read, the catalog must not claim that the new
    text is the committed one: a run started then would record a wrong commit."""
    catalog, sha = committed(repo)
    assert catalog.get("wf").revision == sha
    (repo / "wf.yaml").write_text(WF.format("two"))
    catalog.reload([repo / "wf.yaml"])  # no git call in between
    assert catalog.get("wf").revision == sha + "+dirty"
    (repo / "wf.yaml").write_text(WF.format("one"))  # back to the committed text
    catalog.reload([repo / "wf.yaml"])
    assert catalog.get("wf").revision == sha
    (repo / "added.yaml").write_text(WF.format("a"))  # unknown to the last git read
    catalog.reload([repo / "added.yaml"])
    assert catalog.get("added").revision == "uncommitted"


def test_a_broken_edit_keeps_the_git_facts_of_the_version_in_force(repo: Path) -> None:
    catalog, sha = committed(repo)
    (repo / "wf.yaml").write_text("steps:\n  - id: a\n    lgo: x\n")
    catalog.reload([repo / "wf.yaml"])
    catalog.refresh_git()
    d = catalog.get("wf")
    assert d.valid and not d.healthy
    assert d.revision == sha  # what runs still use
    assert d.broken is not None and d.broken.revision == sha + "+dirty"


def test_reading_git_never_writes_the_index(repo: Path) -> None:
    """`git status` refreshes the index under index.lock when it can; done behind the
    user's back, that makes their own `git checkout` fail with "index.lock exists"."""
    (repo / "wf.yaml").write_text(WF.format("one"))
    commit_all(repo, "one")
    index = repo / ".git" / "index"
    stat = os.stat(repo / "wf.yaml")
    os.utime(repo / "wf.yaml", ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # stale stat info
    before = index.stat()
    state = read_state(repo, ["wf.yaml"])
    assert state is not None and not state.of("wf.yaml").dirty
    after = index.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
