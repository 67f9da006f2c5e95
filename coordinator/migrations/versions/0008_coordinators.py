"""several coordinators: who is alive, and which one aggregates a round

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "coordinators",
        sa.Column("id", sa.String(length=40), primary_key=True),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("grpc_port", sa.Integer(), nullable=False),
        sa.Column("http_port", sa.Integer(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("last_seen_at", sa.Float(), nullable=False),
    )
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(sa.Column("aggregator", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("aggregator")
    op.drop_table("coordinators")
