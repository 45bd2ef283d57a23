"""Baseline: the schema of Treadle 0.1 (before migrations), written out as it was.

A SQLite file made by Treadle 0.1 has exactly these tables and no `alembic_version`:
runner/storage/schema.py recognises it and stamps it at this revision instead of
creating anything, then applies the later revisions.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
TEXT = sa.String()


def upgrade() -> None:
    op.create_table(
        "workflow_version",
        sa.Column("version", TEXT, nullable=False), sa.Column("workflow", TEXT, nullable=False),
        sa.Column("path", TEXT, nullable=False), sa.Column("source", TEXT, nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False), sa.Column("valid", sa.Boolean(), nullable=False),
        sa.Column("commit", TEXT), sa.PrimaryKeyConstraint("version", "workflow"),
    )
    op.create_index("ix_workflow_version_workflow", "workflow_version", ["workflow"])
    op.create_table(
        "run",
        sa.Column("id", TEXT, nullable=False), sa.Column("workflow", TEXT, nullable=False),
        sa.Column("version", TEXT, nullable=False), sa.Column("commit", TEXT),
        sa.Column("status", TEXT, nullable=False), sa.Column("owner", TEXT), sa.Column("lease_until", sa.Float()),
        sa.Column("params", JSON), sa.Column("outputs", JSON), sa.Column("error", TEXT),
        sa.Column("trigger", TEXT, nullable=False), sa.Column("trigger_ref", TEXT), sa.Column("reason", TEXT),
        sa.Column("parent_run_id", TEXT), sa.Column("parent_step_id", TEXT), sa.Column("retry_of", TEXT),
        sa.Column("retry_from", TEXT), sa.Column("compensated", TEXT),
        sa.Column("created_at", sa.Float(), nullable=False), sa.Column("started_at", sa.Float()),
        sa.Column("finished_at", sa.Float()), sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_run_status", "run", ["status"])
    op.create_index("ix_run_created_at", "run", ["created_at"])
    op.create_index("ix_run_parent_run_id", "run", ["parent_run_id"])
    op.create_index("ix_run_workflow_created", "run", ["workflow", "created_at"])
    op.create_index("ix_run_workflow", "run", ["workflow"])
    op.create_table(
        "step_attempt",
        sa.Column("id", sa.Integer(), nullable=False), sa.Column("run_id", TEXT, nullable=False),
        sa.Column("step_id", TEXT, nullable=False), sa.Column("item", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False), sa.Column("status", TEXT, nullable=False),
        sa.Column("started_at", sa.Float()), sa.Column("finished_at", sa.Float()),
        sa.Column("input", JSON), sa.Column("output", JSON), sa.Column("exit_code", sa.Integer()),
        sa.Column("http_status", sa.Integer()), sa.Column("error", TEXT), sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "step_id", "item", "attempt", name="uq_step_attempt"),
    )
    op.create_index("ix_step_attempt_run_id", "step_attempt", ["run_id"])
    op.create_table(
        "log_chunk",
        sa.Column("id", sa.Integer(), nullable=False), sa.Column("run_id", TEXT, nullable=False),
        sa.Column("step_id", TEXT, nullable=False), sa.Column("item", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False), sa.Column("stream", TEXT, nullable=False),
        sa.Column("text", TEXT, nullable=False), sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_log_run_step", "log_chunk", ["run_id", "step_id"])
    op.create_table(
        "workflow_state",
        sa.Column("workflow", TEXT, nullable=False), sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("changed_at", sa.Float(), nullable=False), sa.Column("changed_by", TEXT),
        sa.PrimaryKeyConstraint("workflow"),
    )
    op.create_table(
        "trigger_mark",
        sa.Column("workflow", TEXT, nullable=False), sa.Column("key", TEXT, nullable=False),
        sa.Column("value", TEXT, nullable=False), sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("workflow", "key"),
    )
    op.create_table(
        "approval",
        sa.Column("run_id", TEXT, nullable=False), sa.Column("step_id", TEXT, nullable=False),
        sa.Column("item", sa.Integer(), nullable=False), sa.Column("workflow", TEXT, nullable=False),
        sa.Column("message", TEXT, nullable=False), sa.Column("requested_at", sa.Float(), nullable=False),
        sa.Column("deadline", sa.Float()), sa.Column("decision", TEXT), sa.Column("by", TEXT),
        sa.Column("comment", TEXT), sa.Column("decided_at", sa.Float()),
        sa.PrimaryKeyConstraint("run_id", "step_id", "item"),
    )
    op.create_index("ix_approval_decision", "approval", ["decision"])
    op.create_index("ix_approval_workflow", "approval", ["workflow"])
    op.create_table(
        "api_token",
        sa.Column("name", TEXT, nullable=False), sa.Column("scope", TEXT, nullable=False),
        sa.Column("namespace", TEXT), sa.Column("token_hash", TEXT, nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False), sa.Column("last_used_at", sa.Float()),
        sa.Column("revoked_at", sa.Float()), sa.PrimaryKeyConstraint("name"),
    )
    op.create_index("ix_api_token_token_hash", "api_token", ["token_hash"], unique=True)
    op.create_table(
        "web_session",
        sa.Column("id_hash", TEXT, nullable=False), sa.Column("token_name", TEXT, nullable=False),
        sa.Column("scope", TEXT, nullable=False), sa.Column("namespace", TEXT),
        sa.Column("created_at", sa.Float(), nullable=False), sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id_hash"),
    )
    op.create_index("ix_web_session_token_name", "web_session", ["token_name"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), nullable=False), sa.Column("at", sa.Float(), nullable=False),
        sa.Column("who", TEXT, nullable=False), sa.Column("source", TEXT), sa.Column("action", TEXT, nullable=False),
        sa.Column("target", TEXT), sa.Column("result", TEXT, nullable=False), sa.Column("status", sa.Integer()),
        sa.Column("detail", JSON), sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_at", "audit", ["at"])
    op.create_index("ix_audit_action", "audit", ["action"])


def downgrade() -> None:
    for table in ("audit", "web_session", "api_token", "approval", "trigger_mark", "workflow_state",
                  "log_chunk", "step_attempt", "run", "workflow_version"):
        op.drop_table(table)
