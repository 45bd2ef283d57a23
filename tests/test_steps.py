"""Every step kind against real parts: processes, a loopback HTTP server, Python modules
written for the test, child runs; secrets masking and logs as recorded in SQLite."""

from __future__ import annotations

import asyncio
import json

import pytest

from runner.engine.engine import Engine
from runner.engine.logsink import LogSink
from tests.conftest import definition
from tests.exec_support import by_id, eventually, log_text, recorded, run_yaml, write_module
from tests.http_server import closed_port, http_server_fixture  # noqa: F401  (the `http_server` fixture)

# -- run -------------------------------------------------------------------------


async def test_run_string_goes_through_the_shell_with_both_envs(engine, tmp_path):
    exe, doc = await run_yaml(engine, tmp_path, """
        env: {WHO: world, N: 5}
        steps:
          - id: s
            env: {GREETING: hello, FLAG: true}
            run: echo "$GREETING $WHO $N $FLAG" | tr a-z A-Z
          - id: vars
            run: echo "$TREADLE_STEP_ID $TREADLE_ATTEMPT $TREADLE_WORKFLOW $TREADLE_IDEMPOTENCY_KEY"
    """)
    assert exe.status == "succeeded"
    assert by_id(doc)["s"]["output"] == "HELLO WORLD 5 TRUE"
    assert by_id(doc)["s"]["input"] == {"run": 'echo "$GREETING $WHO $N $FLAG" | tr a-z A-Z',
                                        "env": {"GREETING": "hello", "FLAG": True}}
    assert by_id(doc)["vars"]["output"] == f"vars 1 wf {exe.id}-vars"


async def test_run_argv_list_runs_the_program_without_a_shell(engine, tmp_path):
    exe, doc = await run_yaml(engine, tmp_path, """
        params: {n: {type: integer, default: 7}}
        steps:
          - {id: s, run: [printf, "%s|%s|%s", "a b", "$HOME;", "{{ params.n }}"]}
    """)
    assert by_id(doc)["s"]["output"] == "a b|$HOME;|7"


async def test_run_cwd_is_relative_to_the_definition_folder(engine, tmp_path):
    (tmp_path / "sub").mkdir()
    exe, doc = await run_yaml(engine, tmp_path, """
        steps:
          - {id: here, run: pwd}
          - {id: there, run: pwd, cwd: sub}
          - {id: missing, run: pwd, cwd: nope}
    """)
    assert by_id(doc)["here"]["output"] == str(tmp_path)
    assert by_id(doc)["there"]["output"] == str(tmp_path / "sub")
    assert by_id(doc)["missing"]["error"] == f"cwd '{tmp_path / 'nope'}' is not a folder"


async def test_run_output_is_json_when_stdout_is_json(engine, tmp_path):
    exe, doc = await run_yaml(engine, tmp_path, """
        steps:
          - id: data
            run: |
              echo '{"name": "x", "sizes": [1, 2]}'
              echo warning >&2
          - {id: number, run: echo 42}
          - {id: text, run: printf 'two\\nlines\\n'}
          - id: use
            set:
              total: "{{ steps.data.output.sizes | sum + steps.number.output }}"
              code: "{{ steps.data.exit_code }}"
              stdout: "{{ steps.data.stdout }}"
              stderr: "{{ steps.data.stderr }}"
              text: "{{ steps.text.output }}"
    """)
    steps = by_id(doc)
    assert steps["data"]["output"] == {"name": "x", "sizes": [1, 2]} and steps["data"]["exit_code"] == 0
    assert steps["number"]["output"] == 42
    assert steps["use"]["output"] == {"total": 45, "code": 0, "stdout": '{"name": "x", "sizes": [1, 2]}\n',
                                      "stderr": "warning\n", "text": "two\nlines"}
    assert await log_text(engine, exe.id, "data", ("stderr",)) == "warning\n"


async def test_run_failure_reports_exit_code_and_last_stderr_line(engine, tmp_path):
    exe, doc = await run_yaml(engine, tmp_path, """
        steps:
          - {id: s, run: "echo out; echo first >&2; echo 'the reason' >&2; exit 2"}
    """)
    step = by_id(doc)["s"]
    assert step["status"] == "failed" and step["exit_code"] == 2
    assert step["error"] == "exit code 2: the reason" and step["output"] == "out"


@pytest.mark.parametrize("run, message", [
    ("no-such-cmd-treadle --x", "exit code 127 (command not found): "),
    (["no-such-cmd-treadle", "--x"], "command not found: 'no-such-cmd-treadle' (is it installed and on PATH?)"),
])
async def test_command_not_found_is_said_clearly(engine, tmp_path, run, message):
    exe, doc = await run_yaml(engine, tmp_path, f"steps: [{{id: s, run: {json.dumps(run)}}}]")
    step = by_id(doc)["s"]
    assert step["error"].startswith(message) and step["exit_code"] == 127
    assert "no-such-cmd-treadle" in step["error"]


# -- http ------------------------------------------------------------------------


async def test_http_sends_method_headers_params_and_json(engine, tmp_path, http_server):
    exe, doc = await run_yaml(engine, tmp_path, f"""
        params: {{amount: {{type: number, default: 12.5}}}}
        env: {{API: "{http_server.url}"}}
        steps:
          - id: call
            http:
              method: post
              url: "{{{{ env.API }}}}/echo?keep=1"
              headers: {{X-Trace: abc, X-Count: 3}}
              params: {{q: "a b", n: 2}}
              json: {{amount: "{{{{ params.amount }}}}", label: "{{{{ params.amount }}}} EUR", none: null}}
              expect_status: [200, 201]
              timeout: 5s
    """)
    assert exe.status == "succeeded", doc["error"]
    seen = http_server.requests[-1]
    assert seen["method"] == "POST" and seen["path"] == "/echo"
    assert seen["query"] == {"keep": "1", "q": "a b", "n": "2"}
    assert seen["headers"]["X-Trace"] == "abc" and seen["headers"]["X-Count"] == "3"
    assert seen["headers"]["Idempotency-Key"] == f"{exe.id}-call"
    assert json.loads(seen["body"]) == {"amount": 12.5, "label": "12.5 EUR", "none": None}
    step = by_id(doc)["call"]
    assert step["http_status"] == 200
    out = step["output"]
    assert set(out) == {"status", "headers", "json", "text"} and out["status"] == 200
    assert out["json"]["method"] == "POST" and out["headers"]["content-type"] == "application/json"
    assert json.loads(out["text"]) == out["json"]
    assert await log_text(engine, exe.id, "call") == f"POST {http_server.url}/echo?keep=1 -> 200 ({len(out['text'])} bytes)\n"


async def test_http_body_form_and_idempotency_key_per_item(engine, tmp_path, http_server):
    exe, doc = await run_yaml(engine, tmp_path, f"""
        steps:
          - {{id: raw, http: {{method: PUT, url: "{http_server.url}/echo", body: "plain text"}}}}
          - {{id: form, http: {{method: POST, url: "{http_server.url}/echo", form: {{a: "1 2", b: true}}}}}}
          - id: own_key
            http: {{url: "{http_server.url}/echo", headers: {{idempotency-key: mine}}}}
          - id: each
            foreach: [x, y]
            http: {{url: "{http_server.url}/echo", params: {{item: "{{{{ item }}}}"}}}}
    """)
    assert exe.status == "succeeded", doc["error"]
    steps = by_id(doc)
    assert steps["raw"]["output"]["json"]["body"] == "plain text"
    form = steps["form"]["output"]["json"]
    assert form["body"] == "a=1+2&b=true"
    assert form["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    keys = [v for k, v in steps["own_key"]["output"]["json"]["headers"].items() if k.lower() == "idempotency-key"]
    assert keys == ["mine"]
    each = [o["json"] for o in steps["each"]["output"]]
    assert [e["query"]["item"] for e in each] == ["x", "y"]
    assert [e["headers"]["Idempotency-Key"] for e in each] == [f"{exe.id}-each-0", f"{exe.id}-each-1"]


async def test_http_unexpected_status_fails_with_the_output_kept(engine, tmp_path, http_server):
    exe, doc = await run_yaml(engine, tmp_path, f"""
        steps:
          - {{id: a, http: {{url: "{http_server.url}/json", expect_status: 201}}}}
          - {{id: b, needs: [], http: {{url: "{http_server.url}/status/404"}}}}
          - {{id: c, needs: [], http: {{url: "{http_server.url}/status/404", expect_status: [404]}}}}
    """)
    steps = by_id(doc)
    assert steps["a"]["error"].startswith(f"GET {http_server.url}/json answered 200, expected 201: ")
    assert steps["a"]["output"]["json"] == {"status": "ok", "items": [1, 2, 3]}
    assert steps["b"]["error"] == f"GET {http_server.url}/status/404 answered 404, expected 2xx: status 404"
    assert steps["b"]["http_status"] == 404
    assert steps["c"]["status"] == "succeeded" and steps["c"]["output"]["text"] == "status 404"


async def test_http_timeout_and_connection_refused(engine, tmp_path, http_server):
    port = closed_port()
    exe, doc = await run_yaml(engine, tmp_path, f"""
        steps:
          - {{id: slow, needs: [], http: {{url: "{http_server.url}/slow?s=3", timeout: 0.3}}}}
          - {{id: slow_step, needs: [], timeout: 0.3, http: {{url: "{http_server.url}/slow?s=3"}}}}
          - {{id: refused, needs: [], http: {{url: "http://127.0.0.1:{port}/x"}}}}
          - {{id: bad_url, needs: [], http: {{url: "ftp://127.0.0.1/x"}}}}
    """)
    steps = by_id(doc)
    assert steps["slow"]["error"] == f"GET {http_server.url}/slow?s=3: no answer within 0.3s"
    assert steps["slow_step"]["error"] in (
        f"GET {http_server.url}/slow?s=3: no answer within 0.3s", "timed out after 300ms; the step was stopped")
    assert steps["refused"]["error"] == f"GET http://127.0.0.1:{port}/x: cannot connect (connection refused)"
    assert steps["bad_url"]["error"] == "invalid URL 'ftp://127.0.0.1/x': use http:// or https://"


async def test_a_header_outside_ascii_fails_the_step_with_the_header_named_and_sends_nothing(engine, tmp_path,
                                                                                               http_server):
    before = len(http_server.requests)
    exe, doc = await run_yaml(engine, tmp_path, f"""
        steps:
          - {{id: a, retry: 2, http: {{url: "{http_server.url}/json", headers: {{X-Customer: "Zoë"}}}}}}
    """)
    step = by_id(doc)["a"]
    assert step["status"] == "failed" and step["attempts"] == 1  # a fix in the file, not a retry, helps
    assert step["error"] == ("header 'X-Customer': its value has a character outside ASCII ('ë' at position 3); "
                             "HTTP headers are ASCII: percent-encode it ({{ value | urlencode }}) or send it in the body")
    assert len(http_server.requests) == before


async def test_http_output_drives_when(engine, tmp_path, http_server):
    exe, doc = await run_yaml(engine, tmp_path, f"""
        steps:
          - {{id: get, http: {{url: "{http_server.url}/json"}}}}
          - {{id: yes, when: "{{{{ steps.get.output.json.status == 'ok' }}}}", log: ok}}
          - {{id: no, needs: [get], when: "{{{{ steps.get.output.json['items'] | length > 5 }}}}", log: many}}
    """)
    assert [s["status"] for s in doc["steps"]] == ["succeeded", "succeeded", "skipped"]


# -- python ----------------------------------------------------------------------


async def test_python_sync_and_async_functions(engine, tmp_path):
    mod = write_module(tmp_path, """
import asyncio
import threading

def add(a, b=1):
    return {"sum": a + b, "thread": threading.current_thread().name != "MainThread"}

async def later(text, ctx):
    await asyncio.sleep(0.01)
    ctx.log("from async\\n")
    return [text.upper(), ctx.idempotency_key, ctx.attempt]
""")
    exe, doc = await run_yaml(engine, tmp_path, f"""
        steps:
          - {{id: sync, python: "{mod}:add", with: {{a: 2, b: "{{{{ 40 }}}}"}}}}
          - {{id: async_, python: "{mod}:later", with: {{text: "got {{{{ steps.sync.output.sum }}}}"}}}}
    """)
    assert exe.status == "succeeded", doc["error"]
    assert by_id(doc)["sync"]["output"] == {"sum": 42, "thread": True}
    assert by_id(doc)["async_"]["output"] == ["GOT 42", f"{exe.id}-async_", 1]
    assert await log_text(engine, exe.id, "async_") == "from async\n"


async def test_python_failures_are_clear(engine, tmp_path):
    broken = write_module(tmp_path, "import no_such_dependency_treadle\n")
    mod = write_module(tmp_path, """
def boom(n):
    raise ValueError(f"bad n {n}")

def odd():
    return {1, 2}
""")
    exe, doc = await run_yaml(engine, tmp_path, f"""
        steps:
          - {{id: missing_module, needs: [], python: "treadle_absent_module_xyz:f"}}
          - {{id: broken_import, needs: [], retry: {{limit: 2, delay: 0}}, python: "{broken}:f"}}
          - {{id: missing_fn, needs: [], python: "{mod}:nope"}}
          - {{id: raises, needs: [], retry: {{limit: 1, delay: 0}}, python: "{mod}:boom", with: {{n: 3}}}}
          - {{id: bad_args, needs: [], python: "{mod}:boom", with: {{m: 3}}}}
          - {{id: not_json, needs: [], python: "{mod}:odd"}}
    """)
    steps = by_id(doc)
    assert steps["missing_module"]["error"] == (
        "cannot import 'treadle_absent_module_xyz': ModuleNotFoundError: No module named 'treadle_absent_module_xyz'")
    assert steps["broken_import"]["error"] == (
        f"cannot import '{broken}': ModuleNotFoundError: No module named 'no_such_dependency_treadle'")
    assert steps["broken_import"]["attempts"] == 1  # not retried: it cannot get better
    assert steps["missing_fn"]["error"] == f"module '{mod}' has no 'nope'"
    assert steps["raises"]["error"] == f"{mod}:boom raised ValueError: bad n 3" and steps["raises"]["attempts"] == 2
    assert steps["bad_args"]["error"].startswith(f"{mod}:boom: ") and "'m'" in steps["bad_args"]["error"]
    assert steps["not_json"]["error"].startswith(f"{mod}:odd returned a set, which is not JSON-serialisable")


# -- set, wait, log ----------------------------------------------------------------


async def test_set_wait_and_log(engine, tmp_path):
    exe, doc = await run_yaml(engine, tmp_path, """
        params: {name: {type: string, default: ada}}
        steps:
          - id: data
            set:
              n: "{{ 20 + 1 }}"
              list: ["{{ params.name }}", 2, null]
              nested: {text: "hi {{ params.name }}", flag: true}
          - {id: pause, wait: 0.05s}
          - {id: note, log: "n is {{ steps.data.output.n * 2 }} for {{ steps.data.output.nested.text }}"}
          - {id: number, log: "{{ steps.data.output.n }}"}
    """)
    steps = by_id(doc)
    assert steps["data"]["output"] == {"n": 21, "list": ["ada", 2, None], "nested": {"text": "hi ada", "flag": True}}
    assert steps["pause"]["status"] == "succeeded" and steps["pause"]["output"] is None
    assert steps["pause"]["input"] == {"wait": 0.05}
    assert steps["note"]["output"] == "n is 42 for hi ada"
    assert steps["number"]["output"] == "21"
    assert await log_text(engine, exe.id, "note") == "n is 42 for hi ada\n"
    # wait really waited: `note` started only after `pause` ended
    assert steps["pause"]["finished_at"] <= steps["note"]["started_at"]


# -- workflow (child runs) -------------------------------------------------------------


async def test_workflow_step_runs_a_child_and_takes_its_outputs(store, tmp_path):
    child = definition("""
        params: {n: {type: integer, required: true}}
        outputs: {double: "{{ steps.calc.output * 2 }}"}
        steps:
          - {id: calc, run: "echo {{ params.n }}"}
          - {id: check, run: "test {{ params.n }} -lt 100"}
    """, tmp_path, name="child")
    known = {"child": child}
    async with Engine(store, lookup=known.get, definitions_dir=tmp_path) as engine:
        exe, doc = await run_yaml(engine, tmp_path, """
            steps:
              - {id: ok, workflow: child, params: {n: "{{ 21 }}"}}
              - {id: use, log: "got {{ steps.ok.output.double }}"}
              - {id: bad, needs: [], workflow: child, params: {n: 500}}
              - {id: unknown, needs: [], workflow: nope}
              - {id: bad_params, needs: [], workflow: child, params: {m: 1}}
        """, name="parent")
        steps = by_id(doc)
        assert steps["ok"]["output"] == {"double": 42} and steps["use"]["output"] == "got 42"
        assert steps["bad"]["status"] == "failed"
        assert steps["bad"]["error"].startswith("child run ") and "of 'child' failed: step 'check' failed: exit code 1" in steps["bad"]["error"]
        assert steps["unknown"]["error"] == "cannot start workflow 'nope': no workflow named 'nope'"
        assert steps["bad_params"]["error"].startswith("cannot start workflow 'child': ")
        assert exe.status == "failed"
        children, total = await store.list_runs(parent=exe.id)
        assert total == 2 and {c["parent_step_id"] for c in children} == {"ok", "bad"}
        assert all(c["trigger"] == "workflow" for c in children)


async def test_cancelling_the_parent_cancels_the_child(store, tmp_path):
    known = {"child": definition("steps: [{id: slow, run: 'sleep 30'}]", tmp_path, name="child")}
    async with Engine(store, lookup=known.get, definitions_dir=tmp_path) as engine:
        parent = await engine.start(definition("steps: [{id: c, workflow: child}]", tmp_path, name="parent"))

        async def child_running() -> bool:
            await store.flush()
            rows, _ = await store.list_runs(parent=parent.id)
            return bool(rows) and any(r["status"] == "running" for r in await store.step_attempts(rows[0]["id"]))

        await eventually(child_running)
        engine.cancel(parent.id)
        assert await asyncio.wait_for(parent.wait(), 10) == "cancelled"
        await store.flush()
        (child_run,), _ = await store.list_runs(parent=parent.id)
        assert child_run["status"] == "cancelled"


# -- secrets ---------------------------------------------------------------------


async def test_secrets_are_masked_in_everything_recorded(store, tmp_path, http_server):
    secret = "s3cr3t-VALUE-42"
    mod = write_module(tmp_path, "def leak(token):\n    raise RuntimeError('bad token ' + token)\n")
    async with Engine(store, definitions_dir=tmp_path, environ={"TOKEN": secret}) as engine:
        exe, doc = await run_yaml(engine, tmp_path, f"""
            secrets: [TOKEN]
            env: {{AUTH: "Bearer {{{{ secrets.TOKEN }}}}"}}
            outputs: {{token: "{{{{ secrets.TOKEN }}}}"}}
            steps:
              - id: shell
                continue_on_failure: true
                env: {{T: "{{{{ secrets.TOKEN }}}}"}}
                run: 'echo "out $T"; echo "err $T" >&2; echo "$AUTH"; exit 1'
              - id: call
                needs: []
                http:
                  url: "{http_server.url}/echo"
                  headers: {{Authorization: "{{{{ env.AUTH }}}}"}}
              - {{id: data, needs: [], set: {{t: "{{{{ secrets.TOKEN }}}}"}}}}
              - {{id: py, needs: [], continue_on_failure: true, python: "{mod}:leak", with: {{token: "{{{{ secrets.TOKEN }}}}"}}}}
              - {{id: note, needs: [], log: "token={{{{ secrets.TOKEN }}}}"}}
        """)
        assert exe.status == "succeeded", doc["error"]
        assert http_server.requests[-1]["headers"]["Authorization"] == f"Bearer {secret}"  # really sent
        recorded_rows = [await store.get_run(exe.id), *await store.step_attempts(exe.id)]
        for sid in ("shell", "call", "data", "py", "note"):
            recorded_rows += await store.logs(exe.id, sid)
        dump = json.dumps(recorded_rows, default=str) + json.dumps(await recorded(engine, exe.id))
        assert secret not in dump
        steps = by_id(doc)
        assert steps["shell"]["error"] == "exit code 1: err ***"
        assert steps["shell"]["input"]["env"] == {"T": "***"}
        assert steps["call"]["input"]["http"]["headers"] == {"Authorization": "Bearer ***"}
        assert steps["call"]["output"]["json"]["headers"]["Authorization"] == "Bearer ***"
        assert steps["data"]["output"] == {"t": "***"}
        assert steps["py"]["error"] == f"{mod}:leak raised RuntimeError: bad token ***"
        assert doc["outputs"] == {"token": "***"}
        assert await log_text(engine, exe.id, "shell") == "out ***\nerr ***\nBearer ***\n" or \
            sorted((await log_text(engine, exe.id, "shell")).splitlines()) == ["Bearer ***", "err ***", "out ***"]
        assert await log_text(engine, exe.id, "note") == "token=***\n"


async def test_a_child_run_masks_the_secrets_of_its_parent(store, tmp_path):
    child = definition("""
        params: {t: string}
        outputs: {said: "{{ steps.c.output }}"}
        steps: [{id: c, env: {T: "{{ params.t }}"}, run: echo "got $T"}]
    """, tmp_path, name="child")
    async with Engine(store, lookup={"child": child}.get, definitions_dir=tmp_path,
                      environ={"TOK": "top-secret-99"}) as engine:
        exe, doc = await run_yaml(engine, tmp_path, """
            secrets: [TOK]
            steps: [{id: p, workflow: child, params: {t: "{{ secrets.TOK }}"}}]
        """, name="parent")
        assert exe.status == "succeeded" and by_id(doc)["p"]["output"] == {"said": "got ***"}
        (child_run,), _ = await store.list_runs(parent=exe.id)
        recorded_rows = [child_run["outputs"], *await store.step_attempts(child_run["id"]),
                         *await store.logs(child_run["id"], "c")]
        assert "top-secret-99" not in json.dumps(recorded_rows)
        assert child_run["outputs"] == {"said": "got ***"}


# -- logs ------------------------------------------------------------------------


async def test_logs_stream_while_the_step_runs(engine, tmp_path):
    go = tmp_path / "go"
    exe = await engine.start(definition(f"""
        steps:
          - id: talk
            run: 'echo first; while [ ! -f {go} ]; do sleep 0.02; done; echo second'
    """, tmp_path))

    async def first_seen() -> bool:
        await engine.store.flush()
        return "first" in "".join(r["text"] for r in await engine.store.logs(exe.id, "talk"))

    await eventually(first_seen)
    # the step cannot end before `go` exists: the log row was written while it ran
    rows = await engine.store.logs(exe.id, "talk")
    assert [r["text"] for r in rows] == ["first\n"] and rows[0]["stream"] == "stdout"
    go.touch()
    assert await asyncio.wait_for(exe.wait(), 10) == "succeeded"
    assert await log_text(engine, exe.id, "talk") == "first\nsecond\n"


async def test_a_long_log_is_truncated_with_a_marker(engine, tmp_path):
    exe, doc = await run_yaml(engine, tmp_path, """
        steps:
          - {id: big, run: "echo START; head -c 1200000 /dev/zero | tr '\\\\0' x; echo; echo END"}
    """)
    assert exe.status == "succeeded", doc["error"]
    text = await log_text(engine, exe.id, "big")
    assert text.startswith("START\nxxx") and text.endswith("x\nEND\n")
    marker = "[treadle: log truncated: the limit is 1000000 bytes per step; "
    assert text.count(marker) == 1
    assert len(text.encode()) < 1_000_000 + 64_000 + 200
    left_out = int(text.split(marker)[1].split(" bytes left out")[0])
    kept_tail = int(text.split("; the last ")[1].split(" bytes follow")[0])
    assert kept_tail == 64_000
    assert 1_000_000 + left_out + kept_tail == len("START\n") + 1_200_000 + len("\nEND\n")


def test_logsink_keeps_head_and_tail_and_counts_what_it_drops():
    rows: list[dict] = []
    sink = LogSink(rows.append, {"run_id": "r", "step_id": "s", "item": -1, "attempt": 1},
                   lambda t: t.replace("pw", "**"), limit=10, tail=4)
    for part in ("abc", "defg", "hij", "klmno", "pq", "rst"):
        sink.write("stdout", part)
    sink.close()
    text = "".join(r["text"] for r in rows)
    assert text == ("abcdefghij\n[treadle: log truncated: the limit is 10 bytes per step; "
                    "6 bytes left out; the last 4 bytes follow]\nqrst")
    rows.clear()
    sink = LogSink(rows.append, {"attempt": 1}, str, limit=5, tail=3)
    sink.write("stdout", "ab\u00e9\u00e9\u00e9z")  # 2-byte characters across both cuts
    sink.close()
    text = "".join(r["text"] for r in rows)
    assert text.startswith("ab\u00e9\n") and text.endswith("; the last 3 bytes follow]\n\u00e9z")
    sink = LogSink(rows.append, {"attempt": 1}, lambda t: t.replace("pw", "**"))
    sink.write("stdout", "a pw b")
    sink.close()
    assert rows[-1]["text"] == "a ** b"
