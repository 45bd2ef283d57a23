"""What a step kind receives and returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import httpx

    from ..engine.approvals import Approvals
    from ..engine.circuit import Breakers
    from ..engine.logsink import LogSink


class ChildRun(Protocol):
    """A child run as the `workflow` kind sees it once it has ended."""

    id: str
    status: Any
    outputs: Any
    error: str | None


class StepServices(Protocol):
    """What a step kind may ask of the engine: never the engine itself."""

    http: httpx.AsyncClient  # one client for every http step of the process
    breakers: Breakers  # per-host circuit breakers
    approvals: Approvals  # approval requests and decisions

    @property
    def draining(self) -> bool:
        """Treadle is stopping: a waiting step should leave its run to resume later."""
        ...

    async def run_child(self, name: str, params: dict[str, Any], *, parent_run_id: str,
                        parent_step_id: str) -> ChildRun: ...


@dataclass
class StepContext:
    """One attempt of one step (or foreach item) as a kind sees it."""

    run_id: str
    step_id: str
    index: int | None  # foreach index, None outside foreach
    attempt: int
    workflow: str
    base_dir: Path  # the definition file's folder: default cwd of `run` steps
    env: dict[str, str]  # workflow env, rendered
    http: httpx.AsyncClient
    services: StepServices
    logs: LogSink
    timeout: float | None = None
    process_env: dict[bytes, bytes] | None = None  # Treadle's environment + the workflow's env, encoded once per run
    started: Callable[[str], None] | None = None  # told which cluster worker took the attempt

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts and restarts: run, step and foreach index."""
        suffix = f"-{self.index}" if self.index is not None else ""
        return f"{self.run_id}-{self.step_id}{suffix}"

    def log(self, text: str, stream: str = "log") -> None:
        self.logs.write(stream, text)


@dataclass
class StepOutcome:
    output: Any = None
    exit_code: int | None = None
    http_status: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more names for templates (stdout, ...)
    size: int | None = None  # bytes of `output` as JSON, when the kind has encoded it (else the engine measures it)
    host_answered: bool = False  # an http call that reached its host (a success for its circuit breaker)


class StepKind(Protocol):
    name: str
    fields: tuple[str, ...]  # step keys that form this kind's input

    async def execute(self, ctx: StepContext, inp: dict[str, Any]) -> StepOutcome: ...
