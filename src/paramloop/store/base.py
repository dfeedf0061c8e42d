"""The storage seam: the decision log (with policy snapshots) and the audit log.

:class:`DecisionLog` and :class:`AuditLog` are two protocols; every store
(in-memory, SQLite, PostgreSQL) implements both in one object
(:class:`Store`) and passes the contract suite in
``tests/test_store_contract.py``.  Stores hold rows, not math: rewards arrive
already computed, snapshots arrive already serialized, gate reports arrive
already decided.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from paramloop.errors import OutcomeError
from paramloop.store.records import dumps
from paramloop.types import (
    AlertRecord,
    Decision,
    GateReportRecord,
    Outcome,
    PolicySnapshot,
    ProvenanceRecord,
    RecordedOutcome,
    StateRecord,
)

#: A logged decision joined with its outcome (``None`` while none has arrived).
LoggedRow = tuple[Decision, RecordedOutcome | None]
#: A logged decision with its (present) outcome.
OutcomeRow = tuple[Decision, RecordedOutcome]
#: A logged decision still without an outcome, with what was measured of its call.
MeasuredRow = tuple[Decision, Outcome]

#: The fields of an :class:`~paramloop.types.Outcome` a measurement may carry: what a
#: proxy sees of the call itself.  Quality, feedback and an explicit reward arrive later,
#: with the outcome.
MEASURED_FIELDS = ("latency_ms", "prompt_tokens", "completion_tokens", "cost", "error")

#: What offline evaluation reads of each logged decision, in the order of :data:`EvaluationRow`.
EVALUATION_COLUMNS = (
    "timestamp",
    "arm",
    "log_propensity",
    "context_features",
    "reward",
    "chosen_params",
    "policy_version",
)
#: One applied decision with an outcome, as a plain tuple of :data:`EVALUATION_COLUMNS`:
#: the context and the parameters as their stored JSON text.  All of it lives in
#: ``logged_decisions`` (the reward is copied there when the outcome arrives), so reading
#: a million rows joins nothing and builds no object per row; the window's counts come
#: from :meth:`DecisionLog.summarize_log`.
EvaluationRow = tuple[float, int, float, str, float, str, str]


@dataclass(frozen=True, slots=True)
class LogSummary:
    """A window of a task type's log, counted: decisions, outcomes, default rewards and
    limit breaches (one per limit an outcome exceeds)."""

    decisions: int
    outcomes: int
    defaulted: int
    violations: int


def evaluation_row(decision: Decision, recorded: RecordedOutcome) -> EvaluationRow:
    """The :data:`EvaluationRow` of a decision object and its outcome (as the SQL stores read it)."""
    data = decision.to_dict()
    return (
        decision.timestamp,
        decision.arm,
        decision.propensity,
        dumps(data["context"]),
        recorded.reward,
        dumps(data["params"]),
        decision.policy,
    )


def summarize_rows(
    rows: Iterable[LoggedRow],
    max_latency_ms: float | None = None,
    max_tokens: float | None = None,
    max_cost: float | None = None,
) -> LogSummary:
    """:meth:`DecisionLog.summarize_log` of decision objects (the in-memory store, an export)."""
    decisions = with_outcome = defaulted = violations = 0
    for _, recorded in rows:
        decisions += 1
        if recorded is None:
            continue
        with_outcome += 1
        defaulted += recorded.source == "default"
        outcome = recorded.outcome
        for value, limit in (
            (outcome.latency_ms, max_latency_ms),
            (outcome.total_tokens, max_tokens),
            (outcome.cost, max_cost),
        ):
            violations += limit is not None and (value or 0) > limit
    return LogSummary(decisions, with_outcome, defaulted, violations)


def check_measured(measured: Outcome) -> None:
    """Refuse a measurement that carries more than :data:`MEASURED_FIELDS` (``OutcomeError``)."""
    for name in ("quality", "feedback", "reward"):
        if getattr(measured, name) is not None:
            raise OutcomeError(
                name,
                "a measurement holds what was measured of the call (latency, tokens, cost, "
                "error); quality, feedback and reward arrive with the outcome",
            )


@runtime_checkable
class DecisionLog(Protocol):
    """Durable log of decisions and their outcomes, plus policy snapshots.

    Every write is one transaction: when a method returns, the row is committed
    and survives a crash of the process.  Methods raise
    :class:`~paramloop.errors.DuplicateRequestError`,
    :class:`~paramloop.errors.UnknownRequestError`,
    :class:`~paramloop.errors.ConflictingOutcomeError` or
    :class:`~paramloop.errors.StoreError`, and leave the store unchanged when they do;
    also :class:`~paramloop.errors.OutcomeError` for an outcome that does not fit
    its decision (another task type, an unknown ``source``) and
    :class:`~paramloop.errors.ConfigError` for a negative ``limit`` or a
    ``chunk_size`` below 1.
    """

    def append_decision(self, decision: Decision) -> None:
        """Log one decision; a request id can be logged once."""

    def append_decisions(self, decisions: list[Decision]) -> None:
        """Log many decisions in one transaction (all or none)."""

    def get_decision(self, request_id: str) -> Decision | None:
        """The decision logged under ``request_id``, or ``None``."""

    def attach_outcome(self, recorded: RecordedOutcome) -> tuple[RecordedOutcome, bool]:
        """Store the outcome of a logged decision.

        Returns the stored row (with its ``seq``) and whether it was new.
        Recording an identical outcome again returns the stored row and
        ``False``; a different one raises ``ConflictingOutcomeError``.
        """

    def get_outcome(self, request_id: str) -> RecordedOutcome | None:
        """The outcome recorded for ``request_id``, or ``None``."""

    def outcomes_since(self, task_type: str, after_seq: int, limit: int) -> list[OutcomeRow]:
        """Decisions with outcomes whose outcome ``seq`` is greater than ``after_seq``, by seq."""

    def last_outcome_seq(self, task_type: str) -> int:
        """The greatest outcome ``seq`` of the task type (0 before its first outcome)."""

    def pending_decisions(self, task_type: str, before: float, limit: int) -> list[Decision]:
        """Decisions without an outcome logged strictly before ``before`` (epoch seconds)."""

    def iter_logged(
        self,
        task_type: str,
        start: float | None = None,
        end: float | None = None,
        chunk_size: int = 10_000,
    ) -> Iterator[list[LoggedRow]]:
        """Stream decisions of a task type in ``[start, end)``, oldest first, in chunks."""

    def iter_evaluation_rows(
        self,
        task_type: str,
        start: float | None = None,
        end: float | None = None,
        chunk_size: int = 50_000,
    ) -> Iterator[list[EvaluationRow]]:
        """The applied decisions with an outcome among :meth:`iter_logged`'s rows, in the same
        order and chunked alike, as :data:`EvaluationRow` tuples."""

    def summarize_log(
        self,
        task_type: str,
        start: float | None = None,
        end: float | None = None,
        *,
        max_latency_ms: float | None = None,
        max_tokens: float | None = None,
        max_cost: float | None = None,
    ) -> LogSummary:
        """Count the task type's decisions in ``[start, end)`` and their outcomes.

        A limit that is ``None`` counts nothing; a missing value breaks no limit
        (as :meth:`RewardFunction.violations`); tokens are prompt + completion.
        """

    def import_logged(self, rows: list[LoggedRow]) -> int:
        """Add exported decisions with their outcomes in one transaction (all or none).

        For restoring an export or moving a log between stores.  Outcomes get
        new ``seq`` numbers in the order given.  A request id already in the
        store (or twice in ``rows``) is a ``DuplicateRequestError``; an outcome
        whose request id or task type differs from its decision's is an
        ``OutcomeError``.  Returns the number of decisions added.
        """

    def count_decisions(self, task_type: str | None = None) -> int:
        """Number of logged decisions (of one task type, or all)."""

    def save_measurement(
        self, request_id: str, task_type: str, measured: Outcome, timestamp: float
    ) -> bool:
        """Keep what was measured of a logged decision's call until its outcome is recorded.

        ``measured`` holds only :data:`MEASURED_FIELDS` (an ``OutcomeError`` names a
        field that is set beyond them).  Write-once per request id: saving the
        same measurement again returns ``False`` (``True`` when new); a
        different one raises ``ConflictingOutcomeError``.  Also raises
        ``UnknownRequestError`` and, for a task type other than the decision's,
        ``OutcomeError``.
        """

    def get_measurement(self, request_id: str) -> Outcome | None:
        """The measurement saved for ``request_id``, or ``None``."""

    def pending_measurements(self, task_type: str, before: float, limit: int) -> list[MeasuredRow]:
        """Decisions logged strictly before ``before`` with a measurement and no outcome.

        Oldest first (by timestamp, then insertion order), as
        :meth:`pending_decisions`.
        """

    def save_snapshot(self, snapshot: PolicySnapshot) -> None:
        """Store a policy snapshot (snapshots are append-only history)."""

    def latest_snapshot(self, task_type: str) -> PolicySnapshot | None:
        """The most recent snapshot of a task type's policy, or ``None``."""

    def close(self) -> None:
        """Release connections.  Idempotent."""


@runtime_checkable
class AuditLog(Protocol):
    """Gate reports and the append-only provenance trail of production changes.

    Records are written once and never changed: the store assigns each its
    ``id`` (increasing in the order they were saved), and the SQL stores'
    databases refuse UPDATE and DELETE on the provenance table itself.  Every
    write is one committed transaction, as in :class:`DecisionLog`.

    A record is refused, the store left unchanged, with
    :class:`~paramloop.errors.ConfigError` (naming the field) for an empty
    ``task_type``, ``candidate``, ``baseline``, ``kind`` or ``actor``, a verdict
    other than ``pass``, ``fail`` or ``inconclusive``, ``policy_versions`` that
    do not map strings to strings, an ``id`` other than 0 or a negative
    ``limit``; and with :class:`~paramloop.errors.StoreError` for a value no
    database holds exactly (a NaN, a NUL character or lone surrogate in a text
    field, and JSON fields that are not JSON data: see
    :mod:`paramloop.store.records`).
    """

    def save_gate_report(self, report: GateReportRecord) -> GateReportRecord:
        """Store a gate report; returns it as stored, with its assigned ``id``."""

    def get_gate_report(self, report_id: int) -> GateReportRecord | None:
        """The gate report saved under ``report_id``, or ``None``."""

    def latest_gate_report(self, task_type: str) -> GateReportRecord | None:
        """The gate report of ``task_type`` saved last, or ``None``."""

    def append_provenance(self, record: ProvenanceRecord) -> ProvenanceRecord:
        """Append an audit record; returns it as stored, with its assigned ``id``."""

    def list_provenance(
        self, task_type: str | None = None, kind: str | None = None, limit: int = 100
    ) -> list[ProvenanceRecord]:
        """Up to ``limit`` audit records, newest (appended last) first.

        Only those of ``task_type`` and of ``kind`` when these are given.
        """

    def close(self) -> None:
        """Release connections.  Idempotent."""


@runtime_checkable
class StateStore(Protocol):
    """Small versioned engine state (rollouts, budgets) and the alerts raised.

    A state is a JSON document under ``(kind, key)`` written by compare and
    swap: :meth:`put_state` names the version it read (0: "I read nothing")
    and is refused with :class:`~paramloop.errors.StaleStateError` when another
    writer got there first — across threads, processes and machines sharing
    the database.  Every write is one committed transaction.  Invalid records
    are refused as in :class:`AuditLog` (``ConfigError`` naming the field,
    ``StoreError`` for values no database holds exactly).
    """

    def get_state(self, kind: str, key: str) -> StateRecord | None:
        """The state stored under ``(kind, key)``, or ``None``."""

    def put_state(self, record: StateRecord, expected_version: int) -> StateRecord:
        """Write ``record`` if the stored version is ``expected_version``; returns it as stored.

        The stored version becomes ``expected_version + 1`` (``record.version``
        is ignored).
        """

    def list_states(self, kind: str) -> list[StateRecord]:
        """Every state of ``kind``, by key."""

    def append_alert(self, alert: AlertRecord) -> AlertRecord:
        """Store an alert; returns it with its assigned ``id``."""

    def list_alerts(
        self,
        task_type: str | None = None,
        *,
        dedup_key: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[AlertRecord]:
        """Up to ``limit`` alerts, newest first; of ``task_type``, ``dedup_key`` and
        created at or after ``since`` when these are given."""

    def close(self) -> None:
        """Release connections.  Idempotent."""


@runtime_checkable
class Store(DecisionLog, AuditLog, StateStore, Protocol):
    """One store object serving every protocol: what :func:`~paramloop.store.open_store` returns."""
