"""`python` steps on a cluster worker: the function runs in a child process.

A child process (not the worker's own threads) so that a timeout or a cancel really
stops it, and so that each run gets the definitions' code at its own version (a
process imports it fresh, from the folder unpacked for that version). The request
and the result travel through files; what the function prints, and `ctx.log`, go
to the step's log like a `run` step's output.

    python -m runner.dispatch.python_child REQUEST.json RESULT.json
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
import tempfile
from pathlib import Path
from typing import Any


class _ChildContext:
    """What a function that takes `ctx` gets in the child (as on the server)."""

    def __init__(self, data: dict[str, Any]):
        self.__dict__.update(data)

    def log(self, text: str, stream: str = "log") -> None:
        print(text, end="" if text.endswith("\n") else "\n", file=sys.stderr, flush=True)


async def execute(ctx: Any, inp: dict[str, Any], code_root: Path) -> Any:
    """Run `inp["python"]` with `inp["with"]` in a child process under `ctx` (a worker's StepContext)."""
    from ..errors import StepFailed
    from ..steps import REGISTRY
    from ..steps.base import StepOutcome

    with tempfile.TemporaryDirectory(prefix="treadle-python-") as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(json.dumps({
            "target": inp["python"], "kwargs": inp.get("with") or {},
            "ctx": {"run_id": ctx.run_id, "step_id": ctx.step_id, "attempt": ctx.attempt, "index": ctx.index,
                    "workflow": ctx.workflow, "idempotency_key": ctx.idempotency_key},
        }))
        argv = [sys.executable, "-m", "runner.dispatch.python_child", str(request), str(result)]
        try:
            await REGISTRY["run"].execute(ctx, {"run": argv, "env": {"PYTHONPATH": str(code_root)}})
        except StepFailed as exc:
            if not result.exists():  # the child itself failed (killed, out of memory)
                raise StepFailed(f"{inp['python']}: the Python process ended with {exc}",
                                 exit_code=exc.exit_code) from None
        answer = json.loads(result.read_text())
    if not answer["ok"]:
        raise StepFailed(answer["error"], retryable=answer["retryable"])
    return StepOutcome(output=answer["output"], size=answer["size"])


def _main(request_path: str, result_path: str) -> int:
    from ..errors import StepFailed
    from ..steps.python_call import resolve

    request = json.loads(Path(request_path).read_text())
    target, kwargs = request["target"], dict(request["kwargs"])
    try:
        fn = resolve(target)
        try:
            if "ctx" in inspect.signature(fn).parameters:
                kwargs["ctx"] = _ChildContext(request["ctx"])
        except (TypeError, ValueError):
            pass
        try:
            value = asyncio.run(fn(**kwargs)) if inspect.iscoroutinefunction(fn) else fn(**kwargs)
        except TypeError as exc:
            raise StepFailed(f"{target}: {exc}", retryable=False) from None
        try:
            text = json.dumps(value)
        except (TypeError, ValueError, RecursionError):
            raise StepFailed(f"{target} returned a {type(value).__name__}, which is not JSON-serialisable; return "
                             "dicts, lists, strings, numbers, booleans or None", retryable=False) from None
        answer = {"ok": True, "output": value, "size": len(text)}
    except StepFailed as exc:
        answer = {"ok": False, "error": str(exc), "retryable": exc.retryable}
    except Exception as exc:
        answer = {"ok": False, "error": f"{target} raised {type(exc).__name__}: {exc}", "retryable": True}
    Path(result_path).write_text(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1], sys.argv[2]))
