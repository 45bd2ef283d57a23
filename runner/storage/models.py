"""Database tables (SQLModel) and the stored state names (StrEnums; values never change).

Times are stored as UTC epoch seconds (REAL): they sort, subtract and index cheaply,
and the API turns them into ISO 8601 with a zone.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"  # running, and some step waits for a person (an approval)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED}


UNFINISHED_RUN_STATES = (RunStatus.QUEUED.value, RunStatus.RUNNING.value, RunStatus.WAITING.value)


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    UPSTREAM_FAILED = "upstream_failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in {StepStatus.PENDING, StepStatus.RUNNING}


class WorkflowVersion(SQLModel, table=True):
    """Every definition text a run was started from, stored once per content hash."""

    __tablename__ = "workflow_version"
    # keyed by workflow and content: a copied or renamed file has versions of its own
    version: str = Field(primary_key=True)
    workflow: str = Field(primary_key=True, index=True)
    path: str
    source: str
    created_at: float  # first seen
    valid: bool = True
    commit: str | None = None  # git revision of the file when first seen, if known


class Run(SQLModel, table=True):
    __tablename__ = "run"
    __table_args__ = (Index("ix_run_workflow_created", "workflow", "created_at"),)
    id: str = Field(primary_key=True)
    workflow: str = Field(index=True)
    version: str
    commit: str | None = None  # git revision the definition came from (`abc..+dirty`), if known
    status: str = Field(index=True)
    # who drives the run, and until when: a process renews its leases every second;
    # a run whose lease ran out has nobody working on it and is resumed by the next start
    owner: str | None = None
    lease_until: float | None = None
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    outputs: Any = Field(default=None, sa_column=Column(JSON))
    error: str | None = None
    trigger: str = "manual"  # manual | api | retry | workflow | schedule | webhook | event | file | after
    trigger_ref: str | None = None  # what exactly: the slot, upstream run, file, event
    reason: str | None = None  # why a run is `queued` (or was skipped)
    parent_run_id: str | None = Field(default=None, index=True)
    parent_step_id: str | None = None
    retry_of: str | None = None
    retry_from: str | None = None
    compensated: str | None = None  # after a failure: "true" (every undo worked) or "partial"
    created_at: float = Field(index=True)
    started_at: float | None = None
    finished_at: float | None = None


class StepAttempt(SQLModel, table=True):
    """One attempt of one step (or of one `foreach` item: `item` >= 0).

    `item` is -1 for the step as a whole. Steps that never ran (skipped,
    upstream_failed, cancelled before starting) have one row with attempt 0.
    """

    __tablename__ = "step_attempt"
    __table_args__ = (UniqueConstraint("run_id", "step_id", "item", "attempt", name="uq_step_attempt"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    step_id: str
    item: int = -1
    attempt: int = 0
    status: str
    started_at: float | None = None
    finished_at: float | None = None
    input: Any = Field(default=None, sa_column=Column(JSON))
    output: Any = Field(default=None, sa_column=Column(JSON))
    exit_code: int | None = None
    http_status: int | None = None
    error: str | None = None


class LogChunk(SQLModel, table=True):
    __tablename__ = "log_chunk"
    __table_args__ = (Index("ix_log_run_step", "run_id", "step_id"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: str
    step_id: str
    item: int = -1
    attempt: int = 1
    stream: str  # stdout | stderr | log | treadle
    text: str
    at: float


class WorkflowState(SQLModel, table=True):
    """What a person set on a workflow that must survive restarts (pause)."""

    __tablename__ = "workflow_state"
    workflow: str = Field(primary_key=True)
    paused: bool = False
    changed_at: float
    changed_by: str | None = None


class TriggerMark(SQLModel, table=True):
    """How far a trigger got: a schedule's last fired time, a file's last seen
    fingerprint. Written (compare-and-set) before the run it leads to starts, so a
    restart or a second server never fires the same thing twice."""

    __tablename__ = "trigger_mark"
    workflow: str = Field(primary_key=True)
    key: str = Field(primary_key=True)  # `schedule:<cron>|<zone>`, `file:<path>`
    value: str
    at: float
