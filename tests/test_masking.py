"""Secrets never reach the log in clear, even printed in pieces across log flushes."""

from __future__ import annotations

import asyncio

from runner.executor import Engine
from runner.templates import Masker
from tests.conftest import definition
from tests.exec_support import log_text

SECRET = "s3cr3t-Value-42"


def test_safe_cut_keeps_back_what_could_start_a_secret() -> None:
    masker = Masker([SECRET])
    assert masker.safe_cut("p" * 100) == 100 - (len(SECRET) - 1)  # what could begin a secret waits
    assert masker.safe_cut("short") == 0
    text = "abc " + SECRET[:5]
    assert masker.safe_cut(text) <= text.index(SECRET[:5])  # the start of the secret waits
    whole = "x" * 40 + SECRET + "y"
    cut = masker.safe_cut(whole)
    assert not (whole.index(SECRET) < cut < whole.index(SECRET) + len(SECRET))  # never inside one
    assert Masker([]).safe_cut("anything") == len("anything")


async def test_a_secret_printed_in_two_pieces_is_masked_in_the_log(store, tmp_path) -> None:
    engine = Engine(store, definitions_dir=tmp_path, environ={"TOKEN": SECRET})
    try:
        d = definition(f"""
            secrets: [TOKEN]
            steps:
              - id: leak
                run: "printf '%s' '{SECRET[:6]}'; sleep 0.3; printf '%s and again %s\\\\n' '{SECRET[6:]}' '{SECRET}'"
        """, tmp_path)
        exe = await asyncio.wait_for(engine.run(d), 20)
        assert exe.status == "succeeded"
        text = await log_text(engine, exe.id, "leak")
    finally:
        await engine.close()
    assert SECRET not in text and SECRET[:6] not in text
    assert text.count("***") == 2
