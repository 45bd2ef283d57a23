"""Notifications end to end: a real Engine runs real workflows whose `notify:` entries post
to a real receiver on 127.0.0.1, scripted to fail, hang or accept."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from runner import __version__
from runner.engine.engine import Engine
from runner.triggers.notify import Notifier, redact_url
from runner.triggers.signing import verify
from tests.conftest import definition
from tests.exec_support import eventually, recorded
from tests.http_server import closed_port

FAST = (0.01,)  # retry delays for tests: the logic is the same, only the waits are shorter

# -- a scripted receiver ---------------------------------------------------------------


class _ScriptedHandler(BaseHTTPRequestHandler):
    """Answers POST /<anything> with the next entry of the server's script for that path."""

    server: Receiver
    protocol_version = "HTTP/1.1"  # keep-alive, like real receivers: exercises the client's pool

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 (the name http.server dispatches to)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            answers = self.server.scripts.get(self.path, [200])
            answer = answers.pop(0) if len(answers) > 1 else answers[0]  # the last one repeats
            self.server.posts.append({"path": self.path, "body": body,
                                      "headers": {k.lower(): v for k, v in self.headers.items()}})
        if answer == "hang":  # never answer (until the test ends): the client must time out
            self.close_connection = True
            self.server.release.wait(30)
            return
        if answer == "slow":
            time.sleep(0.3)
            answer = 200
        data = json.dumps({"ok": answer == 200}).encode()
        self.send_response(int(answer))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if 300 <= int(answer) < 400:
            self.send_header("Location", "/elsewhere")
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST  # a followed redirect would show up as a GET


class Receiver(ThreadingHTTPServer):
    """A loopback server whose answers per path are scripted; records every POST it gets."""

    daemon_threads = True
    block_on_close = False  # a handler left hanging must not hold up the end of a test

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.lock = threading.Lock()
        self.scripts: dict[str, list[int | str]] = {}
        self.posts: list[dict] = []
        self.release = threading.Event()

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that timed out and left is what some tests want

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def script(self, path: str, *answers: int | str) -> str:
        """Answer POSTs to `path` with `answers` in turn; returns the URL to post to."""
        self.scripts[path] = list(answers) or [200]
        return self.url + path

    def got(self, path: str) -> list[dict]:
        with self.lock:
            return [p for p in self.posts if p["path"] == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
async def notifier(engine: Engine):
    n = Notifier(engine.http, engine.environ, delays=FAST, timeout=5)
    engine.run_ended.append(n.on_run_ended)
    yield n
    await n.close()  # before the engine fixture closes the http client


async def _run(engine: Engine, tmp_path, text: str):
    exe = await asyncio.wait_for(engine.run(definition(text, tmp_path)), 30)
    await engine.announced()  # the notifier has heard of the end
    return exe


async def _settled(engine: Engine, notifier: Notifier) -> None:
    await engine.announced()  # the notifier has heard of every end so far
    await eventually(lambda: notifier.pending() == 0, 15)


async def _stored_status(engine: Engine, run_id: str) -> str:
    await engine.store.flush()
    return (await engine.store.get_run(run_id))["status"]


def _event(post: dict) -> dict:
    return json.loads(post["body"])


# -- what is posted --------------------------------------------------------------------


async def test_a_succeeded_run_posts_one_event_with_the_run_facts(engine, notifier, receiver, tmp_path):
    url = receiver.script("/hook", 200)
    exe = await _run(engine, tmp_path, f"""
        notify: [{{webhook: "{url}"}}]
        outputs: {{answer: "{{{{ steps.a.output }}}}"}}
        steps: [{{id: a, run: "echo 42"}}]
    """)
    assert exe.status == "succeeded"
    await _settled(engine, notifier)
    [post] = receiver.got("/hook")
    event = _event(post)
    assert event == {
        "event_type": "run.succeeded", "workflow": "wf", "run_id": exe.id, "status": "succeeded",
        "trigger": "manual", "started_at": event["started_at"], "finished_at": event["finished_at"],
        "duration_ms": event["duration_ms"], "outputs": {"answer": 42}, "error": None,
    }
    doc = await recorded(engine, exe.id)
    assert doc["outputs"] == event["outputs"]
    # the times are the run's, as recorded (not merely well-formed)
    assert (event["started_at"], event["finished_at"]) == (doc["started_at"], doc["finished_at"])
    started, finished = (datetime.fromisoformat(event[k]) for k in ("started_at", "finished_at"))
    assert started.utcoffset() == finished.utcoffset() == UTC.utcoffset(None) and started <= finished
    assert isinstance(event["duration_ms"], int) and event["duration_ms"] == doc["duration_ms"]
    headers = post["headers"]
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == f"treadle/{__version__}"
    assert headers["x-treadle-event"] == "run.succeeded"
    assert headers["idempotency-key"] == f"{exe.id}:0"
    assert "x-treadle-signature" not in headers and "x-treadle-timestamp" not in headers


async def test_only_the_endings_listed_in_on_are_posted(engine, notifier, receiver, tmp_path):
    never, yes = receiver.script("/never"), receiver.script("/yes")
    exe = await _run(engine, tmp_path, f"""
        notify:
          - {{webhook: "{never}", on: [failed]}}
          - {{webhook: "{yes}", on: succeeded}}
          - {{webhook: "{never}", on: [failed, cancelled]}}
        steps: [{{id: a, run: "true"}}]
    """)
    assert exe.status == "succeeded"
    await _settled(engine, notifier)
    [post] = receiver.got("/yes")
    assert post["headers"]["idempotency-key"] == f"{exe.id}:1"  # the index in the notify list
    assert receiver.got("/never") == []


async def test_a_failed_run_posts_its_error(engine, notifier, receiver, tmp_path):
    url = receiver.script("/hook")
    exe = await _run(engine, tmp_path, f"""
        notify: [{{webhook: "{url}", on: [failed]}}]
        steps: [{{id: boom, run: "exit 3"}}]
    """)
    assert exe.status == "failed"
    await _settled(engine, notifier)
    [post] = receiver.got("/hook")
    event = _event(post)
    assert event["event_type"] == "run.failed" and event["status"] == "failed"
    assert "boom" in event["error"] and event["outputs"] is None
    assert post["headers"]["x-treadle-event"] == "run.failed"


async def test_a_cancelled_run_is_posted(engine, notifier, receiver, tmp_path):
    url, started = receiver.script("/hook"), tmp_path / "started"
    exe = await engine.start(definition(f"""
        notify: [{{webhook: "{url}", on: [cancelled]}}]
        steps: [{{id: long, run: "touch {started}; sleep 30"}}]
    """, tmp_path))
    await eventually(started.exists)
    assert engine.cancel(exe.id)
    await asyncio.wait_for(exe.wait(), 15)
    await _settled(engine, notifier)
    [post] = receiver.got("/hook")
    assert _event(post)["event_type"] == "run.cancelled"


async def test_a_secret_in_the_outputs_arrives_masked(store, receiver, tmp_path):
    secret = "s3cr3t-Value-42"
    url = receiver.script("/hook")
    engine = Engine(store, definitions_dir=tmp_path, environ={"TOKEN": secret})
    notifier = Notifier(engine.http, engine.environ, delays=FAST)
    engine.run_ended.append(notifier.on_run_ended)
    try:
        exe = await _run(engine, tmp_path, f"""
            secrets: [TOKEN]
            notify: [{{webhook: "{url}"}}]
            outputs: {{token: "{{{{ secrets.TOKEN }}}}", printed: "{{{{ steps.leak.output }}}}"}}
            steps: [{{id: leak, run: "echo token=$T", env: {{T: "{{{{ secrets.TOKEN }}}}"}}}}]
        """)
        assert exe.status == "succeeded"
        await _settled(engine, notifier)
    finally:
        await notifier.close()
        await engine.close()
    [post] = receiver.got("/hook")
    assert secret.encode() not in post["body"]
    assert _event(post)["outputs"] == {"token": "***", "printed": "token=***"}


# -- signatures ------------------------------------------------------------------------


async def test_a_signed_notification_verifies_and_a_missing_key_sends_nothing(
        store, receiver, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="treadle.notify")
    signed, unsent = receiver.script("/signed"), receiver.script("/unsent")
    engine = Engine(store, definitions_dir=tmp_path, environ={"HOOK_KEY": "k-123"})
    notifier = Notifier(engine.http, engine.environ, delays=FAST)
    engine.run_ended.append(notifier.on_run_ended)
    try:
        exe = await _run(engine, tmp_path, f"""
            notify:
              - {{webhook: "{unsent}", secret_env: NOT_SET_ANYWHERE}}
              - {{webhook: "{signed}", secret_env: HOOK_KEY}}
            steps: [{{id: a, run: "true"}}]
        """)
        await _settled(engine, notifier)
    finally:
        await notifier.close()
        await engine.close()
    [post] = receiver.got("/signed")
    headers = post["headers"]
    verify("k-123", post["body"], headers["x-treadle-timestamp"], headers["x-treadle-signature"],
           now=time.time())
    assert headers["idempotency-key"] == f"{exe.id}:1"
    assert receiver.got("/unsent") == []
    [refusal] = [r for r in caplog.records if "NOT_SET_ANYWHERE" in r.getMessage()]
    assert refusal.levelno == logging.ERROR and exe.id in refusal.getMessage()


# -- retries and failing receivers ----------------------------------------------------


async def test_a_receiver_failing_twice_gets_the_event_three_times_with_one_key(
        engine, notifier, receiver, tmp_path, caplog):
    url = receiver.script("/hook", 500, 500, 200)
    exe = await _run(engine, tmp_path, f"""
        notify: [{{webhook: "{url}"}}]
        steps: [{{id: a, run: "true"}}]
    """)
    await _settled(engine, notifier)
    posts = receiver.got("/hook")
    assert len(posts) == 3
    assert {p["headers"]["idempotency-key"] for p in posts} == {f"{exe.id}:0"}
    assert len({p["body"] for p in posts}) == 1  # the same event each time
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_429_is_retried_and_4xx_and_redirects_are_not(
        engine, notifier, receiver, tmp_path, caplog):
    busy, gone = receiver.script("/busy", 429, 200), receiver.script("/gone", 404)
    moved = receiver.script("/moved", 307)
    exe = await _run(engine, tmp_path, f"""
        notify: [{{webhook: "{busy}"}}, {{webhook: "{gone}"}}, {{webhook: "{moved}"}}]
        steps: [{{id: a, run: "true"}}]
    """)
    await _settled(engine, notifier)
    assert len(receiver.got("/busy")) == 2
    assert len(receiver.got("/gone")) == len(receiver.got("/moved")) == 1
    assert receiver.got("/elsewhere") == []  # a signed body never follows a redirect
    failures = sorted(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert len(failures) == 2
    for failure, code in zip(failures, ("404", "307"), strict=True):
        assert f"HTTP {code}" in failure and "1 try" in failure
        assert "not retried" in failure and exe.id in failure


async def test_a_receiver_that_always_fails_is_given_up_and_the_run_stays_succeeded(
        engine, notifier, receiver, tmp_path, caplog):
    receiver.script("/down", 500)
    url = receiver.url.replace("http://", "http://alice:hunter2@") + "/down"
    exe = await _run(engine, tmp_path, f"""
        notify: [{{webhook: "{url}", retries: 2}}]
        steps: [{{id: a, run: "true"}}]
    """)
    await _settled(engine, notifier)
    assert len(receiver.got("/down")) == 3  # the first try and 2 retries
    assert exe.status == "succeeded" and await _stored_status(engine, exe.id) == "succeeded"
    assert receiver.got("/down")[0]["headers"]["authorization"].startswith("Basic ")
    [failure] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "abandoned after 3 tries" in failure and "HTTP 500" in failure
    assert f"{receiver.url}/down" in failure
    assert all("hunter2" not in r.getMessage() for r in caplog.records)


async def test_a_closed_port_is_given_up_and_the_failed_run_stays_failed(
        engine, notifier, tmp_path, caplog):
    url = f"http://127.0.0.1:{closed_port()}/hook"
    exe = await _run(engine, tmp_path, f"""
        notify: [{{webhook: "{url}", retries: 1}}]
        steps: [{{id: a, run: "exit 1"}}]
    """)
    await _settled(engine, notifier)
    assert exe.status == "failed" and await _stored_status(engine, exe.id) == "failed"
    [failure] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "abandoned after 2 tries" in failure and "ConnectError" in failure and url in failure


async def test_a_receiver_that_does_not_answer_times_out_and_is_retried(
        engine, receiver, tmp_path, caplog):
    notifier = Notifier(engine.http, engine.environ, delays=FAST, timeout=0.3)
    engine.run_ended.append(notifier.on_run_ended)
    url = receiver.script("/hook", "hang", 200)
    try:
        await _run(engine, tmp_path, f"""
            notify: [{{webhook: "{url}"}}]
            steps: [{{id: a, run: "true"}}]
        """)
        await _settled(engine, notifier)
    finally:
        await notifier.close()
    # >= 2: on a very loaded machine the answered try might also outlast 0.3 s
    assert len(receiver.got("/hook")) >= 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # delivered in the end


# -- shutting down ---------------------------------------------------------------------


async def test_close_waits_for_a_post_in_flight(engine, notifier, receiver, tmp_path, caplog):
    url = receiver.script("/hook", "slow")
    await _run(engine, tmp_path, f"""
        notify: [{{webhook: "{url}"}}]
        steps: [{{id: a, run: "true"}}]
    """)
    assert notifier.pending() == 1
    await notifier.close(timeout=15)
    assert notifier.pending() == 0 and len(receiver.got("/hook")) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_close_cancels_what_outlasts_it_and_later_runs_are_not_posted(
        engine, receiver, tmp_path, caplog):
    notifier = Notifier(engine.http, engine.environ, delays=FAST, timeout=60)
    engine.run_ended.append(notifier.on_run_ended)
    url = receiver.script("/hook", "hang")
    text = f"""
        notify: [{{webhook: "{url}"}}]
        steps: [{{id: a, run: "true"}}]
    """
    exe = await _run(engine, tmp_path, text)
    await eventually(lambda: len(receiver.got("/hook")) == 1)
    await notifier.close(timeout=0.05)
    assert notifier.pending() == 0
    assert any("abandoned at shutdown after 1 try" in r.getMessage() and exe.id in r.getMessage()
               for r in caplog.records)
    later = await _run(engine, tmp_path, text)
    assert later.status == "succeeded" and notifier.pending() == 0
    assert len(receiver.got("/hook")) == 1


def test_redact_url_drops_credentials_and_query() -> None:
    assert redact_url("https://u:p@hooks.example.com:8443/a/b?token=x") == \
        "https://hooks.example.com:8443/a/b?..."
    assert redact_url("http://[::1]:80/x") == "http://[::1]:80/x"
