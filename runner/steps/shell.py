"""`run`: a shell command (string, through /bin/sh -c) or a program (list, no shell).

The process gets its own session (process group), so a timeout or a cancel stops
the command and everything it started. stdout and stderr stream into the step's log
as they come.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import os
import signal
import subprocess
from typing import Any

from ..errors import StepFailed
from ..limits import MAX_STDOUT_BYTES
from .base import StepContext, StepOutcome

name = "run"
fields = ("run", "cwd", "env")
OUTPUT_LIMIT = MAX_STDOUT_BYTES  # bytes of stdout (and of stderr) kept for the step's output; see runner/limits.py
KILL_GRACE = 3.0  # seconds between SIGTERM and SIGKILL
DRAIN_GRACE = 2.0  # seconds to read the rest of the output once the command has ended


def _environment(ctx: StepContext, step_env: dict[str, Any]) -> dict[bytes, bytes]:
    # the run's part comes encoded once per run: copying ~100 variables is cheap,
    # encoding them again for every process is not (it is most of a spawn's overhead)
    env = dict(ctx.process_env) if ctx.process_env is not None else encode_env({**os.environ, **ctx.env})
    extra = {k: _text(v) for k, v in (step_env or {}).items()}
    extra.update(
        TREADLE_RUN_ID=ctx.run_id, TREADLE_STEP_ID=ctx.step_id, TREADLE_ATTEMPT=str(ctx.attempt),
        TREADLE_IDEMPOTENCY_KEY=ctx.idempotency_key, TREADLE_WORKFLOW=ctx.workflow,
    )
    if ctx.index is not None:
        extra["TREADLE_INDEX"] = str(ctx.index)
    env.update(encode_env(extra))
    return env


def encode_env(env: dict[str, str]) -> dict[bytes, bytes]:
    return {os.fsencode(k): os.fsencode(v) for k, v in env.items()}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class _Capture(asyncio.SubprocessProtocol):
    """Streams the pipes into the step's log from the loop's callbacks (no reader tasks)."""

    def __init__(self, ctx: StepContext):
        self.ctx = ctx
        self.kept = {1: bytearray(), 2: bytearray()}
        self.decoders = {fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in (1, 2)}
        loop = asyncio.get_running_loop()
        self.exited, self.done = loop.create_future(), loop.create_future()
        self.pid: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.pid = transport.get_pid()  # type: ignore[attr-defined]

    def process_exited(self) -> None:
        # stop what the command left running in its group: it would hold the pipes
        # open and keep the step running after the command itself has ended
        if self.pid is not None:
            _kill_group(self.pid, signal.SIGKILL)
        if not self.exited.done():
            self.exited.set_result(None)

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        kept = self.kept[fd]
        if len(kept) < OUTPUT_LIMIT:
            kept += data[: OUTPUT_LIMIT - len(kept)]
        self.ctx.logs.write(_STREAMS[fd], self.decoders[fd].decode(data))

    def connection_lost(self, exc: Exception | None) -> None:  # process gone and pipes closed
        for fd, decoder in self.decoders.items():
            self.ctx.logs.write(_STREAMS[fd], decoder.decode(b"", final=True))
        if not self.done.done():
            self.done.set_result(None)


_STREAMS = {1: "stdout", 2: "stderr"}


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def execute(ctx: StepContext, inp: dict[str, Any]) -> StepOutcome:
    command = inp["run"]
    cwd = ctx.base_dir / inp["cwd"] if inp.get("cwd") else ctx.base_dir
    if not cwd.is_dir():
        raise StepFailed(f"cwd '{cwd}' is not a folder", retryable=False)
    argv = [_text(a) for a in command] if isinstance(command, list) else ["/bin/sh", "-c", str(command)]
    loop = asyncio.get_running_loop()
    try:
        transport, capture = await loop.subprocess_exec(
            lambda: _Capture(ctx), *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=str(cwd), env=_environment(ctx, inp.get("env")),
            start_new_session=True,
        )
    except FileNotFoundError:
        raise StepFailed(
            f"command not found: '{argv[0]}' (is it installed and on PATH?)", exit_code=127, retryable=False
        ) from None
    except PermissionError:
        raise StepFailed(f"permission denied running '{argv[0]}' (is it executable?)", exit_code=126, retryable=False) from None
    pid = transport.get_pid()
    try:
        await asyncio.shield(capture.exited)
        try:
            await asyncio.wait_for(asyncio.shield(capture.done), DRAIN_GRACE)
        except TimeoutError:  # a process that left the group still holds the pipes
            ctx.logs.write("treadle", "[treadle: stopped reading output: a process the command started still holds it]\n")
    except asyncio.CancelledError:
        _kill_group(pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(capture.done), KILL_GRACE)
        except (TimeoutError, asyncio.CancelledError):
            _kill_group(pid, signal.SIGKILL)
        raise
    finally:
        _kill_group(pid, signal.SIGKILL)  # and whatever the command left running in its group
        transport.close()
    code = transport.get_returncode()
    stdout = capture.kept[1].decode("utf-8", "replace")
    stderr = capture.kept[2].decode("utf-8", "replace")
    output = _parse(stdout)
    extra = {"stdout": stdout, "stderr": stderr}
    if code != 0:
        last = stderr.strip().splitlines()[-1:] or stdout.strip().splitlines()[-1:]
        hint = " (command not found)" if code == 127 else ""
        detail = f": {last[0][:500]}" if last else ""
        raise StepFailed(f"exit code {code}{hint}{detail}", exit_code=code, output=output)
    return StepOutcome(output=output, exit_code=code, extra=extra)


def _parse(stdout: str) -> Any:
    text = stdout.strip()
    if text[:1] in ("{", "[", '"') or text in ("true", "false", "null") or _numberish(text):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return stdout.rstrip("\n")


def _numberish(text: str) -> bool:
    return bool(text) and text.lstrip("-").replace(".", "", 1).isdigit()
