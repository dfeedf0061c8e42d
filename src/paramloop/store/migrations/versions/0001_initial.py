"""Create the decision log: logged_decisions, outcomes, policy_snapshots.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Revisions are frozen history: they spell out their tables instead of
# importing paramloop.store.schema, which keeps changing.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "logged_decisions",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("task_type", sa.Text(), nullable=False),
        sa.Column("model_name", sa.Text(), nullable=False),
        sa.Column("context_fingerprint", sa.BigInteger(), nullable=False),
        sa.Column("context_features", sa.Text(), nullable=False),
        sa.Column("chosen_params", sa.Text(), nullable=False),
        sa.Column("log_propensity", sa.Double(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("policy_version", sa.Text(), nullable=False),
        sa.Column("timestamp", sa.Double(), nullable=False),
        sa.Column("arm", sa.Integer(), nullable=False),
        sa.Column("confidence", sa.Double(), nullable=False),
        sa.Column("policy_revision", sa.BigInteger(), nullable=False),
        sa.Column("origin", sa.Text(), nullable=False),
        sa.Column("phase", sa.Text(), nullable=False),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("reward", sa.Double(), nullable=True),
        sa.UniqueConstraint("request_id", name="uq_logged_decisions_request_id"),
    )
    op.create_index(
        "ix_logged_decisions_task_type_timestamp",
        "logged_decisions",
        ["task_type", "timestamp", "id"],
    )
    op.create_index(
        "ix_logged_decisions_pending",
        "logged_decisions",
        ["task_type", "timestamp", "id"],
        sqlite_where=sa.text("outcome IS NULL"),
        postgresql_where=sa.text("outcome IS NULL"),
    )
    op.create_table(
        "outcomes",
        sa.Column("seq", _ID, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("task_type", sa.Text(), nullable=False),
        sa.Column("quality", sa.Double(), nullable=True),
        sa.Column("latency_ms", sa.Double(), nullable=True),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=True),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cost", sa.Double(), nullable=True),
        sa.Column("error", sa.Boolean(), nullable=False),
        sa.Column("feedback", sa.Double(), nullable=True),
        sa.Column("explicit_reward", sa.Double(), nullable=True),
        sa.Column("reward", sa.Double(), nullable=False),
        sa.Column("reward_version", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("timestamp", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["logged_decisions.request_id"],
            name="fk_outcomes_request_id_logged_decisions",
        ),
        sa.UniqueConstraint("request_id", name="uq_outcomes_request_id"),
        sa.CheckConstraint("source IN ('observed', 'default')", name="ck_outcomes_source"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_outcomes_task_type_seq", "outcomes", ["task_type", "seq"])
    op.create_table(
        "policy_snapshots",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("task_type", sa.Text(), nullable=False),
        sa.Column("policy_version", sa.Text(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("last_outcome_seq", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.Column("timestamp", sa.Double(), nullable=False),
    )
    op.create_index("ix_policy_snapshots_task_type_id", "policy_snapshots", ["task_type", "id"])


def downgrade() -> None:
    op.drop_table("policy_snapshots")
    op.drop_table("outcomes")
    op.drop_table("logged_decisions")
