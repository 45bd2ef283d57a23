"""Mocked steps for `treadle test`: a step answered by its mock never executes.

The run is otherwise the real thing (scheduling, `when`, trigger rules, retries,
foreach, handlers, outputs): the mock only takes the place of the step kind's
`execute`, attempt by attempt. The attempt is recorded like any other, with its
rendered input, and its log says it was mocked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..dsl.casefile import MockSpec
from ..dsl.definition import StepSpec
from ..errors import StepFailed
from ..steps import StepOutcome
from ..templates import render


@dataclass
class Mocks:
    """Step id -> its answers, one per attempt (the last one answers every later attempt)."""

    answers: dict[str, list[MockSpec]]
    calls: dict[str, int] = field(default_factory=dict)  # attempts answered, per step

    @classmethod
    def of(cls, *layers: dict[str, list[MockSpec]]) -> Mocks:
        """Later layers win (a case's mocks over the file's); `real: true` removes a step's mock."""
        merged: dict[str, list[MockSpec]] = {}
        for layer in layers:
            merged.update(layer)
        return cls({sid: answers for sid, answers in merged.items() if not answers[-1].real})

    def mocked(self, step_id: str) -> bool:
        return step_id in self.answers

    def answer(self, step: StepSpec, attempt: int, ctx: dict[str, Any]) -> StepOutcome:
        """The mocked outcome of `attempt` (1-based); raises StepFailed for a failing answer.
        The output may be a template: it is rendered like the step's input (`item`, `params`, ...)."""
        answers = self.answers[step.id]
        mock = answers[min(attempt, len(answers)) - 1]
        self.calls[step.id] = self.calls.get(step.id, 0) + 1
        output = render(mock.output, ctx)
        failure = mock.error
        if failure is None and mock.exit_code not in (None, 0):
            failure = f"exit code {mock.exit_code} (mocked)"
        if failure is None and mock.http_status is not None and step.http is not None:
            expected = step.http.expect_status
            if not (mock.http_status in expected if expected else 200 <= mock.http_status < 300):
                want = ", ".join(map(str, expected)) if expected else "2xx"
                failure = f"{step.http.method} answered {mock.http_status}, expected {want} (mocked)"
        if failure is not None:
            raise StepFailed(failure, output=output, exit_code=mock.exit_code, http_status=mock.http_status)
        extra = {"stdout": output if isinstance(output, str) else "", "stderr": ""} if step.run is not None else {}
        return StepOutcome(output=output, exit_code=mock.exit_code if mock.exit_code is not None else
                           (0 if step.run is not None else None), http_status=mock.http_status, extra=extra)
