"""Every try to deliver a notification, listed with its run.

Revision ID: 0005_notification_deliveries
Revises: 0004_webhook_delivery
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_notification_deliveries"
down_revision = "0004_webhook_delivery"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notification_delivery",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("event", sa.String(), nullable=False),
        sa.Column("step_id", sa.String(), nullable=True),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("format", sa.String(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
    )
    op.create_index("ix_notification_delivery_run_id", "notification_delivery", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_notification_delivery_run_id", "notification_delivery")
    op.drop_table("notification_delivery")
