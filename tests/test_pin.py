"""Rollback (a run of an earlier version) and pins, from the API, the CLI and the
dashboard, against real servers sharing one real database."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from .git_support import commit_all, git
from .web_server import running_server, with_csrf, write_definitions

V1 = """
    triggers:
      event: [{type: deploy.check}]
    steps:
      - id: which
        set: {v: 1}
    outputs: {v: "{{ steps.which.output.v }}"}
"""
V2 = V1.replace("v: 1}", "v: 2}")
BROKEN = "steps:\n  - id: which\n    sett: {v: 3}\n"


def _version(client: httpx.Client, name: str = "svc") -> str:
    return client.get(f"/api/workflows/{name}").json()["version"]


def _save(path: Path, text: str, client: httpx.Client, old: str) -> str:
    """Write a new text of the file and wait until the server has loaded it."""
    path.write_text(textwrap.dedent(text).lstrip())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        body = client.get("/api/workflows/svc").json()
        if body["file_version"] != old:
            return body["file_version"]
        time.sleep(0.02)
    raise AssertionError("the edit was not loaded")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("pin")
    defs = write_definitions(root / "definitions", {"svc.yaml": V1})
    git(root, "init", "-q")
    commit_all(root, "v1")  # a git repository: plans compare its revisions
    db = f"sqlite:///{root / 'treadle.db'}"
    with running_server(defs, db) as base, httpx.Client(base_url=base, timeout=30) as c:
        v1 = _version(c)
        assert c.post("/api/workflows/svc/runs?wait=20s").json()["version"] == v1  # v1 is recorded with a run
        v2 = _save(defs / "svc.yaml", V2, c, v1)
        yield SimpleNamespace(base=base, client=c, v1=v1, v2=v2, defs=defs, db=db)


def _start(c: httpx.Client, **body: object) -> dict:
    r = c.post("/api/workflows/svc/runs?wait=20s", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_run_of_an_earlier_version_is_recorded_with_it(site: SimpleNamespace) -> None:
    c = site.client
    assert _version(c) == site.v2
    old = _start(c, version=site.v1)
    assert old["version"] == site.v1 and old["outputs"] == {"v": 1}
    now = _start(c)
    assert now["version"] == site.v2 and now["outputs"] == {"v": 2}


def test_an_unknown_version_is_404_and_starts_nothing(site: SimpleNamespace) -> None:
    before = site.client.get("/api/runs").json()["total"]
    r = site.client.post("/api/workflows/svc/runs", json={"version": "0123456789ab"})
    assert r.status_code == 404 and r.json()["error_code"] == "VERSION_NOT_FOUND", r.text
    assert "svc" in r.json()["detail"] and "0123456789ab" in r.json()["detail"]
    assert site.client.get("/api/runs").json()["total"] == before


def _treadle(*args: str, base: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TREADLE_SERVER": base}
    env.pop("TREADLE_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "runner", *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def test_start_version_from_the_cli(site: SimpleNamespace) -> None:
    done = _treadle("start", "svc", "--version", site.v1, "--wait", "--json", base=site.base)
    assert done.returncode == 0, done.stderr
    assert f'"version": "{site.v1}"' in done.stdout and '"v": 1' in done.stdout


def test_pin_makes_every_start_use_the_version_on_every_server(site: SimpleNamespace) -> None:
    c = site.client
    r = c.post("/api/workflows/svc/pin", json={"version": site.v1, "reason": "INC-7: bad merge"})
    assert r.status_code == 200, r.text
    assert r.json()["pinned"]["version"] == site.v1 and r.json()["changed"] is True
    try:
        shown = c.get("/api/workflows/svc").json()
        assert shown["pinned"]["version"] == site.v1 and shown["pinned"]["reason"] == "INC-7: bad merge"
        assert shown["version"] == site.v2  # the file's version in force is still said as it is
        in_force = [v["version"] for v in c.get("/api/workflows/svc/versions").json()["items"] if v["in_force"]]
        assert in_force == [site.v1]
        assert _start(c)["version"] == site.v1  # a person
        event = c.post("/api/events", json={"type": "deploy.check"}).json()["runs"][0]  # a trigger
        assert c.get(f"/api/runs/{event['run_id']}?wait=20s").json()["version"] == site.v1
        failed_v2 = _start(c, version=site.v2)["id"]
        retry = c.post(f"/api/runs/{failed_v2}/retry").json()  # a retry runs the pinned version too
        assert c.get(f"/api/runs/{retry['run_id']}?wait=20s").json()["version"] == site.v1
        # a second server on the same database sees the pin (it lives in the database)
        with running_server(site.defs, site.db, watch=False) as other, \
                httpx.Client(base_url=other, timeout=30) as c2:
            assert c2.get("/api/workflows/svc").json()["pinned"]["version"] == site.v1
            assert _start(c2)["version"] == site.v1
        # the dashboard says so loudly, on the workflow page and the home page
        page = c.get("/workflows/svc").text
        assert "Pinned to version" in page and site.v1 in page and "INC-7: bad merge" in page
        assert f"pinned to {site.v1}" in c.get("/").text
        assert c.get("/api/plan").json()["pinned"] == {"svc": site.v1}  # what a change does not reach
        assert "Pinned workflows do not take this change" in c.get("/plan").text
    finally:
        r = c.post("/api/workflows/svc/unpin")
    assert r.status_code == 200 and r.json() == {"workflow": "svc", "pinned": None, "changed": True}
    assert _start(c)["version"] == site.v2
    assert "Pinned to version" not in c.get("/workflows/svc").text
    actions = [e["action"] for e in c.get("/api/audit", params={"limit": 100}).json()["items"]]
    assert "workflow.pin" in actions and "workflow.unpin" in actions


def test_pin_refuses_unknown_and_broken_versions(site: SimpleNamespace) -> None:
    c = site.client
    assert c.post("/api/workflows/svc/pin", json={"version": "nope"}).json()["error_code"] == "VERSION_NOT_FOUND"
    assert c.post("/api/workflows/nosuch/pin", json={"version": site.v1}).status_code == 404
    broken = _save(site.defs / "svc.yaml", BROKEN, c, site.v2)  # recorded, but it cannot run
    try:
        deadline = time.monotonic() + 20  # every text of the file is recorded, broken ones too
        while broken not in [v["version"] for v in c.get("/api/workflows/svc/versions").json()["items"]]:
            assert time.monotonic() < deadline, "the broken text was not recorded"
            time.sleep(0.02)
        r = c.post("/api/workflows/svc/pin", json={"version": broken})
        assert r.status_code == 409 and r.json()["error_code"] == "WORKFLOW_INVALID", r.text
        assert broken in r.json()["detail"]
    finally:
        _save(site.defs / "svc.yaml", V2, c, broken)
    assert c.get("/api/workflows/svc").json()["pinned"] is None


def test_pin_and_unpin_from_the_cli(site: SimpleNamespace) -> None:
    pinned = _treadle("pin", "svc", site.v1, "--reason", "rollback", base=site.base)
    assert pinned.returncode == 0, pinned.stderr
    assert f"pinned to version {site.v1}" in pinned.stderr
    try:
        assert _start(site.client)["version"] == site.v1
    finally:
        unpinned = _treadle("unpin", "svc", base=site.base)
    assert unpinned.returncode == 0 and "not pinned" in unpinned.stderr
    missing = _treadle("pin", "svc", "nope", base=site.base)
    assert missing.returncode == 2 and "no recorded version 'nope'" in missing.stderr


def test_dashboard_runs_and_pins_a_version(site: SimpleNamespace) -> None:
    with httpx.Client(base_url=site.base, timeout=30, follow_redirects=False) as c:
        with_csrf(c)
        page = c.get(f"/workflows/svc/versions/{site.v1}").text
        assert "Start a run of this version" in page and "Pin to this version" in page
        r = c.post(f"/workflows/svc/versions/{site.v1}/runs", data={})
        assert r.status_code == 303, r.text
        run_id = r.headers["location"].rsplit("/", 1)[1]
        run = c.get(f"/api/runs/{run_id}?wait=20s").json()
        assert run["version"] == site.v1 and run["trigger"] == "dashboard"
        r = c.post("/workflows/svc/pin", data={"version": site.v1, "reason": "<b>INC</b>"})
        assert r.status_code == 303, r.text
        try:
            page = c.get("/workflows/svc").text
            assert "Pinned to version" in page and "&lt;b&gt;INC&lt;/b&gt;" in page and "<b>INC</b>" not in page
            assert "The workflow is pinned to this version." in c.get(f"/workflows/svc/versions/{site.v1}").text
        finally:
            assert c.post("/workflows/svc/unpin").status_code == 303
        assert c.get("/api/workflows/svc").json()["pinned"] is None
