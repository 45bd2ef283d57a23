"""Navigation in the dashboard (#17 item 9): a `workflow` step links to the child runs
it started, the workflows list shows each one's next scheduled run and a strip of its
recent runs (one query, on both backends)."""

from __future__ import annotations

import re
import textwrap
import time
from datetime import datetime
from pathlib import Path

import httpx

from runner.storage.store import Store
from tests.web_server import serving


async def test_recent_runs_are_the_newest_few_of_each_workflow(store: Store) -> None:
    now = time.time()
    for i, (workflow, status) in enumerate([("a", "failed"), ("b", "succeeded"), ("a", "succeeded"),
                                            ("a", "running"), ("b", "failed")]):
        store.put_run({"id": f"r{i}", "workflow": workflow, "version": "v", "status": status, "params": {},
                       "trigger": "api", "created_at": now + i})
    await store.flush()
    recent = await store.recent_runs(2)
    assert {w: [(r["id"], r["status"]) for r in rows] for w, rows in recent.items()} == {
        "a": [("r3", "running"), ("r2", "succeeded")], "b": [("r4", "failed"), ("r1", "succeeded")]}
    assert [r["id"] for r in (await store.recent_runs(5))["a"]] == ["r3", "r2", "r0"]


DEFINITIONS = {
    "parent.yaml": """
        triggers: {schedule: [{cron: "0 3 * * *", timezone: UTC}]}
        steps:
          - id: each
            foreach: [1, 2]
            workflow: child
            params: {n: "{{ item }}"}
    """,
    "child.yaml": """
        params: {n: {type: integer}}
        steps: [{id: a, run: 'test {{ params.n }} -eq 1'}]
    """,
}


def test_child_runs_next_run_and_history_strip(tmp_path: Path) -> None:
    with serving(tmp_path, {k: textwrap.dedent(v) for k, v in DEFINITIONS.items()}, watch=False) as base, \
            httpx.Client(base_url=base, timeout=30, headers={"accept": "text/html"}) as c:
        run_id = c.post("/api/workflows/parent/runs").json()["run_id"]
        deadline = time.monotonic() + 30
        while c.get(f"/api/runs/{run_id}").json()["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        children = c.get(f"/api/runs?parent={run_id}").json()["items"]
        assert sorted(r["status"] for r in children) == ["failed", "succeeded"]
        page = c.get(f"/runs/{run_id}?step=each").text
        listed = re.search(r'<div class="children" id="child-runs">(.*?)</div>', page, re.S).group(1)
        assert sorted(re.findall(r'href="/runs/(\w+)"', listed)) == sorted(r["id"] for r in children)
        assert "Child runs" in listed and 'badge s-failed' in listed and 'badge s-succeeded' in listed
        # the child's page links back, and "all of them" is a runs list filtered by parent
        assert f'href="/runs/{run_id}"' in c.get(f"/runs/{children[0]['id']}").text
        by_parent = c.get(f"/runs?parent={run_id}").text
        linked = set(re.findall(r'<a href="/runs/(\w{19})"', by_parent.split('id="runs-list-inner"')[1]))
        assert linked - {run_id} == {r["id"] for r in children}  # each row also links its parent

        home = c.get("/").text
        rows = {m.group(1): m.group(0) for m in re.finditer(
            r'<tr class="[^"]*">\s*<td class="name"[^>]*>\s*<a href="/workflows/(\w+)">.*?</tr>', home, re.S)}
        next_run = re.search(r'<td data-label="Next run" class="next"><time datetime="([^"]+)"[^>]*>in (\d+) (h|min|s)</time>',
                             rows["parent"])
        assert next_run, rows["parent"]
        when = datetime.fromisoformat(next_run.group(1))
        assert (when.hour, when.minute) == (3, 0) and when.timestamp() > time.time()
        assert '<td data-label="Next run" class="next"></td>' in rows["child"]  # no schedule
        strip = re.findall(r'<a class="cell s-(\w+)" href="/runs/(\w+)"', rows["child"])
        assert sorted(strip) == sorted((r["status"], r["id"]) for r in children)
        created = {r["id"]: r["created_at"] for r in children}  # ISO to the ms: siblings may tie
        assert [created[i] for _, i in strip] == sorted(created[i] for _, i in strip)  # oldest to newest


def test_the_triggers_page_lists_what_starts_each_workflow_soonest_first(tmp_path: Path) -> None:
    definitions = {
        "late.yaml": "triggers: {schedule: [{cron: '0 23 * * *'}]}\nsteps: [{id: a, log: x}]\n",
        "soon.yaml": "triggers: {schedule: [{cron: '* * * * *'}]}\nsteps: [{id: a, log: x}]\n",
        "hooked.yaml": "triggers: {event: [orders.*], after: [{workflow: soon}]}\nsteps: [{id: a, log: x}]\n",
        "manual.yaml": "steps: [{id: a, log: x}]\n",
        "broken.yaml": "triggers: {schedule: [{cron: nope}]}\nsteps: [{id: a, log: x}]\n",
    }
    with serving(tmp_path, definitions, watch=False) as base, \
            httpx.Client(base_url=base, timeout=30, headers={"accept": "text/html"}) as c:
        assert c.post("/api/workflows/late/pause").status_code in (200, 201)
        page = c.get("/triggers").text
        order = re.findall(r'<a href="/workflows/(\w+)#triggers">', page)
        assert order == ["soon", "late", "hooked"]  # by next fire; no schedule last; manual/broken absent
        rows = dict(zip(order, page.split("<tbody>")[1].split("<tr>")[1:], strict=True))
        assert re.search(r'<time datetime="[^"]+" title="[^"]+">(in \d+ s|in 1 min|now)</time>', rows["soon"]), rows["soon"]
        assert 'badge s-paused' in rows["late"] and "active" in rows["soon"]
        assert "event <code>orders.*</code>" in rows["hooked"] and 'after <a href="/workflows/soon">' in rows["hooked"]
        assert 'href="/triggers" aria-current="page"' in page
