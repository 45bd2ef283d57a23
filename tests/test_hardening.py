"""Issue #15, the outside audit: each hole it found, tried again against a real server
(uvicorn on 127.0.0.1, a real SQLite file, real tokens) or the real mechanism."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import httpx
import pytest

from tests.http_server import LoopbackServer, http_server_fixture  # noqa: F401  (the fixture)
from tests.web_server import serving

ADMIN = "admin-token-for-hardening-0123456789"
SECRET = "sk_live_hardening_4242424242"


def finished(client: httpx.Client, run_id: str) -> dict:
    end = time.monotonic() + 20
    while (doc := client.get(f"/api/runs/{run_id}").json())["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < end, doc
        time.sleep(0.02)
    return doc


def tokens_for(admin: httpx.Client, wanted: dict[str, tuple[str, str | None]]) -> dict[str, str]:
    made = {}
    for name, (scope, ns) in wanted.items():
        answer = admin.post("/api/tokens", json={"name": name, "scope": scope, "namespace": ns})
        assert answer.status_code == 201, answer.text
        made[name] = answer.json()["token"]
    return made


def as_token(base: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=base, timeout=10, headers={"Authorization": f"Bearer {token}"})


# -- 1. circuit breakers: masked, and seen only by the namespaces that use the host ---------


@pytest.fixture
def breaker_site(tmp_path: Path, http_server: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    monkeypatch.setenv("PAY_KEY", SECRET)
    definitions = {
        "orders/charge.yaml": f"""
            secrets: [PAY_KEY]
            steps:
              - id: call
                http: {{url: "{http_server.url}/status/503?key={{{{ secrets.PAY_KEY }}}}"}}
                circuit_breaker: {{failures: 1, reset_after: 60s}}
        """,
        "billing/invoice.yaml": "steps: [{id: a, log: billed}]\n",
    }
    with serving(tmp_path, definitions, watch=False, admin_token=ADMIN) as base, \
            as_token(base, ADMIN) as admin:
        tokens = tokens_for(admin, {"orders-read": ("read", "orders"), "billing-read": ("read", "billing"),
                                    "billing-admin": ("admin", "billing"), "orders-run": ("run", "orders"),
                                    "orders-admin": ("admin", "orders")})
        run = finished(admin, admin.post("/api/workflows/charge/runs", json={}).json()["run_id"])
        assert run["status"] == "failed" and "key=***" in run["steps"][0]["error"], run
        yield SimpleNamespace(base=base, admin=admin, tokens=tokens,
                              host=f"http://127.0.0.1:{http_server.server_address[1]}")


def test_breakers_never_show_a_secret_in_clear(breaker_site: SimpleNamespace) -> None:
    site = breaker_site
    [item] = site.admin.get("/api/circuit-breakers").json()["items"]
    assert item["state"] == "open" and "key=***" in item["last_error"], item
    assert SECRET not in site.admin.get("/api/circuit-breakers").text
    page = site.admin.get("/")
    assert page.status_code == 200 and "key=***" in page.text and SECRET not in page.text
    # the refusal an open circuit gives the next run quotes the (masked) last error
    run = finished(site.admin, site.admin.post("/api/workflows/charge/runs", json={}).json()["run_id"])
    assert "circuit open" in run["steps"][0]["error"] and SECRET not in str(run)


def test_breakers_are_seen_only_by_the_namespaces_that_call_the_host(breaker_site: SimpleNamespace) -> None:
    site = breaker_site
    with as_token(site.base, site.tokens["orders-read"]) as orders, \
            as_token(site.base, site.tokens["billing-read"]) as billing:
        assert [b["host"] for b in orders.get("/api/circuit-breakers").json()["items"]] == [site.host]
        assert billing.get("/api/circuit-breakers").json() == {"items": [], "total": 0, "page": 1, "limit": 50}
        page = billing.get("/")
        assert page.status_code == 200 and site.host not in page.text
    with as_token(site.base, site.tokens["billing-admin"]) as billing_admin:
        gone = billing_admin.post(f"/api/circuit-breakers/{quote(site.host, safe='')}/reset")
        assert gone.status_code == 404, gone.text
    assert site.admin.get("/api/circuit-breakers").json()["items"][0]["state"] == "open"


# -- 2. a workflow's versions stay in its namespace once its file is gone -------------


def test_versions_of_a_deleted_workflow_stay_in_their_namespace(tmp_path: Path) -> None:
    definitions = {"orders/ship.yaml": "steps: [{id: a, log: shipped}]\n",
                   "billing/invoice.yaml": "env: {DB_PASSWORD: hunter2-billing}\nsteps: [{id: a, log: billed}]\n"}
    with serving(tmp_path, definitions, watch=True, admin_token=ADMIN) as base, as_token(base, ADMIN) as admin:
        tokens = tokens_for(admin, {"orders-read": ("read", "orders"), "billing-read": ("read", "billing")})
        [version] = admin.get("/api/workflows/invoice/versions").json()["items"]
        run_id = admin.post("/api/workflows/invoice/runs", json={}).json()["run_id"]
        finished(admin, run_id)
        (tmp_path / "definitions" / "billing" / "invoice.yaml").unlink()
        end = time.monotonic() + 20
        while admin.get("/api/workflows/invoice").status_code != 404:
            assert time.monotonic() < end, "the catalog did not drop the deleted file"
            time.sleep(0.05)
        v = version["version"]
        paths = ["/api/workflows/invoice/versions", f"/api/workflows/invoice/versions/{v}",
                 f"/api/workflows/invoice/diff?from={v}&to={v}", f"/workflows/invoice/versions/{v}",
                 f"/workflows/invoice/diff?from={v}&to={v}", f"/api/runs/{run_id}"]
        with as_token(base, tokens["orders-read"]) as orders, as_token(base, tokens["billing-read"]) as billing:
            for path in paths:
                foreign = orders.get(path)
                assert foreign.status_code == 404, (path, foreign.status_code)
                assert "hunter2" not in foreign.text
                assert billing.get(path).status_code == 200, path
            assert "hunter2-billing" in billing.get(f"/api/workflows/invoice/versions/{v}").json()["source"]


# -- 3. nothing outside the definitions folder is read or watched ----------------------


def test_a_symlink_out_of_the_definitions_folder_is_refused_and_never_served(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "server-secrets.env").write_text("steps: [{id: a, log: TOP-SECRET-VALUE}]\n")
    (outside / "inner.yaml").write_text("steps: [{id: a, log: inner}]\n")
    defs = tmp_path / "definitions"
    defs.mkdir()
    (defs / "leak.yaml").symlink_to(outside / "server-secrets.env")
    (defs / "target.yaml").write_text("steps: [{id: a, log: fine}]\n")
    (defs / "alias.yaml").symlink_to(defs / "target.yaml")  # inside the folder: fine
    (defs / "sub").symlink_to(outside, target_is_directory=True)  # a linked folder leads out too
    with serving(tmp_path, {}, watch=True, admin_token=ADMIN) as base, as_token(base, ADMIN) as admin:
        leak = admin.get("/api/workflows/leak").json()
        assert any("symbolic link to a file outside the definitions folder" in e for e in leak["errors"]), leak
        assert leak["source"] == ""
        assert admin.get("/api/workflows/alias").json()["valid"] is True
        assert admin.get("/api/workflows/target").json()["valid"] is True
        every = [admin.get("/api/workflows/leak").text, admin.get("/api/workflows/leak/versions").text]
        every += [admin.get(f"/api/workflows/leak/versions/{v['version']}").text
                  for v in admin.get("/api/workflows/leak/versions").json()["items"]]
        assert not any("TOP-SECRET-VALUE" in text for text in every)
        # a linked folder appearing later is scanned: its files lead out, so they are refused
        (defs / "more").symlink_to(outside, target_is_directory=True)
        end = time.monotonic() + 20
        while admin.get("/api/workflows/inner").status_code != 200:
            assert time.monotonic() < end, "the linked folder was never looked at"
            time.sleep(0.05)
        assert admin.get("/api/workflows/inner").json()["valid"] is False
        assert admin.get("/api/workflows/target").json()["valid"] is True


@pytest.mark.parametrize("path", ["/etc/*.conf", "../../etc/*", "inbox/../../x/*", "~/inbox/*.csv"])
def test_file_trigger_paths_outside_the_definitions_folder_are_refused(path: str) -> None:
    from runner.dsl.loader import load_text

    definition = load_text(f"triggers: {{file: {{path: '{path}'}}}}\nsteps: [{{id: a, log: x}}]\n", "wf.yaml")
    assert not definition.valid
    [problem] = definition.problems
    assert problem.message.startswith("triggers.file.path: "), problem
    assert "a glob relative to the definition's folder" in problem.message \
        or "leaves the definition's folder with '..'" in problem.message, problem
    assert load_text("triggers: {file: {path: 'inbox/**/*.csv'}}\nsteps: [{id: a, log: x}]\n", "wf.yaml").valid


# -- 4. resetting a circuit breaker needs admin, within the namespaces that use it ------


def test_resetting_a_breaker_needs_admin_scope(breaker_site: SimpleNamespace) -> None:
    site = breaker_site
    path = f"/api/circuit-breakers/{quote(site.host, safe='')}/reset"
    with as_token(site.base, site.tokens["orders-run"]) as runner:
        refused = runner.post(path)
        assert refused.status_code == 403 and refused.json()["error_code"] == "INSUFFICIENT_SCOPE", refused.text
        assert "this needs 'admin'" in refused.json()["detail"]
        assert runner.post("/circuit-breakers/reset", data={"host": site.host}).status_code == 403
        assert "Reset (close)" not in runner.get("/").text  # no button it could not use
    assert site.admin.get("/api/circuit-breakers").json()["items"][0]["state"] == "open"
    with as_token(site.base, site.tokens["orders-admin"]) as orders_admin:
        assert "Reset (close)" in orders_admin.get("/").text
        done = orders_admin.post(path)
        assert done.status_code == 200 and done.json()["state"] == "closed", done.text
    audit = site.admin.get("/api/audit?action=breaker.reset").json()["items"]
    assert [(a["who"], a["result"]) for a in audit][:2] == [("orders-admin", "ok"), ("orders-run", "denied")]


# -- 6. deeply nested JSON is a 400 that says so, on every route that takes a body -----

HOOK_SECRET = "hook-secret-for-hardening"


@pytest.fixture
def hook_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    monkeypatch.setenv("HARDENING_HOOK_SECRET", HOOK_SECRET)
    definitions = {
        "hooked.yaml": """
            params: {data: {type: object, default: {}}}
            triggers: {webhook: {secret_env: HARDENING_HOOK_SECRET, params: {data: "{{ body }}"}}}
            steps: [{id: a, log: "got it"}]
        """,
        "plain.yaml": "params: {data: {type: object, default: {}}}\nsteps: [{id: a, log: plain}]\n",
    }
    with serving(tmp_path, definitions, watch=False, admin_token=ADMIN) as base, as_token(base, ADMIN) as admin:
        run_id = admin.post("/api/workflows/plain/runs", json={}).json()["run_id"]
        finished(admin, run_id)
        yield SimpleNamespace(base=base, admin=admin, run_id=run_id)


def signed(client: httpx.Client, path: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    from runner.triggers.signing import signed_headers

    return client.post(path, content=body, headers={**signed_headers(HOOK_SECRET, body, time.time()),
                                                    "Content-Type": "application/json", **(headers or {})})


def nested(depth: int, opener: str = "[") -> bytes:
    """`[[[...]]]`, or `{"a": {"a": ... 1}}`, `depth` levels deep."""
    if opener == "[":
        return b"[" * depth + b"]" * depth
    return b'{"a": ' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("depth", [65, 100_000])
@pytest.mark.parametrize("opener", ["[", "{"])
def test_deeply_nested_json_is_refused_with_a_400_on_every_body_route(hook_site: SimpleNamespace, depth: int,
                                                                      opener: str) -> None:
    site = hook_site
    body = nested(depth, opener)
    if opener == "{":  # as params: {"data": {"a": {"a": ...}}}
        body = b'{"params": {"data": ' + nested(depth - 2, "{") + b"}}"
    routes = ["/api/workflows/plain/runs", "/api/workflows/plain/dry-run", "/api/events", "/api/tokens",
              f"/api/runs/{site.run_id}/cancel", f"/api/runs/{site.run_id}/retry",
              f"/api/runs/{site.run_id}/steps/a/approve"]
    answers = {path: site.admin.post(path, content=body, headers={"Content-Type": "application/json"})
               for path in routes}
    answers["/hooks/hooked"] = signed(site.admin, "/hooks/hooked", body)
    for path, answer in answers.items():
        assert answer.status_code == 400, (path, answer.status_code, answer.text[:300])
        assert answer.json()["error_code"] == "MALFORMED_BODY", (path, answer.text[:300])
        assert f"{depth:,} levels deep; the limit is 64" in answer.json()["detail"], (path, answer.text[:300])
    assert site.admin.get("/api/runs", params={"workflow": "hooked"}).json()["total"] == 0


def test_json_nested_within_the_limit_is_taken(hook_site: SimpleNamespace) -> None:
    site = hook_site
    deep = b'{"data": ' + nested(60, "{") + b"}"  # 62 levels with the body's own object
    started = signed(site.admin, "/hooks/hooked", deep)
    assert started.status_code == 202, started.text
    assert finished(site.admin, started.json()["run_id"])["status"] == "succeeded"
    strings = b'{"params": {"data": {"text": "' + b"[" * 5000 + b'"}}}'  # brackets in strings do not nest
    ran = site.admin.post("/api/workflows/plain/runs", content=strings, headers={"Content-Type": "application/json"})
    assert ran.status_code in (201, 202), ran.text


# -- 8. a signed webhook call is taken once, remembered in the database --------------


def test_a_replayed_signed_webhook_starts_no_second_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from runner.triggers.signing import signed_headers

    monkeypatch.setenv("HARDENING_HOOK_SECRET", HOOK_SECRET)
    definitions = {"hooked.yaml": """
        triggers: {webhook: {secret_env: HARDENING_HOOK_SECRET}}
        params: {n: {type: integer, default: 0}}
        steps: [{id: a, log: "got it"}]
    """}
    body = b'{"n": 1}'
    captured = {**signed_headers(HOOK_SECRET, body, time.time()), "Content-Type": "application/json"}

    def runs(client: httpx.Client) -> int:
        return client.get("/api/runs", params={"workflow": "hooked"}).json()["total"]

    with serving(tmp_path, definitions, watch=False, admin_token=ADMIN) as base, as_token(base, ADMIN) as admin:
        with ThreadPoolExecutor(6) as pool:  # the captured call sent six times at once
            answers = list(pool.map(lambda _: httpx.post(f"{base}/hooks/hooked", content=body, headers=captured,
                                                         timeout=10), range(6)))
        assert sorted(a.status_code for a in answers) == [202, 409, 409, 409, 409, 409], [a.text for a in answers]
        replay = next(a for a in answers if a.status_code == 409).json()
        assert replay["error_code"] == "DUPLICATE_DELIVERY" and "received before" in replay["detail"]
        assert runs(admin) == 1
        # a call that started nothing (the workflow paused) is not remembered: its resend works
        assert admin.post("/api/workflows/hooked/pause").status_code == 200
        fresh = {**signed_headers(HOOK_SECRET, b'{"n": 2}', time.time() + 1), "Content-Type": "application/json"}
        paused = httpx.post(f"{base}/hooks/hooked", content=b'{"n": 2}', headers=fresh)
        assert paused.status_code == 409 and paused.json()["error_code"] == "WORKFLOW_PAUSED", paused.text
        assert admin.post("/api/workflows/hooked/resume").status_code == 200
        again = httpx.post(f"{base}/hooks/hooked", content=b'{"n": 2}', headers=fresh)
        assert again.status_code == 202, again.text
        assert runs(admin) == 2
    # the memory is the database's: a restarted server still refuses the replay
    with serving(tmp_path, definitions, watch=False, admin_token=ADMIN) as base, as_token(base, ADMIN) as admin:
        replay_later = httpx.post(f"{base}/hooks/hooked", content=body, headers=captured)
        assert replay_later.status_code == 409, replay_later.text
        assert runs(admin) == 2


# -- 10. one bad entry (a link loop, a dangling link) never hides the other files -----


def test_a_symlink_loop_never_hides_other_files(tmp_path: Path) -> None:
    definitions = {"first.yaml": "steps: [{id: a, log: first}]\n"}
    with serving(tmp_path, definitions, watch=True, admin_token=ADMIN) as base, as_token(base, ADMIN) as admin:
        defs = tmp_path / "definitions"
        (defs / "loop.yaml").symlink_to("loop.yaml")  # points to itself
        (defs / "dangling.yaml").symlink_to(tmp_path / "nowhere.yaml")
        (defs / "ring").mkdir()
        (defs / "ring" / "ring.yaml").symlink_to("../ring")  # a folder loop
        (defs / "second.yaml").write_text("steps: [{id: a, log: second}]\n")  # in the same change
        end = time.monotonic() + 20
        while admin.get("/api/workflows/second").status_code != 200:
            assert time.monotonic() < end, admin.get("/api/workflows").json()
            time.sleep(0.05)
        names = {w["name"] for w in admin.get("/api/workflows").json()["items"]}
        assert {"first", "second"} <= names
        (defs / "third.yaml").write_text("steps: [{id: a, log: third}]\n")  # and later changes still load
        while admin.get("/api/workflows/third").status_code != 200:
            assert time.monotonic() < end, admin.get("/api/workflows").json()
            time.sleep(0.05)
        assert admin.get("/api/workflows/first").json()["valid"] is True


def test_a_catalog_scan_lists_a_symlink_loop_as_a_problem_and_loads_the_rest(tmp_path: Path) -> None:
    from runner.gitops.catalog import Catalog

    (tmp_path / "loop.yaml").symlink_to("loop.yaml")
    (tmp_path / "good.yaml").write_text("steps: [{id: a, log: good}]\n")
    catalog = Catalog(tmp_path)
    catalog.load_all()
    catalog.reload([tmp_path / "loop.yaml", tmp_path / "good.yaml", tmp_path])
    assert catalog.get("good") is not None and catalog.get("good").valid
    loop = catalog.get("loop")
    assert loop is not None and "symbolic link that points to itself" in loop.problems[0].message


# -- 13. nothing left pending at shutdown; shutdown bounded --------------------------


@pytest.mark.parametrize("ended_by", ["cancel", "stopping"])
async def test_an_event_stream_leaves_no_task_behind(ended_by: str) -> None:
    import asyncio
    import contextlib

    from web.sse import queue_events

    queue: asyncio.Queue = asyncio.Queue()
    stopping = asyncio.Event()
    got: list = []

    async def listen() -> None:
        async for event in queue_events(queue, stopping, heartbeat=60):
            got.append(event)

    before = asyncio.all_tasks()
    listener = asyncio.create_task(listen())
    queue.put_nowait({"type": "runs"})
    while not got:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.01)  # waiting for the next event now
    if ended_by == "cancel":  # what uvicorn does to a response still streaming at shutdown
        listener.cancel()
    else:
        stopping.set()
    with contextlib.suppress(asyncio.CancelledError):
        await listener
    left = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert left == [], left


def test_serve_stops_after_sigterm_even_when_the_database_does_not_take_its_last_records(tmp_path: Path) -> None:
    import sqlite3

    from tests.crash_harness import Server
    from tests.web_server import free_port, write_definitions

    write_definitions(tmp_path / "definitions", {"busy.yaml": """
        steps:
          - {id: a, run: "sleep 0.3; echo one"}
          - {id: b, run: "sleep 0.3; echo two"}
          - {id: c, run: "sleep 30"}
    """, "quiet.yaml": "steps: [{id: a, log: quiet}]\n"})
    server = Server(tmp_path, free_port(), grace="1s")
    server.start()
    try:
        with httpx.Client(base_url=server.base, timeout=5) as client:
            run_ids = [client.post("/api/workflows/busy/runs", json={}).json()["run_id"] for _ in range(3)]
            stream = httpx.Client(base_url=server.base, timeout=30)
            with stream.stream("GET", "/runs/stream") as events:  # a dashboard tab left open
                lock = sqlite3.connect(tmp_path / "treadle.db", timeout=30)
                lock.execute("BEGIN EXCLUSIVE")  # from now on the database takes nothing
                try:
                    time.sleep(1)  # steps end meanwhile: their records wait in the writer's queue
                    server.proc.send_signal(15)
                    code = server.proc.wait(60)  # not forever: the grace plus a few seconds, in fact
                finally:
                    lock.rollback()
                    lock.close()
                assert events.status_code == 200
            stream.close()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)
    assert code in (0, -15, 143), code
    log = (tmp_path / "server.log").read_text()
    assert "Task was destroyed but it is pending" not in log, log
    assert "Exception in ASGI application" not in log, log
    assert "shutdown did not finish within" in log or "did not take the last" in log, log
    # the next start resumes the runs from what was committed
    server.start()
    try:
        with httpx.Client(base_url=server.base, timeout=5) as client:
            assert all(client.get(f"/api/runs/{r}").status_code in (200, 404) for r in run_ids)
    finally:
        server.stop()


# -- 7. slow clients are let go; connections are capped -----------------------------


def _until_closed(sock, wait: float = 20.0) -> bytes | None:
    """What the server sent on `sock` before closing it; None if it is still open after
    `wait` seconds (a bound on the test, not a measurement)."""
    sock.settimeout(wait)
    got = b""
    try:
        while data := sock.recv(4096):
            got += data
    except ConnectionResetError:
        pass
    except TimeoutError:
        return None
    return got


def test_a_client_trickling_its_headers_is_let_go_and_connections_are_capped(tmp_path: Path) -> None:
    import socket

    from tests.web_server import running_server, write_definitions

    defs = write_definitions(tmp_path / "definitions", {"a.yaml": "steps: [{id: a, log: a}]\n"})
    options = {"header_seconds": 0.5, "max_connections": 4}
    with running_server(defs, f"sqlite:///{tmp_path / 'treadle.db'}", watch=False, server_options=options) as base:
        port = int(base.rsplit(":", 1)[1])
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
        time.sleep(0.2)
        slow.sendall(b"X-Trickle: 1\r\n")  # bytes keep coming, the head never ends
        assert _until_closed(slow) == b"", "a request head that never ends kept its connection"
        slow.close()
        # a stream that outlives the head deadline is not cut: its head came in time
        with httpx.Client(base_url=base, timeout=10) as client, client.stream("GET", "/runs/stream") as events:
            assert events.status_code == 200
            probe = socket.create_connection(("127.0.0.1", port))
            assert _until_closed(probe) == b""  # idle, no head: let go too (the stream is still open)
            probe.close()
            assert client.get("/health").status_code == 200
        # at most 4 connections: a fifth is closed at once, without an answer
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        extra = socket.create_connection(("127.0.0.1", port))
        extra.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert _until_closed(extra) == b""  # closed without an answer, though its request was whole
        for sock in held + [extra]:
            sock.close()
        end = time.monotonic() + 10
        while True:  # the server notices the closed ones, then answers again
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < end
            time.sleep(0.05)


# -- 5. templates: size bounded at the mechanism, every render has a deadline --------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

BIG = st.integers(1_000_001, 200_000_000)  # a width or length over the limit
SIDE = st.integers(2, 300)


def _growers() -> st.SearchStrategy[str]:
    """Expressions that would build more than the limit, each by another road."""
    width = [
        BIG.map(lambda n: f"{{{{ '{{:>{{w}}}}'.format('a', w={n}) }}}}"),
        BIG.map(lambda n: f"{{{{ '{{:>{{}}}}'.format('a', {n}) }}}}"),
        BIG.map(lambda n: f"{{{{ '{{x:<{{w}}}}'.format_map({{'x': 'a', 'w': {n}}}) }}}}"),
        BIG.map(lambda n: f"{{{{ '%*d' % ({n}, 1) }}}}"),
        BIG.map(lambda n: f"{{{{ '%-*s' % ({n}, 'a') }}}}"),
        BIG.map(lambda n: f"{{{{ (1).to_bytes({n}, 'big') }}}}"),
        BIG.map(lambda n: f"{{{{ 'a'.ljust({n}) }}}}"),
        BIG.map(lambda n: f"{{{{ 'a' | center({n}) }}}}"),
        BIG.map(lambda n: f"{{{{ 'a' | indent({n}, true) }}}}"),
        BIG.map(lambda n: f"{{{{ 'a' | wordwrap({n}) }}}}"),
        st.tuples(SIDE, st.integers(4000, 999_999)).filter(lambda t: (t[0] - 1) * t[1] > 1_000_000).map(
            lambda t: f"{{{{ range({t[0]}) | join('x' * {t[1]}) }}}}"),
        st.tuples(SIDE, st.integers(4000, 999_999)).filter(lambda t: (t[0] - 1) * t[1] > 1_000_000).map(
            lambda t: f"{{{{ ('x' * {t[1]}).join(range({t[0]}) | map('string')) }}}}"),
    ]
    seeds = st.sampled_from(["'ab'", "['ab']", "('ab',)", "'ab' * 1000", "[1, 2, 3]"])
    doubling = st.tuples(seeds, st.sampled_from(["+", "~"]), st.integers(20, 40)).map(
        lambda t: ("{% set ns = namespace(v=" + t[0] + ") %}{% for i in range(" + str(t[2]) + ") %}"
                   "{% set ns.v = ns.v " + t[1] + " ns.v %}{% endfor %}{{ ns.v | length }}"))
    squaring = st.tuples(st.integers(3, 99), st.integers(25, 40)).map(
        lambda t: ("{% set ns = namespace(v=" + str(t[0]) + ") %}{% for i in range(" + str(t[1]) + ") %}"
                   "{% set ns.v = ns.v * ns.v %}{% endfor %}{{ ns.v > 0 }}"))
    return st.one_of(*width, doubling, squaring)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_growers())
def test_no_template_builds_more_than_the_limit(template: str) -> None:
    import tracemalloc

    from runner.templates import TemplateFailed, render

    tracemalloc.start()
    try:
        render(template, {})
    except TemplateFailed as exc:
        assert str(exc).startswith("not allowed in a template: "), exc
        peak = tracemalloc.get_traced_memory()[1]
    else:
        raise AssertionError(f"{template!r} was rendered: it builds more than the limit")
    finally:
        tracemalloc.stop()
    assert peak < 48 * 1024 * 1024, f"{template!r} allocated {peak:,} bytes before it was refused"


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["+", "~", "*"]), st.integers(1, 12), st.integers(1, 30))
def test_templates_within_the_limit_still_render(op: str, times: int, side: int) -> None:
    from runner.templates import render

    seed = "3" if op == "*" else "'ab'"
    template = ("{% set ns = namespace(v=" + seed + ") %}{% for i in range(" + str(times) + ") %}"
                "{% set ns.v = ns.v " + op + " ns.v %}{% endfor %}{{ ns.v }}")
    expected: object = 3 if op == "*" else "ab"
    for _ in range(times):
        expected = expected * expected if op == "*" else expected + expected  # type: ignore[operator]
    assert render(template, {}) == str(expected)  # a template with statements renders to text
    assert render(f"{{{{ '{{:>{{w}}}}'.format('a', w={side}) }}}}", {}) == "a".rjust(side)
    assert render(f"{{{{ '%*d' % ({side}, 7) }}}}", {}) == "7".rjust(side)
    assert render(f"{{{{ range({side}) | join('-') }}}}", {}) == "-".join(map(str, range(side)))
    # a big number that is data, not a size, is fine
    assert render("{{ params.x | default(5000000) }}", {"params": {}}) == 5000000
    assert render("{{ {'k': 1}.get('z', 10 ** 7) }}|{{ 'aaa'.replace('a', 'b', 5000000) }}", {}) == "10000000|bbb"
    assert render("{{ 'abc' | truncate(5000000) }}", {}) == "abc"


@pytest.mark.parametrize("template", [
    "{% set xs = range(100000) | list %}{% for a in xs %}{% for b in xs %}{% endfor %}{% endfor %}",
    "{% set xs = range(100000) | list %}{% for a in xs %}{{ xs | select('odd') | list | length }}{% endfor %}",
    "{% for a in range(100000) | list %}{{ ('abc ' * 250000) | wordwrap(7) | length }}{% endfor %}",
])
def test_a_render_stops_at_its_deadline(template: str) -> None:
    import threading

    from runner.templates import MAX_RENDER_SECONDS, TemplateFailed, render

    outcome: list = []

    def attempt() -> None:
        try:
            outcome.append(render(template, {}))
        except TemplateFailed as exc:
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(120)  # a bound on the test (hours of work without the deadline), not a measurement
    assert outcome, "the render did not stop"
    [failed] = outcome
    assert isinstance(failed, TemplateFailed), failed
    assert f"rendering took longer than {MAX_RENDER_SECONDS:g}s" in str(failed)


# -- 11 (part). the schema says what the server accepts: optional bodies, unknown keys ---


def test_the_schema_marks_optional_bodies_and_closed_objects_as_the_server_treats_them(tmp_path: Path) -> None:
    definitions = {"a.yaml": "steps: [{id: a, log: a}]\n"}
    with serving(tmp_path, definitions, watch=False, admin_token=ADMIN) as base, as_token(base, ADMIN) as admin:
        doc = admin.get("/schema").json()
        components = doc["components"]["schemas"]
        for name in ("RunRequest", "CancelRequest", "RetryRequest", "DecisionRequest", "EventRequest", "TokenRequest"):
            assert components[name].get("additionalProperties") is False, name
        bodies = {(path, method): op.get("requestBody", {}).get("required")
                  for path, item in doc["paths"].items() for method, op in item.items()
                  if isinstance(op, dict) and "requestBody" in op}
        assert bodies[("/api/workflows/{name}/runs", "post")] is False
        assert bodies[("/api/runs/{run_id}/cancel", "post")] is False
        assert bodies[("/api/tokens", "post")] is True and bodies[("/api/events", "post")] is True
        # the decoder's own rules, inside optional fields too
        assert {"type": "integer", "minimum": 0} in components["DecisionRequest"]["properties"]["index"]["anyOf"]
        assert components["TokenRequest"]["properties"]["name"]["minLength"] == 1
        refused = admin.post("/api/runs/nope/steps/a/approve", json={"index": -1})
        assert refused.status_code == 400 and "index" in refused.text
        # a name already taken is a conflict with the state (409, declared), not a bad request
        assert admin.post("/api/tokens", json={"name": "twice"}).status_code == 201
        again = admin.post("/api/tokens", json={"name": "twice"})
        assert again.status_code == 409 and again.json()["error_code"] == "TOKEN_EXISTS", again.text
        assert "409" in doc["paths"]["/api/tokens"]["post"]["responses"]
        # and the server does what the schema says: no body is fine, an unknown key is not
        assert admin.post("/api/workflows/a/runs").status_code == 202
        unknown = admin.post("/api/workflows/a/runs", json={"params": {}, "extra": 1})
        assert unknown.status_code == 400 and "unknown field" in unknown.text


def test_options_lists_every_method_a_path_serves(tmp_path: Path) -> None:
    """Litestar 2's automatic OPTIONS knew only the first handler of a path (`GET,
    OPTIONS` on /api/tokens, which takes POST too); every shared path is checked."""
    from web.app import create_app

    shared: dict[str, set[str]] = {}
    for path, methods in ((r.path, r.methods) for r in create_app().routes if hasattr(r, "route_handlers")):
        if len(methods - {"OPTIONS", "HEAD"}) > 1:
            shared[path] = methods
    assert "/api/tokens" in shared, sorted(shared)
    with serving(tmp_path, {"a.yaml": "steps: [{id: a, log: a}]\n"}, watch=False, admin_token=ADMIN) as base, \
            as_token(base, ADMIN) as admin:
        for path, methods in shared.items():
            concrete = re.sub(r"\{[^}]+\}", "a", path)
            answer = admin.request("OPTIONS", concrete)
            assert answer.status_code == 204, (path, answer.text)
            assert set(answer.headers["allow"].split(", ")) == methods, path
