"""`approval: {message, timeout}`: the run waits until a person approves or rejects.

The decision is kept in the `approval` table (see runner/approvals.py), keyed by run,
step and foreach index, so a step resumed after a restart uses a decision already
made instead of asking again, and its deadline does not move.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from ..dsl.durations import format_duration, iso
from ..errors import StepFailed
from ..storage.models import ApprovalKey as Key
from ..storage.models import Decision
from .base import StepContext, StepOutcome

name = "approval"
fields = ("approval",)


def timeout_text(seconds: float) -> str:
    """`1h`, `30m`, `90s` for round amounts; else the usual `1h00m05s` form."""
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return format_duration(seconds)


async def execute(ctx: StepContext, inp: dict[str, Any]) -> StepOutcome:
    approvals = ctx.services.approvals
    spec = inp["approval"]
    message = spec["message"] if isinstance(spec["message"], str) else json.dumps(spec["message"])
    timeout = spec.get("timeout")
    key = Key(ctx.run_id, ctx.step_id, -1 if ctx.index is None else ctx.index)
    row = await approvals.request(key, ctx.workflow, message, timeout)
    if row["decision"] is None:
        ctx.log(f"waiting for approval: {row['message']}\n")
        try:
            row = await approvals.wait(key, row["deadline"], suspended=lambda: ctx.services.draining)
        except asyncio.CancelledError:
            if not ctx.services.draining:  # cancelled or timed out, not suspended: no longer waiting
                with contextlib.suppress(Exception):
                    await asyncio.shield(approvals.decide(key, Decision.CANCELLED.value, "treadle", "the step stopped"))
            raise
    else:
        ctx.log(f"approval: using the decision recorded earlier ({row['decision']})\n")
    who, comment = row["by"] or "someone", row["comment"]
    if row["decision"] == Decision.APPROVED:
        ctx.log(f"approved by {who}" + (f": {comment}" if comment else "") + "\n")
        return StepOutcome(output={"approved": True, "by": row["by"], "comment": comment, "at": iso(row["decided_at"])})
    if row["decision"] == Decision.REJECTED:
        raise StepFailed(f"rejected by {who}" + (f": {comment}" if comment else ""), retryable=False,
                         output={"approved": False, "by": row["by"], "comment": comment, "at": iso(row["decided_at"])})
    if row["decision"] == Decision.TIMED_OUT:
        window = timeout_text(timeout) if timeout else "the time allowed"
        raise StepFailed(f"no decision within {window}", retryable=False)
    raise StepFailed(f"the approval ended without a decision ({row['decision']})", retryable=False)
