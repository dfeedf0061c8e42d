"""Create engine_state and alerts; decisions gain intended_arm.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Revisions are frozen history: they spell out their tables instead of
# importing paramloop.store.schema, which keeps changing.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "engine_state",
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "key"),
    )
    op.create_table(
        "alerts",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("severity", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("task_type", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.Column("dedup_key", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.CheckConstraint(
            "severity IN ('info', 'warning', 'critical')", name="ck_alerts_severity"
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_alerts_task_type_id", "alerts", ["task_type", "id"])
    op.create_index("ix_alerts_dedup_key_created_at", "alerts", ["dedup_key", "created_at"])
    op.add_column("logged_decisions", sa.Column("intended_arm", sa.Integer(), nullable=True))


def downgrade() -> None:
    # SQLite drops a column in place since 3.35 (2021); no table copy, indexes stay.
    op.drop_column("logged_decisions", "intended_arm")
    op.drop_table("alerts")
    op.drop_table("engine_state")
