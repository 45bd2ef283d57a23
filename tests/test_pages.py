"""Dashboard pages (SPEC §5) against a real uvicorn on loopback, with a real SQLite file.

One exception: test_a_burst_of_events_becomes_one_refresh drives the stream's
coalescing function alone, with the real event Broker and a stand-in store (a
SimpleNamespace with the one `get_run` it calls, always "running")."""

from __future__ import annotations

import asyncio
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from runner.dsl.dag import build_dag
from web import pages
from web.dag_svg import layers_of, layout, render_svg
from web.live import coalesced, run_signals

from .web_server import serving, with_csrf

SVG = "{http://www.w3.org/2000/svg}"

DEFINITIONS = {
    "greet.yaml": """
        description: Says <b>hello</b> & more.
        tags: [demo, fast]
        params:
          who: {type: string, required: true, description: who to greet}
          times: {type: integer, default: 2}
          loud: {type: boolean, default: false}
          color: {type: string, enum: [red, green], default: green}
          extra: {type: object}
        steps:
          - id: hello
            run: 'echo "hello {{ params.who }}"'
          - id: shape
            set: {text: "{{ steps.hello.output }}", n: "{{ params.times }}"}
    """,
    "team/markup.yaml": """
        description: Prints markup and fails.
        steps:
          - id: shout
            run: "echo '<script>alert(1)</script>'"
          - id: boom
            needs: [shout]
            run: "echo '<img src=x onerror=alert(2)>' >&2; exit 3"
          - id: after
            needs: [boom]
            log: never
          - id: side
            needs: [shout]
            log: side
    """,
    "shapes.yaml": """
        description: A graph with long edges, fan-out and fan-in.
        steps:
          - {id: a, log: a}
          - {id: b, needs: [a], log: b}
          - {id: c, needs: [a], log: c}
          - {id: d, needs: [b], log: d}
          - {id: e, needs: [a, d, c], log: e}
          - {id: f, needs: [a], log: f}
          - {id: g, needs: [e, f, b], log: g}
          - {id: h, needs: [], log: h}
          - {id: i, needs: [h, g, a], log: i}
          - {id: a_very_long_step_name_that_is_cut, needs: [a], log: x}
    """,
    "gated.yaml": """
        params:
          gate: {type: string, required: true}
        defaults: {timeout: 30s}
        steps:
          - id: wait_gate
            run: 'echo waiting; while [ ! -f "{{ params.gate }}" ]; do sleep 0.02; done; echo open'
          - id: next
            log: done
    """,
    "wide.yaml": """
        description: Many steps and a large foreach.
        steps:
""" + "".join(f"          - {{id: s{i:03d}, needs: [], log: s{i}}}\n" for i in range(120)) + """
          - id: many
            needs: [s000]
            foreach: "{{ range(300) | list }}"
            set: {n: "{{ item }}"}
    """,
    "broken.yaml": """
        steps:
          - id: a
            depend: [b]
            run: echo
    """,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("pages")
    with serving(root, DEFINITIONS) as base, httpx.Client(base_url=base, timeout=20) as client:
        yield SimpleNamespace(base=base, client=with_csrf(client), root=root)


def wait_for(check: Callable[[], Any], what: str, limit: float = 20.0) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def start(client: httpx.Client, name: str, **params: str) -> str:
    r = client.post(f"/workflows/{name}/runs", data=params)
    assert r.status_code == 303, r.text
    match = re.fullmatch(r"/runs/([0-9a-z]+)", r.headers["location"])
    assert match, r.headers["location"]
    return match.group(1)


def run_status(client: httpx.Client, run_id: str) -> str:
    html = client.get(f"/runs/{run_id}").text
    head = html[html.index('id="run-head"'):]
    return re.search(r'class="badge s-(\w+)"', head).group(1)


def finished(client: httpx.Client, run_id: str) -> str:
    return wait_for(lambda: (s := run_status(client, run_id)) in ("succeeded", "failed", "cancelled") and s,
                    f"run {run_id} to finish")


def field_block(html: str, name: str) -> str:
    """The form field `<div class="field...">` holding the input named `name`."""
    for block in html.split('<div class="field')[1:]:
        if f'name="{name}"' in block:
            return block.split("</div>")[0]
    raise AssertionError(f"no field {name}")


def svg_of(html: str) -> ET.Element:
    return ET.fromstring(html[html.index("<svg"):html.index("</svg>") + 6])


def boxes_and_edges(svg: ET.Element) -> tuple[dict[str, tuple[float, ...]], list[tuple[str, str, list]]]:
    boxes = {}
    for g in svg.iter(SVG + "g"):
        if "data-step" in g.attrib:
            rect = next(g.iter(SVG + "rect"))
            boxes[g.attrib["data-step"]] = tuple(float(rect.attrib[k]) for k in ("x", "y", "width", "height"))
    edges = []
    for path in svg.iter(SVG + "path"):
        if path.attrib.get("class") == "edge":
            numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", path.attrib["d"])]
            points = list(zip(numbers[::2], numbers[1::2], strict=True))
            edges.append((path.attrib["data-from"], path.attrib["data-to"], points))
    return boxes, edges


def crosses(p: tuple[float, float], q: tuple[float, float], box: tuple[float, ...], eps: float = 0.5) -> bool:
    """Whether segment p-q passes through the inside of `box` (Liang-Barsky clipping)."""
    x, y, w, h = box
    xmin, xmax, ymin, ymax = x + eps, x + w - eps, y + eps, y + h - eps
    dx, dy = q[0] - p[0], q[1] - p[1]
    t0, t1 = 0.0, 1.0
    for edge_p, edge_q in ((-dx, p[0] - xmin), (dx, xmax - p[0]), (-dy, p[1] - ymin), (dy, ymax - p[1])):
        if edge_p == 0:
            if edge_q < 0:
                return False
            continue
        t = edge_q / edge_p
        if edge_p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 > t1:
            return False
    return True


def assert_no_edge_crosses_a_box(boxes: dict, edges: list) -> None:
    for src, dst, points in edges:
        for p, q in zip(points, points[1:], strict=False):
            for sid, box in boxes.items():
                assert not crosses(p, q, box), f"edge {src}->{dst} crosses the box of {sid}"


# -- workflows ---------------------------------------------------------------------


def test_workflows_page_lists_workflows_and_broken_files(server: SimpleNamespace) -> None:
    r = server.client.get("/")
    assert r.status_code == 200
    html = r.text
    assert "<strong>greet</strong>" in html and "Says &lt;b&gt;hello&lt;/b&gt; &amp; more." in html
    assert '<span class="ns">team/</span><strong>markup</strong>' in html  # the folder namespace
    assert '<span class="tag">demo</span>' in html
    problems = html[html.index('class="problems"'):]
    assert "broken.yaml:3:5: steps[0].depend: unknown key &#39;depend&#39;; did you mean &#39;needs&#39;?" in problems


def test_workflow_page_has_graph_source_history_and_typed_form(server: SimpleNamespace) -> None:
    html = server.client.get("/workflows/greet").text
    assert {"hello", "shape"} == set(boxes_and_edges(svg_of(html))[0])
    assert '<span class="line" id="L1"><a class="ln" href="#L1" aria-hidden="true">1</a>description: Says &lt;b&gt;' in html
    who = field_block(html, "who")
    assert "required" in who and 'class="req"' in who and "who to greet" in who
    times = field_block(html, "times")
    assert 'type="number"' in times and 'step="1"' in times and 'value="2"' in times
    loud = field_block(html, "loud")
    assert "<select" in loud and '<option value="false" selected>' in loud
    assert '<option value="green" selected>' in field_block(html, "color")
    assert "<textarea" in field_block(html, "extra")


def test_broken_workflow_page_shows_problems_and_no_form(server: SimpleNamespace) -> None:
    html = server.client.get("/workflows/broken").text
    assert "broken.yaml:3:5: steps[0].depend" in html
    assert 'id="L3"' in html and 'class="line bad" id="L3"' in html
    assert 'class="start-form"' not in html


def test_bad_form_values_are_shown_next_to_their_field(server: SimpleNamespace) -> None:
    r = server.client.post("/workflows/greet/runs", data={"who": "Ada", "times": "lots", "extra": "[1"})
    assert r.status_code == 400
    times = field_block(r.text, "times")
    assert "has-error" in times and 'value="lots"' in times
    assert 'class="field-error" id="param-times-error">expected an integer, got &#34;lots&#34;' in times
    assert 'class="field-error"' in field_block(r.text, "extra")
    who = field_block(r.text, "who")
    assert 'value="Ada"' in who and "field-error" not in who  # good values are kept, unmarked


def test_a_missing_required_param_is_marked(server: SimpleNamespace) -> None:
    r = server.client.post("/workflows/greet/runs", data={"who": "", "times": "3"})
    assert r.status_code == 400
    assert "missing required param" in field_block(r.text, "who")
    assert 'value="3"' in field_block(r.text, "times")


def test_the_form_starts_a_run_and_redirects_to_it(server: SimpleNamespace) -> None:
    run_id = start(server.client, "greet", who="Grace", times="3", loud="true", color="red", extra='{"k": 1}')
    assert finished(server.client, run_id) == "succeeded"
    html = server.client.get(f"/runs/{run_id}?step=shape").text
    assert "&#34;who&#34;: &#34;Grace&#34;" in html or '"who": "Grace"' in html.replace("&#34;", '"')
    assert "hello Grace" in html
    assert f'href="/runs/{run_id}"' in server.client.get("/workflows/greet").text  # in the history


def test_cross_site_form_posts_are_refused(server: SimpleNamespace) -> None:
    client = server.client
    before = client.get("/runs?workflow=greet").text.count('<tr>')
    for headers in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/page"},
                    {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
        r = client.post("/workflows/greet/runs", data={"who": "x"}, headers=headers)
        assert r.status_code == 403, headers
        assert client.post("/runs/whatever/cancel", headers=headers).status_code == 403
    assert client.get("/runs?workflow=greet").text.count('<tr>') == before
    same = client.post("/workflows/greet/runs", data={"who": "x"}, headers={"Origin": server.base})
    assert same.status_code == 303


# -- runs ------------------------------------------------------------------------------


def test_run_page_escapes_outputs_and_marks_the_root_cause(server: SimpleNamespace) -> None:
    run_id = start(server.client, "markup")
    assert finished(server.client, run_id) == "failed"
    html = server.client.get(f"/runs/{run_id}?step=shout").text
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # in the output and in the log
    # a failed run opens its root cause: the failed step, with its stderr in the log
    html = server.client.get(f"/runs/{run_id}").text
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    head = html[html.index('id="run-head"'):html.index('id="run-graph"')]
    assert "Root cause:" in head and "<code>boom</code></a> failed" in head
    assert "1 step could not run because of it" in head
    boxes = {g.attrib["data-step"]: g.attrib["class"]
             for g in svg_of(html).iter(SVG + "g") if "data-step" in g.attrib}
    assert boxes == {"shout": "node s-succeeded", "boom": "node s-failed", "after": "node s-upstream_failed",
                     "side": "node s-succeeded"}
    rows = html[html.index('id="run-steps"'):]
    boom_row = rows[rows.index(">boom</a>"):].split("</tr>")[0]
    after_row = rows[rows.index(">after</a>"):].split("</tr>")[0]
    assert "root cause" in boom_row and "root cause" not in after_row and "upstream failed" in after_row


def test_svg_has_a_node_per_step_and_no_edge_crosses_a_node(server: SimpleNamespace) -> None:
    svg = svg_of(server.client.get("/workflows/shapes").text)
    boxes, edges = boxes_and_edges(svg)
    assert set(boxes) == {"a", "b", "c", "d", "e", "f", "g", "h", "i", "a_very_long_step_name_that_is_cut"}
    assert len(edges) == 14  # one per dependency, long ones through waypoints
    assert {(s, d) for s, d, _ in edges} >= {("a", "e"), ("a", "i"), ("b", "g")}
    assert any(len(points) > 2 for _, _, points in edges)
    assert_no_edge_crosses_a_box(boxes, edges)
    for (x1, y1, w1, h1), (x2, y2, w2, h2) in ((boxes[a], boxes[b]) for a in boxes for b in boxes if a < b):
        assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1, "boxes overlap"


@pytest.mark.parametrize("seed", range(5))
def test_layout_of_random_graphs_keeps_edges_off_boxes(seed: int) -> None:
    import random

    rnd = random.Random(seed)
    links = [(f"n{i}", [f"n{j}" for j in rnd.sample(range(i), k=min(i, rnd.randint(0, 3)))]) for i in range(40)]
    dag = build_dag(links)
    svg = ET.fromstring(str(render_svg(layout(layers_of(dag), dag.deps), {s: "succeeded" for s in dag.order})))
    boxes, edges = boxes_and_edges(svg)
    assert set(boxes) == set(dag.order)
    assert len(edges) == sum(len(d) for d in dag.deps.values())
    assert_no_edge_crosses_a_box(boxes, edges)


def test_large_graphs_are_drawn_compact() -> None:
    links = [("start", [])] + [(f"s{i}", ["start"] if i < 20 else [f"s{i - 20}"]) for i in range(600)]
    links.append(("end", [f"s{i}" for i in range(0, 600, 7)]))
    dag = build_dag(links)
    lay = layout(layers_of(dag), dag.deps)
    assert lay.compact and set(lay.boxes) == set(dag.order)
    assert_no_edge_crosses_a_box({s: (b.x, b.y, b.w, b.h) for s, b in lay.boxes.items()}, lay.edges)
    svg = str(render_svg(lay, {s: ("failed" if s == "s5" else "succeeded") for s in dag.order}))
    assert svg.count("<path") == 3  # the edges, and one path per state: a few elements, not 600
    assert svg.count("z") == len(dag.order)  # one closed square per step


def test_a_big_run_page_is_paged_and_foreach_items_are_counted(server: SimpleNamespace) -> None:
    run_id = start(server.client, "wide")
    assert finished(server.client, run_id) == "succeeded"
    html = server.client.get(f"/runs/{run_id}").text
    steps = html[html.index('id="run-steps"'):html.index('id="step-detail"')]
    assert steps.count('class="step-id"') == 50 and "page 1 of 3" in steps
    assert "succeeded <b>121</b>" in steps
    page3 = server.client.get(f"/runs/{run_id}/steps-table?page=3").text
    assert page3.count('class="step-id"') == 21 and ">many</a>" in page3
    many = page3[page3.index(">many</a>"):].split("</tr>")[0]
    assert 'title="300 items succeeded">300</span>' in many and "/ 300 items" in many
    detail = server.client.get(f"/runs/{run_id}?step=many").text
    assert "300 succeeded" in detail and detail.count("item 1,") == 0  # counts, not 300 rows


def test_runs_page_filters_by_workflow_and_state_and_pages(server: SimpleNamespace,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [start(server.client, "shapes") for _ in range(3)]
    for run_id in ids:
        finished(server.client, run_id)
    monkeypatch.setattr(pages, "RUNS_PER_PAGE", 2)
    first = server.client.get("/runs?workflow=shapes").text
    assert first.count('href="/workflows/shapes"') == 2 and "page 1 of 2" in first
    assert first.index(ids[2]) < first.index(ids[1])  # newest first
    assert ids[0] in server.client.get("/runs?workflow=shapes&page=2").text
    failed = server.client.get("/runs?state=failed").text
    assert "s-succeeded" not in failed.split("<tbody>")[-1]
    assert "No runs match this filter" in server.client.get("/runs?workflow=shapes&state=cancelled").text


def test_run_stream_signals_then_fragments_follow_the_database(server: SimpleNamespace, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    run_id = start(server.client, "gated", gate=str(gate))
    events: list[str] = []
    with httpx.stream("GET", f"{server.base}/runs/{run_id}/stream", timeout=20) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                events.append(line.split(":", 1)[1].strip())
                if events == ["resync"]:
                    gate.touch()
                if events[-1] == "done":
                    break
    assert events[0] == "resync" and events[-1] == "done"
    assert "state" in events and "log-wait_gate" in events
    live = server.client.get(f"/runs/{run_id}/live?step=wait_gate&page=1").text
    for part in ('id="run-head"', 'id="run-graph"', 'id="run-steps"', 'id="step-info"'):
        assert live.count(part) == 1, part
    assert live.count('hx-swap-oob="true"') == 4 and "s-running" not in live
    log = server.client.get(f"/runs/{run_id}/steps/wait_gate/log?after=0").text
    assert "waiting" in log and "open" in log
    after = re.search(r'id="log-after" name="after" value="(\d+)" hx-swap-oob="true"', log).group(1)
    more = server.client.get(f"/runs/{run_id}/steps/wait_gate/log?after={after}").text
    assert "<span" not in more and f'value="{after}"' in more
    # a finished run's page is static: no stream
    assert "sse-connect" not in server.client.get(f"/runs/{run_id}").text


async def test_a_burst_of_events_becomes_one_refresh() -> None:
    """The coalescing alone: the real Broker, but a stand-in store (no server, no database)."""
    from runner.storage.events import Broker

    broker, stopping = Broker(), asyncio.Event()
    store = SimpleNamespace(get_run=lambda _id: asyncio.sleep(0, {"status": "running"}))
    services = SimpleNamespace(broker=broker, stopping=stopping, store=store)
    stream = coalesced(services, ["run:x"], run_signals, window=0.05,
                       already_done=lambda: asyncio.sleep(0, False))
    assert (await anext(stream)).event == "resync"
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    for i in range(1000):
        broker.publish("run:x", {"type": "step", "step_id": f"s{i}", "status": "succeeded"})
    broker.publish("run:x", {"type": "log", "step_id": "s1", "text": "x"})
    broker.publish("run:x", {"type": "log", "step_id": "s1", "text": "y"})
    names = [(await pending).event, (await anext(stream)).event]
    assert names == ["state", "log-s1"]
    broker.publish("run:x", {"type": "run", "id": "x", "status": "succeeded"})
    assert [(await anext(stream)).event, (await anext(stream)).event] == ["state", "done"]
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


def test_cancel_and_retry_buttons(server: SimpleNamespace, tmp_path: Path) -> None:
    run_id = start(server.client, "gated", gate=str(tmp_path / "never"))
    page = server.client.get(f"/runs/{run_id}").text
    assert f'action="/runs/{run_id}/cancel"' in page and f'sse-connect="/runs/{run_id}/stream"' in page
    r = server.client.post(f"/runs/{run_id}/cancel")
    assert r.status_code == 303 and r.headers["location"] == f"/runs/{run_id}"
    assert finished(server.client, run_id) == "cancelled"

    failed = start(server.client, "markup")
    finished(server.client, failed)
    page = server.client.get(f"/runs/{failed}").text
    assert '<input type="hidden" name="from" value="boom">' in page
    r = server.client.post(f"/runs/{failed}/retry", data={"from": "boom"})
    assert r.status_code == 303
    retry_id = r.headers["location"].rsplit("/", 1)[1]
    assert retry_id != failed
    finished(server.client, retry_id)
    html = server.client.get(f"/runs/{retry_id}?step=shout").text
    assert f'href="/runs/{failed}"' in html and "from <code>boom</code>" in html
    assert "output was reused from run" in html  # shout succeeded before: not run again
    assert server.client.post(f"/runs/{failed}/retry", data={"from": "nope"}).status_code == 400


def test_unknown_pages_are_404(server: SimpleNamespace) -> None:
    for path in ("/workflows/nope", "/runs/nope", "/runs/nope/live"):
        r = server.client.get(path)
        assert r.status_code == 404 and "text/html" in r.headers["content-type"], path
    assert server.client.post("/runs/nope/cancel").status_code == 404
