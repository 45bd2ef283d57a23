"""`treadle test`: workflows' test files (`NAME.test.yaml`) run with the real engine.

Through the real command line (`python -m runner test`, a subprocess): the bundled
examples' test files pass; failing expectations are reported with the expected and
actual values and exit 1; invalid test files exit 2 with path:line:column; mocked
steps never execute (a loopback HTTP server counts calls, a shell step's file is
not written); the JUnit XML is parsed back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from runner.gitops.catalog import Catalog
from tests.http_server import http_server_fixture  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parents[1]


def treadle(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREADLE_")}
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=180, env={**env, "PYTHONPATH": str(REPO), "NO_PROXY": "127.0.0.1,localhost"})


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_every_example_has_a_passing_test_file(tmp_path: Path) -> None:
    catalog = Catalog(REPO / "definitions")
    catalog.load_all()
    for definition in catalog.entries():
        path = REPO / "definitions" / definition.path
        assert path.with_name(path.stem + ".test.yaml").is_file(), f"{definition.path} has no test file"
    report = tmp_path / "junit.xml"
    done = treadle(tmp_path, "test", str(REPO / "definitions"), "--junit-xml", str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed in " in done.stdout and "FAILED" not in done.stdout
    assert "no test file" not in done.stderr
    root = ET.parse(report).getroot()
    cases = root.findall("./testsuite/testcase")
    suites = {s.get("name") for s in root.findall("testsuite")}
    assert len(suites) == len(catalog.entries())  # one suite per example's test file
    assert len(cases) >= 2 * len(suites) and not root.findall(".//failure") and not root.findall(".//error")
    assert f"{len(cases)} passed" in done.stdout


FLOW = """\
params:
  who: {type: string, default: world}
env:
  BASE: "%s"
steps:
  - id: fetch
    http: {url: "{{ env.BASE }}/json"}
  - id: touch
    run: |
      echo touched > touched.txt && echo '{"n": 2}'
  - id: gate
    needs: [fetch]
    when: "{{ steps.fetch.output.json.status == 'ok' }}"
    log: "open for {{ params.who }}"
outputs:
  n: "{{ steps.touch.output.n }}"
"""


def test_mocked_steps_never_execute_and_real_true_overrides_the_files_mock(tmp_path: Path, http_server) -> None:  # noqa: F811
    defs = write(tmp_path / "defs", {"flow.yaml": FLOW % http_server.url, "flow.test.yaml": """\
mock:
  touch: {output: {n: 7}}
cases:
  - name: all mocked
    mock:
      fetch: {http_status: 200, output: {json: {status: ok}}}
    expect:
      outputs: {n: 7}
      steps: {gate: {output: "open for world"}}
  - name: touch for real
    params: {who: Ada}
    mock:
      touch: {real: true}
    expect:
      outputs: {n: 2}
      steps: {gate: {output: "open for Ada"}, fetch: {output_has: {status: 200}}}
"""})
    done = treadle(tmp_path, "test", str(defs / "flow.test.yaml"), "-k", "all mocked")
    assert done.returncode == 0, done.stdout + done.stderr
    assert http_server.hits["/json"] == 0 and not (defs / "touched.txt").exists()  # nothing executed
    done = treadle(tmp_path, "test", str(defs))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
    assert http_server.hits["/json"] == 1 and (defs / "touched.txt").exists()  # only the real case ran them


def test_failing_expectations_are_reported_with_both_values_and_exit_1(tmp_path: Path, http_server) -> None:  # noqa: F811
    defs = write(tmp_path / "defs", {"flow.yaml": FLOW % http_server.url, "flow.test.yaml": """\
cases:
  - name: right
    mock: {fetch: {output: {json: {status: ok}}}, touch: {output: {n: 1}}}
    expect: {outputs: {n: 1}}
  - name: wrong
    mock:
      fetch: {output: {json: {status: down}}}
      touch: {exit_code: 3}
    expect:
      outputs: {n: 1}
      steps:
        gate: {status: succeeded, output: open}
        touch: {status: succeeded, exit_code: 0}
      ran: [gate]
"""})
    report = tmp_path / "out.xml"
    done = treadle(tmp_path, "test", str(defs), "--junit-xml", str(report))
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "flow.test.yaml::right PASSED" in out and "flow.test.yaml::wrong FAILED" in out
    assert "status: expected 'succeeded', got 'failed'" in out
    assert "steps.gate.status: expected 'succeeded', got 'skipped'" in out
    assert "steps.gate.output: expected 'open', got null" in out
    assert "steps.touch.exit_code: expected 0, got 3" in out
    assert "ran gate: expected 'ran' (at least one attempt), got 'skipped'" in out
    assert "outputs: expected {\"n\": 1}, got null" in out
    assert "1 passed, 1 failed" in out
    root = ET.parse(report).getroot()
    (suite,) = root.findall("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "1", "0")
    failure = suite.find("./testcase[@name='wrong']/failure")
    assert failure is not None and "steps.touch.exit_code: expected 0, got 3" in (failure.text or "")
    assert suite.find("./testcase[@name='right']/failure") is None


def test_invalid_test_files_exit_2_with_positions_and_validate_reports_them(tmp_path: Path) -> None:
    defs = write(tmp_path / "defs", {"flow.yaml": "params: {who: string}\nsteps:\n  - id: greet\n    log: hi\n",
                                     "flow.test.yaml": """\
cases:
  - name: typo
    params: {whom: x}
    mock:
      gret: {output: 1}
    expect:
      stauts: failed
  - name: bad mock
    mock:
      greet: {real: true, output: 2}
""", "orphan.test.yaml": "cases: [{name: x}]\n"})
    done = treadle(tmp_path, "test", str(defs))
    assert done.returncode == 2, done.stdout + done.stderr
    err = done.stderr
    flow = str(defs / "flow.test.yaml")
    assert f"{flow}:3:14: cases[0].params: the workflow has no param 'whom'; did you mean 'who'?" in err
    assert f"{flow}:5:7: cases[0].mock.gret: the workflow has no step 'gret'; did you mean 'greet'?" in err
    assert f"{flow}:7:7: cases[0].expect.stauts: unknown key 'stauts'; did you mean 'status'?" in err
    assert f"{flow}:10:27: cases[1].mock.greet.output: 'output' has no effect with `real: true`" in err
    assert f"{defs / 'orphan.test.yaml'}:1:1: no workflow file orphan.yaml or orphan.yml next to it" in err
    assert "2 invalid test files" in done.stdout
    assert "flow.test.yaml::" not in done.stdout  # an invalid file runs none of its cases
    checked = treadle(tmp_path, "validate", str(defs))
    assert checked.returncode == 1
    assert f"{flow}:5:7: cases[0].mock.gret: the workflow has no step 'gret'" in checked.stdout
    assert "3 files checked" in checked.stderr


def test_test_files_are_not_workflows(tmp_path: Path) -> None:
    defs = write(tmp_path / "defs", {"a.yaml": "steps: [{id: s, log: hi}]\n",
                                     "a.test.yaml": "cases: [{name: logs}]\n",
                                     "sub/b.test.yml": "cases: [{name: orphan}]\n"})
    catalog = Catalog(defs)
    catalog.load_all()
    assert catalog.names() == ["a"] and not catalog.problems()
    catalog.reload([defs / "a.test.yaml", defs / "sub"])  # a watcher's events for them change nothing
    assert catalog.names() == ["a"]
    done = treadle(tmp_path, "test", str(defs / "a.yaml"))  # a workflow file: its test file
    assert done.returncode == 0 and "a.test.yaml::logs PASSED" in done.stdout, done.stdout + done.stderr


def test_trigger_payloads_make_the_params_and_refusals_can_be_expected(tmp_path: Path) -> None:
    defs = write(tmp_path / "defs", {"flow.yaml": """\
params:
  n: {type: integer, required: true}
triggers:
  event: {type: "thing.*", params: {n: "{{ data.count * 2 }}"}}
  webhook: {token_env: HOOK_TOKEN}
steps:
  - id: show
    log: "n={{ params.n }}"
""", "flow.test.yaml": """\
cases:
  - name: event
    trigger: {event: {type: thing.made, data: {count: 4}}}
    expect: {steps: {show: {output: "n=8"}}}
  - name: webhook body as params
    trigger: {webhook: {body: {n: 5}}}
    expect: {steps: {show: {output: "n=5"}}}
  - name: missing param refused
    expect: {status: refused, error: "param 'n'"}
  - name: refusal expected but the run starts
    params: {n: 1}
    expect: {status: refused}
"""})
    done = treadle(tmp_path, "test", str(defs))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "3 passed, 1 failed" in done.stdout
    assert "status: expected 'refused' (the run should not have started), got 'succeeded'" in done.stdout


def test_a_mock_list_answers_each_poll_of_a_repeat(tmp_path: Path) -> None:
    defs = write(tmp_path / "defs", {"poll.yaml": """\
steps:
  - id: status
    repeat: {until: "{{ output.state == 'done' }}", interval: 1h, limit: 5}
    http: {url: "https://export.example.invalid/status"}
""", "poll.test.yaml": """\
cases:
  - name: done on the third poll (no hour waited)
    mock:
      status: [{output: {state: pending}}, {output: {state: pending}}, {output: {state: done}}]
    expect:
      steps: {status: {attempts: 3, output: {state: done}}}
  - name: never done
    mock:
      status: {output: {state: pending}}
    expect:
      status: failed
      steps: {status: {attempts: 5, error: "after 5 polls", output: {state: pending}}}
"""})
    done = treadle(tmp_path, "test", str(defs), "--timeout", "30s")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_the_dashboard_and_api_list_test_files_apart_from_workflows(tmp_path: Path) -> None:
    import httpx

    from tests.web_server import serving

    defs = {"a.yaml": "steps: [{id: s, log: hi}]\n", "a.test.yaml": "cases: [{name: logs}]\n",
            "sub/b.yaml": "steps: [{id: s, log: hi}]\n", "sub/orphan.test.yaml": "not: [a, workflow\n"}
    with serving(tmp_path, defs, watch=False) as base, httpx.Client(base_url=base, timeout=10) as client:
        items = client.get("/api/workflows").json()["items"]
        assert sorted(w["name"] for w in items) == ["a", "b"] and all(w["valid"] for w in items)
        assert client.get("/api/workflows/a").json()["test_file"] == "a.test.yaml"
        assert client.get("/api/workflows/b").json()["test_file"] is None
        assert "tested by <code>a.test.yaml</code>" in client.get("/workflows/a").text
        assert "no test file" in client.get("/workflows/b").text
        listing = client.get("/").text
        assert "orphan" not in listing and "a.test" not in listing


def test_dry_run_with_mocks_executes_the_engine_and_nothing_else(tmp_path: Path, http_server) -> None:  # noqa: F811
    import httpx

    from tests.web_server import serving

    flow = {"flow.yaml": FLOW % http_server.url}
    with serving(tmp_path, flow, watch=False) as base, httpx.Client(base_url=base, timeout=30) as client:
        url = "/api/workflows/flow/dry-run"
        answer = client.post(url, json={"params": {"who": "Ada"}, "mock": {
            "fetch": {"output": {"json": {"status": "ok"}}}, "touch": [{"exit_code": 1}, {"output": {"n": 5}}]}})
        assert answer.status_code == 200, answer.text
        doc = answer.json()
        assert doc["mocked"] == ["fetch", "touch"] and doc["status"] == "failed"  # touch has no retry
        steps = {s["id"]: s for s in doc["steps"]}
        assert steps["gate"]["output"] == "open for Ada" and steps["touch"]["exit_code"] == 1
        assert http_server.hits["/json"] == 0 and not (tmp_path / "definitions" / "touched.txt").exists()
        missing = client.post(url, json={"mock": {"fetch": {"output": {}}}})
        assert missing.status_code == 400 and missing.json()["error_code"] == "INVALID_PARAMS"
        assert "not mocked: touch" in missing.json()["errors"]["mock"]
        real = client.post(url, json={"mock": {"fetch": {"real": True}, "touch": {}}})
        assert real.status_code == 400 and "`real: true` is not allowed" in real.json()["errors"]["mock"]
        unknown = client.post(url, json={"mock": {"fetch": {}, "touch": {}, "nope": {}}})
        assert unknown.status_code == 400 and "no step 'nope'" in unknown.json()["errors"]["mock"]
        plan = client.post(url, json={"params": {}})  # without mock: the plan, as before
        assert plan.status_code == 200 and "mocked" not in plan.json()
