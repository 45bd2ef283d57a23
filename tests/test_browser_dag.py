"""The graph view of big runs in a real browser (Playwright + Debian's Chromium).

A 500-step run (wide: one step fans out to hundreds, with a foreach and a child
workflow) and a 5,000-step run (ten parallel chains of 500, as in bench/web.py), each
with one failing step: the graph is laid out (dagre, in a worker) and drawn, the wheel
and the buttons zoom, dragging pans, and "Focus on failed step" brings the failed box
into view. Screenshots go to tests/artifacts/ (CI lists them; docs/testing.md).
The `browser` and `page` fixtures are test_browser.py's (skipped without Chromium).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from .test_browser import ARTIFACTS, browser, page  # noqa: F401  (fixtures)
from .web_server import serving

pytestmark = pytest.mark.browser

LAYOUT_MS = 240_000  # a guard against a hang: dagre takes seconds for 5,000 steps on a loaded machine


def wide_yaml(fan: int) -> str:
    lines = ["max_parallel: 16", "steps:", "  - {id: start, log: go}",
             "  - {id: items, needs: [start], foreach: [1, 2, 3], log: 'item {{ item }}'}",
             "  - {id: child, needs: [start], workflow: small}",
             "  - {id: boom_x, needs: [start], run: 'exit 3'}",
             "  - {id: after_boom, needs: [boom_x], log: never}"]
    lines += [f"  - {{id: fan{i}, needs: [start], log: 'fan {i}'}}" for i in range(fan)]
    lines.append("  - {id: end, needs: [" + ", ".join(f"fan{i}" for i in range(0, fan, 5)) + "], log: end}")
    return "\n".join(lines) + "\n"


def chains_yaml(n: int, failing: str) -> str:
    """n steps in 10 parallel chains (bench/web.py's shape); `failing` exits 3."""
    lines = ["max_parallel: 16", "steps:"]
    for i in range(n):
        needs = f"[s{i - 10}]" if i >= 10 else "[]"
        body = "run: 'exit 3'" if f"s{i}" == failing else f"log: 'step {i}'"
        lines.append(f"  - {{id: s{i}, needs: {needs}, {body}}}")
    return "\n".join(lines) + "\n"


DEFINITIONS = {
    "small.yaml": "steps:\n  - {id: one, log: one}\n  - {id: two, log: two}\n",
    "wide500.yaml": wide_yaml(494),  # 500 steps
    "chains5000.yaml": chains_yaml(5000, failing="s2507"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("browser-dag")
    with serving(root, DEFINITIONS) as base:
        yield SimpleNamespace(base=base)


def finished_run(base: str, workflow: str) -> str:
    with httpx.Client(base_url=base, timeout=60) as client:
        run_id = client.post(f"/api/workflows/{workflow}/runs", json={"params": {}}).json()["run_id"]
        deadline = time.monotonic() + 600  # a guard against a hang, not a speed check
        while client.get("/api/runs", params={"workflow": workflow, "limit": 1}).json()["items"][0]["status"] \
                not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, f"{workflow} did not finish"
            time.sleep(0.2)
    return run_id


def in_view(tab: Any, step: str) -> bool:
    """Whether the box of `step` lies inside the graph's canvas."""
    return tab.evaluate("""step => {
        const box = [...document.querySelectorAll('svg.dag g.node')].find(g => g.dataset.step === step)
            .querySelector('rect.box').getBoundingClientRect();
        const c = document.querySelector('.dag-canvas').getBoundingClientRect();
        return box.width > 0 && box.left >= c.left && box.right <= c.right && box.top >= c.top && box.bottom <= c.bottom;
    }""", step)


def zoom(tab: Any) -> float:
    return tab.evaluate("""() => {
        const t = document.querySelector('svg.dag g.viewport').getAttribute('transform') || '';
        const m = /scale\\(([0-9.e-]+)\\)/.exec(t); return m ? parseFloat(m[1]) : NaN; }""")


def check_graph(tab: Any, base: str, run_id: str, steps: int, failed: str, shot: str) -> None:
    from playwright.sync_api import expect

    tab.goto(f"{base}/runs/{run_id}")
    view = tab.locator(".dag-view[data-ready]")
    expect(view).to_have_count(1, timeout=LAYOUT_MS)
    nodes = tab.locator("svg.dag g.node")
    expect(nodes).to_have_count(steps)
    expect(tab.locator("svg.dag g.node.s-failed")).to_have_count(1)
    assert tab.locator("svg.dag g.node.s-failed").get_attribute("data-step") == failed
    # the boxes do not overlap: a real layout, not a strip of squares
    overlaps = tab.evaluate("""() => {
        const r = [...document.querySelectorAll('svg.dag g.node rect.box')].map(e => e.getBoundingClientRect());
        r.sort((a, b) => a.left - b.left); let n = 0;
        for (let i = 0; i < r.length; i++) for (let j = i + 1; j < r.length && r[j].left < r[i].right - 0.5; j++)
            if (r[j].top < r[i].bottom - 0.5 && r[i].top < r[j].bottom - 0.5) n++;
        return n; }""")
    assert overlaps == 0
    ARTIFACTS.mkdir(exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"{shot}.png"))
    # zoom: the buttons and the wheel change the scale, in both directions
    before = zoom(tab)
    tab.get_by_role("button", name="Zoom in").click()
    tab.wait_for_function(f"() => document.querySelector('svg.dag g.viewport').getAttribute('transform').indexOf('scale({before})') < 0")
    assert zoom(tab) > before
    canvas = tab.locator(".dag-canvas")
    box = canvas.bounding_box()
    tab.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    zoomed = zoom(tab)
    tab.mouse.wheel(0, 400)
    tab.wait_for_function(f"() => !document.querySelector('svg.dag g.viewport').getAttribute('transform').endsWith('scale({zoomed})')")
    assert zoom(tab) < zoomed
    # the keyboard: + zooms in, an arrow key moves the view
    canvas.focus()
    zoomed = zoom(tab)
    tab.keyboard.press("+")
    tab.wait_for_function(f"() => !document.querySelector('svg.dag g.viewport').getAttribute('transform').endsWith('scale({zoomed})')")
    assert zoom(tab) > zoomed
    moved = tab.locator("svg.dag g.viewport").get_attribute("transform")
    tab.keyboard.press("ArrowLeft")
    tab.wait_for_function("t => document.querySelector('svg.dag g.viewport').getAttribute('transform') !== t", arg=moved)
    tab.get_by_role("button", name="Zoom out").click()
    tab.get_by_role("button", name="Zoom out").click()
    # the failed step is far away at first; the button brings it into view, readable, and focuses it
    assert not in_view(tab, failed)
    button = tab.get_by_role("button", name="Focus on failed step")
    expect(button).to_be_enabled()
    button.click()
    tab.wait_for_function("step => { const g = document.querySelector('svg.dag g.node[data-focused]');"
                           " return g && g.dataset.step === step; }", arg=failed)
    tab.wait_for_timeout(100)  # the transform is applied on the next animation frame
    assert in_view(tab, failed)
    assert zoom(tab) >= 1
    assert tab.evaluate("document.activeElement.closest('g.node').dataset.step") == failed
    expect(tab.locator(".dag-status")).to_contain_text(f"Showing the failed step {failed}")
    tab.screenshot(path=str(ARTIFACTS / f"{shot}_failed.png"))
    # drag pans: the failed box leaves the view
    tab.mouse.move(box["x"] + 40, box["y"] + 40)
    tab.mouse.down()
    tab.mouse.move(box["x"] + box["width"] - 20, box["y"] + box["height"] - 20, steps=8)
    tab.mouse.up()
    tab.wait_for_timeout(100)
    assert not in_view(tab, failed)
    assert tab.errors == []


def test_a_500_step_run_page_is_laid_out_zoomable_and_focuses_the_failed_step(page: Any,  # noqa: F811
                                                                               server: SimpleNamespace) -> None:
    from playwright.sync_api import expect

    run_id = finished_run(server.base, "wide500")
    check_graph(page, server.base, run_id, 500, "boom_x", "run_page_500_steps")
    # foreach and child workflow: one node each, with counts
    items = page.locator('svg.dag g.node[data-step="items"]')
    expect(items).to_have_attribute("data-group", "foreach")
    expect(items.locator("text.meta")).to_have_text(re.compile(r"^foreach 3/3 · log · [\d.]+m?s$"))
    child = page.locator('svg.dag g.node[data-step="child"]')
    expect(child).to_have_attribute("data-group", "workflow")
    expect(child.locator("text.meta")).to_contain_text("workflow → small (2 steps)")
    # a node opens its step in the panel, as the steps table does
    page.get_by_role("button", name="Fit").click()
    page.get_by_role("button", name="Focus on failed step").click()
    page.locator('svg.dag g.node[data-focused] a').click()
    expect(page.locator("#step-info h2")).to_contain_text("boom_x")
    assert "step=boom" in page.url
    # the minimap moves the view
    minimap = page.locator(".dag-minimap")
    expect(minimap).to_be_visible()
    mb = minimap.bounding_box()
    page.mouse.click(mb["x"] + 5, mb["y"] + mb["height"] / 2)  # the far left end
    page.wait_for_timeout(100)
    assert not in_view(page, "boom_x")
    # the workflow page draws the same graph, without states; its layout is the one the browser kept
    page.goto(f"{server.base}/workflows/wide500")
    expect(page.locator(".dag-view[data-ready]")).to_have_count(1, timeout=LAYOUT_MS)
    expect(page.locator(".dag-view")).to_have_attribute("data-layout", "stored")
    expect(page.locator("svg.dag g.node")).to_have_count(500)
    expect(page.locator('svg.dag g.node[data-step="boom_x"]')).to_have_class("node")
    expect(page.get_by_role("button", name="Focus on failed step")).to_have_count(0)
    assert page.errors == []


def test_a_5000_step_run_page_is_laid_out_zoomable_and_focuses_the_failed_step(page: Any,  # noqa: F811
                                                                                server: SimpleNamespace) -> None:
    from playwright.sync_api import expect

    run_id = finished_run(server.base, "chains5000")
    check_graph(page, server.base, run_id, 5000, "s2507", "run_page_5000_steps")
    expect(page.locator("svg.dag g.node.s-upstream_failed")).to_have_count(249)
    expect(page.locator(".dag-view")).to_have_attribute("data-layout", "worker")
    # a second visit reuses the layout the browser kept (no second wait for the worker)
    page.reload()
    expect(page.locator(".dag-view[data-ready]")).to_have_count(1, timeout=LAYOUT_MS)
    expect(page.locator(".dag-view")).to_have_attribute("data-layout", "stored")
    expect(page.locator("svg.dag g.node")).to_have_count(5000)
    expect(page.locator(".dag-status")).to_contain_text("5,000 steps")

