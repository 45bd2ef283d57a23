"""Which cluster worker executed a step attempt (None: the server itself).

Revision ID: 0003_attempt_worker
Revises: 0002_servers_and_fencing
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_attempt_worker"
down_revision = "0002_servers_and_fencing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("step_attempt") as batch:
        batch.add_column(sa.Column("worker", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("step_attempt") as batch:
        batch.drop_column("worker")
