"""`workflow: name` + `params`: runs another workflow as a child run and waits for it."""

from __future__ import annotations

from typing import Any

from ..errors import StepFailed, TreadleError
from .base import StepContext, StepOutcome

name = "workflow"
fields = ("workflow", "params")


async def execute(ctx: StepContext, inp: dict[str, Any]) -> StepOutcome:
    try:
        child = await ctx.services.run_child(
            inp["workflow"], inp.get("params") or {}, parent_run_id=ctx.run_id,
            # one child per foreach item: the item is part of the step's name
            parent_step_id=ctx.step_id if ctx.index is None else f"{ctx.step_id}[{ctx.index}]",
        )
    except TreadleError as exc:
        raise StepFailed(f"cannot start workflow '{inp['workflow']}': {exc}", retryable=False) from None
    ctx.log(f"child run {child.id} ({inp['workflow']}) ended {child.status}\n")
    if child.status != "succeeded":
        raise StepFailed(f"child run {child.id} of '{inp['workflow']}' {child.status}: {child.error or ''}".rstrip(": "), output=child.outputs)
    return StepOutcome(output=child.outputs)
