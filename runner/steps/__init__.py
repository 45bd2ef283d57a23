"""The step kinds, one module each, behind one registry keyed by the YAML key."""

from __future__ import annotations

from . import approval, child_workflow, http, python_call, shell
from .base import StepContext, StepKind, StepOutcome
from .simple import LogKind, SetKind, WaitKind

REGISTRY: dict[str, StepKind] = {
    kind.name: kind  # type: ignore[misc]
    for kind in (shell, http, python_call, SetKind, WaitKind, LogKind, child_workflow, approval)
}

__all__ = ["REGISTRY", "StepContext", "StepKind", "StepOutcome"]
