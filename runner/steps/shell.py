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
from typing import Any

from ..errors import StepFailed
from .base import StepContext, StepOutcome

name = "run"
fields = ("run", "cwd", "env")
OUTPUT_LIMIT = 1_000_000  # bytes of stdout kept for the step's output
KILL_GRACE = 3.0  # seconds between SIGTERM and SIGKILL


def _environment(ctx: StepContext, step_env: dict[str, Any]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ctx.env)
    env.update({k: _text(v) for k, v in (step_env or {}).items()})
    env.update(
        TREADLE_RUN_ID=ctx.run_id, TREADLE_STEP_ID=ctx.step_id, TREADLE_ATTEMPT=str(ctx.attempt),
        TREADLE_IDEMPOTENCY_KEY=ctx.idempotency_key, TREADLE_WORKFLOW=ctx.workflow,
    )
    if ctx.index is not None:
        env["TREADLE_INDEX"] = str(ctx.index)
    return env


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


async def _pump(stream: asyncio.StreamReader, name_: str, ctx: StepContext, keep: list[bytes]) -> None:
    kept = 0
    decoder = codecs.getincrementaldecoder("utf-8")("replace")  # never split a character
    while chunk := await stream.read(65536):
        if kept < OUTPUT_LIMIT:
            keep.append(chunk[: OUTPUT_LIMIT - kept])
            kept += len(keep[-1])
        ctx.logs.write(name_, decoder.decode(chunk))
    ctx.logs.write(name_, decoder.decode(b"", final=True))


def _kill_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def execute(ctx: StepContext, inp: dict[str, Any]) -> StepOutcome:
    command = inp["run"]
    cwd = ctx.base_dir / inp["cwd"] if inp.get("cwd") else ctx.base_dir
    if not cwd.is_dir():
        raise StepFailed(f"cwd '{cwd}' is not a folder", retryable=False)
    common = dict(
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=str(cwd), env=_environment(ctx, inp.get("env")),
        start_new_session=True,
    )
    try:
        if isinstance(command, list):
            argv = [_text(a) for a in command]
            proc = await asyncio.create_subprocess_exec(*argv, **common)
        else:
            proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", str(command), **common)
    except FileNotFoundError:
        raise StepFailed(
            f"command not found: '{command[0]}' (is it installed and on PATH?)", exit_code=127, retryable=False
        ) from None
    except PermissionError:
        raise StepFailed(f"permission denied running '{command[0]}' (is it executable?)", exit_code=126, retryable=False) from None
    out: list[bytes] = []
    err: list[bytes] = []
    try:
        await asyncio.gather(_pump(proc.stdout, "stdout", ctx, out), _pump(proc.stderr, "stderr", ctx, err))
        code = await proc.wait()
    except asyncio.CancelledError:
        _kill_group(proc, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), KILL_GRACE)
        except (TimeoutError, asyncio.CancelledError):
            _kill_group(proc, signal.SIGKILL)
        raise
    finally:
        _kill_group(proc, signal.SIGKILL)  # and whatever the command left running in its group
    stdout = b"".join(out).decode("utf-8", "replace")
    stderr = b"".join(err).decode("utf-8", "replace")
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
