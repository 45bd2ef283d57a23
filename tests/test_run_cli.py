"""`treadle run`, `treadle runs` and `treadle show` as real subprocesses (SPEC §3)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
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
    assert lines[0].split() == ["RUN", "WORKFLOW", "STATUS", "STARTED", "(UTC)", "DURATION"]
    listed = sorted(tuple(line.split()[:3]) for line in lines[1:])
    assert listed == sorted([(ids["ok"], "greet", "succeeded"), (ids["json"], "greet", "succeeded"),
                             (ids["failed"], "broken", "failed")])  # and no run for bad input
    # every column starts where its heading does
    starts = [lines[0].index(h) for h in ("WORKFLOW", "STATUS", "STARTED", "DURATION")]
    for line in lines[1:]:
        assert all(line[i - 1] == " " and line[i] != " " for i in starts), (lines[0], line)
    created = [line[starts[2]:starts[3]].strip() for line in lines[1:]]
    assert created == sorted(created, reverse=True) and all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", c)
                                                            for c in created)
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


def test_a_run_nobody_drives_is_shown_as_interrupted(tmp_path: Path) -> None:
    """`treadle run` killed mid-run leaves its run `running` in the database with a
    lease that runs out: `runs` and `show` say it is interrupted and resumes later."""
    treadle = Treadle(tmp_path)
    (treadle.definitions / "slow.yaml").write_text("steps:\n  - {id: nap, wait: 300s}\n")
    proc = subprocess.Popen([sys.executable, "-m", "runner", "run", "slow", "--definitions", str(treadle.definitions),
                             "--db", treadle.db], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=treadle.cwd, env=treadle.env)
    try:
        deadline = time.monotonic() + 60
        while not (listed := json.loads(treadle("runs", "--json", "--db", treadle.db).stdout or "[]")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        run_id = listed[0]["id"]
        assert "interrupted" not in treadle("runs", "--db", treadle.db).stdout  # its driver is alive
    finally:
        proc.kill()
        proc.wait()
    while "interrupted (resumes at next start)" not in (shown := treadle("runs", "--db", treadle.db).stdout):
        assert time.monotonic() < deadline + 60, shown  # the lease runs out within seconds
        time.sleep(0.2)
    assert run_id in shown
    show = treadle("show", run_id, "--db", treadle.db).stdout
    assert re.match(rf"run {run_id}  slow  interrupted \(resumes at next start\)  version ", show), show
    assert json.loads(treadle("runs", "--json", "--db", treadle.db).stdout)[0]["status"] == "running"  # the record
