"""Search and filters (#17 item 7): runs by trigger, time window and text in their id
or params (in the database, on both backends), workflows by text, tag and state, the
same rows from the API and the pages, filters kept in the URL, and unknown query
parameters refused by the API instead of ignored."""

from __future__ import annotations

import re
import textwrap
import time
from typing import Any

import httpx
import pytest

from runner.storage.store import Store
from tests.test_browser import browser, page  # noqa: F401  (fixtures)
from tests.web_server import serving

DAY = 86400.0


def _run(run_id: str, created_at: float, trigger: str, params: dict[str, Any], workflow: str = "w") -> dict[str, Any]:
    return {"id": run_id, "workflow": workflow, "version": "v1", "status": "succeeded", "params": params,
            "trigger": trigger, "created_at": created_at}


async def test_runs_are_found_by_trigger_time_window_and_text(store: Store) -> None:
    now = time.time()
    rows = [_run("r-old", now - 10 * DAY, "schedule", {"date": "2026-11-01"}),
            _run("r-ada", now - 2 * DAY, "api", {"who": "Ada_100%"}),
            _run("r-bob", now - 3600, "api", {"who": "Bob"}),
            _run("r-hook", now - 60, "webhook", {"who": "ada lovelace"}, workflow="other")]
    for row in rows:
        store.put_run(row)
    await store.flush()

    async def ids(**filters: Any) -> list[str]:
        found, total = await store.list_runs(**filters)
        assert total == len(found)
        return [r["id"] for r in found]

    assert await ids(trigger="api") == ["r-bob", "r-ada"]
    assert await ids(since=now - 3 * DAY) == ["r-hook", "r-bob", "r-ada"]
    assert await ids(since=now - 3 * DAY, until=now - 120) == ["r-bob", "r-ada"]
    assert await ids(until=now - 2 * DAY) == ["r-old"]  # the bound itself is outside `until`
    assert await ids(search="ADA") == ["r-hook", "r-ada"]  # any case, params and ids
    assert await ids(search="r-bo") == ["r-bob"]
    # LIKE's wildcards are plain characters: `_` and `%` match only themselves
    assert await ids(search="a_1") == ["r-ada"]
    assert await ids(search="0%") == ["r-ada"]
    assert await ids(search="%") == ["r-ada"]
    assert await ids(search="a_l") == []
    assert await ids(search="ada", workflow="w", trigger="api") == ["r-ada"]
    assert await ids(search="2026-11", workflows=["other"]) == []  # a namespace sees its own only


DEFINITIONS = {
    "greet.yaml": """
        tags: [people]
        description: Says hello
        params: {who: {type: string, default: x}}
        steps: [{id: a, log: "hi {{ params.who }}"}]
    """,
    "etl.yaml": """
        tags: [data]
        steps: [{id: load, run: 'exit 1'}]
    """,
    "broken.yaml": """
        steps: [{id: a, needs: [nowhere], log: x}]
    """,
}


def _finish(c: httpx.Client, name: str, params: dict[str, Any] | None = None) -> str:
    run_id = c.post(f"/api/workflows/{name}/runs", json={"params": params or {}}).json()["run_id"]
    deadline = time.monotonic() + 30
    while c.get(f"/api/runs/{run_id}").json()["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, run_id
        time.sleep(0.05)
    return run_id


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("search")
    with serving(root, {k: textwrap.dedent(v) for k, v in DEFINITIONS.items()}, watch=False) as base, \
            httpx.Client(base_url=base, timeout=30) as c:
        runs = {"ada": _finish(c, "greet", {"who": "Ada"}), "bob": _finish(c, "greet", {"who": "Bob"}),
                "etl": _finish(c, "etl")}
        yield base, c, runs


def _page_workflows(html: str) -> list[str]:
    return re.findall(r'<a href="/workflows/([^"]+)">(?:<span class="ns">[^<]*</span>)?<strong>', html)


def _page_runs(html: str) -> list[str]:
    return re.findall(r'<a href="/runs/([0-9a-f]{19})"', html.split('id="runs-list-inner"', 1)[1])


@pytest.mark.parametrize("query, expected", [
    ("state=failing", ["etl"]), ("state=broken", ["broken"]), ("state=ok", ["greet"]),
    ("tag=people", ["greet"]), ("q=HELLO", ["greet"]), ("q=et&tag=data", ["etl"]), ("tag=data&state=ok", []),
])
def test_workflows_filtered_alike_in_the_api_and_the_list(site: Any, query: str, expected: list[str]) -> None:
    _, c, _ = site
    api = c.get(f"/api/workflows?{query}")
    assert api.status_code == 200, api.text
    assert sorted(i["name"] for i in api.json()["items"]) == expected
    listed = c.get(f"/?{query}", headers={"accept": "text/html"}).text
    assert sorted(_page_workflows(listed)) == expected
    # the live refresh asks for the same filtered list
    refresh = re.search(r'id="wf-list"[^>]*hx-get="/\?([^"]*)"', listed).group(1).replace("&amp;", "&")
    assert sorted(refresh.split("&")) == sorted(query.split("&"))


def test_runs_filtered_alike_in_the_api_and_the_list(site: Any) -> None:
    _, c, runs = site
    for query, expected in [("q=ada&workflow=greet", [runs["ada"]]), ("trigger=api&q=bob", [runs["bob"]]),
                            ("trigger=schedule", []), ("since=1h&workflow=etl", [runs["etl"]]), ("until=1h", [])]:
        api = c.get(f"/api/runs?{query}")
        assert api.status_code == 200, api.text
        assert [r["id"] for r in api.json()["items"]] == expected, query
        assert _page_runs(c.get(f"/runs?{query}", headers={"accept": "text/html"}).text) == expected, query
    # a time the page cannot read keeps the form as typed and says why; the API answers 400
    bad = c.get("/runs?since=yesterday", headers={"accept": "text/html"}).text
    assert 'id="filters-error"' in bad and "duration ago" in bad and 'value="yesterday"' in bad
    refused = c.get("/api/runs?since=yesterday")
    assert refused.status_code == 400 and "'since'" in refused.json()["detail"]


@pytest.mark.parametrize("method, path, unknown", [
    ("GET", "/api/workflows?status=paused", "status"),
    ("GET", "/api/runs?stauts=failed&workflow=greet", "stauts"),
    ("GET", "/api/runs/{run}?attempt=false", "attempt"),
    ("GET", "/api/workflows/greet?x=1", "x"),
    ("POST", "/api/workflows/greet/runs?params=1", "params"),
])
def test_unknown_query_parameters_are_refused_by_the_api(site: Any, method: str, path: str, unknown: str) -> None:
    _, c, runs = site
    before = c.get("/api/runs").json()["total"]
    answer = c.request(method, path.format(run=runs["ada"]), json={} if method == "POST" else None)
    assert answer.status_code == 400, answer.text
    doc = answer.json()
    assert doc["error_code"] == "VALIDATION_ERROR" and f"'{unknown}'" in doc["detail"]
    assert "this endpoint takes" in doc["detail"]
    assert c.get("/api/runs").json()["total"] == before  # nothing started by a refused call
    # the known ones still work
    assert c.get(f"/api/runs/{runs['ada']}?attempts=false").status_code == 200


def test_a_filtered_runs_view_lives_in_its_url(site: Any, page: Any) -> None:  # noqa: F811
    base, _, runs = site
    page.goto(base + "/runs")
    page.fill("input[name=q]", "bob")
    page.select_option("select[name=trigger]", "api")
    page.click("form.filters button[type=submit]")
    page.wait_for_url(re.compile(r"q=bob"))
    assert "trigger=api" in page.url
    shared = page.url
    page.goto(base + "/runs")
    page.goto(shared)  # someone opening the shared link sees the same rows
    links = page.locator("#runs-list-inner a[href^='/runs/']").evaluate_all("els => els.map(e => e.getAttribute('href'))")
    assert links == [f"/runs/{runs['bob']}"]
    assert page.input_value("input[name=q]") == "bob"
