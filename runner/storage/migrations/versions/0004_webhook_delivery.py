"""Signed webhook deliveries already accepted, so a replay starts no run.

Revision ID: 0004_webhook_delivery
Revises: 0003_attempt_worker
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_webhook_delivery"
down_revision = "0003_attempt_worker"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_delivery",
        sa.Column("workflow", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("workflow", "key"),
    )
    op.create_index(op.f("ix_webhook_delivery_expires_at"), "webhook_delivery", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_webhook_delivery_expires_at"), table_name="webhook_delivery")
    op.drop_table("webhook_delivery")
