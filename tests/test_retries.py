"""Retries as the engine applies them, on real processes and a real loopback HTTP server:
which failures are retried (`on:`, timeouts, connection errors, failures that would
fail the same way again), the waits between attempts, and what an unexpected
exception inside a step kind does. Resuming with retries: tests/test_resume.py."""

from __future__ import annotations

from runner import limits
from runner.engine.engine import Engine
from tests.exec_support import by_id, log_text, run_yaml
from tests.http_server import closed_port, http_server_fixture  # noqa: F401  (the `http_server` fixture)


def _attempts(doc: dict, step: str) -> list[tuple[int, str]]:
    return [(a["attempt"], a["status"]) for a in by_id(doc)[step]["attempt_list"]]


async def _gaps(engine, run_id: str, step: str) -> list[float]:
    """Seconds from the end of each attempt to the start of the next (database times)."""
    rows = sorted((r for r in await engine.store.step_attempts(run_id) if r["step_id"] == step),
                  key=lambda r: r["attempt"])
    return [b["started_at"] - a["finished_at"] for a, b in zip(rows, rows[1:], strict=False)]


# -- what is retried ----------------------------------------------------------------------


async def test_a_timed_out_attempt_is_retried(engine, tmp_path):
    counter = tmp_path / "count"
    # the first attempt hangs until its timeout; the second one is quick
    exe, doc = await run_yaml(engine, tmp_path, f"""
        steps:
          - id: s
            timeout: 0.5s
            retry: {{limit: 2, delay: 0}}
            run: 'echo x >> {counter}; if [ $(wc -l < {counter}) -eq 1 ]; then sleep 30; fi; echo done'
    """)
    assert exe.status == "succeeded", doc
    assert _attempts(doc, "s") == [(1, "failed"), (2, "succeeded")]
    assert by_id(doc)["s"]["attempt_list"][0]["error"] == "timed out after 500ms; the step was stopped"
    assert by_id(doc)["s"]["output"] == "done"


async def test_retry_on_codes_does_not_retry_failures_without_a_code(engine, tmp_path, http_server):
    # a timeout and a refused connection have no exit code and no HTTP status: `on: [...]`
    # names codes, so they are not retried; without `on:` they are
    port = closed_port()
    exe, doc = await run_yaml(engine, tmp_path, f"""
        steps:
          - {{id: slow, needs: [], timeout: 0.3s, retry: {{limit: 2, delay: 0, on: [1, 143, 137]}}, run: "sleep 30"}}
          - id: refused_on
            needs: []
            retry: {{limit: 2, delay: 0, on: [503]}}
            http: {{url: "http://127.0.0.1:{port}/x"}}
          - id: refused_any
            needs: []
            retry: {{limit: 2, delay: 0}}
            http: {{url: "http://127.0.0.1:{port}/x"}}
          - id: busy
            needs: []
            retry: {{limit: 2, delay: 0, on: [503]}}
            http: {{url: "{http_server.url}/flaky/busy?fail=1"}}
    """)
    steps = by_id(doc)
    assert exe.status == "failed"
    assert _attempts(doc, "slow") == [(1, "failed")]
    assert steps["slow"]["error"] == "timed out after 300ms; the step was stopped"
    assert _attempts(doc, "refused_on") == [(1, "failed")]
    assert steps["refused_on"]["error"] == f"GET http://127.0.0.1:{port}/x: cannot connect (connection refused)"
    assert _attempts(doc, "refused_any") == [(1, "failed"), (2, "failed"), (3, "failed")]
    assert steps["busy"]["status"] == "succeeded" and _attempts(doc, "busy") == [(1, "failed"), (2, "succeeded")]


async def test_an_input_over_the_limit_is_not_retried(engine, tmp_path):
    big = "x" * (limits.MAX_INPUT_BYTES + 1)  # the real limit: 4 MiB of JSON
    exe, doc = await run_yaml(engine, tmp_path, """
        params: {big: {type: string}}
        steps:
          - {id: a, retry: {limit: 3, delay: 0}, set: {v: "{{ params.big }}"}}
    """, params={"big": big})
    assert exe.status == "failed"
    assert _attempts(doc, "a") == [(1, "failed")]
    assert by_id(doc)["a"]["error"] == (
        "input: more than the limit of 4 MiB (4,194,304 bytes) as JSON; pass less data to the step "
        "(only the fields it needs, or a file path)")


async def test_an_unexpected_exception_in_a_step_kind_fails_the_attempt_once(engine, tmp_path):
    # a body that is a lone UTF-16 surrogate (made by a template's string escape) cannot
    # be encoded: the http kind lets the UnicodeEncodeError through. The engine records
    # the attempt as failed, does not retry it (it would fail the same way), and the run
    # goes on to its end.
    exe, doc = await run_yaml(engine, tmp_path, f"""
        steps:
          - id: a
            retry: {{limit: 3, delay: 0}}
            http: {{url: "http://127.0.0.1:{closed_port()}/x", method: POST, body: "{{{{ '\\\\ud800' }}}}"}}
          - {{id: after, log: never}}
          - {{id: other, needs: [], log: hi}}
    """)
    steps = by_id(doc)
    assert exe.status == "failed"
    assert _attempts(doc, "a") == [(1, "failed")]
    error = steps["a"]["attempt_list"][0]["error"]
    assert error.startswith("UnicodeEncodeError: 'utf-8' codec can't encode character") and error == steps["a"]["error"]
    assert steps["after"]["status"] == "upstream_failed" and steps["other"]["status"] == "succeeded"


# -- waits between attempts ------------------------------------------------------------------


async def test_each_retry_waits_at_least_its_delay(engine, tmp_path):
    """A lower bound only: the engine promises to wait this long (a slow machine only
    waits longer), so this cannot fail on a loaded machine; a shortened wait fails it."""
    exe, doc = await run_yaml(engine, tmp_path, """
        steps:
          - id: s
            retry: {limit: 3, backoff: exponential, delay: 0.2, max_delay: 0.5}
            run: "exit 1"
    """)
    attempts = by_id(doc)["s"]["attempt_list"]
    assert exe.status == "failed" and [a["attempt"] for a in attempts] == [1, 2, 3, 4]
    gaps = await _gaps(engine, exe.id, "s")
    promised = [0.2, 0.4, 0.5]  # 0.2 * 2**n, at most max_delay
    assert all(gap >= wait - 0.005 for gap, wait in zip(gaps, promised, strict=True)), (gaps, promised)
    logs = await log_text(engine, exe.id, "s", ("treadle",))
    assert [line.rsplit(" in ", 1)[1] for line in logs.splitlines() if line] == ["200ms]", "400ms]", "500ms]"]


async def test_backoff_none_retries_at_once_and_fixed_repeats_the_delay(engine, tmp_path):
    exe, doc = await run_yaml(engine, tmp_path, """
        steps:
          - {id: none, needs: [], retry: {limit: 2, backoff: none, delay: 10}, run: "exit 1"}
          - {id: fixed, needs: [], retry: {limit: 2, backoff: fixed, delay: 0.15}, run: "exit 1"}
          - {id: linear, needs: [], retry: {limit: 2, backoff: linear, delay: 0.15}, run: "exit 1"}
    """)
    assert exe.status == "failed"
    for step, promised in (("fixed", [0.15, 0.15]), ("linear", [0.15, 0.3])):
        gaps = await _gaps(engine, exe.id, step)
        assert len(gaps) == 2 and all(g >= p - 0.005 for g, p in zip(gaps, promised, strict=True)), (step, gaps)
    logs = {s: await log_text(engine, exe.id, s, ("treadle",)) for s in ("none", "fixed", "linear")}
    # `none` would wait 10 s per retry if it used the delay: the run ended, so it did not
    assert [line.rsplit(" in ", 1)[1] for line in logs["none"].splitlines() if line] == ["0ms]", "0ms]"]
    assert [line.rsplit(" in ", 1)[1] for line in logs["linear"].splitlines() if line] == ["150ms]", "300ms]"]


# -- what each attempt leaves ------------------------------------------------------------------


async def test_each_attempts_log_is_kept_under_its_number(engine, tmp_path):
    counter = tmp_path / "count"
    exe, doc = await run_yaml(engine, tmp_path, f"""
        steps:
          - id: s
            retry: {{limit: 2, backoff: none}}
            run: 'echo x >> {counter}; echo "try $(wc -l < {counter})"; exit 1'
    """)
    assert exe.status == "failed" and [a["attempt"] for a in by_id(doc)["s"]["attempt_list"]] == [1, 2, 3]
    await engine.store.flush()
    rows = await engine.store.logs(exe.id, "s")
    said = [(r["attempt"], r["text"].strip()) for r in rows if r["stream"] == "stdout"]
    assert said == [(1, "try 1"), (2, "try 2"), (3, "try 3")]
    notes = [(r["attempt"], r["text"].split(":", 1)[0]) for r in rows if r["stream"] == "treadle"]
    assert notes == [(1, "[treadle"), (2, "[treadle")]  # "attempt N failed; retry ..." under the attempt that failed


async def test_each_attempt_and_item_is_told_its_number(engine, tmp_path):
    counter = tmp_path / "count"
    exe, doc = await run_yaml(engine, tmp_path, f"""
        steps:
          - id: s
            retry: {{limit: 1, backoff: none}}
            run: 'echo x >> {counter}; echo "attempt $TREADLE_ATTEMPT index ${{TREADLE_INDEX-none}}"; test $TREADLE_ATTEMPT = 2'
          - id: each
            foreach: [a, b]
            run: 'echo "attempt $TREADLE_ATTEMPT index ${{TREADLE_INDEX-none}}"'
    """)
    assert exe.status == "succeeded", doc
    assert by_id(doc)["s"]["output"] == "attempt 2 index none"  # not a foreach item: no index at all
    assert by_id(doc)["each"]["output"] == ["attempt 1 index 0", "attempt 1 index 1"]


async def test_the_last_words_of_an_attempt_reach_its_log(store, tmp_path):
    # no newline at the end, and the beginning of a secret at the very end: the log
    # holds that back (a secret may be on its way) and must keep it once the attempt ends
    engine = Engine(store, definitions_dir=tmp_path, environ={"TOKEN": "s3cr3t-value-0123"})
    try:
        exe, doc = await run_yaml(engine, tmp_path, """
            secrets: [TOKEN]
            steps:
              - {id: s, retry: {limit: 1, backoff: none}, run: 'printf "first line\\nlast words s3cr"; exit 1'}
        """)
        assert exe.status == "failed"
        await engine.store.flush()
        rows = await engine.store.logs(exe.id, "s")
    finally:
        await engine.close()
    for attempt in (1, 2):
        text = "".join(r["text"] for r in rows if r["stream"] == "stdout" and r["attempt"] == attempt)
        assert text == "first line\nlast words s3cr", (attempt, text)
