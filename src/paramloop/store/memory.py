"""An in-memory decision log: the same contract as the SQL stores, nothing durable.

For tests, benchmarks of the bare loop, and library users who log elsewhere.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace

from paramloop.errors import (
    ConflictingOutcomeError,
    DuplicateRequestError,
    StoreError,
    UnknownRequestError,
)
from paramloop.store.base import LoggedRow, OutcomeRow
from paramloop.types import Decision, PolicySnapshot, RecordedOutcome


class MemoryDecisionLog:
    """Dict-backed :class:`~paramloop.store.base.DecisionLog` (thread-safe, not durable)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._decisions: dict[str, Decision] = {}
        self._outcomes: dict[str, RecordedOutcome] = {}
        self._by_seq: list[RecordedOutcome] = []
        self._snapshots: dict[str, PolicySnapshot] = {}
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the in-memory store is closed")

    def append_decision(self, decision: Decision) -> None:
        with self._lock:
            self._check_open()
            if decision.request_id in self._decisions:
                raise DuplicateRequestError(decision.request_id)
            self._decisions[decision.request_id] = decision

    def append_decisions(self, decisions: list[Decision]) -> None:
        with self._lock:
            self._check_open()
            seen: set[str] = set()
            for decision in decisions:
                if decision.request_id in self._decisions or decision.request_id in seen:
                    raise DuplicateRequestError(decision.request_id)
                seen.add(decision.request_id)
            for decision in decisions:
                self._decisions[decision.request_id] = decision

    def get_decision(self, request_id: str) -> Decision | None:
        self._check_open()
        return self._decisions.get(request_id)

    def attach_outcome(self, recorded: RecordedOutcome) -> tuple[RecordedOutcome, bool]:
        with self._lock:
            self._check_open()
            if recorded.request_id not in self._decisions:
                raise UnknownRequestError(recorded.request_id)
            existing = self._outcomes.get(recorded.request_id)
            if existing is not None:
                if _same(existing, recorded):
                    return existing, False
                raise ConflictingOutcomeError(recorded.request_id)
            stored = replace(recorded, seq=len(self._by_seq) + 1)
            self._outcomes[recorded.request_id] = stored
            self._by_seq.append(stored)
            return stored, True

    def get_outcome(self, request_id: str) -> RecordedOutcome | None:
        self._check_open()
        return self._outcomes.get(request_id)

    def outcomes_since(self, task_type: str, after_seq: int, limit: int) -> list[OutcomeRow]:
        self._check_open()
        rows: list[OutcomeRow] = []
        for recorded in self._by_seq[max(after_seq, 0) :]:
            if recorded.task_type == task_type:
                rows.append((self._decisions[recorded.request_id], recorded))
                if len(rows) >= limit:
                    break
        return rows

    def pending_decisions(self, task_type: str, before: float, limit: int) -> list[Decision]:
        self._check_open()
        pending = [
            d
            for d in self._decisions.values()
            if d.task_type == task_type
            and d.timestamp < before
            and d.request_id not in self._outcomes
        ]
        pending.sort(key=lambda d: d.timestamp)
        return pending[:limit]

    def iter_logged(
        self,
        task_type: str,
        start: float | None = None,
        end: float | None = None,
        chunk_size: int = 10_000,
    ) -> Iterator[list[LoggedRow]]:
        self._check_open()
        rows = [
            (d, self._outcomes.get(d.request_id))
            for d in self._decisions.values()
            if d.task_type == task_type
            and (start is None or d.timestamp >= start)
            and (end is None or d.timestamp < end)
        ]
        for i in range(0, len(rows), chunk_size):
            yield rows[i : i + chunk_size]

    def count_decisions(self, task_type: str | None = None) -> int:
        self._check_open()
        if task_type is None:
            return len(self._decisions)
        return sum(1 for d in self._decisions.values() if d.task_type == task_type)

    def save_snapshot(self, snapshot: PolicySnapshot) -> None:
        with self._lock:
            self._check_open()
            self._snapshots[snapshot.task_type] = snapshot

    def latest_snapshot(self, task_type: str) -> PolicySnapshot | None:
        self._check_open()
        return self._snapshots.get(task_type)

    def close(self) -> None:
        self._closed = True


def _same(a: RecordedOutcome, b: RecordedOutcome) -> bool:
    return (a.outcome, a.reward, a.reward_version, a.source) == (
        b.outcome,
        b.reward,
        b.reward_version,
        b.source,
    )


__all__ = ["MemoryDecisionLog"]
