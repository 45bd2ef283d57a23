"""`python: "pkg.module:function"` with `with:` keyword arguments.

Async functions are awaited on the engine's loop; plain functions run in a worker
thread so they cannot stall other steps (a timeout stops waiting for such a thread
but cannot kill it). A function that takes a `ctx` parameter receives the step
context (run id, step id, attempt, idempotency key, log).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
from typing import Any

from ..errors import StepFailed
from .base import StepContext, StepOutcome

name = "python"
fields = ("python", "with")


def resolve(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise StepFailed(f"cannot import '{module_name}': {type(exc).__name__}: {exc}", retryable=False) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise StepFailed(f"module '{module_name}' has no '{attr}'", retryable=False) from None
    if not callable(obj):
        raise StepFailed(f"'{target}' is not a function", retryable=False)
    return obj


async def execute(ctx: StepContext, inp: dict[str, Any]) -> StepOutcome:
    fn = resolve(inp["python"])
    kwargs = dict(inp.get("with") or {})
    try:
        if "ctx" in inspect.signature(fn).parameters:
            kwargs["ctx"] = ctx
    except (TypeError, ValueError):
        pass
    try:
        if inspect.iscoroutinefunction(fn):
            result = await fn(**kwargs)
        else:
            result = await asyncio.to_thread(fn, **kwargs)
    except TypeError as exc:
        raise StepFailed(f"{inp['python']}: {exc}", retryable=False) from None
    except StepFailed:
        raise
    except Exception as exc:
        raise StepFailed(f"{inp['python']} raised {type(exc).__name__}: {exc}") from None
    try:
        size = len(json.dumps(result))  # the engine checks the size against the limit: no second encoding
    except (TypeError, ValueError, RecursionError):
        raise StepFailed(
            f"{inp['python']} returned a {type(result).__name__}, which is not JSON-serialisable; "
            "return dicts, lists, strings, numbers, booleans or None", retryable=False,
        ) from None
    return StepOutcome(output=result, size=size)
