"""Replay: run a recorded run again against a changed definition, without its side effects.

Each step's input is rendered as usual; when it equals the input the recorded run
gave the same step (same item of a foreach), the recorded outcome is the answer and
nothing executes. A step whose input changed (or that the recorded run never reached)
executes, or with `offline` is only reported as "would run" (recorded as skipped).
Inputs are compared as recorded: masked, as JSON.

The replay is a run of its own (trigger `replay`, `trigger_ref` the recorded run):
it is shown like any run, but never notifies, chains or resumes after a crash (the
answers live in this process only).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

REPLAYED, EXECUTED, WOULD_RUN = "replayed", "executed", "would run"


@dataclass(frozen=True)
class Recorded:
    """The last attempt of one step (or foreach item) in the recorded run."""

    status: str
    input: Any
    output: Any
    error: str | None
    exit_code: int | None
    http_status: int | None
    attempt: int
    extra: dict[str, Any] = field(default_factory=dict)  # a run step's stdout/stderr, for templates


@dataclass
class Replay:
    of: str  # the recorded run's id
    recorded: dict[tuple[str, int], Recorded]
    offline: bool = False
    actions: dict[tuple[str, int], str] = field(default_factory=dict)  # what happened to each step
    _unknown: set[str] = field(default_factory=set)  # offline: steps that would run (outputs unknown)

    @classmethod
    def of_attempts(cls, of: str, rows: list[dict[str, Any]], extras: dict[str, dict[str, Any]], *,
                    offline: bool = False) -> Replay:
        """What the recorded run `of` did: its attempt rows, and the stdout/stderr of its
        succeeded `run` steps by step id (recovery.reused_result reads them)."""
        recorded = {}
        for (sid, item), r in last_attempts(rows).items():
            recorded[(sid, item)] = Recorded(r["status"], r["input"], r["output"], r.get("error"), r.get("exit_code"),
                                             r.get("http_status"), r["attempt"],
                                             extras.get(sid, {}) if item == -1 else {})
        return cls(of, recorded, offline)

    def answer(self, step_id: str, item: int, shown_input: Any) -> Recorded | None:
        """The recorded outcome when the step's input (masked, as it would be recorded)
        is the one recorded; None when the step must execute (or would, offline)."""
        found = self.recorded.get((step_id, item))
        if found is not None and _same(found.input, shown_input):
            self.actions[(step_id, item)] = REPLAYED
            return found
        self.actions[(step_id, item)] = WOULD_RUN if self.offline else EXECUTED
        return None


    def would_run(self, step_id: str) -> None:
        self._unknown.add(step_id)
        self.actions.setdefault((step_id, -1), WOULD_RUN)

    def unknowable(self, step_id: str, deps: Iterable[str]) -> bool:
        """Offline, a step after one that would run cannot be rendered: it would run too."""
        return self.offline and any(d in self._unknown for d in deps)


def last_attempts(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """The last finished attempt of each step and foreach item."""
    last: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        key = (row["step_id"], row["item"])
        if row["attempt"] > 0 and row["status"] in ("succeeded", "failed") and (
                key not in last or row["attempt"] >= last[key]["attempt"]):
            last[key] = row
    return last


def _same(recorded: Any, now: Any) -> bool:
    # the database holds JSON: compare what it would hold
    return json.loads(json.dumps(now, default=str)) == recorded
