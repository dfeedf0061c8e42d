"""Create the audit log: gate_reports, and provenance, append-only in the database.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from paramloop.errors import StoreError

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Revisions are frozen history: they spell out their tables instead of
# importing paramloop.store.schema, which keeps changing.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Append-only is enforced by the database, not only by the store's API: any
# client (a console, a script, another version of paramloop) that tries to
# change or remove an audit record is refused.
_SQLITE_TRIGGERS = [
    f"""
    CREATE TRIGGER provenance_append_only_{event.lower()}
    BEFORE {event} ON provenance
    BEGIN
        SELECT RAISE(ABORT, 'provenance is append-only: {event} is not allowed');
    END
    """
    for event in ("UPDATE", "DELETE")
]
# TRUNCATE skips row triggers in PostgreSQL, so it gets a statement trigger.
_POSTGRES_UP = [
    """
    CREATE FUNCTION provenance_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'provenance is append-only: % is not allowed', TG_OP
            USING ERRCODE = 'integrity_constraint_violation';
    END
    $$
    """,
    """
    CREATE TRIGGER provenance_append_only
    BEFORE UPDATE OR DELETE ON provenance
    FOR EACH ROW EXECUTE FUNCTION provenance_append_only()
    """,
    """
    CREATE TRIGGER provenance_append_only_truncate
    BEFORE TRUNCATE ON provenance
    FOR EACH STATEMENT EXECUTE FUNCTION provenance_append_only()
    """,
]


def upgrade() -> None:
    op.create_table(
        "gate_reports",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("task_type", sa.Text(), nullable=False),
        sa.Column("candidate", sa.Text(), nullable=False),
        sa.Column("baseline", sa.Text(), nullable=False),
        sa.Column("verdict", sa.Text(), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.CheckConstraint(
            "verdict IN ('pass', 'fail', 'inconclusive')", name="ck_gate_reports_verdict"
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_gate_reports_task_type_id", "gate_reports", ["task_type", "id"])
    op.create_table(
        "provenance",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("task_type", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.Column("policy_versions", sa.Text(), nullable=False),
        sa.Column("timestamp", sa.Double(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_provenance_task_type_id", "provenance", ["task_type", "id"])
    for statement in _triggers():
        op.execute(statement)


def downgrade() -> None:
    # Dropping the table drops its triggers; the PostgreSQL function stays
    # behind unless dropped too.
    op.drop_table("provenance")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION provenance_append_only()")
    op.drop_table("gate_reports")


def _triggers() -> list[str]:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        return _SQLITE_TRIGGERS
    if dialect == "postgresql":
        return _POSTGRES_UP
    raise StoreError(
        f"paramloop stores run on SQLite or PostgreSQL; cannot make provenance append-only on {dialect!r}"
    )
