"""The tables of the decision log and the audit log, as SQLAlchemy Core metadata.

Queries are written against these tables; the Alembic revisions in
``migrations/versions`` create them.  Revisions are frozen history and never
import this module, so the contract suite checks that a migrated database and
this metadata agree.

``logged_decisions`` keeps the column names of the published schema
(``context_fingerprint``, ``context_features``, ``chosen_params``,
``log_propensity``, ``outcome``, ``policy_version``, ``timestamp``) so that
existing dashboards and queries keep working; ``log_propensity`` holds the
propensity itself, not its logarithm.

``measurements`` (revision 0003) holds what a proxy measured of a call until
its outcome is recorded.

``provenance`` is append-only in the database itself: revision 0002 adds
triggers that make every UPDATE and DELETE on it (and TRUNCATE, on
PostgreSQL) fail.  Metadata cannot express triggers, so they are not here.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
)

from paramloop.store.records import VERDICTS

#: Values of ``outcomes.source``.
OUTCOME_SOURCES = ("observed", "default")

# SQLite only autoincrements a column declared exactly ``INTEGER PRIMARY KEY``;
# PostgreSQL gets a 64-bit sequence.
_ID = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

logged_decisions = Table(
    "logged_decisions",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("request_id", Text, nullable=False),
    Column("task_type", Text, nullable=False),
    Column("model_name", Text, nullable=False),
    # The fingerprint is an unsigned 64-bit integer, stored two's-complement.
    Column("context_fingerprint", BigInteger, nullable=False),
    Column("context_features", Text, nullable=False),
    Column("chosen_params", Text, nullable=False),
    Column("log_propensity", Double, nullable=False),
    Column("outcome", Text, nullable=True),
    Column("policy_version", Text, nullable=False),
    Column("timestamp", Double, nullable=False),
    Column("arm", Integer, nullable=False),
    Column("confidence", Double, nullable=False),
    Column("policy_revision", BigInteger, nullable=False),
    Column("origin", Text, nullable=False),
    Column("phase", Text, nullable=False),
    Column("applied", Boolean, nullable=False),
    Column("seed", BigInteger, nullable=True),
    Column("error", Text, nullable=True),
    Column("schema_version", Integer, nullable=False),
    Column("reward", Double, nullable=True),
    Column("intended_arm", Integer, nullable=True),
    UniqueConstraint("request_id", name="uq_logged_decisions_request_id"),
)
# ``id`` breaks ties between equal timestamps, so keyset pagination in
# (timestamp, id) order is served by the index alone.
Index(
    "ix_logged_decisions_task_type_timestamp",
    logged_decisions.c.task_type,
    logged_decisions.c.timestamp,
    logged_decisions.c.id,
)
# Default rewards scan the decisions still waiting for an outcome; without the
# partial index every scan would walk the whole history of the task type.
Index(
    "ix_logged_decisions_pending",
    logged_decisions.c.task_type,
    logged_decisions.c.timestamp,
    logged_decisions.c.id,
    sqlite_where=logged_decisions.c.outcome.is_(None),
    postgresql_where=logged_decisions.c.outcome.is_(None),
)

outcomes = Table(
    "outcomes",
    metadata,
    Column("seq", _ID, primary_key=True, autoincrement=True),
    Column(
        "request_id",
        Text,
        ForeignKey("logged_decisions.request_id", name="fk_outcomes_request_id_logged_decisions"),
        nullable=False,
    ),
    Column("task_type", Text, nullable=False),
    Column("quality", Double, nullable=True),
    Column("latency_ms", Double, nullable=True),
    Column("prompt_tokens", BigInteger, nullable=True),
    Column("completion_tokens", BigInteger, nullable=True),
    Column("cost", Double, nullable=True),
    Column("error", Boolean, nullable=False),
    Column("feedback", Double, nullable=True),
    Column("explicit_reward", Double, nullable=True),
    Column("reward", Double, nullable=False),
    Column("reward_version", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("timestamp", Double, nullable=False),
    UniqueConstraint("request_id", name="uq_outcomes_request_id"),
    CheckConstraint("source IN ('observed', 'default')", name="ck_outcomes_source"),
    # Without AUTOINCREMENT SQLite may hand out a seq again after the highest
    # row is deleted; readers resume from a seq, so it must never go back.
    sqlite_autoincrement=True,
)
Index("ix_outcomes_task_type_seq", outcomes.c.task_type, outcomes.c.seq)

policy_snapshots = Table(
    "policy_snapshots",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("task_type", Text, nullable=False),
    Column("policy_version", Text, nullable=False),
    Column("revision", BigInteger, nullable=False),
    Column("last_outcome_seq", BigInteger, nullable=False),
    Column("state", LargeBinary, nullable=False),
    Column("timestamp", Double, nullable=False),
)
Index("ix_policy_snapshots_task_type_id", policy_snapshots.c.task_type, policy_snapshots.c.id)

# -- the audit log (revision 0002) -------------------------------------------------
# Ids never go back (sqlite_autoincrement): provenance evidence cites gate
# report ids, which must not name another report should one be deleted.

gate_reports = Table(
    "gate_reports",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("task_type", Text, nullable=False),
    Column("candidate", Text, nullable=False),
    Column("baseline", Text, nullable=False),
    Column("verdict", Text, nullable=False),
    Column("report", Text, nullable=False),  # JSON
    Column("created_at", Double, nullable=False),
    CheckConstraint(
        f"verdict IN ({', '.join(repr(v) for v in VERDICTS)})", name="ck_gate_reports_verdict"
    ),
    sqlite_autoincrement=True,
)
Index("ix_gate_reports_task_type_id", gate_reports.c.task_type, gate_reports.c.id)

provenance = Table(
    "provenance",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("kind", Text, nullable=False),
    Column("task_type", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("evidence", Text, nullable=False),  # JSON
    Column("policy_versions", Text, nullable=False),  # JSON
    Column("timestamp", Double, nullable=False),
    sqlite_autoincrement=True,
)
Index("ix_provenance_task_type_id", provenance.c.task_type, provenance.c.id)

# -- measurements (revision 0003) ---------------------------------------------------
# What a proxy measured of a call (latency, tokens, cost, error) while its outcome
# waits for feedback: joined with the feedback into the outcome, or recorded alone
# when the reward wait window closes.  Write-once per request id.

measurements = Table(
    "measurements",
    metadata,
    Column(
        "request_id",
        Text,
        ForeignKey(
            "logged_decisions.request_id", name="fk_measurements_request_id_logged_decisions"
        ),
        primary_key=True,
    ),
    Column("task_type", Text, nullable=False),
    Column("latency_ms", Double, nullable=True),
    Column("prompt_tokens", BigInteger, nullable=True),
    Column("completion_tokens", BigInteger, nullable=True),
    Column("cost", Double, nullable=True),
    Column("error", Boolean, nullable=False),
    Column("timestamp", Double, nullable=False),
)

# -- engine state and alerts (revision 0004) ----------------------------------------
# Small versioned JSON documents (a rollout's state, a day's budget) written by
# compare and swap, and the alerts raised.  Decisions gain the arm the policy
# intended when another was served (shadow mode, control group).

engine_state = Table(
    "engine_state",
    metadata,
    Column("kind", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("data", Text, nullable=False),  # JSON
    Column("version", BigInteger, nullable=False),
    Column("updated_at", Double, nullable=False),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("severity", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("task_type", Text, nullable=False),
    Column("message", Text, nullable=False),
    Column("evidence", Text, nullable=False),  # JSON
    Column("dedup_key", Text, nullable=False),
    Column("created_at", Double, nullable=False),
    CheckConstraint("severity IN ('info', 'warning', 'critical')", name="ck_alerts_severity"),
    sqlite_autoincrement=True,
)
Index("ix_alerts_task_type_id", alerts.c.task_type, alerts.c.id)
Index("ix_alerts_dedup_key_created_at", alerts.c.dedup_key, alerts.c.created_at)
