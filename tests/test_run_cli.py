"""`treadle run`, `treadle runs` and `treadle show` as real subprocesses (SPEC §3)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.test_examples import Cli

GREET = """\
params:
  times: {type: integer, default: 2}
  who: {type: string, required: true}
steps:
  - id: hello
    run: [echo, "hello {{ params.who }}"]
  - id: repeat
    foreach: "{{ range(params.times) | list }}"
    log: "{{ index }}: {{ steps.hello.output }}"
outputs:
  greeting: "{{ steps.hello.output }}"
"""

BROKEN = """\
steps:
  - {id: first, log: starting}
  - {id: boom, run: "echo 'disk full' >&2; exit 3"}
  - {id: after, log: never}
"""


class Treadle(Cli):
    """The CLI on a definitions folder of its own."""

    def __init__(self, tmp_path: Path):
        super().__init__(tmp_path)
        self.definitions = tmp_path / "definitions"
        self.definitions.mkdir()
        (self.definitions / "greet.yaml").write_text(GREET)
        (self.definitions / "ops").mkdir()
        (self.definitions / "ops" / "broken.yaml").write_text(BROKEN)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return self("run", *args, "--definitions", str(self.definitions), "--db", self.db)

    def many(self, calls: dict[str, tuple[str, ...]]) -> dict[str, subprocess.CompletedProcess]:
        """Independent commands at once (each is a Python start-up of its own)."""
        with ThreadPoolExecutor(len(calls)) as pool:
            futures = {key: pool.submit(self.run if args[0] != "-" else self, *args[1:]) for key, args in calls.items()}
            return {key: f.result() for key, f in futures.items()}


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every `treadle run` of this module, then the commands that read their records."""
    treadle = Treadle(tmp_path_factory.mktemp("cli"))
    runs = treadle.many({
        "ok": ("+", "greet", "-p", "who=bob", "-p", "times=3"),
        "json": ("+", "greet", "-p", "who=ann", "--json"),
        "failed": ("+", "broken"),
        "missing": ("+", "greet"),
        "bad": ("+", "greet", "-p", "who=x", "-p", "times=many", "-p", "colour=red"),
        "unknown": ("+", "gret"),
    })
    ids = {k: re.search(r"^run (\w+) of ", runs[k].stderr, re.M) for k in ("ok", "failed")}
    ids = {k: m.group(1) for k, m in ids.items() if m}
    ids["json"] = json.loads(runs["json"].stdout)["id"]
    db = ("--db", treadle.db)
    reads = treadle.many({
        "runs": ("-", "runs", *db),
        "runs_greet": ("-", "runs", "--workflow", "greet", "--json", *db),
        "show": ("-", "show", ids["failed"], "--logs", *db),
        "show_json": ("-", "show", ids["json"], "--json", *db),
        "show_missing": ("-", "show", "nope", *db),
    })
    return {**runs, **reads, "ids": ids}


def test_run_succeeds_with_exit_0_and_live_progress(done):
    result = done["ok"]
    assert result.returncode == 0, result.stderr
    assert re.search(r"^run \w+ of greet \(version \w+\)$", result.stderr, re.M)
    assert re.search(r"✓ hello succeeded", result.stderr)
    assert re.search(r"✓ repeat\[2\] succeeded", result.stderr)
    assert re.search(r"^run \w+ succeeded in ", result.stderr, re.M)


def test_run_json_prints_the_finished_run(done):
    result = done["json"]
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["status"] == "succeeded" and doc["workflow"] == "greet" and doc["trigger"] == "cli"
    assert doc["params"] == {"who": "ann", "times": 2} and doc["outputs"] == {"greeting": "hello ann"}
    steps = {s["id"]: s for s in doc["steps"]}
    assert steps["repeat"]["output"] == ["0: hello ann", "1: hello ann"]
    assert steps["hello"]["exit_code"] == 0 and steps["hello"]["attempts"] == 1
    assert json.loads(done["show_json"].stdout)["steps"] == doc["steps"]


def test_a_failed_run_exits_1_and_names_the_root_cause(done):
    result = done["failed"]
    assert result.returncode == 1
    assert "✗ boom failed" in result.stderr and "exit code 3: disk full" in result.stderr
    assert re.search(r"run \w+ failed in .*: step 'boom' failed: exit code 3: disk full", result.stderr)


def test_bad_params_and_unknown_workflows_exit_2(done):
    assert done["missing"].returncode == 2
    assert "param 'who': missing required param (string)" in done["missing"].stderr
    assert done["bad"].returncode == 2
    assert "param 'times': " in done["bad"].stderr and "param 'colour': unknown param" in done["bad"].stderr
    assert done["unknown"].returncode == 2
    assert "no workflow named 'gret'; did you mean 'greet'?" in done["unknown"].stderr


def test_runs_lists_the_runs_newest_first(done):
    ids = done["ids"]
    assert done["runs"].returncode == 0
    lines = done["runs"].stdout.splitlines()
    assert lines[0].split() == ["RUN", "WORKFLOW", "STATUS", "STARTED", "DURATION"]
    listed = sorted(tuple(line.split()[:3]) for line in lines[1:])
    assert listed == sorted([(ids["ok"], "greet", "succeeded"), (ids["json"], "greet", "succeeded"),
                             (ids["failed"], "broken", "failed")])  # and no run for bad input
    created = [line.split()[3] for line in lines[1:]]
    assert created == sorted(created, reverse=True)
    greet = json.loads(done["runs_greet"].stdout)
    assert sorted(r["id"] for r in greet) == sorted([ids["ok"], ids["json"]])


def test_show_prints_step_traces_and_logs(done):
    run_id, out = done["ids"]["failed"], done["show"].stdout
    assert done["show"].returncode == 0
    assert re.match(rf"run {run_id}  broken  failed  version \w+  ", out)
    assert "error: step 'boom' failed: exit code 3: disk full" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()
            if line.split()[:1] in (["first"], ["boom"], ["after"])}
    assert rows["first"][0] == "succeeded" and rows["after"][0] == "upstream_failed"
    assert rows["boom"][:2] == ["failed", "1"] and "3" in rows["boom"]
    assert "    | disk full" in out and "    | starting" in out
    missing = done["show_missing"]
    assert missing.returncode == 2 and "no run with id 'nope'" in missing.stderr


def test_a_closed_pipe_ends_a_command_quietly(tmp_path: Path) -> None:
    done = subprocess.run(f"{sys.executable} -m runner schema | head -c 20 > /dev/null", shell=True, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
