"""Many servers on one database: fenced leases, cancel requests, live servers, admission locks.

- run.lease_epoch: bumped by every claim of a run; a driver's writes are committed only
  while the run's owner and epoch are still its own (fencing);
- run.cancel_requested_at / cancel_requested_by / cancel_compensate: a cancel asked on
  any server, honoured by the one that drives the run;
- server: each live `treadle serve` / `treadle run`, with its heartbeat on the database clock;
- workflow_lock: one row per name, locked (by a write) while a server decides whether a
  run may start under a concurrency limit; the same row serialises every server.

Revision ID: 0002_servers_and_fencing
Revises: 0001_baseline
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_servers_and_fencing"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("run") as batch:
        batch.add_column(sa.Column("lease_epoch", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("cancel_requested_at", sa.Float(), nullable=True))
        batch.add_column(sa.Column("cancel_requested_by", sa.String(), nullable=True))
        batch.add_column(sa.Column("cancel_compensate", sa.Boolean(), nullable=True))
        batch.create_index("ix_run_owner", ["owner"])
    op.create_table(
        "server",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("pid_ns", sa.String(), nullable=True),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.Column("leader_since", sa.Float(), nullable=True),
        sa.Column("stopped_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_server_heartbeat_at", "server", ["heartbeat_at"])
    op.create_table(
        "workflow_lock",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("taken", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("workflow_lock")
    op.drop_index("ix_server_heartbeat_at", "server")
    op.drop_table("server")
    with op.batch_alter_table("run") as batch:
        batch.drop_index("ix_run_owner")
        for column in ("cancel_compensate", "cancel_requested_by", "cancel_requested_at", "lease_epoch"):
            batch.drop_column(column)
