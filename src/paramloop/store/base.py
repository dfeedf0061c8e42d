"""The storage seam: one protocol for the decision log and the policy snapshots.

Every implementation (SQLite, PostgreSQL) passes the contract suite in
``tests/test_store_contract.py``.  Stores hold rows, not math: rewards arrive
already computed, snapshots arrive already serialized.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from paramloop.types import Decision, PolicySnapshot, RecordedOutcome

#: A logged decision joined with its outcome (``None`` while none has arrived).
LoggedRow = tuple[Decision, RecordedOutcome | None]
#: A logged decision with its (present) outcome.
OutcomeRow = tuple[Decision, RecordedOutcome]


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

    def count_decisions(self, task_type: str | None = None) -> int:
        """Number of logged decisions (of one task type, or all)."""

    def save_snapshot(self, snapshot: PolicySnapshot) -> None:
        """Store a policy snapshot (snapshots are append-only history)."""

    def latest_snapshot(self, task_type: str) -> PolicySnapshot | None:
        """The most recent snapshot of a task type's policy, or ``None``."""

    def close(self) -> None:
        """Release connections.  Idempotent."""
