"""A workflow can be pinned to one of its versions (every start uses it until unpinned).

Revision ID: 0006_workflow_pin
Revises: 0005_notification_deliveries
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_workflow_pin"
down_revision = "0005_notification_deliveries"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workflow_state") as batch:
        batch.add_column(sa.Column("pinned_version", sa.String(), nullable=True))
        batch.add_column(sa.Column("pinned_at", sa.Float(), nullable=True))
        batch.add_column(sa.Column("pinned_by", sa.String(), nullable=True))
        batch.add_column(sa.Column("pinned_reason", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workflow_state") as batch:
        batch.drop_column("pinned_reason")
        batch.drop_column("pinned_by")
        batch.drop_column("pinned_at")
        batch.drop_column("pinned_version")
