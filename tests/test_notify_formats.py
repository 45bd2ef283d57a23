"""Notifications people read, against a real server and a real loopback receiver: step
events, Slack blocks with a link to the run, a template body, a receiver that fails and
then recovers (every try recorded and listed), secrets masked in every body; and
`treadle notify test`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.http_server import http_server_fixture  # noqa: F401  (the fixture)
from tests.web_server import serving

SECRET = "sk_live_notify_4242"
FLOW = """\
secrets: [API_KEY]
steps:
  - id: charge
    run: 'echo "charging with {{ secrets.API_KEY }}" >&2; exit 3'
    retry: {limit: 1, delay: 0s}
notify:
  - webhook: "RECV/echo?to=slack"
    format: slack
    on: [step.failed, failed]
  - webhook: "RECV/flaky/tpl?fail=1"
    format: template
    template: '{"text": "{{ event.workflow }}: {{ event.event_type }} of {{ event.step }} ({{ event.error }})"}'
    on: [step.retrying]
    retries: 2
  - webhook: "RECV/echo?to=json"
    on: [failed]
"""


def _deliveries(c: httpx.Client, run_id: str, want: int) -> list[dict]:
    deadline = time.monotonic() + 30
    while True:
        items = c.get(f"/api/runs/{run_id}/notifications").json()["items"]
        if len(items) >= want or time.monotonic() > deadline:
            return items
        time.sleep(0.1)


def test_step_events_slack_template_and_retries_are_delivered_and_recorded(tmp_path: Path, http_server) -> None:  # noqa: F811
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"API_KEY={SECRET}\n")
    secrets.chmod(0o600)
    flow = FLOW.replace("RECV", http_server.url)
    with serving(tmp_path, {"pay.yaml": flow}, secrets_file=secrets, public_url="https://treadle.example.com") as base:
        c = httpx.Client(base_url=base, timeout=30)
        run_id = c.post("/api/workflows/pay/runs", json={}).json()["run_id"]
        items = _deliveries(c, run_id, 5)
        page = c.get(f"/runs/{run_id}").text

    got = [(d["event"], d["target"].split("/")[3].removesuffix("?..."), d["format"], d["attempt"], d["ok"], d["final"])
           for d in items]
    assert sorted(got) == sorted([
        ("step.retrying", "flaky", "template", 1, False, False),  # the receiver answers 503 once
        ("step.retrying", "flaky", "template", 2, True, True),
        ("step.failed", "echo", "slack", 1, True, True),
        ("run.failed", "echo", "slack", 1, True, True),
        ("run.failed", "echo", "json", 1, True, True),
    ]), got
    failed_try = next(d for d in items if not d["ok"])
    assert failed_try["http_status"] == 503 and "HTTP 503" in failed_try["error"]
    assert all(d["target"].endswith("?...") and "to=" not in d["target"] for d in items)  # queries hold tokens

    bodies = [r["body"] for r in http_server.requests]
    assert not any(SECRET in b for b in bodies), "a secret reached a receiver"
    slack = [json.loads(r["body"]) for r in http_server.requests if r["query"].get("to") == "slack"]
    step_failed = next(b for b in slack if "step charge failed" in b["text"])
    assert step_failed["blocks"][0]["text"]["text"] == ":x: *pay* step charge failed"
    assert "***" in step_failed["blocks"][2]["text"]["text"]  # the error, masked
    button = step_failed["blocks"][-1]["elements"][0]
    assert button["url"] == f"https://treadle.example.com/runs/{run_id}"
    template = [json.loads(r["body"]) for r in http_server.requests if r["path"] == "/flaky/tpl"]
    assert template[-1]["text"].startswith("pay: step.retrying of charge (exit code 3")
    plain = next(json.loads(r["body"]) for r in http_server.requests if r["query"].get("to") == "json")
    assert (plain["event_type"], plain["run_id"], plain["url"]) == (
        "run.failed", run_id, f"https://treadle.example.com/runs/{run_id}")
    listed = page[page.index('id="notifications"'):]
    assert listed.count('<span class="badge s-succeeded">sent</span>') == 4
    assert listed.count('<span class="badge s-failed">failed</span>') == 1 and "HTTP 503" in listed


def test_notify_test_sends_a_sample_to_each_receiver(tmp_path: Path, http_server) -> None:  # noqa: F811
    defs = tmp_path / "definitions"
    defs.mkdir()
    (defs / "pay.yaml").write_text(FLOW.replace("RECV", http_server.url))
    done = subprocess.run([sys.executable, "-m", "runner", "notify", "test", "pay", "--event", "step.failed"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "TREADLE_DEFINITIONS": "definitions"})
    lines = done.stdout.splitlines()
    assert done.returncode == 1, done.stdout + done.stderr  # the flaky receiver fails its first try
    assert lines[0].startswith(f"notify[0] {http_server.url}/echo?... (slack): sent, HTTP 200")
    assert lines[1].startswith(f"notify[1] {http_server.url}/flaky/tpl?... (template): failed: HTTP 503")
    assert "is not sent step.failed in real runs" in lines[1]
    slack = json.loads(next(r["body"] for r in http_server.requests if r["query"].get("to") == "slack"))
    assert slack["text"].startswith("pay step charge failed: a sample error")


def test_a_failed_step_is_mailed_through_a_real_smtp_server(tmp_path: Path) -> None:
    from aiosmtpd.controller import Controller

    class Inbox:
        def __init__(self) -> None:
            self.messages: list = []

        async def handle_DATA(self, server, session, envelope):  # noqa: N802, ANN001, ANN201
            self.messages.append(envelope)
            return "250 OK"

    from tests.web_server import free_port

    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        secrets = tmp_path / "secrets.env"
        secrets.write_text(f"API_KEY={SECRET}\n")
        secrets.chmod(0o600)
        flow = f"""\
secrets: [API_KEY]
steps:
  - id: charge
    run: 'echo "key {{{{ secrets.API_KEY }}}}" >&2; exit 3'
notify:
  - email:
      to: [ops@example.com]
      from: treadle@example.com
      host: 127.0.0.1
      port: {smtp.port}
      tls: none
    on: [step.failed]
"""
        with serving(tmp_path, {"pay.yaml": flow}, secrets_file=secrets, public_url="https://t.example.com") as base:
            c = httpx.Client(base_url=base, timeout=30)
            run_id = c.post("/api/workflows/pay/runs", json={}).json()["run_id"]
            [delivery] = _deliveries(c, run_id, 1)
    finally:
        smtp.stop()
    assert (delivery["event"], delivery["format"], delivery["ok"], delivery["http_status"]) == (
        "step.failed", "email", True, 250)
    assert delivery["target"] == f"mailto:ops@example.com via 127.0.0.1:{smtp.port}"
    [envelope] = inbox.messages
    assert envelope.mail_from == "treadle@example.com" and envelope.rcpt_tos == ["ops@example.com"]
    import email

    message = email.message_from_bytes(envelope.content)
    assert message["Subject"] == "[Treadle] pay step charge failed"
    plain, rich = (part.get_payload(decode=True).decode() for part in message.walk()
                   if part.get_content_type() in ("text/plain", "text/html"))
    assert "Error: exit code 3" in plain and f"Open the run: https://t.example.com/runs/{run_id}" in plain
    assert "<h2>pay step charge failed</h2>" in rich and f'href="https://t.example.com/runs/{run_id}"' in rich
    assert SECRET not in plain + rich and "***" in plain
