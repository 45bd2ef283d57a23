"""A step's execution as plain data: what crosses to a Dask worker and what comes back.

Secrets never cross in clear: the server renders a cluster step's input with a
placeholder where a template reads `secrets.NAME`, and the worker puts in its own
value (its environment or `--secrets-file`) right before executing, then masks
every form of it in what it sends back (logs, output, error).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

PLACEHOLDER = "@@treadle-secret:{}@@"
_PLACEHOLDER = re.compile(r"@@treadle-secret:([A-Za-z_][A-Za-z0-9_]*)@@")
_MANGLED = re.compile(r"treadle-secret", re.IGNORECASE)

REMOTE_KINDS = frozenset({"run", "python", "http"})  # set/log/wait/workflow/approval always run on the server


@dataclass
class StepJob:
    """One attempt of one step (or foreach item), to execute somewhere."""

    token: str  # unique per attempt: the Dask key, the dedupe ticket, the cancel handle
    kind: str
    input: dict[str, Any]  # rendered, with secret placeholders
    run_id: str
    step_id: str
    index: int | None
    attempt: int
    workflow: str
    version: str
    commit: str | None
    owner: str  # the server driving the run (TREADLE_OWNER of its processes)
    env: dict[str, str]  # the workflow's `env`, rendered
    base_dir: str  # the definition file's folder, relative to the definitions folder
    code: str | None  # content hash of the definitions folder's Python files (python steps)
    timeout: float | None
    secret_names: list[str] = field(default_factory=list)
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def idempotency_key(self) -> str:
        suffix = f"-{self.index}" if self.index is not None else ""
        return f"{self.run_id}-{self.step_id}{suffix}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def placeholders(names: list[str]) -> dict[str, str]:
    """What `secrets` holds while a cluster step's input is rendered on the server."""
    return {name: PLACEHOLDER.format(name) for name in names}


def fill_secrets(value: Any, secrets: dict[str, str]) -> Any:
    """`value` with each placeholder replaced by the secret's value (on the worker).

    Raises KeyError(name) for a secret this worker does not have, and ValueError when
    a template changed a placeholder (a filter applied to a secret on the server)."""
    if isinstance(value, str):
        if "@@" not in value and "treadle-secret" not in value.lower():
            return value
        filled = _PLACEHOLDER.sub(lambda m: secrets[m.group(1)], value)
        if _MANGLED.search(_PLACEHOLDER.sub("", value)):
            raise ValueError("a template transformed a secret (a filter or a slice of `secrets.NAME`)")
        return filled
    if isinstance(value, dict):
        return {k: fill_secrets(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_secrets(v, secrets) for v in value]
    return value


def hide_placeholders(value: Any) -> Any:
    """`value` with placeholders shown as `***`, as the server records a step's input."""
    if isinstance(value, str):
        return _PLACEHOLDER.sub("***", value) if "@@treadle-secret:" in value else value
    if isinstance(value, dict):
        return {k: hide_placeholders(v) for k, v in value.items()}
    if isinstance(value, list):
        return [hide_placeholders(v) for v in value]
    return value


def resources_of(resources: dict[str, Any] | None, labels: list[str]) -> dict[str, float]:
    """A step's `resources` and `labels` as Dask worker resources (`label-NAME`)."""
    out = {k: float(v) for k, v in (resources or {}).items() if v is not None}
    out.update({f"label-{label}": 1.0 for label in labels})
    return out
