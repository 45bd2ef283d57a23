"""File triggers against real folders, real watchfiles and a real SQLite database.

The launcher is a stand-in (FakeLauncher) that records each `fire`: what is tested
is which files fire, when and with what, not the runs they start (tests/test_launcher.py).
"Nothing more fires" is checked with a fence (see `settled`), not by waiting a while."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from runner.dsl.loader import Definition, load_text
from runner.storage.store import Store
from runner.triggers.file_triggers import FileTriggers, compile_glob
from runner.triggers.trigger_state import TriggerState

from .conftest import definition

FENCE = "zz-fence"
_fences = iter(range(1, 10**6))


class FakeLauncher:
    """Records every `fire`; raises for the refs in `fail`."""

    def __init__(self, fail: set[str] | None = None):
        self.calls: list[dict[str, Any]] = []
        self.fail = fail or set()

    async def fire(self, definition: Definition, *, trigger: str, ref: str | None,
                   mapping: dict[str, Any] | None, context: dict[str, Any],
                   default: dict[str, Any] | None) -> SimpleNamespace:
        self.calls.append({"workflow": definition.name, "trigger": trigger, "ref": ref,
                           "mapping": mapping, "context": context, "default": default,
                           "at": asyncio.get_running_loop().time()})
        if ref in self.fail:
            raise RuntimeError(f"cannot start {ref}")
        return SimpleNamespace(workflow=definition.name, status="started",
                               run_id=f"run{len(self.calls)}", reason=None)

    def refs(self, workflow: str | None = None) -> list[str]:
        return [c["ref"] for c in self.calls if workflow in (None, c["workflow"])]


async def settled(triggers: FileTriggers, launcher: FakeLauncher, folder: Path, suffix: str = ".csv") -> None:
    """Return once every change made before the call has been looked at and has fired
    or not: a fence file written now (after them, so its events come after theirs)
    fires, then no file is settling any more. The fence's own calls are dropped."""
    name = f"{FENCE}-{next(_fences)}{suffix}"
    (folder / name).write_text("fence")
    await until(lambda: any(c["ref"].endswith(name) for c in launcher.calls))
    await until(lambda: not triggers._pending and not triggers._tasks - _long_lived(triggers))
    launcher.calls[:] = [c for c in launcher.calls if FENCE not in c["ref"]]


def _long_lived(triggers: FileTriggers) -> set:
    """The watch and the rescan loop: always there while the triggers run."""
    return {t for t in triggers._tasks if not t.get_name().startswith("treadle-files-scan")}


def wf(tmp_path: Path, path: str, name: str = "wf", params: str = "", settle: str = "0.3s") -> Definition:
    return definition(f"""
        triggers:
          file: {{path: "{path}", settle: {settle}{params}}}
        steps:
          - {{id: hello, log: hi}}
        """, tmp_path, name)


async def until(condition, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def start(store: Store):
    """start(definitions, ...) -> (FileTriggers, FakeLauncher), stopped after the test."""
    running: list[FileTriggers] = []

    async def _start(definitions: list[Definition], *, launcher: FakeLauncher | None = None,
                     state: TriggerState | None = None, poll_interval: float = 30.0):
        launcher = launcher or FakeLauncher()
        triggers = FileTriggers(launcher, lambda: definitions, state or TriggerState(store),
                                poll_interval=poll_interval)
        await triggers.start()
        running.append(triggers)
        return triggers, launcher

    yield _start
    for triggers in running:
        await triggers.stop()


async def test_dropped_file_fires_once_with_its_context(tmp_path: Path, start, store: Store):
    (tmp_path / "inbox").mkdir()
    params = ', params: {src: "{{ file.path }}"}'
    triggers, launcher = await start([wf(tmp_path, "inbox/*.csv", params=params)])
    target = tmp_path / "inbox" / "orders.csv"
    target.write_text("id,qty\n1,2\n")
    await until(lambda: launcher.calls)
    call = launcher.calls[0]
    absolute = os.path.abspath(target)
    assert call["workflow"] == "wf" and call["trigger"] == "file"
    assert call["ref"] == "inbox/orders.csv"
    assert call["mapping"] == {"src": "{{ file.path }}"}
    assert call["context"] == {"file": {"path": absolute, "name": "orders.csv",
                                        "relative": "inbox/orders.csv", "size": 11}}
    assert call["default"] == {"path": absolute}
    st = target.stat()
    assert await TriggerState(store).mark("wf", "file:inbox/orders.csv") == f"{st.st_size}:{st.st_mtime_ns}"
    await settled(triggers, launcher, tmp_path / "inbox")
    assert len(launcher.calls) == 1


async def test_a_file_written_slowly_fires_once_after_the_last_write(tmp_path: Path, start):
    (tmp_path / "inbox").mkdir()
    # settle 2 s against pauses of 0.05 s between writes: a loaded machine would have to
    # stall one pause 40 times over for the file to look finished while still written
    triggers, launcher = await start([wf(tmp_path, "inbox/*.csv", settle="2s")])
    loop = asyncio.get_running_loop()
    with open(tmp_path / "inbox" / "big.csv", "w") as out:
        for _ in range(16):  # 0.8 s of writing, pauses far shorter than settle
            out.write("x" * 1000 + "\n")
            out.flush()
            await asyncio.sleep(0.05)
            assert not launcher.calls, "fired while the file was still being written"
    last_write = loop.time()
    await until(lambda: launcher.calls)
    assert launcher.calls[0]["at"] > last_write
    assert launcher.calls[0]["context"]["file"]["size"] == 16 * 1001
    await settled(triggers, launcher, tmp_path / "inbox")
    assert len(launcher.calls) == 1


async def test_a_changed_file_fires_again_an_unchanged_one_never(tmp_path: Path, start):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    # rescans every 0.3 s: they must not fire anything already seen either
    triggers, launcher = await start([wf(tmp_path, "inbox/*.csv")], poll_interval=0.3)
    (inbox / "a.csv").write_text("1\n")
    (inbox / "b.csv").write_text("1\n")
    await until(lambda: len(launcher.calls) == 2)
    with open(inbox / "a.csv", "a") as out:
        out.write("2\n")
    await until(lambda: len(launcher.calls) == 3)
    assert launcher.calls[2]["ref"] == "inbox/a.csv"
    assert launcher.calls[2]["context"]["file"]["size"] == 4
    await settled(triggers, launcher, inbox)
    triggers.rescan()  # one more full look at the folder, whenever the periodic one comes
    await settled(triggers, launcher, inbox)
    assert sorted(launcher.refs()) == ["inbox/a.csv", "inbox/a.csv", "inbox/b.csv"]


async def test_non_matching_hidden_and_temporary_files_never_fire(tmp_path: Path, start):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    broken = load_text("triggers: {file: {path: 'inbox/*'}}\nsteps: []\n", "broken.yaml",
                       name="broken", base_dir=tmp_path)
    assert not broken.valid
    triggers, launcher = await start([wf(tmp_path, "inbox/*.csv", "csv"), wf(tmp_path, "inbox/*", "all"),
                               broken])
    (inbox / "notes.txt").write_text("x")
    (inbox / "a.csv.bak").write_text("x")
    for name in (".hidden.csv", "upload.tmp", "video.part", "draft.csv~", ".#lock.csv"):
        (inbox / name).write_text("x")
    (inbox / "folder.csv").mkdir()
    (inbox / "good.csv").write_text("x")
    await until(lambda: len(launcher.calls) == 4)
    await settled(triggers, launcher, inbox)
    assert sorted(launcher.refs("csv")) == ["inbox/good.csv"]
    assert sorted(launcher.refs("all")) == ["inbox/a.csv.bak", "inbox/good.csv", "inbox/notes.txt"]
    assert not launcher.refs("broken")


async def test_double_star_matches_nested_folders(tmp_path: Path, start):
    data = tmp_path / "data"
    (data / "a" / "b" / "c").mkdir(parents=True)
    (data / ".git").mkdir()
    triggers, launcher = await start([wf(tmp_path, "data/**/*.csv")])
    (data / "top.csv").write_text("x")
    (data / "a" / "b" / "c" / "deep.csv").write_text("x")
    (data / "a" / "note.txt").write_text("x")
    (data / ".git" / "hidden.csv").write_text("x")
    # a folder moved in brings files that never had an event of their own
    (tmp_path / "staging" / "batch").mkdir(parents=True)
    (tmp_path / "staging" / "batch" / "moved.csv").write_text("x")
    os.rename(tmp_path / "staging" / "batch", data / "a" / "batch")
    await until(lambda: len(launcher.calls) == 3)
    await settled(triggers, launcher, data)
    assert sorted(launcher.refs()) == ["data/a/b/c/deep.csv", "data/a/batch/moved.csv",
                                       "data/top.csv"]


async def test_files_there_at_start_fire_once_across_restarts(tmp_path: Path, start, db_url: str):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "early.csv").write_text("x")
    definitions = [wf(tmp_path, "inbox/*.csv")]
    first, launcher = await start(definitions)
    await until(lambda: launcher.calls)
    assert launcher.refs() == ["inbox/early.csv"]
    await first.stop()
    (inbox / "while_down.csv").write_text("x")
    async with Store(db_url) as store:  # a new process: new connections, nothing in memory
        second, again = await start(definitions, state=TriggerState(store))
        await until(lambda: again.calls)
        await settled(second, again, inbox)
        await second.stop()
    assert again.refs() == ["inbox/while_down.csv"]


async def test_a_folder_created_after_start_is_watched_after_refresh(tmp_path: Path, start):
    triggers, launcher = await start([wf(tmp_path, "later/*.csv")])
    later = tmp_path / "later"
    later.mkdir()
    (later / "a.csv").write_text("x")
    triggers.refresh()
    await until(lambda: launcher.calls)
    (later / "b.csv").write_text("x")  # the folder is watched now, not only scanned
    await until(lambda: len(launcher.calls) == 2)
    assert launcher.refs() == ["later/a.csv", "later/b.csv"]


async def test_the_periodic_rescan_finds_a_new_folder(tmp_path: Path, start):
    _, launcher = await start([wf(tmp_path, "later/*.csv")], poll_interval=0.3)
    (tmp_path / "later").mkdir()
    (tmp_path / "later" / "a.csv").write_text("x")
    await until(lambda: launcher.calls)
    assert launcher.refs() == ["later/a.csv"]


async def test_a_new_pattern_on_refresh_picks_up_files_already_there(tmp_path: Path, start):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.txt").write_text("x")
    definitions = [wf(tmp_path, "inbox/*.csv")]
    triggers, launcher = await start(definitions)
    await settled(triggers, launcher, inbox)  # a.txt was there at start; the first scan is done
    assert not launcher.calls
    definitions[:] = [wf(tmp_path, "inbox/*.txt")]
    triggers.refresh()
    await until(lambda: launcher.calls)
    assert launcher.refs() == ["inbox/a.txt"]


async def test_brace_alternatives_fire_for_each_and_nothing_else(tmp_path: Path, start):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    triggers, launcher = await start([wf(tmp_path, "inbox/*.{pdf,csv}")])
    for name in ("a.txt", "b.pdf", "c.csv", "d.pdfx"):
        (inbox / name).write_text("x")
    await settled(triggers, launcher, inbox)  # the .txt and .pdfx were looked at too
    assert sorted(launcher.refs()) == ["inbox/b.pdf", "inbox/c.csv"]


async def test_a_launcher_that_raises_does_not_stop_later_files(tmp_path: Path, start):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _, launcher = await start([wf(tmp_path, "inbox/*.csv")],
                              launcher=FakeLauncher(fail={"inbox/bad.csv"}))
    (inbox / "bad.csv").write_text("x")
    await until(lambda: launcher.calls)
    (inbox / "good.csv").write_text("x")
    await until(lambda: len(launcher.calls) == 2)
    assert launcher.refs() == ["inbox/bad.csv", "inbox/good.csv"]


@pytest.mark.parametrize(("pattern", "root", "hits", "misses"), [
    ("inbox/*.csv", "inbox", ["a.csv"], ["a.txt", "sub/a.csv"]),
    ("data/**/*.csv", "data", ["a.csv", "x/y/a.csv"], ["x/a.txt"]),
    ("in/report-?.[!t]xt", "in", ["report-1.cxt"], ["report-1.txt", "report-12.cxt"]),
    ("exact.csv", ".", ["exact.csv"], ["other.csv"]),
    ("../shared/*", "../shared", ["x"], ["y/x"]),
    ("inbox/*.{pdf,csv}", "inbox", ["a.pdf", "b.csv"], ["c.txt", "a.pdfx", "a.{pdf,csv}", "x/a.pdf"]),
    ("{in,out}box/r-{[0-9],x{y,z}}.txt", ".", ["inbox/r-1.txt", "outbox/r-xz.txt"],
     ["box/r-1.txt", "inbox/r-x.txt", "inbox/r-xy,z.txt"]),
    ("in/a{b}.txt", "in", ["a{b}.txt"], ["ab.txt"]),  # no comma: plain text, as in a shell
])
def test_globs(pattern: str, root: str, hits: list[str], misses: list[str]):
    found_root, regex, _ = compile_glob(pattern, "/base/defs")
    assert found_root == os.path.normpath(os.path.join("/base/defs", root))
    assert all(regex.fullmatch(h) for h in hits)
    assert not any(regex.fullmatch(m) for m in misses)
