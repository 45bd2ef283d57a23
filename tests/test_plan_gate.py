"""The manual gate: `serve --git URL --apply manual` fetches a new commit but keeps the
one in force until an admin applies it; the dashboard shows the incoming commit's plan
(in a real Chromium), `/api/plan` the same as JSON; a `run` token cannot apply it.
Also the plan beside the text diff of two versions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tests.git_support import commit_all, git
from tests.test_browser import _missing, browser, page  # noqa: F401  (fixtures)
from tests.web_server import running_server

ADMIN = "gate-admin-token-0123456789"
CHILD = "params:\n  n: {type: integer, required: true}\nsteps: [{id: sum, set: {v: '{{ params.n }}'}}]\n"
PARENT = "steps:\n  - id: call\n    workflow: child\n    params: {n: 1}\n"
REQUIRED = CHILD.replace("  n: {type: integer, required: true}\n",
                         "  n: {type: integer, required: true}\n  mode: {type: string, required: true}\n")


def _push(work: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (work / "definitions" / name).write_text(text)
    sha = commit_all(work, message)
    git(work, "push", "-q", "origin", "HEAD:main")
    return sha


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("gate")
    bare = root / "origin.git"
    git(root, "init", "-q", "--bare", str(bare))
    work = root / "work"
    git(root, "clone", "-q", bare.as_uri(), str(work))
    (work / "definitions").mkdir()
    first = _push(work, {"child.yaml": CHILD, "parent.yaml": PARENT}, "first")
    settings = {"git_url": bare.as_uri(), "git_branch": "main", "git_interval": 3600.0,
                "git_workdir": root / "clone", "git_apply": "manual", "admin_token": ADMIN}
    with running_server(Path("definitions"), f"sqlite:///{root / 't.db'}", **settings) as base:
        admin = httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {ADMIN}"})
        runner = admin.post("/api/tokens", json={"name": "runner", "scope": "run"}).json()["token"]
        yield SimpleNamespace(base=base, admin=admin, runner=runner, work=work, first=first)
        admin.close()


def _version(client: httpx.Client, name: str) -> str:
    return client.get(f"/api/workflows/{name}").json()["version"]


def test_a_fetched_commit_waits_with_its_plan_until_an_admin_applies_it(gate: SimpleNamespace) -> None:
    admin = gate.admin
    git_status = admin.get("/health").json()["git"]
    assert (git_status["apply"], git_status["commit"], git_status["incoming"]) == ("manual", gate.first, None)
    before = _version(admin, "child")
    second = _push(gate.work, {"child.yaml": REQUIRED}, "child needs a mode")
    synced = admin.post("/api/sync").json()
    assert synced["changed"] is False and synced["commit"] == gate.first and synced["incoming"] == second
    assert synced["incoming_subject"] == "child needs a mode"
    assert _version(admin, "child") == before  # fetched, not in force

    plan = admin.get("/api/plan").json()
    assert plan["base"]["commit"] == gate.first and plan["head"]["commit"] == second
    [child] = plan["workflows"]
    assert child["params"]["added"] == [{"name": "mode", "type": "string", "required": True}]
    assert [b["workflow"] for b in child["breaks"]] == ["parent"]

    with httpx.Client(base_url=gate.base, timeout=30, headers={"Authorization": f"Bearer {gate.runner}"}) as c:
        assert c.get("/api/plan").status_code == 200  # reading a plan needs `read`
        refused = c.post("/api/sync/apply", json={"commit": second})
        assert refused.status_code == 403 and refused.json()["error_code"] == "INSUFFICIENT_SCOPE"
    stale = admin.post("/api/sync/apply", json={"commit": gate.first})
    assert stale.status_code == 409 and "review its plan" in stale.json()["detail"]
    assert admin.post("/api/plan", json={}).status_code in (404, 405)
    assert admin.get("/api/plan", params={"base": "no-such-rev"}).status_code == 400

    applied = admin.post("/api/sync/apply", json={"commit": second})
    assert applied.status_code == 200, applied.text
    assert applied.json()["commit"] == second and applied.json()["incoming"] is None
    deadline = time.monotonic() + 10
    while _version(admin, "child") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _version(admin, "child") != before
    assert admin.post("/api/sync/apply", json={"commit": second}).status_code == 409  # nothing incoming now
    # the versions' diff page says what changed in meaning beside the text
    diff = admin.get("/workflows/child/diff", params={"from": before, "to": _version(admin, "child")}).text
    assert "+ param mode (string, required)" in diff and 'id="text-diff"' in diff
    audit = admin.get("/api/audit", params={"limit": 100}).json()["items"]
    assert [(e["who"], e["result"]) for e in reversed(audit) if e["action"] == "git.apply"] == [
        ("runner", "denied"), ("admin-token", "failed"), ("admin-token", "ok"), ("admin-token", "failed")]


@pytest.mark.browser
def test_the_dashboard_shows_the_incoming_plan_and_only_an_admin_can_apply(
        gate: SimpleNamespace, page: Any) -> None:  # noqa: F811
    from playwright.sync_api import expect

    third = _push(gate.work, {"parent.yaml": PARENT + "  - id: after\n    log: done\n"}, "parent logs")
    assert gate.admin.post("/api/sync").json()["incoming"] == third

    def sign_in(token: str) -> None:
        page.context.clear_cookies()
        page.goto(gate.base + "/signin?next=/")
        page.fill("#token", token)
        page.click("button[type=submit]")

    sign_in(gate.runner)
    expect(page.locator("#incoming")).to_contain_text(third[:12])
    page.click("#incoming a[href='/plan']")
    expect(page.locator("#plan-parent")).to_contain_text("+ step after")
    expect(page.locator("#incoming")).to_contain_text("needs an admin token")
    assert page.locator("#incoming button").count() == 0

    sign_in(ADMIN)
    page.goto(gate.base + "/plan")
    expect(page.locator("#plan-parent")).to_contain_text("+ dependency call -> after")
    page.click("#incoming button[type=submit]")
    expect(page.locator("h1")).to_contain_text("working tree")  # in force now: the plan is of the folder
    assert page.locator("#incoming").count() == 0
    assert gate.admin.get("/health").json()["git"]["commit"] == third
    assert page.errors == []
