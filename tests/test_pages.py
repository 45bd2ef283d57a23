"""Dashboard pages (SPEC §5) against a real uvicorn on loopback, with a real SQLite file.

Two exceptions: test_a_burst_of_events_becomes_one_refresh drives the stream's
coalescing function alone, with the real event Broker and a stand-in store (a
SimpleNamespace with the one `get_run` it calls, always "running"); and
test_a_child_workflows_step_count_is_shown_only_to_who_may_see_it gives
`web.dag_view.step_counts` a dict of SimpleNamespace definitions as the catalog's `get`."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from web import pages
from web.live import coalesced, run_signals

from .web_server import serving, with_csrf

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
    "parent.yaml": """
        steps:
          - id: call
            foreach: [Ada, Grace]
            workflow: greet
            params: {who: "{{ item }}"}
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


def json_block(html: str, attribute: str) -> Any:
    """The JSON in the single-quoted `attribute` of the page (the graph view's data)."""
    match = re.search(rf"{attribute}='([^']*)'", html)
    assert match, f"no {attribute}"
    return json.loads(match.group(1))


def graph_of(html: str) -> tuple[list[str], set[tuple[str, str]]]:
    """The step ids and the edges (from, to) of the page's graph structure."""
    data = json_block(html, "data-structure")
    ids = [n["id"] for n in data["nodes"]]
    return ids, {(ids[a], ids[b]) for a, b in data["edges"]}


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
    assert graph_of(html) == (["hello", "shape"], {("hello", "shape")})
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
    states = json_block(html, "data-states")
    assert {sid: entry[0] for sid, entry in states["steps"].items()} == {
        "shout": "succeeded", "boom": "failed", "after": "upstream_failed", "side": "succeeded"}
    assert states["failed"] == "boom" and states["run"] == run_id
    assert states["steps"]["after"][1] == "" and states["steps"]["boom"][1].endswith(("ms", "s"))
    rows = html[html.index('id="run-steps"'):]
    boom_row = rows[rows.index(">boom</a>"):].split("</tr>")[0]
    after_row = rows[rows.index(">after</a>"):].split("</tr>")[0]
    assert "root cause" in boom_row and "root cause" not in after_row and "upstream failed" in after_row


def test_graph_structure_has_every_step_and_every_dependency(server: SimpleNamespace) -> None:
    ids, edges = graph_of(server.client.get("/workflows/shapes").text)
    assert ids == ["a", "b", "c", "d", "e", "f", "g", "h", "i", "a_very_long_step_name_that_is_cut"]  # file order
    assert edges == {("a", "b"), ("a", "c"), ("b", "d"), ("a", "e"), ("d", "e"), ("c", "e"), ("a", "f"),
                     ("e", "g"), ("f", "g"), ("b", "g"), ("h", "i"), ("g", "i"), ("a", "i"),
                     ("a", "a_very_long_step_name_that_is_cut")}
    assert "<svg" not in server.client.get("/workflows/shapes").text  # drawn by the browser (web/static/dag.js)


def test_foreach_and_child_workflow_steps_are_one_node_each_with_what_they_stand_for(
        server: SimpleNamespace) -> None:
    nodes = {n["id"]: n for n in json_block(server.client.get("/workflows/wide").text, "data-structure")["nodes"]}
    assert len(nodes) == 121
    assert nodes["many"] == {"id": "many", "kind": "set", "foreach": True}  # a template: counted when it runs
    assert nodes["s000"] == {"id": "s000", "kind": "log"}
    parent = {n["id"]: n for n in json_block(server.client.get("/workflows/parent").text, "data-structure")["nodes"]}
    assert parent["call"] == {"id": "call", "kind": "workflow", "child": "greet", "child_steps": 2,
                              "foreach": 2}


def test_a_big_run_page_sends_states_for_every_step_and_item_counts(server: SimpleNamespace) -> None:
    run_id = start(server.client, "wide")
    assert finished(server.client, run_id) == "succeeded"
    html = server.client.get(f"/runs/{run_id}").text
    states = json_block(html, "data-states")["steps"]
    assert len(states) == 121 and states["many"][0] == "succeeded" and states["many"][2:] == [300, 300]
    assert len(states["s001"]) == 2  # no items: state and time only
    live = server.client.get(f"/runs/{run_id}/live").text
    assert json_block(live, "data-states")["steps"] == states
    assert "data-structure" not in live  # the structure is sent once, with the page


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


def test_a_child_workflows_step_count_is_shown_only_to_who_may_see_it() -> None:
    from web.dag_view import step_counts

    definitions = {"child": SimpleNamespace(spec=SimpleNamespace(steps=[1, 2, 3])), "broken": SimpleNamespace(spec=None)}
    assert step_counts(definitions.get, None)("child") == 3
    assert step_counts(definitions.get, {"child"})("child") == 3
    assert step_counts(definitions.get, {"other"})("child") is None  # another namespace's workflow
    assert step_counts(definitions.get, None)("broken") is None and step_counts(definitions.get, None)("gone") is None
