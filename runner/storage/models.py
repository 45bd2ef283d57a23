"""Database tables (SQLModel) and the stored state names (StrEnums; values never change).

Every table of Treadle is here; runner/storage/migrations/ turns changes to them into
Alembic revisions (a change here without a revision is caught by a test).

Times are stored as UTC epoch seconds (REAL / double precision): they sort, subtract
and index cheaply, and the API turns them into ISO 8601 with a zone. JSON columns
are JSONB on PostgreSQL.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NamedTuple

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

JsonType = JSON().with_variant(JSONB(), "postgresql")


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"  # running, and some step waits for a person (an approval)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # a precondition was not met: no step ran (`reason` says which)

    @property
    def finished(self) -> bool:
        return self in {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.SKIPPED}


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
    # who drives the run, and until when (the database's clock): the owner renews its
    # leases every second; a run whose lease ran out has nobody working on it and is
    # claimed by another server (or the next start). Every claim bumps the epoch, and a
    # driver's writes count only while owner and epoch are still its own (fencing)
    owner: str | None = Field(default=None, index=True)
    lease_until: float | None = None
    lease_epoch: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # a cancel asked on any server, honoured by the one driving the run
    cancel_requested_at: float | None = None
    cancel_requested_by: str | None = None
    cancel_compensate: bool | None = None
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JsonType))
    outputs: Any = Field(default=None, sa_column=Column(JsonType))
    error: str | None = None
    trigger: str = "manual"  # manual | api | retry | workflow | schedule | webhook | event | file | after
    trigger_ref: str | None = None  # what exactly: the slot, upstream run, file, event
    reason: str | None = None  # why a run is `queued` (or was skipped)
    parent_run_id: str | None = Field(default=None, index=True)
    parent_step_id: str | None = None
    retry_of: str | None = None
    retry_from: str | None = None
    compensated: str | None = None  # after a failure: "true" (every undo worked) or "partial"
    backfill_id: str | None = Field(default=None, index=True)  # the backfill that made it, if one did
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
    input: Any = Field(default=None, sa_column=Column(JsonType))
    output: Any = Field(default=None, sa_column=Column(JsonType))
    exit_code: int | None = None
    http_status: int | None = None
    error: str | None = None
    worker: str | None = None  # the cluster worker that executed it (None: the server itself)


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
    """What a person set on a workflow that must survive restarts: pause, and a pin
    (every start uses `pinned_version` instead of the file's current one until unpinned)."""

    __tablename__ = "workflow_state"
    workflow: str = Field(primary_key=True)
    paused: bool = False
    changed_at: float
    changed_by: str | None = None
    pinned_version: str | None = None
    pinned_at: float | None = None
    pinned_by: str | None = None
    pinned_reason: str | None = None


class TriggerMark(SQLModel, table=True):
    """How far a trigger got: a schedule's last fired time, a file's last seen
    fingerprint. Written (compare-and-set) before the run it leads to starts, so a
    restart or a second server never fires the same thing twice."""

    __tablename__ = "trigger_mark"
    workflow: str = Field(primary_key=True)
    key: str = Field(primary_key=True)  # `schedule:<cron>|<zone>`, `file:<path>`
    value: str
    at: float


class WebhookDelivery(SQLModel, table=True):
    """A signed webhook call already accepted, kept while its signature could still be
    replayed (the timestamp window), so each delivery starts at most one run, even on
    several servers sharing the database."""

    __tablename__ = "webhook_delivery"
    workflow: str = Field(primary_key=True)
    key: str = Field(primary_key=True)  # SHA-256 of the signature (it covers timestamp and body)
    received_at: float
    expires_at: float = Field(index=True)  # forgotten after this (the signature is too old by then)


class Decision(StrEnum):
    """How an approval ended."""

    APPROVED = "approved"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"  # the step stopped while waiting (asked again if it runs again)


HUMAN_DECISIONS = (Decision.APPROVED.value, Decision.REJECTED.value)


class ApprovalKey(NamedTuple):
    """An approval request: a step, or one foreach item of it (-1 outside foreach)."""

    run_id: str
    step_id: str
    item: int = -1


class ApprovalRow(SQLModel, table=True):
    """One approval request (a step, or one foreach item of it) and its decision."""

    __tablename__ = "approval"
    run_id: str = Field(primary_key=True)
    step_id: str = Field(primary_key=True)
    item: int = Field(default=-1, primary_key=True)  # foreach index; -1 outside foreach
    workflow: str = Field(index=True)
    message: str
    requested_at: float
    deadline: float | None = None  # epoch seconds; set once, so a restart does not extend it
    decision: str | None = Field(default=None, index=True)  # a Decision, None while waiting
    by: str | None = None
    comment: str | None = None
    decided_at: float | None = None


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_token"
    name: str = Field(primary_key=True)
    scope: str
    namespace: str | None = None
    token_hash: str = Field(index=True, unique=True)
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None


class WebSession(SQLModel, table=True):
    __tablename__ = "web_session"
    id_hash: str = Field(primary_key=True)
    token_name: str = Field(index=True)
    scope: str
    namespace: str | None = None
    created_at: float
    expires_at: float


class AuditEntry(SQLModel, table=True):
    __tablename__ = "audit"
    id: int | None = Field(default=None, primary_key=True)
    at: float = Field(index=True)
    who: str  # token name, `admin-token`, `local` (open server), `cli:<user>`, or `anonymous`
    source: str | None = None  # client address
    action: str = Field(index=True)  # run.start, run.cancel, run.retry, approval.decide, workflow.pause, ...
    target: str | None = None  # workflow name, run id, token name
    result: str  # ok | denied | failed
    status: int | None = None  # the HTTP status answered, if any
    detail: Any = Field(default=None, sa_column=Column(JsonType))


class NotificationDelivery(SQLModel, table=True):
    """One try to deliver a notification of a run (or of one of its steps) to a receiver."""

    __tablename__ = "notification_delivery"
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    event: str  # run.failed, step.retrying, ...
    step_id: str | None = None
    target: str  # the receiver, without credentials or query
    format: str  # json | slack | template
    attempt: int  # 1 = the first try
    ok: bool
    http_status: int | None = None
    error: str | None = None  # why the try failed (masked, cut)
    final: bool = False  # no further try follows (sent, or given up)
    at: float


class Server(SQLModel, table=True):
    """A live `treadle serve` (or `treadle run`) on this database, seen by its heartbeat."""

    __tablename__ = "server"
    id: str = Field(primary_key=True)  # the owner name on its runs: host:pid:random
    host: str
    pid: int
    pid_ns: str | None = None  # the pid namespace: a pid means something only inside it
    role: str  # serve | run
    version: str
    started_at: float
    heartbeat_at: float = Field(index=True)  # database clock
    leader_since: float | None = None
    stopped_at: float | None = None


class WorkflowLock(SQLModel, table=True):
    """One row per name, written (hence locked) while a server decides whether a run may
    start under a concurrency limit: every server serialises on the same row."""

    __tablename__ = "workflow_lock"
    name: str = Field(primary_key=True)
    taken: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class Backfill(SQLModel, table=True):
    """The runs a schedule would have made for each slot of a past range, started as a
    group (runner/triggers/backfill.py). `cursor` is the newest slot started or skipped,
    moved (compare-and-set) before the slot's run starts."""

    __tablename__ = "backfill"
    id: str = Field(primary_key=True)
    workflow: str = Field(index=True)
    cron: str
    timezone: str
    range_from: float  # slots in [range_from, range_to], epoch seconds
    range_to: float
    slots: int  # how many the range holds
    parallel: int
    rerun: bool = False  # also the slots that already have a run that succeeded or goes on
    status: str = Field(index=True)  # running | paused | cancelled | done
    cursor: float | None = None
    started: int = 0
    skipped: int = 0
    created_at: float
    created_by: str | None = None
    finished_at: float | None = None


class SharedLock(SQLModel, table=True):
    """A run's (or a step's) claim on a shared lock (`locks:`): held, or waiting in line
    (`id` orders the waiters). A claim counts only while its run is driven under a live
    lease: a run that ended, or whose server died, holds nothing (the rows are cleanup)."""

    __tablename__ = "shared_lock"
    __table_args__ = (Index("ux_shared_lock_claim", "name", "run_id", "step_id", unique=True),)
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    run_id: str = Field(index=True)
    step_id: str = ""  # "" for the run's own `locks:`
    epoch: int  # the run's lease epoch when asked: a claim of an earlier driver counts for nothing
    held: bool = False
    since: float  # when it was asked for (waiting) or taken (held)
