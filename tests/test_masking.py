"""Secrets never reach what is recorded in clear: printed whole or in pieces, across log
flushes and lines, URL-encoded or in base64 (alone or inside a longer base64 text);
in logs, outputs, errors and run params, down to the bytes of the database file."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from runner.engine.engine import Engine
from runner.engine.logsink import LogSink
from runner.templates import Masker
from tests.conftest import definition
from tests.db_support import everything, query
from tests.exec_support import log_text, run_yaml, write_module

SECRET = "s3cr3t-Value-42"
# URL-special characters, and a base64 form with '+' and '/' (so the URL-safe one differs)
ODD = "p@ss w0rd/&?>>>~~x"


def b64(data: bytes, urlsafe: bool = False) -> str:
    return (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data).decode()


def wrap(text: str, width: int) -> str:
    """What `fold -w` / `base64 -w` print: lines of `width` characters."""
    return "\n".join(text[i:i + width] for i in range(0, len(text), width))


def flat(text: str) -> str:
    return text.replace("\r", "").replace("\n", "")


# -- the Masker ------------------------------------------------------------------


@pytest.mark.parametrize("shown", [
    pytest.param(lambda s: s, id="plain"),
    pytest.param(lambda s: quote(s, safe=""), id="quote"),
    pytest.param(lambda s: quote(s), id="quote-keeping-slashes"),
    pytest.param(lambda s: quote_plus(s), id="quote_plus"),
    pytest.param(lambda s: json.dumps(s)[1:-1], id="json-escaped"),
    pytest.param(lambda s: b64(s.encode()), id="base64"),
    pytest.param(lambda s: b64(s.encode()).rstrip("="), id="base64-unpadded"),
    pytest.param(lambda s: b64(s.encode(), urlsafe=True), id="base64-urlsafe"),
    pytest.param(lambda s: b64(s.encode(), urlsafe=True).rstrip("="), id="base64-urlsafe-unpadded"),
    pytest.param(lambda s: s.encode().hex(), id="hex"),
    pytest.param(lambda s: wrap(s, 8), id="fold-w-8"),
    pytest.param(lambda s: wrap(s, 3).replace("\n", "\r\n"), id="fold-w-3-crlf"),
    pytest.param(lambda s: wrap(b64(s.encode()), 5), id="base64-wrapped"),
])
@pytest.mark.parametrize("secret", [SECRET, ODD])
def test_each_form_of_a_secret_is_masked_whole(secret: str, shown: Any) -> None:
    form = shown(secret)
    assert Masker([secret]).text(f"before {form} after") == "before *** after"
    assert Masker([secret]).text(form) == "***"


def test_the_forms_differ_from_the_secret() -> None:
    """The forms above are not the secret written again (else they would prove nothing)."""
    for form in (quote(ODD, safe=""), quote_plus(ODD), b64(ODD.encode()), b64(ODD.encode(), urlsafe=True),
                 ODD.encode().hex(), wrap(ODD, 8)):
        assert ODD not in form
    assert b64(ODD.encode()) != b64(ODD.encode(), urlsafe=True)


@pytest.mark.parametrize("urlsafe", [False, True], ids=["standard", "urlsafe"])
@pytest.mark.parametrize("offset", [0, 1, 2])
def test_base64_of_a_longer_text_holding_the_secret_is_masked_where_the_secret_decides(
        offset: int, urlsafe: bool) -> None:
    """The secret at each byte offset modulo 3 of a base64-encoded text, wrapped at 76
    characters with the secret across a line break: every character that depends on
    the secret's bytes alone is masked, the text around it is kept."""
    before = b'{"user": "ann", "password": "' + b"x" * (22 + offset)
    assert len(before) % 3 == offset
    after = b'", "note": "the rest of the document"}'
    encoded = b64(before + ODD.encode() + after, urlsafe)
    first = -(-8 * len(before) // 6)  # the first character made of the secret's bits only
    last = 8 * (len(before) + len(ODD)) // 6  # and the end of the last one
    assert first // 76 != last // 76  # the secret's characters cross a line break
    masked = Masker([ODD]).text(wrap(encoded, 76))
    assert flat(masked) == encoded[:first] + "***" + encoded[last:]


def test_short_text_is_left_alone() -> None:
    masker = Masker([SECRET, ODD])
    text = "ok\ns3\ncr\nplain words, czNj and 7333 and cDBz: nothing here is a secret\n"
    assert masker.text(text) == text
    assert Masker(["abc"]).text("ab\nc and abc") == "ab\nc and ***"  # short secrets are not looked for across lines
    assert Masker(["abc"]).spans("xabcx") == [(1, 4)]


def test_masking_data_masks_keys_and_nested_values() -> None:
    masker = Masker([SECRET])
    data = {"url": f"https://api.example/?t={quote_plus(SECRET)}", "list": [b64(SECRET.encode()), 5, None],
            SECRET: {"deep": [f"Bearer {SECRET}"]}}
    assert masker.data(data) == {"url": "https://api.example/?t=***", "list": ["***", 5, None],
                                 "***": {"deep": ["Bearer ***"]}}


def test_ten_megabytes_of_log_are_masked_in_one_go() -> None:
    # how long this takes is a figure of bench/limits.py (~0.1 s each on a laptop)
    masker = Masker([SECRET, ODD, "another-secret-value-0123456789", "tok_" + "A1b2" * 10, "pw!" * 6])
    line = "2024-05-01T12:00:00Z INFO worker-3 processed item 48213 in 12 ms (queue 7, retries 0)\n"
    text = line * (10_000_000 // len(line))
    assert masker.text(text) is text  # nothing to mask: the same text back
    leaky = text[:5_000_000] + f"token {SECRET}\n" + wrap(b64(ODD.encode()), 4) + "\n" + text[5_000_000:]
    masked = masker.text(leaky)
    assert masked.count("***") == 2 and SECRET not in masked
    assert masked == text[:5_000_000] + "token ***\n***\n" + text[5_000_000:]


# -- a log written in pieces -----------------------------------------------------


def test_safe_cut_keeps_back_only_what_could_start_a_secret() -> None:
    masker = Masker([SECRET])
    assert masker.safe_cut("." * 100) == 100  # nothing here can begin a secret: written at once
    text = "abc " + SECRET[:5]
    assert masker.safe_cut(text) == text.index(SECRET[:5])  # the start of the secret waits
    text = "abc " + SECRET[:5] + "\n" + SECRET[5:9] + "\n"
    assert masker.safe_cut(text) == 4  # line breaks inside it too
    text = "abc " + b64(SECRET.encode())[:9]
    assert masker.safe_cut(text) <= 4  # and the start of a form of it
    whole = "." * 40 + SECRET + "."
    assert masker.safe_cut(whole) == len(whole)  # a whole secret is masked where it is
    assert Masker([]).safe_cut("anything") == len("anything")


def test_safe_cut_never_cuts_inside_a_secret() -> None:
    masker = Masker(["abcdefgh", "efghijklmnop"])
    text = "x abcdefghijklmn"  # "abcdefgh" is whole, but overlaps the start of the other
    cut = masker.safe_cut(text)
    assert cut <= text.index("abcdefgh")


def _through_sink(pieces: list[str], masker: Masker, **kw: Any) -> str:
    rows: list[dict[str, Any]] = []
    sink = LogSink(rows.append, {"run_id": "r", "step_id": "s", "item": -1, "attempt": 1}, masker.text,
                   safe_cut=masker.safe_cut, **kw)
    for piece in pieces:
        sink.write("stdout", piece)
        sink.flush()  # every piece its own flush: the worst case
    sink.close()
    return "".join(r["text"] for r in rows)


@pytest.mark.parametrize("form", [
    pytest.param(f"token {SECRET} end\n", id="plain"),
    pytest.param(wrap(f"token={SECRET}", 8) + "\n", id="fold"),
    pytest.param(wrap(b64(b"prefix:" + ODD.encode() + b":suffix"), 12) + "\n", id="base64-wrapped"),
    pytest.param(f"GET /login?u=ann&p={quote_plus(ODD)} 200\n", id="url-encoded"),
])
def test_a_secret_split_across_flushes_at_any_point_is_masked(form: str) -> None:
    masker = Masker([SECRET, ODD])
    expected = masker.text(form)
    assert "***" in expected
    for cut in range(1, len(form)):
        assert _through_sink([form[:cut], form[cut:]], masker) == expected, cut
    assert _through_sink(list(form), masker) == expected  # one character per flush


def test_a_truncated_log_hides_the_pieces_of_a_secret_at_the_cut() -> None:
    """Past the limit the middle of a log is dropped: a secret cut there is not kept in
    part (its beginning before the marker, its end after it)."""
    masker = Masker([SECRET])
    head = "h" * 90 + SECRET[:8]  # the limit (98 bytes) cuts this secret after 8 characters
    middle = SECRET[8:] + "m" * 500 + SECRET[:3]
    tail_start = SECRET[3:]  # the kept tail (40 bytes) starts inside a secret
    text = _through_sink([head, middle, tail_start + "t" * (40 - len(tail_start))], masker, limit=98, tail=40)
    assert "[treadle: log truncated" in text
    before, _, after = text.partition("[treadle: log truncated")
    assert before == "h" * 90 + "***\n"
    assert after.split("\n", 1)[1] == "***" + "t" * (40 - len(tail_start))


# -- real runs -------------------------------------------------------------------


async def test_a_secret_printed_in_two_pieces_is_masked_in_the_log(store, tmp_path) -> None:
    engine = Engine(store, definitions_dir=tmp_path, environ={"TOKEN": SECRET})
    try:
        d = definition("""
            secrets: [TOKEN]
            steps:
              - id: leak
                env: {T: "{{ secrets.TOKEN }}"}
                run: "printf '%s' \\"${T%-Value-42}\\"; sleep 0.3; printf '%s and again %s\\\\n' -Value-42 \\"$T\\""
        """, tmp_path)
        exe = await asyncio.wait_for(engine.run(d), 20)
        assert exe.status == "succeeded"
        text = await log_text(engine, exe.id, "leak")
    finally:
        await engine.close()
    assert text == "*** and again ***\n"


async def test_secrets_printed_by_real_tools_are_masked(store, tmp_path) -> None:
    """fold, base64 (wrapped at 76, standard and URL-safe alphabets, alone and inside a
    longer text) and URL-encoding by a program: the log keeps none of it."""
    before = "x" * 61  # the secret starts at offset 1 (mod 3) of the encoded text
    encoded = b64((before + ODD + " and the end of it").encode())
    first, last = -(-8 * len(before) // 6), 8 * (len(before) + len(ODD)) // 6
    url = f"{sys.executable} -c 'import os, urllib.parse; print(urllib.parse.quote_plus(os.environ[\"T\"]))'"
    async with Engine(store, definitions_dir=tmp_path, environ={"TOKEN": ODD}) as engine:
        exe, doc = await run_yaml(engine, tmp_path, f"""
            secrets: [TOKEN]
            defaults: {{}}
            steps:
              - {{id: fold, env: {{T: "{{{{ secrets.TOKEN }}}}"}}, run: "printf 'token=%s\\\\n' \\"$T\\" | fold -w 8"}}
              - {{id: alone, needs: [], env: {{T: "{{{{ secrets.TOKEN }}}}"}}, run: "printf '%s' \\"$T\\" | base64"}}
              - id: inside
                needs: []
                env: {{T: "{{{{ secrets.TOKEN }}}}"}}
                run: "printf '%s%s%s' {before} \\"$T\\" ' and the end of it' | base64 -w 76"
              - id: urlsafe
                needs: []
                env: {{T: "{{{{ secrets.TOKEN }}}}"}}
                run: "printf '%s' \\"$T\\" | base64 | tr '+/' '-_'"
              - {{id: url, needs: [], env: {{T: "{{{{ secrets.TOKEN }}}}"}}, run: "{url.replace('"', chr(92) + '"')}"}}
        """)
        assert exe.status == "succeeded", doc["error"]
        logs = {sid: await log_text(engine, exe.id, sid) for sid in ("fold", "alone", "inside", "urlsafe", "url")}
    assert logs["fold"] == "token=***\n"
    assert logs["alone"] == "***\n"
    assert "\n" in logs["inside"].rstrip("\n")  # wrapped
    assert flat(logs["inside"]) == encoded[:first] + "***" + encoded[last:]
    assert logs["urlsafe"] == "***\n"
    assert logs["url"] == "***\n"
    outputs = json.dumps([s["output"] for s in doc["steps"]])
    assert "***" in outputs and ODD not in outputs and quote_plus(ODD) not in outputs


def _rows(db_url: str, sql: str) -> list[dict]:
    return query(db_url, sql)


async def test_params_outputs_and_errors_are_stored_masked(store, db_url, tmp_path) -> None:
    """A secret passed in params (to this run, or by a parent to its child run) is
    masked in the stored run, while the run itself uses the real value."""
    seen = tmp_path / "seen.txt"
    mod = write_module(tmp_path, "def boom(token):\n    raise RuntimeError('rejected: ' + token)\n")
    child = definition(f"""
        params: {{t: string}}
        steps: [{{id: c, env: {{T: "{{{{ params.t }}}}"}}, run: 'printf "%s" "$T" > {seen}.child'}}]
    """, tmp_path, name="child")
    async with Engine(store, lookup={"child": child}.get, definitions_dir=tmp_path,
                      environ={"TOKEN": SECRET}) as engine:
        exe, doc = await run_yaml(engine, tmp_path, f"""
            secrets: [TOKEN]
            params:
              url: string
              headers: object
              n: integer
            outputs: {{encoded: "{{{{ steps.enc.output }}}}"}}
            steps:
              - id: use
                env: {{U: "{{{{ params.url }}}}", H: "{{{{ params.headers.auth[0] }}}}"}}
                run: 'printf "%s|%s" "$U" "$H" > {seen}'
              - {{id: enc, needs: [], env: {{T: "{{{{ secrets.TOKEN }}}}"}}, run: "printf '%s' \\"$T\\" | base64"}}
              - {{id: child, needs: [], workflow: child, params: {{t: "{{{{ secrets.TOKEN }}}}"}}}}
              - id: boom
                needs: []
                continue_on_failure: true
                python: "{mod}:boom"
                with: {{token: "{{{{ secrets.TOKEN }}}}"}}
        """, params={"url": f"https://api.example/?token={quote_plus(SECRET)}",
                     "headers": {"auth": [f"Bearer {SECRET}"], "keep": "plain"}, "n": 3})
    assert exe.status == "succeeded", doc["error"]
    # the run used the real values
    assert seen.read_text() == f"https://api.example/?token={quote_plus(SECRET)}|Bearer {SECRET}"
    assert Path(f"{seen}.child").read_text() == SECRET
    (run,) = _rows(db_url, f"SELECT params, outputs FROM run WHERE id = '{exe.id}'")
    assert json.loads(run["params"]) == {"url": "https://api.example/?token=***",
                                         "headers": {"auth": ["Bearer ***"], "keep": "plain"}, "n": 3}
    assert json.loads(run["outputs"]) == {"encoded": "***"}
    (child_run,) = _rows(db_url, f"SELECT params FROM run WHERE parent_run_id = '{exe.id}'")
    assert json.loads(child_run["params"]) == {"t": "***"}
    errors = [r["error"] for r in _rows(db_url, "SELECT error FROM step_attempt") if r["error"]]
    assert any(e.endswith("rejected: ***") for e in errors)
    # nothing anywhere in the database file holds the secret or a form of it
    raw = everything(db_url)
    for form in (SECRET, quote_plus(SECRET), b64(SECRET.encode())):
        assert form.encode() not in raw
    assert doc["params"]["url"] == "https://api.example/?token=***"
