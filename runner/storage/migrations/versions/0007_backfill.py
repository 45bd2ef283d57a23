"""Backfills: the runs a schedule would have made for a past range, as a group.

Revision ID: 0007_backfill
Revises: 0006_workflow_pin
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_backfill"
down_revision = "0006_workflow_pin"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backfill",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("workflow", sa.String(), nullable=False),
        sa.Column("cron", sa.String(), nullable=False),
        sa.Column("timezone", sa.String(), nullable=False),
        sa.Column("range_from", sa.Float(), nullable=False),
        sa.Column("range_to", sa.Float(), nullable=False),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("parallel", sa.Integer(), nullable=False),
        sa.Column("rerun", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("cursor", sa.Float(), nullable=True),
        sa.Column("started", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_backfill_workflow", "backfill", ["workflow"])
    op.create_index("ix_backfill_status", "backfill", ["status"])
    with op.batch_alter_table("run") as batch:
        batch.add_column(sa.Column("backfill_id", sa.String(), nullable=True))
        batch.create_index("ix_run_backfill_id", ["backfill_id"])


def downgrade() -> None:
    with op.batch_alter_table("run") as batch:
        batch.drop_index("ix_run_backfill_id")
        batch.drop_column("backfill_id")
    op.drop_index("ix_backfill_status", "backfill")
    op.drop_index("ix_backfill_workflow", "backfill")
    op.drop_table("backfill")
