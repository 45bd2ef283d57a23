"""`treadle plan`: what a commit to the definitions does, read from a real git repository
built here commit by commit (a step added, a param made required while a parent still
calls without it, a schedule changed, a workflow removed while another follows it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.git_support import commit_all, git

CHILD = """\
params:
  n: {type: integer, required: true}
outputs: {total: "{{ steps.sum.output }}"}
steps:
  - id: sum
    set: {v: "{{ params.n }}"}
"""
PARENT = """\
triggers:
  schedule: {cron: "0 6 * * *", timezone: Europe/Berlin}
steps:
  - id: call
    workflow: child
    params: {n: 1}
  - id: show
    log: "{{ steps.call.output.total }}"
"""
INGEST = "steps:\n  - id: load\n    run: echo load\n"
REPORT = "triggers:\n  after: {workflow: ingest}\nsteps: [{id: r, log: report}]\n"


@pytest.fixture()
def repo(tmp_path: Path) -> dict[str, str]:
    """The repository and its commits by name."""
    git(tmp_path, "init", "-q")
    defs = tmp_path / "definitions"
    defs.mkdir()
    for name, text in {"child": CHILD, "parent": PARENT, "ingest": INGEST, "report": REPORT}.items():
        (defs / f"{name}.yaml").write_text(text)
    (tmp_path / "README.md").write_text("not a definition\n")
    commits = {"root": str(tmp_path), "first": commit_all(tmp_path, "first")}
    (defs / "parent.yaml").write_text(PARENT + "  - id: notify\n    needs: [call]\n    log: done\n")
    commits["step_added"] = commit_all(tmp_path, "a step added")
    (defs / "child.yaml").write_text(CHILD.replace("  n: {type: integer, required: true}\n",
                                                   "  n: {type: integer, required: true}\n"
                                                   "  mode: {type: string, required: true}\n"))
    commits["required"] = commit_all(tmp_path, "a param made required")
    (defs / "parent.yaml").write_text((defs / "parent.yaml").read_text().replace("0 6 * * *", "30 7 * * 1-5"))
    commits["schedule"] = commit_all(tmp_path, "schedule changed")
    (defs / "ingest.yaml").unlink()
    commits["removed"] = commit_all(tmp_path, "ingest removed")
    return commits


def plan(root: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", "plan", *args], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "TREADLE_DEFINITIONS": "definitions"}, timeout=120)


def as_json(root: str, *args: str) -> dict:
    done = plan(root, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_step_added_lists_the_step_and_its_dependency(repo: dict[str, str]) -> None:
    doc = as_json(repo["root"], repo["first"], repo["step_added"])
    assert doc["base"]["commit"] == repo["first"] and doc["head"]["subject"] == "a step added"
    [parent] = doc["workflows"]
    assert (parent["name"], parent["change"], parent["path"]) == ("parent", "changed", "parent.yaml")
    assert parent["steps"] == {"added": ["notify"], "removed": [], "changed": [],
                               "dependencies": {"added": [{"from": "call", "to": "notify"}], "removed": []}}
    assert parent["breaks"] == [] and parent["problems"] == [] and parent["settings"] == []


def test_a_param_made_required_names_the_caller_it_breaks_with_its_position(repo: dict[str, str]) -> None:
    doc = as_json(repo["root"], repo["step_added"], repo["required"])
    by_name = {w["name"]: w for w in doc["workflows"]}
    child = by_name["child"]
    assert child["params"]["added"] == [{"name": "mode", "type": "string", "required": True}]
    assert child["breaks"] == [{"workflow": "parent", "path": "parent.yaml", "line": 6, "column": 13,
                                "message": "steps[0]: workflow 'child' requires param mode; pass it under `params:`"}]
    assert list(by_name) == ["child"]  # the parent's text did not change: it is not listed as changed
    text = plan(repo["root"], repo["step_added"], repo["required"])
    assert "~ child (child.yaml)\n    + param mode (string, required)\n    ! breaks parent: parent.yaml:6:13:" in text.stdout
    assert text.stdout.rstrip().endswith("Plan: 0 to add, 1 to change, 0 to remove; 1 break, 0 problems.")
    assert plan(repo["root"], repo["step_added"], repo["required"]).returncode == 0
    assert plan(repo["root"], repo["step_added"], repo["required"], "--fail-on-breaks").returncode == 1
    assert plan(repo["root"], repo["first"], repo["step_added"], "--fail-on-breaks").returncode == 0


def test_a_changed_schedule_shows_the_next_three_fire_times_before_and_after(repo: dict[str, str]) -> None:
    doc = as_json(repo["root"], repo["required"], repo["schedule"])
    [parent] = doc["workflows"]
    assert parent["triggers"]["changed"] == ["schedule"]
    before, after = parent["triggers"]["schedules"]["before"], parent["triggers"]["schedules"]["after"]
    assert [s["cron"] for s in before] == ["0 6 * * *"] and [s["cron"] for s in after] == ["30 7 * * 1-5"]
    assert all(t.endswith(("+01:00", "+02:00")) for t in before[0]["next"] + after[0]["next"])  # Berlin time
    assert len(before[0]["next"]) == 3 and all("T06:00:00" in t for t in before[0]["next"])
    from datetime import datetime
    days = [datetime.fromisoformat(t) for t in after[0]["next"]]
    assert len(days) == 3 and all(d.weekday() < 5 and (d.hour, d.minute) == (7, 30) for d in days)
    assert days == sorted(days)


def test_a_removed_workflow_breaks_the_one_that_follows_it(repo: dict[str, str]) -> None:
    doc = as_json(repo["root"], repo["schedule"], repo["removed"])
    [ingest] = doc["workflows"]
    assert (ingest["change"], ingest["steps"]["removed"]) == ("removed", ["load"])
    assert ingest["breaks"] == [{"workflow": "report", "path": "report.yaml", "line": 2, "column": 21,
                                 "message": "triggers.after: there is no workflow 'ingest' to follow; no file "
                                            "defines it"}]
    md = plan(repo["root"], repo["schedule"], repo["removed"], "--format", "markdown").stdout
    assert "| ingest | removed | 0/1/0 | 1 | 0 |" in md
    assert "! breaks report: report.yaml:2:21: triggers.after: there is no workflow 'ingest'" in md
    gh = plan(repo["root"], repo["schedule"], repo["removed"], "--format", "github").stdout.splitlines()
    assert "::error file=definitions/report.yaml,line=2,col=21::triggers.after: there is no workflow 'ingest' " \
           "to follow; no file defines it" in gh


def test_the_whole_history_at_once_and_the_working_tree_by_default(repo: dict[str, str]) -> None:
    doc = as_json(repo["root"], repo["first"], repo["removed"])
    assert [(w["name"], w["change"]) for w in doc["workflows"]] == [
        ("child", "changed"), ("ingest", "removed"), ("parent", "changed")]
    assert as_json(repo["root"])["workflows"] == []  # a clean work tree is HEAD
    root = Path(repo["root"])
    # only comments and key order changed: the same meaning, no change
    (root / "definitions" / "report.yaml").write_text("# follows ingest\nsteps: [{id: r, log: report}]\n"
                                                      "triggers:\n  after: {workflow: ingest}\n")
    assert as_json(repo["root"])["workflows"] == []
    (root / "definitions" / "new.yaml").write_text("params: {day: string}\nsteps: [{id: a, log: '{{ params.day }}'}]\n")
    [new] = as_json(repo["root"])["workflows"]
    assert (new["name"], new["change"], new["steps"]["added"]) == ("new", "added", ["a"])
    assert new["params"]["added"] == [{"name": "day", "type": "string", "required": False}]


def test_a_broken_new_revision_lists_its_problems_and_fails_with_fail_on_breaks(repo: dict[str, str]) -> None:
    root = Path(repo["root"])
    (root / "definitions" / "report.yaml").write_text(REPORT.replace("log: report", "log: '{{ params.nope }}'"))
    doc = as_json(repo["root"])
    [report] = doc["workflows"]
    assert [(p["line"], p["message"]) for p in report["problems"]] == [
        (2, "triggers.after: there is no workflow 'ingest' to follow; no file defines it"),  # since ingest went
        (3, "steps[0].log: refers to params.nope, but the workflow declares no param 'nope'; declare it under "
            "`params:`")]
    assert plan(repo["root"], "--fail-on-breaks").returncode == 1


def test_bad_input_exits_2_with_a_clear_message(repo: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> None:
    done = plan(repo["root"], "no-such-rev")
    assert done.returncode == 2 and "unknown revision 'no-such-rev'" in done.stderr
    elsewhere = tmp_path_factory.mktemp("plain")  # outside the repository
    (elsewhere / "definitions").mkdir(parents=True)
    done = plan(str(elsewhere))
    assert done.returncode == 2 and "is not inside a git repository" in done.stderr
