"""broadcast deltas: what workers reconstruct for each version, and the delta that gets them there

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rounds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("worker_params_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("delta_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("delta_bytes", sa.BigInteger(), nullable=True))
    # Rounds opened before broadcast deltas sent workers the coordinator's own parameters.
    op.execute("UPDATE rounds SET worker_params_sha256 = params_sha256")
    with op.batch_alter_table("rounds", schema=None) as batch_op:
        batch_op.alter_column(
            "worker_params_sha256", existing_type=sa.String(length=64), nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("rounds", schema=None) as batch_op:
        batch_op.drop_column("delta_bytes")
        batch_op.drop_column("delta_sha256")
        batch_op.drop_column("worker_params_sha256")
