"""api keys: hashed HTTP API keys with roles; jobs get OpenAI's `suffix`

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 14:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=40), primary_key=True),
        sa.Column("account", sa.String(length=96), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("hint", sa.String(length=32), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False, unique=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_used_at", sa.Float(), nullable=True),
        sa.Column("revoked_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_api_keys_account", "api_keys", ["account"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("suffix", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("suffix")
    op.drop_index("ix_api_keys_account", table_name="api_keys")
    op.drop_table("api_keys")
