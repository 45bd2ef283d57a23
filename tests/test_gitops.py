"""The GitOps loop (issue 4) end to end: real files in a temp folder, the real watcher
inside a real uvicorn, the real `git` binary (a local bare repository through file://
for sync), and the real `treadle` command line.

Every wait is a poll (20 ms) with a 10 s deadline that only stops a broken build from
hanging; no assertion is about how long something took.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from runner.dsl.loader import version_of
from runner.gitops.catalog import Catalog
from runner.gitops.watcher import watch

from .git_support import commit_all, git
from .web_server import running_server

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git binary")

REPO = Path(__file__).resolve().parent.parent
FINISHED = {"succeeded", "failed", "cancelled"}
T = TypeVar("T")


# -- helpers ---------------------------------------------------------------------------


def poll(probe: Callable[[], T], what: str, deadline_s: float = 10) -> T:
    """Call `probe` every 20 ms until it returns something truthy; fail after the deadline."""
    end = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < end:
        last = probe()
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError(f"{what}: not reached within {deadline_s:g} s (last: {last!r})")


def write(path: Path, text: str) -> str:
    """Write a definition (dedented); return its version hash."""
    text = textwrap.dedent(text).lstrip()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return version_of(text)


def editor_save(path: Path, text: str, tmp_name: str) -> str:
    """Save the way many editors do: write a temp file beside it, rename it over."""
    text = textwrap.dedent(text).lstrip()
    tmp = path.with_name(tmp_name)
    tmp.write_text(text)
    os.replace(tmp, path)
    return version_of(text)


def workflow(client: httpx.Client, name: str) -> dict[str, Any] | None:
    r = client.get(f"/api/workflows/{name}")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    return r.json()


def wait_version(client: httpx.Client, name: str, want: str, field: str = "version") -> dict[str, Any]:
    return poll(lambda: (w := workflow(client, name)) is not None and w[field] == want and w,
                f"{name}.{field} == {want}")


def catalog(client: httpx.Client) -> dict[str, dict[str, Any]]:
    body = client.get("/api/workflows", params={"limit": 500}).json()
    assert body["total"] == len(body["items"])
    return {w["name"]: w for w in body["items"]}


def wait_names(client: httpx.Client, names: set[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}

    def probe() -> bool:
        found.clear()
        found.update(catalog(client))
        return set(found) == names
    poll(probe, f"workflows == {sorted(names)}")
    return found


def start(client: httpx.Client, name: str, **params: Any) -> str:
    r = client.post(f"/api/workflows/{name}/runs", json={"params": params})
    assert r.status_code == 202, r.text
    return r.json()["run_id"]


def wait_run(client: httpx.Client, run_id: str) -> dict[str, Any]:
    return poll(lambda: (d := client.get(f"/api/runs/{run_id}").json())["status"] in FINISHED and d,
                f"run {run_id} finished")


def steps_of(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in doc["steps"]}


@pytest.fixture
def defs(tmp_path: Path) -> Path:
    folder = tmp_path / "definitions"
    folder.mkdir()
    return folder


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'treadle.db'}"


@contextmanager
def serve(defs: Path, db: str, **settings: Any) -> Iterator[httpx.Client]:
    with running_server(defs, db, **settings) as base, httpx.Client(base_url=base, timeout=10) as client:
        yield client


def step_wf(text: str) -> str:
    return f"steps:\n  - id: s\n    log: {text}\n"


# -- hot reload ------------------------------------------------------------------------


def test_an_edit_shows_up_as_the_new_version(defs: Path, db: str) -> None:
    first = write(defs / "hello.yaml", step_wf("one"))
    with serve(defs, db) as client:
        w = workflow(client, "hello")
        assert w is not None and w["version"] == first and w["valid"] and w["in_force"]
        for i in range(2, 5):
            text = f"description: edit {i}\nsteps:\n  - id: greet\n    log: hello {i}\n  - id: extra{i}\n    log: more\n"
            want = write(defs / "hello.yaml", text)
            w = wait_version(client, "hello", want)
            assert w["file_version"] == want and w["valid"] and w["in_force"] and w["errors"] == []
            assert w["description"] == f"edit {i}" and w["source"] == text
            assert [s["id"] for s in w["steps"]] == ["greet", f"extra{i}"]


GOOD = """
    steps:
      - id: hello
        run: echo WORD
"""
BROKEN = """
    steps:
      - id: hello
        run: echo broken
        depend: [x]
"""
BROKEN_LINE = "wf.yaml:4:5: steps[0].depend: unknown key 'depend'; did you mean 'needs'?"


def test_a_broken_edit_keeps_the_last_good_version_in_force_until_reverted(defs: Path, db: str) -> None:
    good = write(defs / "wf.yaml", GOOD.replace("WORD", "one"))
    write(defs / "never.yaml", "steps:\n  - id: a\n    lgo: x\n")
    with serve(defs, db) as client:
        never = workflow(client, "never")
        assert never is not None and never["valid"] is False and never["in_force"] is False
        r = client.post("/api/workflows/never/runs", json={"params": {}})
        assert r.status_code == 409 and r.json()["error_code"] == "WORKFLOW_INVALID", r.text

        bad = write(defs / "wf.yaml", BROKEN)
        w = wait_version(client, "wf", bad, "file_version")
        assert w["valid"] is False and w["in_force"] is True
        assert w["version"] == good and w["file_version"] == bad
        assert w["errors"] == [BROKEN_LINE]
        assert w["source"] == textwrap.dedent(BROKEN).lstrip()  # the text on disk: the errors point into it
        listed = catalog(client)["wf"]
        assert (listed["valid"], listed["in_force"], listed["version"], listed["errors"]) == (False, True, good, [BROKEN_LINE])
        assert client.get("/health").json()["workflows"] == {"total": 2, "valid": 0, "broken": 2}

        doc = wait_run(client, start(client, "wf"))  # runs keep starting, on the last good version
        assert doc["status"] == "succeeded" and doc["version"] == good
        assert steps_of(doc)["hello"]["output"] == "one"
        assert "echo one" in json.dumps(steps_of(doc)["hello"]["input"])

        page = html.unescape(client.get("/").text)
        assert BROKEN_LINE in page

        reverted = write(defs / "wf.yaml", GOOD.replace("WORD", "one"))  # `git checkout wf.yaml`
        assert reverted == good
        w = wait_version(client, "wf", good, "file_version")
        assert w["valid"] is True and w["in_force"] and w["version"] == good and w["errors"] == []
        assert BROKEN_LINE not in html.unescape(client.get("/").text)

        fixed = write(defs / "wf.yaml", GOOD.replace("WORD", "two"))
        wait_version(client, "wf", fixed)
        doc = wait_run(client, start(client, "wf"))
        assert doc["version"] == fixed and steps_of(doc)["hello"]["output"] == "two"


GATED = """
    params:
      gate: {type: string, required: true}
    defaults: {timeout: 20s}
    steps:
      - id: wait
        run: 'while [ ! -f "{{ params.gate }}" ]; do sleep 0.02; done; echo WORD'
      - id: after
        log: "WORD saw {{ steps.wait.output }}"
"""


def test_a_run_started_before_an_edit_finishes_on_its_version(defs: Path, db: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    old = write(defs / "gated.yaml", GATED.replace("WORD", "old"))
    with serve(defs, db) as client:
        run_id = start(client, "gated", gate=str(gate))
        poll(lambda: steps_of(client.get(f"/api/runs/{run_id}").json())["wait"]["status"] == "running",
             "the first step waits on its gate")
        new = write(defs / "gated.yaml", GATED.replace("WORD", "new"))
        wait_version(client, "gated", new)
        gate.touch()
        doc = wait_run(client, run_id)
        assert doc["status"] == "succeeded" and doc["version"] == old
        steps = steps_of(doc)
        assert "echo old" in json.dumps(steps["wait"]["input"]) and "new" not in json.dumps(steps["wait"]["input"])
        assert steps["wait"]["output"] == "old" and steps["after"]["output"] == "old saw old"
        # the exact source it ran stays readable
        assert "echo old" in client.get(f"/api/workflows/gated/versions/{old}").json()["source"]
        doc = wait_run(client, start(client, "gated", gate=str(gate)))
        assert doc["version"] == new and steps_of(doc)["after"]["output"] == "new saw new"


def test_adding_renaming_and_deleting_files_and_folders(defs: Path, db: str, tmp_path: Path) -> None:
    write(defs / "a.yaml", step_wf("a"))
    with serve(defs, db) as client:
        wait_names(client, {"a"})
        write(defs / "b.yaml", step_wf("b"))
        wait_names(client, {"a", "b"})
        run_id = start(client, "b")
        assert wait_run(client, run_id)["status"] == "succeeded"

        os.rename(defs / "b.yaml", defs / "c.yml")
        assert wait_names(client, {"a", "c"})["c"]["path"] == "c.yml"
        (defs / "c.yml").unlink()
        wait_names(client, {"a"})
        assert workflow(client, "c") is None and workflow(client, "b") is None
        history = client.get("/api/runs", params={"workflow": "b"}).json()  # a deleted workflow's runs stay
        assert [r["id"] for r in history["items"]] == [run_id]
        assert client.get(f"/api/runs/{run_id}").json()["status"] == "succeeded"

        write(defs / ".hidden.yaml", "name: hidden\n" + step_wf("h"))  # hidden files and folders never load
        write(defs / ".cache" / "x.yaml", "name: cached\n" + step_wf("c"))
        team = defs / "team"
        team.mkdir()
        write(team / "x.yaml", step_wf("x"))
        write(team / "deeper" / "y.yaml", step_wf("y"))
        got = wait_names(client, {"a", "x", "y"})
        assert (got["x"]["path"], got["y"]["path"]) == ("team/x.yaml", "team/deeper/y.yaml")

        def paths() -> dict[str, str]:
            return {n: w["path"] for n, w in catalog(client).items()}

        os.rename(team, defs / "crew")  # one event for the folder, none per file
        poll(lambda: paths() == {"a": "a.yaml", "x": "crew/x.yaml", "y": "crew/deeper/y.yaml"}, "folder renamed")
        os.rename(defs / "crew", tmp_path / "parked")  # moved out of the definitions folder
        poll(lambda: paths() == {"a": "a.yaml"}, "folder moved out")
        os.rename(tmp_path / "parked", defs / "back")  # and in again
        poll(lambda: paths() == {"a": "a.yaml", "x": "back/x.yaml", "y": "back/deeper/y.yaml"}, "folder moved in")
        shutil.rmtree(defs / "back")
        poll(lambda: paths() == {"a": "a.yaml"}, "folder deleted")
        assert client.get("/health").json()["workflows"] == {"total": 1, "valid": 1, "broken": 0}


def test_a_save_between_the_first_load_and_the_watch_is_not_lost(defs: Path) -> None:
    """The server loads the folder, then starts watching: what changed in between
    brings no event, so the watch catches up once it is set up."""
    long_ago = time.time() - 3600
    for name in ("same", "edited", "deleted"):
        write(defs / f"{name}.yaml", step_wf(name))
        os.utime(defs / f"{name}.yaml", (long_ago, long_ago))
    folder = Catalog(defs)
    folder.load_all()
    edited = write(defs / "edited.yaml", step_wf("edited again"))
    (defs / "deleted.yaml").unlink()
    added = write(defs / "added.yaml", step_wf("added"))
    assert sorted(p.name for p in folder.stale()) == ["added.yaml", "deleted.yaml", "edited.yaml"]

    async def go() -> None:
        stop = asyncio.Event()
        watching = asyncio.create_task(watch(folder, stop=stop))
        try:
            end = time.monotonic() + 10
            while folder.names() != ["added", "edited", "same"] and time.monotonic() < end:
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            await asyncio.wait_for(watching, 10)

    asyncio.run(go())
    assert folder.names() == ["added", "edited", "same"]
    assert (folder.get("edited").version, folder.get("added").version) == (edited, added)


def test_editor_saves_through_a_temp_file_and_a_rename(defs: Path, db: str) -> None:
    target = defs / "edited.yaml"
    write(target, step_wf("0"))
    with serve(defs, db) as client:
        # temp names of various editors and libraries (a plain one, vim's, emacs', atomicwrites-like)
        for i, tmp in enumerate(["edited.yaml.tmp", ".edited.yaml.swp", ".#edited.yaml", "edited.yaml~", "4913",
                                 ".edited.yaml.XXXX1234"], 1):
            want = editor_save(target, step_wf(f"save {i}"), tmp)
            w = wait_version(client, "edited", want)
            assert w["valid"] and w["file_version"] == want
        # backup-then-write: the file is renamed away, then written anew
        os.rename(target, defs / "edited.yaml.bak")
        want = write(target, step_wf("after backup"))
        wait_version(client, "edited", want)
        assert set(catalog(client)) == {"edited"}
        assert sorted(p.name for p in defs.iterdir()) == ["edited.yaml", "edited.yaml.bak"]


def test_a_branch_switch_of_50_files_ends_in_the_right_catalog(defs: Path, db: str) -> None:
    git(defs, "init", "-q")
    main = {f"wf{i:02}.yaml": step_wf(f"main {i}") for i in range(50)}
    for rel, text in main.items():
        write(defs / rel, text)
    main_sha = commit_all(defs, "fifty on main")
    git(defs, "checkout", "-q", "-b", "other")
    other = {f"wf{i:02}.yaml": step_wf(f"other {i}") for i in range(25)}  # 25 changed, 25 deleted
    other |= {f"extra/deep/n{i:02}.yaml": step_wf(f"new {i}") for i in range(25)}  # 25 new, in a new folder
    for rel in main:
        (defs / rel).unlink()
    for rel, text in other.items():
        write(defs / rel, text)
    other_sha = commit_all(defs, "other branch")
    git(defs, "checkout", "-q", "main")
    assert not (defs / "extra").exists()

    def settled(texts: dict[str, str], sha: str) -> Callable[[], dict[str, Any] | None]:
        want = {Path(rel).stem: version_of(text) for rel, text in texts.items()}

        def probe() -> dict[str, Any] | None:
            items = catalog(client)
            got = {n: w["version"] for n, w in items.items()}
            ok = got == want and all(w["valid"] and w["commit"] == sha for w in items.values())
            return items if ok else None
        return probe

    with serve(defs, db) as client:
        poll(settled(main, main_sha), "the main branch loaded")
        git(defs, "checkout", "-q", "other")
        items = poll(settled(other, other_sha), "the other branch's 50 files, with its commit")
        assert items["n07"]["path"] == "extra/deep/n07.yaml"
        git(defs, "checkout", "-q", "main")
        poll(settled(main, main_sha), "back on main")


def test_a_checkout_that_removes_the_definitions_folder_and_brings_it_back(tmp_path: Path, db: str) -> None:
    repo = tmp_path / "repo"
    defs = repo / "definitions"
    write(defs / "wf.yaml", step_wf("one"))
    write(repo / "README.md", "workflows\n")
    git(repo, "init", "-q")
    commit_all(repo, "with definitions")
    git(repo, "checkout", "-q", "-b", "bare")
    git(repo, "rm", "-q", "-r", "definitions")
    commit_all(repo, "without")
    git(repo, "checkout", "-q", "main")
    with serve(defs, db) as client:
        wait_names(client, {"wf"})
        git(repo, "checkout", "-q", "bare")  # the watched folder itself goes away
        wait_names(client, set())
        git(repo, "checkout", "-q", "main")  # and comes back, with a new inode
        wait_names(client, {"wf"})
        write(defs / "more.yaml", step_wf("more"))  # and is watched again
        wait_names(client, {"wf", "more"})


# -- versions ----------------------------------------------------------------------------


def test_versions_list_source_and_diff(defs: Path, db: str) -> None:
    one = write(defs / "wf.yaml", step_wf("one"))
    write(defs / "other.yaml", step_wf("other"))
    with serve(defs, db) as client:
        # atomic saves: a plain write can be seen half done, which would be a version too
        two = editor_save(defs / "wf.yaml", step_wf("two") + "    depend: [x]\n", "wf.yaml.tmp")
        wait_version(client, "wf", two, "file_version")
        three = editor_save(defs / "wf.yaml", step_wf("three"), "wf.yaml.tmp")
        wait_version(client, "wf", three)
        page = poll(lambda: (b := client.get("/api/workflows/wf/versions").json())["total"] == 3 and b,
                    "three versions recorded")
        assert [i["version"] for i in page["items"]] == [three, two, one]  # newest first
        by = {i["version"]: i for i in page["items"]}
        assert [by[v]["valid"] for v in (one, two, three)] == [True, False, True]
        assert [by[v]["in_force"] for v in (one, two, three)] == [False, False, True]
        assert all(i["workflow"] == "wf" and i["path"] == "wf.yaml" and i["commit"] is None and i["created_at"]
                   for i in page["items"])  # not in git: no commit
        second = client.get("/api/workflows/wf/versions", params={"limit": 1, "page": 2}).json()
        assert [i["version"] for i in second["items"]] == [two] and second["total"] == 3

        src = client.get(f"/api/workflows/wf/versions/{one}").json()
        assert src["source"] == step_wf("one") and src["version"] == one and src["valid"] is True

        diff = client.get("/api/workflows/wf/diff", params={"from": one, "to": three}).json()
        assert (diff["workflow"], diff["from_version"], diff["to_version"]) == ("wf", one, three)
        assert f"--- wf.yaml @ {one}" in diff["diff"] and f"+++ wf.yaml @ {three}" in diff["diff"]
        assert "-    log: one\n" in diff["diff"] and "+    log: three\n" in diff["diff"]
        assert client.get("/api/workflows/wf/diff", params={"from": one, "to": one}).json()["diff"] == ""
        page = client.get("/workflows/wf/diff", params={"from": one, "to": three})  # the dashboard's diff
        assert page.status_code == 200 and "log: three" in html.unescape(page.text)
        # `to` defaults to the file's current text, a broken one included
        four = editor_save(defs / "wf.yaml", step_wf("four") + "    lgo: x\n", "wf.yaml.tmp")
        wait_version(client, "wf", four, "file_version")
        diff = client.get("/api/workflows/wf/diff", params={"from": three}).json()
        assert diff["to_version"] == four and "+    lgo: x\n" in diff["diff"]

        for url, params in [("/api/workflows/nope/versions", {}), (f"/api/workflows/wf/versions/{'0' * 12}", {}),
                            (f"/api/workflows/other/versions/{one}", {}),  # a version of another workflow
                            ("/api/workflows/wf/diff", {"from": "0" * 12, "to": one}),
                            ("/api/workflows/nope/diff", {"from": one})]:
            r = client.get(url, params=params)
            assert r.status_code == 404 and r.json()["error_code"] == "WORKFLOW_NOT_FOUND", (url, r.text)
        assert client.get("/api/workflows/wf/diff").status_code == 400  # `from` is required
        assert client.get("/api/workflows/wf/versions", params={"limit": 0}).status_code == 400
        r = client.post("/api/sync")  # not following a repository
        assert r.status_code == 409 and r.json()["error_code"] == "NOT_FOLLOWING_GIT"


def test_two_files_with_the_same_text_each_have_their_versions(defs: Path, db: str) -> None:
    same = write(defs / "a.yaml", step_wf("same"))
    write(defs / "b.yaml", step_wf("same"))
    with serve(defs, db) as client:
        poll(lambda: client.get("/api/workflows/a/versions").json()["total"] == 1, "a's version recorded")
        assert client.get("/api/workflows/b/versions").json()["total"] == 1
        assert client.get(f"/api/workflows/b/versions/{same}").status_code == 200


# -- git facts of runs and versions --------------------------------------------------------


def run_row(db: str, run_id: str) -> tuple[str, str | None]:
    with sqlite3.connect(db.removeprefix("sqlite:///")) as con:
        return con.execute('SELECT version, "commit" FROM run WHERE id = ?', (run_id,)).fetchone()


def test_runs_and_versions_record_the_commit_they_ran(tmp_path: Path, db: str) -> None:
    repo = tmp_path / "repo"
    defs = repo / "definitions"  # a folder inside the work tree, not its top
    first = write(defs / "wf.yaml", step_wf("one"))
    write(repo / "README.md", "workflows\n")
    git(repo, "init", "-q")
    sha = commit_all(repo, "one")
    with serve(defs, db) as client:
        assert workflow(client, "wf")["commit"] == sha
        run_id = start(client, "wf")
        doc = wait_run(client, run_id)
        assert run_row(db, run_id) == (first, sha)  # recorded...
        assert doc["commit"] == sha  # ...and shown

        second = editor_save(defs / "wf.yaml", step_wf("two"), ".wf.yaml.swp")  # saved, not committed
        w = wait_version(client, "wf", second)
        assert w["commit"] == sha + "+dirty"  # at once: never the facts of the older text
        run_id = start(client, "wf")
        assert wait_run(client, run_id)["commit"] == sha + "+dirty"
        assert run_row(db, run_id) == (second, sha + "+dirty")

        third = commit_all(repo, "two")  # a commit changes no file: the watcher cannot see it
        poll(lambda: workflow(client, "wf")["commit"] == third, "the commit noticed")
        run_id = start(client, "wf")
        assert wait_run(client, run_id)["commit"] == third
        versions = poll(lambda: (b := client.get("/api/workflows/wf/versions").json())["total"] == 2 and b,
                        "two versions recorded")
        assert {i["version"]: i["commit"] for i in versions["items"]} == {first: sha, second: sha + "+dirty"}


# -- git sync ----------------------------------------------------------------------------


def push(work: Path, message: str) -> str:
    sha = commit_all(work, message)
    git(work, "push", "-q", "origin", "HEAD:main")
    return sha


def test_git_sync_follows_a_bare_repository_and_survives_a_failed_pull(tmp_path: Path, db: str) -> None:
    bare = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", bare.as_uri(), str(work))
    write(work / "definitions" / "one.yaml", step_wf("one"))
    write(work / "notes.md", "not a definition\n")
    first = push(work, "one")
    settings = {"git_url": bare.as_uri(), "git_branch": "main", "git_interval": 3600.0,
                "git_workdir": tmp_path / "clone"}
    with serve(Path("definitions"), db, **settings) as client:
        wait_names(client, {"one"})
        health = client.get("/health").json()["git"]
        assert (health["url"], health["branch"], health["commit"], health["error"]) == (bare.as_uri(), "main", first, None)
        assert workflow(client, "one")["commit"] == first
        assert wait_run(client, start(client, "one"))["commit"] == first

        body = client.post("/api/sync").json()
        assert body["changed"] is False and body["commit"] == first and body["error"] is None

        write(work / "definitions" / "two.yaml", step_wf("two"))
        second = push(work, "two")
        body = client.post("/api/sync").json()
        assert body["changed"] is True and body["commit"] == second and body["error"] is None
        wait_names(client, {"one", "two"})
        assert workflow(client, "two")["commit"] == second

        broken = write(work / "definitions" / "one.yaml", step_wf("one") + "    lgo: x\n")  # a broken commit
        third = push(work, "break one")
        assert client.post("/api/sync").json()["commit"] == third
        w = wait_version(client, "one", broken, "file_version")
        assert w["valid"] is False and w["in_force"] is True and w["version"] == version_of(step_wf("one"))

        moved = bare.rename(tmp_path / "moved.git")  # the repository goes away
        body = client.post("/api/sync").json()
        assert body["changed"] is False and body["commit"] == third
        assert body["error"] and "does not appear to be a git repository" in body["error"], body
        health = client.get("/health").json()["git"]
        assert health["error"] == body["error"] and health["commit"] == third and health["last_success_at"]
        assert set(catalog(client)) == {"one", "two"}  # what is loaded stays, and runs
        assert wait_run(client, start(client, "two"))["status"] == "succeeded"
        assert body["error"] in html.unescape(client.get("/").text)

        moved.rename(bare)
        git(bare, "update-ref", "-d", "refs/heads/main")  # the branch is deleted
        body = client.post("/api/sync").json()
        assert body["changed"] is False and "main" in (body["error"] or ""), body
        assert set(catalog(client)) == {"one", "two"}

        write(work / "definitions" / "one.yaml", step_wf("one fixed"))
        fourth = push(work, "fix one")
        body = client.post("/api/sync").json()
        assert body["changed"] is True and body["commit"] == fourth and body["error"] is None
        w = wait_version(client, "one", version_of(step_wf("one fixed")))
        assert w["valid"] and w["commit"] == fourth
        assert client.get("/health").json()["git"]["error"] is None

    bare.rename(tmp_path / "gone.git")  # a restart while the repository cannot be reached
    with serve(Path("definitions"), db, **settings) as client:
        wait_names(client, {"one", "two"})  # the clone from before serves
        health = client.get("/health").json()["git"]
        assert health["commit"] == fourth and "does not appear to be a git repository" in health["error"]
        assert workflow(client, "one")["version"] == version_of(step_wf("one fixed"))


# -- the developer's loop: validate, schema, pre-commit ---------------------------------------


def treadle(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)


def test_validate_formats_and_exit_codes(tmp_path: Path) -> None:
    write(tmp_path / "defs" / "good.yaml", step_wf("fine"))
    write(tmp_path / "defs" / "team" / "bad.yaml", BROKEN)
    message = BROKEN_LINE.split(": ", 1)[1]

    r = treadle("validate", "--format", "github", "defs", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stdout.splitlines() == [f"::error file=defs/team/bad.yaml,line=4,col=5::{message}"]

    r = treadle("validate", "defs", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stdout.splitlines() == [f"defs/team/bad.yaml:4:5: {message}"]
    assert "2 files checked: 1 problem in 1 file" in r.stderr

    r = treadle("validate", "--format", "json", "defs/team/bad.yaml", "defs/good.yaml", "defs/missing.yaml", cwd=tmp_path)
    assert r.returncode == 1
    assert json.loads(r.stdout) == [
        {"path": "defs/team/bad.yaml", "line": 4, "column": 5, "message": message, "severity": "error"},
        {"path": "defs/missing.yaml", "line": 1, "column": 1, "message": "no such file or folder", "severity": "error"},
    ]

    r = treadle("validate", "--format", "github", "defs/good.yaml", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "")


def test_schema_describes_the_file_format(tmp_path: Path) -> None:
    r = treadle("schema", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    schema = json.loads(r.stdout)
    assert "steps" in schema["properties"] and "name" in schema["properties"]


def test_pre_commit_hook_runs_treadle_validate(tmp_path: Path) -> None:
    hooks = {h["id"]: h for h in yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())}
    assert set(hooks) == {"treadle-validate", "treadle-plan"}
    hook = hooks["treadle-validate"]
    assert hook["id"] == "treadle-validate" and hook["entry"] == "treadle validate"
    assert hook["language"] == "python" and hook["pass_filenames"] is True
    files = re.compile(hook["files"])
    assert files.search("definitions/team/a.yaml") and files.search("definitions/b.yml")
    assert not files.search("definitions/notes.md") and not files.search("src/a.yaml")
    # run the entry the way pre-commit does: the command, then the staged file names
    entry = shutil.which(hook["entry"].split()[0])
    assert entry is not None, "the `treadle` console script is not installed"
    write(tmp_path / "definitions" / "good.yaml", step_wf("fine"))
    write(tmp_path / "definitions" / "wf.yaml", BROKEN)
    args = hook["entry"].split()[1:]
    ok = subprocess.run([entry, *args, "definitions/good.yaml"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = subprocess.run([entry, *args, "definitions/good.yaml", "definitions/wf.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and bad.stdout.splitlines() == ["definitions/" + BROKEN_LINE]


def test_pre_commit_plan_hook_refuses_a_commit_that_breaks_a_workflow(tmp_path: Path) -> None:
    hook = {h["id"]: h for h in yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())}["treadle-plan"]
    assert hook["pass_filenames"] is False and hook["language"] == "python"
    entry = shutil.which(hook["entry"].split()[0])
    assert entry is not None
    git(tmp_path, "init", "-q")
    write(tmp_path / "definitions" / "child.yaml", "params: {n: integer}\nsteps: [{id: a, log: hi}]\n")
    write(tmp_path / "definitions" / "parent.yaml", "steps: [{id: c, workflow: child, params: {n: 1}}]\n")
    commit_all(tmp_path, "first")
    run = [entry, *hook["entry"].split()[1:]]
    assert subprocess.run(run, cwd=tmp_path, capture_output=True, text=True).returncode == 0
    write(tmp_path / "definitions" / "child.yaml", "params: {m: integer}\nsteps: [{id: a, log: hi}]\n")
    refused = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True)
    assert refused.returncode == 1
    assert "! breaks parent: parent.yaml:1:" in refused.stdout and "has no param 'n'" in refused.stdout
