"""The dashboard in a real browser: Playwright's sync API driving Debian's Chromium.

Skipped with a reason when /usr/bin/chromium (or playwright) is missing, unless
TREADLE_REQUIRE_BROWSER=1, where a missing browser fails instead (CI sets it).
Never run `playwright install`: the browser is Debian's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from .web_server import serving

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).parent / "artifacts"
WAIT_MS = 20_000  # an upper bound for things that take well under a second

DEFINITIONS = {
    "relay.yaml": """
        description: Waits for a gate, then a step that fails the first time.
        tags: [demo]
        params:
          gate: {type: string, required: true, description: a file that lets the run go on}
          marker: {type: string, required: true}
        defaults: {timeout: 60s}
        steps:
          - id: prepare
            run: 'echo preparing; while [ ! -f "{{ params.gate }}" ]; do sleep 0.05; done; echo gate open'
          - id: work
            run: echo working
          - id: flaky
            run: 'if [ -f "{{ params.marker }}" ]; then echo recovered; else touch "{{ params.marker }}"; echo "first try fails" >&2; exit 1; fi'
          - id: report
            log: "flaky said {{ steps.flaky.output }}"
    """,
    "ticker.yaml": """
        triggers:
          schedule: [{cron: "0 6 * * *", timezone: Europe/Berlin}]
          event: [tick]
        concurrency: {limit: 1, policy: queue}
        steps: [{id: a, log: tick}]
    """,
    "xss.yaml": """
        description: "<img src=x onerror=alert('description')>"
        params: {evil: {type: string, default: "<script>alert('param')</script>"}}
        steps:
          - id: shout
            run: printf '%s\\n' "<script>alert('log')</script><img src=x onerror=alert('img')>"
          - id: shaped
            set: {html: "<svg onload=alert('output')></svg>{{ params.evil }}"}
    """,
    "ops/broken.yaml": """
        steps:
          - id: a
            depend: [b]
            run: echo
    """,
}


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright python package is not installed"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _missing()
    if reason is not None:
        if os.environ.get("TREADLE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"TREADLE_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(f"browser tests need Chromium: {reason}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("browser")
    with serving(root, DEFINITIONS) as base:
        yield SimpleNamespace(base=base, root=root)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.errors = []  # uncaught script errors on the page
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()


def test_workflows_page_shows_workflows_and_a_broken_file(page: Any, server: SimpleNamespace) -> None:
    from playwright.sync_api import expect

    page.goto(server.base + "/")
    expect(page.locator("table.workflows")).to_contain_text("relay")
    expect(page.locator("table.workflows")).to_contain_text("Waits for a gate")
    problems = page.locator(".problems")
    expect(problems).to_be_visible()
    expect(problems).to_contain_text("ops/broken.yaml:3:5: steps[0].depend: unknown key 'depend'; did you mean 'needs'?")
    assert page.errors == []


def test_start_a_run_watch_it_live_read_the_failure_and_retry(page: Any, server: SimpleNamespace,
                                                              tmp_path: Path) -> None:
    from playwright.sync_api import expect

    gate, marker = tmp_path / "gate", tmp_path / "marker"
    page.goto(server.base + "/workflows/relay")
    page.fill("#param-gate", str(gate))
    page.fill("#param-marker", str(marker))
    page.click("form.start-form button[type=submit]")
    page.wait_for_url(re.compile(r"/runs/[0-9a-z]+$"))
    run_url = page.url
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    def node(step: str) -> Any:
        return page.locator(f'svg.dag g.node[data-step="{step}"]')

    # the gate is shut: the first step runs, the rest wait
    expect(page.locator(".dag-view[data-ready]")).to_have_count(1)
    page.evaluate("document.querySelector('svg.dag').__kept = true")  # gone if the graph is drawn again
    expect(node("prepare")).to_have_class("node s-running")
    expect(node("work")).to_have_class("node s-pending")
    expect(page.locator("#run-head")).to_contain_text("Cancel run")
    gate.touch()
    # ...and now the page follows the run by itself
    expect(node("prepare")).to_have_class("node s-succeeded")
    expect(node("work")).to_have_class("node s-succeeded")
    expect(node("flaky")).to_have_class("node s-failed")
    expect(node("report")).to_have_class("node s-upstream_failed")
    expect(page.locator("#run-head .badge").first).to_have_text("failed")
    expect(page.locator("#run-head .root-cause")).to_contain_text("flaky")
    expect(page.locator(".steps-table .bar.s-succeeded")).to_have_count(2)  # the timeline
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
    assert page.evaluate("document.querySelector('svg.dag').__kept") is True, "the graph was laid out again"
    expect(node("flaky").locator("text.meta")).to_have_text(re.compile(r"^run · [\d.]+m?s$"))  # kind and time
    assert page.url == run_url

    # open the failed step: its error and its log
    page.click('.steps-table .step-id a:text-is("flaky")')
    expect(page.locator("#step-info h2")).to_contain_text("flaky")
    expect(page.locator("#step-info .error-box")).to_contain_text("exit code 1")
    expect(page.locator("#log-pre")).to_contain_text("first try fails")
    ARTIFACTS.mkdir(exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / "run_page.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    # the graph follows the narrower window: its boxes stay in its canvas
    expect(page.locator(".dag-view")).to_be_visible()
    page.wait_for_function("""() => { const c = document.querySelector('.dag-canvas').getBoundingClientRect();
        const b = document.querySelector('svg.dag g.node[data-step="prepare"] rect.box').getBoundingClientRect();
        return b.left >= c.left && b.right <= c.right; }""")
    page.screenshot(path=str(ARTIFACTS / "run_page_390.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "the page is wider than a phone"
    page.set_viewport_size({"width": 1280, "height": 900})

    # retry from the failed step: a new run that reuses what succeeded and now passes
    page.click('#step-info button:has-text("Retry from this step")')
    page.wait_for_url(lambda url: url != run_url and re.search(r"/runs/[0-9a-z]+$", url) is not None)
    expect(page.locator("#run-head .badge").first).to_have_text("succeeded")
    expect(page.locator("#run-head")).to_contain_text("Retry of")
    expect(node("flaky")).to_have_class("node s-succeeded")
    expect(node("report")).to_have_class("node s-succeeded")
    prepare_row = page.locator(".steps-table tr", has=page.locator('.step-id a:text-is("prepare")'))
    expect(prepare_row).to_contain_text("reused")
    page.click('.steps-table .step-id a:text-is("report")')
    expect(page.locator("#log-pre")).to_contain_text("flaky said recovered")
    assert page.errors == []


def test_triggers_panel_shows_the_next_time_and_pauses_the_workflow(page: Any, server: SimpleNamespace) -> None:
    import httpx
    from playwright.sync_api import expect

    page.goto(server.base + "/workflows/ticker")
    panel = page.locator("#triggers")
    expect(panel).to_contain_text("0 6 * * *")
    next_fire = panel.locator("time.next-fire")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT06:00:00\+0[12]:00", next_fire.get_attribute("datetime"))
    expect(panel).to_contain_text("limit 1, queue")
    panel.get_by_role("button", name="Pause").click()
    expect(panel.locator(".badge.s-paused")).to_be_visible()
    assert httpx.get(server.base + "/api/workflows/ticker").json()["paused"] is True
    # while paused, the event starts nothing
    answer = httpx.post(server.base + "/api/events", json={"type": "tick"}).json()
    assert [r["status"] for r in answer["runs"]] == ["paused"]
    page.goto(server.base + "/")
    expect(page.locator("table.workflows tr", has_text="ticker").locator(".badge.s-paused")).to_be_visible()
    page.goto(server.base + "/workflows/ticker")
    page.locator("#triggers").get_by_role("button", name="Resume").click()
    expect(page.locator("#triggers .badge.s-paused")).to_have_count(0)
    assert httpx.get(server.base + "/api/workflows/ticker").json()["paused"] is False
    assert page.errors == []


def test_html_printed_by_a_step_is_shown_as_text_and_never_runs(page: Any, server: SimpleNamespace) -> None:
    import httpx
    from playwright.sync_api import expect

    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    run_id = httpx.post(server.base + "/api/workflows/xss/runs", json={}).json()["run_id"]
    for _ in range(200):
        if httpx.get(f"{server.base}/api/runs/{run_id}").json()["status"] == "succeeded":
            break
        page.wait_for_timeout(50)
    page.goto(f"{server.base}/runs/{run_id}?step=shout")
    expect(page.locator("#log-pre")).to_contain_text("<script>alert('log')</script>")
    page.goto(f"{server.base}/runs/{run_id}?step=shaped")
    expect(page.locator("#step-detail")).to_contain_text("<svg onload=alert('output')></svg>")
    page.goto(f"{server.base}/workflows/xss")
    expect(page.locator(".lead")).to_contain_text("<img src=x onerror=alert('description')>")
    page.goto(f"{server.base}/")
    page.wait_for_timeout(300)  # give any injected handler the chance to fire
    assert dialogs == []
    assert page.locator("img[src=x]").count() == 0 and page.locator("svg[onload]").count() == 0
    assert page.errors == []


def test_backfill_from_the_workflow_page_and_watch_it_end(page: Any, server: SimpleNamespace) -> None:
    from playwright.sync_api import expect

    page.goto(server.base + "/workflows/ticker")
    page.locator("#backfill summary").click()
    form = page.locator("#backfill form")
    form.locator("input[name=from]").fill("2026-11-01")
    form.locator("input[name=to]").fill("2026-11-03")
    form.locator("input[name=parallel]").fill("2")
    form.get_by_role("button", name="Start backfill").click()
    page.wait_for_url(re.compile(r"/backfills/bf-"))
    expect(page.locator("h1")).to_contain_text("Backfill")
    expect(page.locator("#progress")).to_contain_text("3 slots")
    # the page follows its runs live until the backfill is done (the leader drives the
    # slots on its own beat: a loaded machine takes longer; 60 s only guards a hang)
    expect(page.locator("h1 .badge")).to_have_text("done", timeout=60_000)
    expect(page.locator("#runs table.runs tbody tr")).to_have_count(3, timeout=60_000)
    expect(page.locator("#runs")).to_contain_text("2026-11-03")
    assert page.errors == []


def test_pin_from_a_version_page_is_said_loudly_until_unpinned(page: Any, server: SimpleNamespace) -> None:
    import httpx
    from playwright.sync_api import expect

    version = httpx.get(server.base + "/api/workflows/ticker").json()["version"]
    page.goto(f"{server.base}/workflows/ticker/versions/{version}")
    page.locator("#pin input[name=reason]").fill("INC-9 <b>bad merge</b>")
    page.get_by_role("button", name="Pin to this version").click()
    page.wait_for_url(re.compile(r"/workflows/ticker$"))
    banner = page.locator("section.pinned")
    expect(banner).to_contain_text(f"Pinned to version {version}")
    expect(banner).to_contain_text("INC-9 <b>bad merge</b>")  # shown as text
    page.goto(server.base + "/")
    expect(page.locator("#pins-alert")).to_contain_text("ticker")
    page.goto(server.base + "/workflows/ticker")
    page.locator("section.pinned").get_by_role("button", name="Unpin").click()
    expect(page.locator("section.pinned")).to_have_count(0)
    assert httpx.get(server.base + "/api/workflows/ticker").json()["pinned"] is None
    assert page.errors == []
