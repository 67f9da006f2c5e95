"""scheduler: data spans, checkpoints, the credits ledger, placement and per-task work sizes

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "data_spans",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(length=40), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("start", sa.Integer(), nullable=False),
        sa.Column("stop", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("task_id", sa.String(length=40), nullable=True),
    )
    op.create_index("ix_data_spans_job_state", "data_spans", ["job_id", "state"])
    op.create_index("ix_data_spans_task_id", "data_spans", ["task_id"])
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.String(length=48), primary_key=True),
        sa.Column("job_id", sa.String(length=40), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("step_number", sa.BigInteger(), nullable=False),
        sa.Column("params_sha256", sa.String(length=64), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("job_id", "version", name="uq_checkpoints_job_version"),
    )
    op.create_index("ix_checkpoints_job_id", "checkpoints", ["job_id"])
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(length=96), primary_key=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "ledger_transactions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("task_id", sa.String(length=40), nullable=True),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("memo", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("kind", "task_id", name="uq_ledger_kind_task"),
    )
    op.create_index("ix_ledger_transactions_job_id", "ledger_transactions", ["job_id"])
    op.create_index("ix_ledger_transactions_created_at", "ledger_transactions", ["created_at"])
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "transaction_id",
            sa.Integer(),
            sa.ForeignKey("ledger_transactions.id"),
            nullable=False,
        ),
        sa.Column("account_id", sa.String(length=96), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_ledger_entries_transaction_id", "ledger_entries", ["transaction_id"])
    op.create_index("ix_ledger_entries_account_id", "ledger_entries", ["account_id"])

    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("account_id", sa.String(length=80), nullable=True))
        batch_op.add_column(sa.Column("flops_per_s", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("download_bytes_per_s", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("assigned_job_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("cached_sha256s", sa.JSON(), nullable=True))
        batch_op.create_index("ix_workers_public_key", ["public_key"])
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("owner", sa.String(length=80), nullable=False, server_default="user:default")
        )
        batch_op.add_column(
            sa.Column("num_model_params", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("memory_bytes", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("shard_samples", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("tokens_per_sample", sa.Float(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("data_epoch", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("data_cursor", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("estimated_credits", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("queued_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("initial_params_sha256", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_jobs_owner", ["owner"])
    with op.batch_alter_table("rounds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deadline_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("num_late", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("inner_steps", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("applied_round", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("credits", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_by", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.drop_column("expires_by")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        for column in ("credits", "applied_round", "inner_steps"):
            batch_op.drop_column(column)
    with op.batch_alter_table("rounds", schema=None) as batch_op:
        batch_op.drop_column("num_late")
        batch_op.drop_column("deadline_at")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_owner")
        for column in (
            "initial_params_sha256",
            "queued_at",
            "estimated_credits",
            "data_cursor",
            "data_epoch",
            "tokens_per_sample",
            "shard_samples",
            "memory_bytes",
            "num_model_params",
            "owner",
        ):
            batch_op.drop_column(column)
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_index("ix_workers_public_key")
        for column in (
            "cached_sha256s",
            "assigned_job_id",
            "download_bytes_per_s",
            "flops_per_s",
            "account_id",
        ):
            batch_op.drop_column(column)
    for table in ("ledger_entries", "ledger_transactions", "accounts", "checkpoints", "data_spans"):
        op.drop_table(table)
