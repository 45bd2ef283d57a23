"""The kinds that do no I/O: `set`, `wait`, `log`."""

from __future__ import annotations

import asyncio
from typing import Any

from .base import StepContext, StepOutcome


class SetKind:
    """Builds data from other steps' outputs: the rendered mapping is the output."""

    name, fields = "set", ("set",)

    @staticmethod
    async def execute(ctx: StepContext, inp: dict[str, Any]) -> StepOutcome:
        return StepOutcome(output=inp["set"])


class WaitKind:
    name, fields = "wait", ("wait",)

    @staticmethod
    async def execute(ctx: StepContext, inp: dict[str, Any]) -> StepOutcome:
        await asyncio.sleep(float(inp["wait"]))
        return StepOutcome()


class LogKind:
    name, fields = "log", ("log",)

    @staticmethod
    async def execute(ctx: StepContext, inp: dict[str, Any]) -> StepOutcome:
        message = inp["log"] if isinstance(inp["log"], str) else str(inp["log"])
        ctx.log(message if message.endswith("\n") else message + "\n")
        return StepOutcome(output=message)
