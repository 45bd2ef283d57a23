"""Shared locks (`locks:`): claims held or waiting, across workflows and servers.

Revision ID: 0008_shared_lock
Revises: 0007_backfill
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_shared_lock"
down_revision = "0007_backfill"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shared_lock",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("step_id", sa.String(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("held", sa.Boolean(), nullable=False),
        sa.Column("since", sa.Float(), nullable=False),
    )
    op.create_index("ix_shared_lock_name", "shared_lock", ["name"])
    op.create_index("ix_shared_lock_run_id", "shared_lock", ["run_id"])
    op.create_index("ux_shared_lock_claim", "shared_lock", ["name", "run_id", "step_id"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_shared_lock_claim", "shared_lock")
    op.drop_index("ix_shared_lock_run_id", "shared_lock")
    op.drop_index("ix_shared_lock_name", "shared_lock")
    op.drop_table("shared_lock")
