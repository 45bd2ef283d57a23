"""`treadle validate` as a user runs it: a real process, its exit code and its lines."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_loader import BAD, DATA, GOOD, expectations

_SCRIPT = Path(sys.executable).parent / "treadle"
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "runner"]
_LINE = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<message>.+)$")
_GITHUB = re.compile(r"^::error file=(?P<path>[^,]+),line=(?P<line>\d+),col=(?P<col>\d+)::(?P<message>.+)$")

CASES = {
    "good": [*map(str, GOOD)],
    # files and folders at once; a good file among them adds no line
    "bad": [str(GOOD[0]), *map(str, BAD), str(DATA / "dupnames"), str(DATA / "no-such-folder")],
    "github": ["--format", "github", str(DATA / "bad_many.yaml"), str(DATA / "bad_yaml_syntax.yaml")],
}


@pytest.fixture(scope="module")
def runs() -> dict[str, subprocess.CompletedProcess]:
    """Every case at once: each process spends most of its time importing."""
    started = {name: subprocess.Popen([*COMMAND, "validate", *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
               for name, args in CASES.items()}
    done = {}
    for name, proc in started.items():
        out, err = proc.communicate(timeout=60)
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


def parsed(stdout: str, pattern: re.Pattern) -> list[tuple[str, int, int, str]]:
    rows = []
    for line in stdout.splitlines():
        m = pattern.match(line)
        assert m, f"not a problem line: {line!r}"
        rows.append((m["path"], int(m["line"]), int(m["col"]), m["message"]))
    return rows


def test_good_files_exit_0_and_print_no_problem(runs: dict) -> None:
    run = runs["good"]
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout == ""
    assert f"{len(GOOD)} files checked: all valid" in run.stderr


def test_bad_files_exit_1_with_one_line_per_expected_problem(runs: dict) -> None:
    run = runs["bad"]
    assert run.returncode == 1
    rows = parsed(run.stdout, _LINE)
    for path in BAD:
        got = [(line, col, message) for p, line, col, message in rows if p == str(path)]
        expected = expectations(path)
        assert len(got) == len(expected), (path.name, got)
        for (line, col, text), (g_line, g_col, g_message) in zip(expected, got, strict=True):
            assert (g_line, g_col) == (line, col) and text in g_message, (path.name, got)
    assert not [r for r in rows if r[0] == str(GOOD[0])]
    files = len(BAD) + 1 + 2  # the good file, the two in dupnames/
    assert f"{files} files checked: {len(rows)} problems in {len(BAD) + 3} files" in run.stderr


def test_folders_are_checked_as_a_catalog(runs: dict) -> None:
    run = runs["bad"]
    rows = parsed(run.stdout, _LINE)
    folder = DATA / "dupnames"
    assert [(p, line, col, m) for p, line, col, m in rows if not p.startswith(str(DATA / "bad_"))] == [
        (str(folder / "first.yaml"), 3, 7, "workflow name 'shared' is also used by second.yaml; names must be unique (rename a file or set `name:`)"),
        (str(folder / "second.yaml"), 2, 7, "workflow name 'shared' is also used by first.yaml; names must be unique (rename a file or set `name:`)"),
        (str(DATA / "no-such-folder"), 1, 1, "no such file or folder"),
    ]


def test_github_format_emits_annotations(runs: dict) -> None:
    run = runs["github"]
    assert run.returncode == 1
    rows = parsed(run.stdout, _GITHUB)
    many, syntax = DATA / "bad_many.yaml", DATA / "bad_yaml_syntax.yaml"
    assert [(p, line, col) for p, line, col, _ in rows] == [
        (str(many), line, col) for line, col, _ in expectations(many)] + [
        (str(syntax), line, col) for line, col, _ in expectations(syntax)]
    assert "did you mean 'steps'?" in rows[0][3]
