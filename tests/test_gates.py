"""Gates and policies (#19): `enabled: false`, `preconditions:` (the run ends `skipped`),
`skip: cascade` on a step, and the run's `success:` policy. Real shell steps write to
a file, so what ran is read from the disk, not only from the records."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from runner.dsl.loader import load_text
from runner.errors import WorkflowDisabled
from tests.conftest import definition
from tests.exec_support import by_id, run_yaml
from tests.web_server import serving, with_csrf


def ran(tmp_path: Path) -> list[str]:
    path = tmp_path / "ran.txt"
    return path.read_text().split() if path.exists() else []


# -- enabled: false ----------------------------------------------------------------


async def test_a_disabled_workflow_refuses_starts_children_and_retries(engine, tmp_path: Path) -> None:
    off = definition("enabled: false\nsteps: [{id: a, run: echo a >> ran.txt}]\n", tmp_path, "off")
    with pytest.raises(WorkflowDisabled, match=r"workflow 'off' is disabled \(`enabled: false` in off.yaml\)"):
        await engine.start(off)
    engine.lookup = {"off": off}.get
    exe, doc = await run_yaml(engine, tmp_path, "steps: [{id: child, workflow: off}]", name="parent")
    assert doc["status"] == "failed" and "is disabled" in by_id(doc)["child"]["error"]
    # a run of the enabled version, retried after the file says enabled: false
    on = definition("steps: [{id: a, run: 'echo a >> ran.txt; exit 1'}]\n", tmp_path, "off")
    first = await engine.run(on)
    assert first.status == "failed"
    await engine.store.flush()
    with pytest.raises(WorkflowDisabled):
        await engine.retry(first.id)
    assert ran(tmp_path) == ["a"]  # only the enabled run executed its step


# -- preconditions -------------------------------------------------------------------


PRE = """
    params:
      env: {type: string, default: staging}
    preconditions:
      - "{{ params.env in ['staging', 'prod'] }}"
      - check: "{{ params.env != 'prod' or run.workflow == 'wf' }}"
      - check: "{{ params.env != 'frozen' }}"
        message: "deploys to {{ params.env }} are frozen"
    steps:
      - id: a
        run: echo a >> ran.txt
      - id: b
        run: echo b >> ran.txt
    on_failure: [{id: alarm, run: echo alarm >> ran.txt}]
    finally: [{id: tidy, run: echo tidy >> ran.txt}]
"""


async def test_an_unmet_precondition_ends_the_run_skipped_with_its_reason_and_runs_no_step(engine, tmp_path) -> None:
    exe, doc = await run_yaml(engine, tmp_path, PRE.replace("staging', 'prod'", "staging', 'prod', 'frozen'"),
                              {"env": "frozen"})
    assert doc["status"] == "skipped" and doc["error"] is None
    assert doc["reason"] == "precondition not met: deploys to frozen are frozen"
    assert {s["id"]: s["status"] for s in doc["steps"]} == {"a": "skipped", "b": "skipped"}
    assert ran(tmp_path) == []  # no step, no handler
    exe, doc = await run_yaml(engine, tmp_path, PRE, {"env": "dev"})
    assert doc["status"] == "skipped"
    assert doc["reason"] == "precondition not met: {{ params.env in ['staging', 'prod'] }} is false"
    exe, doc = await run_yaml(engine, tmp_path, PRE, {"env": "prod"})
    assert doc["status"] == "succeeded" and ran(tmp_path) == ["a", "b", "tidy"]
    runs, _ = await engine.store.list_runs(status="skipped")
    assert len(runs) == 2


async def test_a_precondition_that_cannot_render_fails_the_run(engine, tmp_path) -> None:
    exe, doc = await run_yaml(engine, tmp_path, "preconditions: ['{{ params.nope.deeper }}']\n"
                                                "params: {nope: object}\nsteps: [{id: a, log: x}]\n")
    assert doc["status"] == "failed" and doc["error"].startswith("preconditions[0]: "), doc["error"]
    assert by_id(doc)["a"]["status"] == "skipped"  # no step ran


def test_preconditions_may_not_read_steps_and_success_must_name_steps() -> None:
    d = load_text("preconditions: ['{{ steps.a.output }}']\nsuccess: {any_of: [a, z], min_succeeded: 3}\n"
                  "steps:\n  - {id: a, log: x, skip: sometimes}\n", "g.yaml")
    shown = [str(p) for p in d.problems]
    assert shown == [
        "g.yaml:1:17: preconditions[0]: refers to steps.a, but preconditions are checked when the run "
        "starts, before any step; use a step's `when` to decide on a step's output",
        "g.yaml:2:23: success.any_of[1]: there is no step 'z' (handler steps never count)",
        "g.yaml:2:27: success.min_succeeded: give one of any_of, min_succeeded; remove one",
        "g.yaml:2:42: success.min_succeeded: 3 is more than the 1 steps of the workflow; no run could succeed",
        "g.yaml:4:27: steps[0].skip: 'sometimes' is not one of self, cascade",
    ]


# -- skip: cascade ---------------------------------------------------------------------


CASCADE = """
    params:
      go: {type: boolean, default: false}
    steps:
      - id: gate
        when: "{{ params.go }}"
        skip: SKIP
        run: echo gate >> ran.txt
      - id: build
        run: echo build >> ran.txt
      - id: ship
        run: echo ship >> ran.txt
      - id: report
        needs: [ship]
        trigger_rule: all_done
        run: echo report >> ran.txt
      - id: other
        needs: []
        run: echo other >> ran.txt
"""


async def test_skip_cascade_skips_the_dependants_and_theirs(engine, tmp_path) -> None:
    exe, doc = await run_yaml(engine, tmp_path, CASCADE.replace("SKIP", "cascade"))
    states = {s["id"]: s["status"] for s in doc["steps"]}
    assert states == {"gate": "skipped", "build": "skipped", "ship": "skipped", "report": "succeeded",
                      "other": "succeeded"}
    assert doc["status"] == "succeeded"
    assert sorted(ran(tmp_path)) == ["other", "report"]  # all_done still runs: its rule decides


async def test_without_cascade_a_skipped_step_lets_the_next_run(engine, tmp_path) -> None:
    exe, doc = await run_yaml(engine, tmp_path, CASCADE.replace("SKIP", "self"))
    assert by_id(doc)["build"]["status"] == "succeeded" and by_id(doc)["ship"]["status"] == "succeeded"
    assert sorted(ran(tmp_path)) == ["build", "other", "report", "ship"]


# -- success policy ----------------------------------------------------------------


FANOUT = """
    success: POLICY
    steps:
      - {id: slack, needs: [], run: "echo slack >> ran.txt; exit SLACK"}
      - {id: mail, needs: [], run: "echo mail >> ran.txt; exit MAIL"}
      - {id: pager, needs: [], run: "echo pager >> ran.txt; exit 1"}
    on_success: [{id: yay, run: echo yay >> ran.txt}]
    on_failure: [{id: nay, run: echo nay >> ran.txt}]
"""


def fanout(policy: str, slack: int, mail: int) -> str:
    return FANOUT.replace("POLICY", policy).replace("SLACK", str(slack)).replace("MAIL", str(mail))


@pytest.mark.parametrize(("policy", "slack", "mail", "status", "error"), [
    ("{any_of: [slack, mail]}", 1, 0, "succeeded", None),
    ("{any_of: [slack, mail]}", 1, 1, "failed",
     "success policy any_of: none of its steps succeeded (slack failed, mail failed)"),
    ("{min_succeeded: 2}", 0, 0, "succeeded", None),
    ("{min_succeeded: 2}", 0, 1, "failed", "success policy min_succeeded: 1 step succeeded, 2 needed"),
    ("all", 0, 0, "failed", "step 'pager' failed: exit code 1"),
])
async def test_the_success_policy_decides_the_runs_state(engine, tmp_path, policy, slack, mail, status, error) -> None:
    exe, doc = await run_yaml(engine, tmp_path, fanout(policy, slack, mail))
    assert doc["status"] == status
    assert doc["error"] == error or (error and doc["error"].startswith(error)), doc["error"]
    assert ("yay" if status == "succeeded" else "nay") in ran(tmp_path)


# -- API, dashboard, CLI -----------------------------------------------------------------


DEFS = {
    "off.yaml": """
        enabled: false
        triggers:
          event: [thing.happened]
        steps: [{id: a, log: never}]
    """,
    "gated.yaml": """
        params: {go: {type: boolean, default: false}}
        preconditions: [{check: "{{ params.go }}", message: "go is <b>off</b>"}]
        steps: [{id: a, log: went}]
    """,
}


def test_disabled_and_skipped_on_the_api_and_the_pages(tmp_path: Path) -> None:
    with serving(tmp_path, DEFS, watch=False) as base, httpx.Client(base_url=base, timeout=10) as client:
        refused = client.post("/api/workflows/off/runs", json={"params": {}})
        assert refused.status_code == 409 and refused.json()["error_code"] == "WORKFLOW_DISABLED"
        assert "`enabled: false` in off.yaml" in refused.json()["detail"]
        event = client.post("/api/events", json={"type": "thing.happened", "data": {}}).json()
        assert [(la["workflow"], la["status"]) for la in event["runs"]] == [("off", "rejected")]
        assert "is disabled" in event["runs"][0]["reason"]
        items = {w["name"]: w for w in client.get("/api/workflows").json()["items"]}
        assert items["off"]["enabled"] is False and items["gated"]["enabled"] is True
        page = client.get("/workflows/off").text
        assert "This workflow is disabled" in page and 'class="primary" disabled' in page
        form = with_csrf(client).post("/workflows/off/runs", data={})
        assert "is disabled" in form.text and not client.get("/api/runs?workflow=off").json()["items"]

        started = client.post("/api/workflows/gated/runs", json={"params": {}}).json()
        deadline = time.monotonic() + 10
        while (run := client.get(f"/api/runs/{started['run_id']}").json())["status"] != "skipped":
            assert time.monotonic() < deadline, run
            time.sleep(0.05)
        assert run["reason"] == "precondition not met: go is <b>off</b>"
        assert [r["id"] for r in client.get("/api/runs?status=skipped").json()["items"]] == [started["run_id"]]
        shown = client.get(f"/runs/{started['run_id']}").text
        assert "go is &lt;b&gt;off&lt;/b&gt;" in shown and "go is <b>off</b>" not in shown  # escaped
        listed = client.get("/runs?state=skipped").text
        assert started["run_id"] in listed


def test_treadle_run_of_a_skipped_run_exits_0_with_the_reason_and_a_disabled_one_exits_2(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "gated.yaml").write_text("preconditions: [{check: false, message: not today}]\nsteps: [{id: a, log: x}]\n")
    (defs / "off.yaml").write_text("enabled: false\nsteps: [{id: a, log: x}]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREADLE_")}

    def run(name: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "runner", "run", name, "--definitions", str(defs),
                               "--db", f"sqlite:///{tmp_path / 't.db'}"], capture_output=True, text=True,
                              timeout=60, env=env, cwd=tmp_path)

    skipped = run("gated")
    assert skipped.returncode == 0 and "skipped in" in skipped.stderr
    assert skipped.stderr.rstrip().endswith(": precondition not met: not today")
    off = run("off")
    assert off.returncode == 2 and "treadle: workflow 'off' is disabled" in off.stderr
