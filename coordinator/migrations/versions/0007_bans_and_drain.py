"""bans, drain and trust: operators ban workers and drain the swarm; workers' valid streaks

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 15:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("banned_at", sa.Float(), nullable=True))
        batch.add_column(sa.Column("ban_reason", sa.String(length=200), nullable=True))
        batch.add_column(
            sa.Column("valid_streak", sa.Integer(), nullable=False, server_default="0")
        )
    op.create_table(
        "swarm_flags",
        sa.Column("name", sa.String(length=40), primary_key=True),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("swarm_flags")
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("valid_streak")
        batch.drop_column("ban_reason")
        batch.drop_column("banned_at")
