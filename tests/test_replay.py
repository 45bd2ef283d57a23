"""`treadle replay`: a recorded run again against a changed definition, with a real HTTP
server counting calls: unchanged steps are answered from the record (0 calls), a
changed one executes (1 call), and with --offline nothing executes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.http_server import http_server_fixture  # noqa: F401  (the fixture)

FLOW = """\
steps:
  - id: fetch
    http: {url: "{{ env.BASE }}/echo?what=orders"}
  - id: enrich
    http: {url: "{{ env.BASE }}/echo?what=prices&v=1"}
  - id: total
    set: {count: "{{ steps.fetch.output.json.query.what }}-{{ steps.enrich.output.json.query.v }}"}
  - id: shell
    run: echo recorded
env:
  BASE: "%s"
"""


def treadle(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=tmp, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TREADLE_DEFINITIONS": "definitions",
                                            "TREADLE_DB": f"sqlite:///{tmp / 't.db'}"})


def test_replay_answers_unchanged_steps_from_the_record_and_executes_the_changed_one(
        tmp_path: Path, http_server) -> None:  # noqa: F811
    defs = tmp_path / "definitions"
    defs.mkdir()
    (defs / "flow.yaml").write_text(FLOW % http_server.url)
    recorded = json.loads(treadle(tmp_path, "run", "flow", "--json").stdout)
    assert recorded["status"] == "succeeded", [(s["id"], s["error"]) for s in recorded["steps"]]
    assert http_server.hits["/echo"] == 2

    # the change under test: enrich asks for v=2
    (defs / "flow.yaml").write_text((FLOW % http_server.url).replace("v=1", "v=2"))
    http_server.requests.clear()
    done = treadle(tmp_path, "replay", recorded["id"], "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert [r["query"] for r in _echo_queries(http_server)] == [{"what": "prices", "v": "2"}]  # 1 call: enrich
    by_step = {s["step"]: s for s in doc["steps"]}
    assert by_step["fetch"]["action"] == "replayed" and not by_step["fetch"]["output_changed"]
    assert by_step["shell"]["action"] == "replayed"  # echo did not run again: its input did not change
    assert by_step["enrich"]["action"] == "executed" and by_step["enrich"]["input_changed"]
    assert json.dumps(by_step["enrich"]["input"]["after"]).count("v=2") == 1, by_step["enrich"]["input"]
    assert by_step["total"]["output"] == {"before": {"count": "orders-1"}, "after": {"count": "orders-2"}}
    assert doc["replay_of"] == recorded["id"] and doc["status"] == "succeeded"

    shown = json.loads(treadle(tmp_path, "show", doc["run"], "--json").stdout)
    assert shown["trigger"] == "replay"
    assert {s["id"]: s["status"] for s in shown["steps"]} == {"fetch": "succeeded", "enrich": "succeeded",
                                                               "total": "succeeded", "shell": "succeeded"}
    log = treadle(tmp_path, "show", doc["run"], "--logs").stdout
    assert f"replay: input unchanged, answered from run {recorded['id']}" in log
    # offline: nothing executes; the changed step is reported, not run
    http_server.requests.clear()
    offline = treadle(tmp_path, "replay", recorded["id"], "--offline")
    assert _echo_queries(http_server) == []
    assert "? enrich" in offline.stdout and "would run" in offline.stdout
    assert "= fetch" in offline.stdout


def test_replay_of_an_unknown_run_exits_2(tmp_path: Path) -> None:
    (tmp_path / "definitions").mkdir()
    treadle(tmp_path, "db", "upgrade")
    done = treadle(tmp_path, "replay", "no-such-run")
    assert done.returncode == 2 and "no-such-run" in done.stderr


def _echo_queries(server) -> list[dict]:
    return [r for r in server.requests if r["path"] == "/echo"]


async def test_a_replay_is_announced_to_no_listener(engine, tmp_path: Path) -> None:
    """Listeners (notifications, chaining, queues) hear a normal run end, never a replay's."""
    from runner.engine.replay import Replay
    from tests.exec_support import recorded, run_yaml

    heard: list[str] = []
    engine.run_ended.append(lambda ended: heard.append(ended.trigger))
    exe, doc = await run_yaml(engine, tmp_path, "steps: [{id: a, set: {v: 1}}]")
    await engine.announced()
    assert heard == ["manual"]
    replay = Replay.of_attempts(exe.id, await engine.store.step_attempts(exe.id), {})
    new = engine.new_run(exe.definition, {}, trigger="replay", ref=exe.id)
    engine.store.put_run(new.row, (engine.owner, 1))
    again = engine.launch(new, replay=replay)
    await again.wait()
    await engine.announced()
    assert heard == ["manual"] and replay.actions == {("a", -1): "replayed"}
    assert (await recorded(engine, again.id))["steps"][0]["output"] == {"v": 1}
