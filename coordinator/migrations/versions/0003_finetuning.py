"""fine-tuning: base weights, held-out metrics per version, and result artifacts

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("base_sha256s", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("initial_eval_metrics", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("eval_metrics", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("artifacts", sa.JSON(), nullable=True))
    with op.batch_alter_table("rounds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("eval_metrics", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("num_train_tasks", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rounds", schema=None) as batch_op:
        batch_op.drop_column("num_train_tasks")
        batch_op.drop_column("eval_metrics")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("artifacts")
        batch_op.drop_column("eval_metrics")
        batch_op.drop_column("initial_eval_metrics")
        batch_op.drop_column("base_sha256s")
