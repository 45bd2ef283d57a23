"""Dashboard fixes for daily use, against a real server: the audit filter, no root-cause
alarm on a run that succeeded, an HTML 404 for unknown pages, the run's outputs."""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.test_browser import browser, page  # noqa: F401  (fixtures)
from tests.web_server import serving

DEFINITIONS = {
    "handled.yaml": """
        outputs: {total: "{{ steps.last.output }}"}
        steps:
          - {id: shaky, run: 'exit 1', continue_on_failure: true}
          - {id: last, needs: [shaky], trigger_rule: all_done, set: {n: 42}}
    """,
    "broken.yaml": "steps:\n  - {id: boom, run: 'exit 2'}\n",
}


def finish(c: httpx.Client, name: str) -> dict:
    run_id = c.post(f"/api/workflows/{name}/runs", json={}).json()["run_id"]
    deadline = time.monotonic() + 30
    while (run := c.get(f"/api/runs/{run_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return run


def test_daily_pages(tmp_path: Path) -> None:
    import textwrap

    with serving(tmp_path, {k: textwrap.dedent(v) for k, v in DEFINITIONS.items()}) as base:
        c = httpx.Client(base_url=base, timeout=30)
        handled = finish(c, "handled")
        failed = finish(c, "broken")
        assert handled["status"] == "succeeded" and failed["status"] == "failed"

        page = c.get(f"/runs/{handled['id']}").text
        assert "Root cause" not in page and "root cause</span>" not in page
        assert "failure was allowed" in html.unescape(page) and 'id="outputs"' in page
        assert html.unescape(page).count('{"total": {"n": 42}}') == 1
        page = c.get(f"/runs/{failed['id']}").text
        assert "<strong>Root cause:</strong>" in page and "root cause</span>" in page

        audit = c.get("/audit").text
        assert 'name="who" value=""' in audit and "Identity(" not in audit
        only_starts = c.get("/audit", params={"action": "run.start"}).text
        assert only_starts.count("<code>run.start</code>") == 2 and "No entry matches" not in only_starts
        none = c.get("/audit", params={"action": "token."}).text
        assert "No entry matches this filter" in none and 'value="token."' in none

        missing = c.get("/approvals", headers={"Accept": "text/html"})
        assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
        assert "There is no page at /approvals." in missing.text and '<a href="/runs">' in missing.text
        api = c.get("/api/nope")
        assert api.status_code == 404 and api.json()["error_code"] == "NOT_FOUND"


@pytest.mark.browser
def test_open_workflow_and_home_pages_follow_a_file_edit(tmp_path: Path, page) -> None:  # noqa: F811
    from playwright.sync_api import expect

    with serving(tmp_path, {"edit.yaml": "steps: [{id: a, log: hi}]\n"}) as base:
        page.goto(base + "/workflows/edit")
        expect(page.locator("h1")).to_contain_text("edit")
        assert page.locator("h1 .badge").count() == 0
        expect(page.locator("svg.dag g.node")).to_have_count(1)
        (tmp_path / "definitions" / "edit.yaml").write_text("steps: [{id: a, lgo: hi}]\n")  # a broken save
        expect(page.locator("h1 .badge")).to_contain_text("broken")  # no reload
        expect(page.locator("body")).to_contain_text("unknown step kind 'lgo'")
        home = page.context.new_page()
        home.goto(base + "/")
        expect(home.locator("body")).to_contain_text("1 file with problems")
        (tmp_path / "definitions" / "edit.yaml").write_text("steps: [{id: a, log: fixed}, {id: b, log: new}]\n")
        expect(home.locator("body")).not_to_contain_text("with problems")  # the fix
        expect(page.locator("h1 .badge")).to_have_count(0)
        expect(page.locator("svg.dag g.node")).to_have_count(2)  # the graph of the new version, drawn again
        expect(page.locator('svg.dag g.node[data-step="b"]')).to_be_visible()
        assert page.errors == []


@pytest.mark.browser
def test_the_api_is_browsable_from_vendored_files(tmp_path: Path, page) -> None:  # noqa: F811
    from playwright.sync_api import expect

    with serving(tmp_path, {"a.yaml": "steps: [{id: a, log: hi}]\n"}) as base:
        outside = []
        page.on("request", lambda r: None if r.url.startswith(base) else outside.append(r.url))
        page.goto(base + "/schema/swagger")
        expect(page.locator("#swagger-container")).to_contain_text("/api/workflows/{name}/runs")
        expect(page.locator("#swagger-container")).to_contain_text("Treadle")
    assert outside == [] and page.errors == []


@pytest.mark.browser
def test_run_again_fills_the_form_cancel_asks_first_and_a_script_reads_as_one(tmp_path: Path, page) -> None:  # noqa: F811
    from playwright.sync_api import expect

    definitions = {"greet.yaml": """params:
  who: {type: string, default: nobody}
  n: {type: integer, default: 1}
steps:
  - id: sh
    run: |
      echo one
      echo "two <b>"
  - {id: hold, needs: [sh], wait: 120s}
"""}
    with serving(tmp_path, definitions) as base, httpx.Client(base_url=base, timeout=30) as c:
        run_id = c.post("/api/workflows/greet/runs", json={"params": {"who": "Ada", "n": 3}}).json()["run_id"]
        deadline = time.monotonic() + 30
        while {s["id"]: s["status"] for s in c.get(f"/api/runs/{run_id}").json()["steps"]}["hold"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        page.goto(f"{base}/runs/{run_id}?step=sh#step-detail")
        # the script as written: real lines, its markup as text
        assert page.locator("pre.script").inner_text() == 'echo one\necho "two <b>"\n'
        cancels = []
        page.on("request", lambda r: cancels.append(r.url) if r.url.endswith("/cancel") else None)
        page.once("dialog", lambda d: d.dismiss())
        page.click("button:has-text('Cancel run')")
        assert cancels == [] and c.get(f"/api/runs/{run_id}").json()["status"] == "running"
        page.once("dialog", lambda d: d.accept())
        page.click("button:has-text('Cancel run')")
        while c.get(f"/api/runs/{run_id}").json()["status"] != "cancelled":
            assert time.monotonic() < deadline + 30
            time.sleep(0.05)
        assert len(cancels) == 1
        page.goto(f"{base}/runs/{run_id}")
        page.click("#run-again")
        expect(page.locator("#from-run")).to_contain_text(run_id)
        assert page.input_value("input[name=who]") == "Ada" and page.input_value("input[name=n]") == "3"
        page.click(".start-form button[type=submit]")
        page.wait_for_url(re.compile(r"/runs/(?!" + run_id + ")"))
        again = c.get("/api/runs?workflow=greet").json()["items"][0]
        assert again["id"] != run_id and again["params"] == {"who": "Ada", "n": 3}
        assert page.errors == []


@pytest.mark.browser
def test_a_log_has_times_a_find_box_raw_and_download_and_items_open_one_by_one(tmp_path: Path, page) -> None:  # noqa: F811
    from playwright.sync_api import expect

    definitions = {"logs.yaml": """steps:
  - id: talk
    run: 'for w in alpha beta gamma alphabet; do echo "$w"; done'
  - id: each
    foreach: [1, 2, 3]
    run: 'test {{ item }} -ne 2 && echo "item {{ item }} ok" || { echo "two <b>" >&2; exit 4; }'
"""}
    with serving(tmp_path, definitions) as base, httpx.Client(base_url=base, timeout=30) as c:
        run_id = c.post("/api/workflows/logs/runs", json={}).json()["run_id"]
        deadline = time.monotonic() + 30
        while c.get(f"/api/runs/{run_id}").json()["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        page.goto(f"{base}/runs/{run_id}?step=talk#step-detail")
        lines = page.locator("#log-pre > span")
        expect(lines).to_have_count(4)
        stamps = page.locator("#log-pre .ts").all_inner_texts()
        assert len(stamps) == 4 and all(re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} ", s) for s in stamps), stamps
        page.fill("#log-search", "ALPHA")
        expect(page.locator("#log-pre > span:visible")).to_have_count(2)
        expect(page.locator("#log-found")).to_have_text("2 matching")
        page.uncheck("#log-times")
        expect(page.locator("#log-pre .ts").first).to_be_hidden()
        assert page.locator("#log-pre > span:visible").all_inner_texts() == ["alpha\n", "alphabet\n"]
        raw = page.locator(".log-head a[download]")
        assert raw.get_attribute("download") == f"{run_id}-talk.log"
        with page.expect_download() as download:
            raw.click()
        assert Path(download.value.path()).read_text() == "alpha\nbeta\ngamma\nalphabet\n"

        page.goto(f"{base}/runs/{run_id}?step=each#step-detail")
        page.click("#item-list > summary")
        items = page.locator(".items-one-by-one > li")
        expect(items).to_have_count(3)
        page.click("#item-1 > details > summary")
        expect(page.locator("#item-1 pre.err")).to_contain_text("exit code 4")
        expect(page.locator("#item-1 .badge")).to_have_text("failed")
        expect(page.locator("#item-2 .badge")).to_have_text("succeeded")
        assert page.errors == []


def _rgb(css: str) -> tuple[float, float, float]:
    """A computed colour (`rgb(r, g, b)` or `color(srgb r g b)`, as color-mix gives) as 0-1 floats."""
    if css.startswith("color(srgb"):
        return tuple(float(v) for v in css[len("color(srgb"):].strip(" )").split()[:3])  # type: ignore[return-value]
    return tuple(int(v) / 255 for v in re.findall(r"[\d.]+", css)[:3])  # type: ignore[return-value]


def _contrast(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    def lum(c: tuple[float, ...]) -> float:
        lin = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.browser
def test_state_colours_differ_read_well_and_an_approval_bar_matches_its_badge(tmp_path: Path, page) -> None:  # noqa: F811
    from playwright.sync_api import expect

    definitions = {"gate.yaml": "steps:\n  - {id: ask, approval: {message: go?}}\n  - {id: after, needs: [ask], log: x}\n"}
    with serving(tmp_path, definitions) as base, httpx.Client(base_url=base, timeout=30) as c:
        run_id = c.post("/api/workflows/gate/runs", json={}).json()["run_id"]
        deadline = time.monotonic() + 30
        while c.get(f"/api/runs/{run_id}").json()["status"] != "waiting":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        page.goto(f"{base}/runs/{run_id}")
        states = ["pending", "running", "waiting", "succeeded", "failed", "skipped", "upstream_failed", "cancelled"]
        colours = page.evaluate("""states => states.map(st => {
            const b = document.createElement('span'); b.className = 'badge s-' + st; b.textContent = st;
            document.body.appendChild(b); const cs = getComputedStyle(b);
            const out = {fg: cs.color, bg: cs.backgroundColor, fill: cs.getPropertyValue('--c').trim()};
            b.remove(); return out; })""", states)
        fills = {st: c["fill"] for st, c in zip(states, colours, strict=True)}
        assert len(set(fills.values())) == len(states), fills  # no two states share a colour
        for st, c in zip(states, colours, strict=True):
            if st != "failed":  # failed is white on its solid colour
                assert _contrast(_rgb(c["fg"]), _rgb(c["bg"])) >= 4.5, (st, c)
        # the approval's bar is in the colour of its badge, not the running blue
        row = page.locator("table.steps-table tr", has=page.locator(".step-id", has_text="ask")).first
        expect(row.locator(".badge")).to_have_class(re.compile(r"\bs-waiting\b"))
        expect(row.locator(".bar").last).to_have_class(re.compile(r"\bs-waiting\b"))
        page.goto(base + "/")
        assert page.locator("td.actions").first.evaluate("e => getComputedStyle(e).display") == "table-cell"
