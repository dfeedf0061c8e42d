"""An in-memory decision log: the same contract as the SQL stores, nothing durable.

For tests, benchmarks of the bare loop, and library users who log elsewhere.
It passes the contract suite in ``tests/test_store_contract.py`` except what
only a database has (reopening, migrations) and the refusal of values a
database cannot hold exactly (a NaN, a NUL character, an integer outside 64
bits): objects are kept as they are, so every value reads back equal.
Audit records are the exception: they are validated and kept as the rows the
SQL stores would write (:mod:`paramloop.store.records`), so they are refused
and read back exactly as there, and changing a mapping after saving it does
not change the saved record.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from paramloop.errors import (
    ConfigError,
    ConflictingOutcomeError,
    DuplicateRequestError,
    OutcomeError,
    StaleStateError,
    StoreError,
    UnknownRequestError,
)
from paramloop.store.base import (
    EvaluationRow,
    LoggedRow,
    LogSummary,
    MeasuredRow,
    OutcomeRow,
    check_measured,
    evaluation_row,
    summarize_rows,
)
from paramloop.store.records import (
    alert_from_row,
    alert_row,
    check_expected_version,
    gate_report_from_row,
    gate_report_row,
    provenance_from_row,
    provenance_row,
    same_outcome,
    state_from_row,
    state_row,
)
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

# The values of ``outcomes.source`` (``paramloop.store.schema.OUTCOME_SOURCES``),
# repeated here because the schema module imports SQLAlchemy and the engine
# imports this one; the contract suite holds both to the same rule.
_OUTCOME_SOURCES = ("observed", "default")

#: A stored row of the audit log: column name -> value, as in the SQL stores.
_Row = dict[str, Any]

#: A decision's position in "oldest first" order: (timestamp, insertion index).
_Key = tuple[float, int]


class MemoryDecisionLog:
    """List-backed :class:`~paramloop.store.base.Store` (thread-safe, not durable).

    One lock guards every call, reads included: a reader never sees a
    half-applied write, and the SQL stores' orderings hold (insertion order
    stands in for their autoincrement ids).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._log: list[Decision] = []  # insertion order; the index is the row's id
        self._decisions: dict[str, Decision] = {}
        self._outcomes: dict[str, RecordedOutcome] = {}
        self._by_seq: list[RecordedOutcome] = []  # seq n is at index n - 1
        self._snapshots: dict[str, PolicySnapshot] = {}
        self._measurements: dict[str, Outcome] = {}
        self._gate_reports: list[_Row] = []  # id n is at index n - 1
        self._latest_gate_report: dict[str, _Row] = {}
        self._provenance: list[_Row] = []  # id n is at index n - 1
        self._states: dict[tuple[str, str], _Row] = {}
        self._alerts: list[_Row] = []  # id n is at index n - 1
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def append_decision(self, decision: Decision) -> None:
        with self._lock:
            self._check_open("append_decision")
            if decision.request_id in self._decisions:
                raise DuplicateRequestError(decision.request_id)
            self._add(decision)

    def append_decisions(self, decisions: list[Decision]) -> None:
        with self._lock:
            self._check_open("append_decisions")
            # Repeats inside the batch are reported before clashes with the log, as in SQL.
            seen: set[str] = set()
            for decision in decisions:
                if decision.request_id in seen:
                    raise DuplicateRequestError(decision.request_id)
                seen.add(decision.request_id)
            for decision in decisions:
                if decision.request_id in self._decisions:
                    raise DuplicateRequestError(decision.request_id)
            for decision in decisions:
                self._add(decision)

    def get_decision(self, request_id: str) -> Decision | None:
        with self._lock:
            self._check_open("get_decision")
            return self._decisions.get(request_id)

    def attach_outcome(self, recorded: RecordedOutcome) -> tuple[RecordedOutcome, bool]:
        if recorded.source not in _OUTCOME_SOURCES:
            raise OutcomeError(
                "source", f"must be one of {', '.join(_OUTCOME_SOURCES)}, got {recorded.source!r}"
            )
        with self._lock:
            self._check_open("attach_outcome")
            decision = self._decisions.get(recorded.request_id)
            if decision is None:
                raise UnknownRequestError(recorded.request_id)
            if decision.task_type != recorded.task_type:
                raise OutcomeError(
                    "task_type",
                    f"is {recorded.task_type!r} but request_id {recorded.request_id!r} "
                    f"was logged under task type {decision.task_type!r}",
                )
            existing = self._outcomes.get(recorded.request_id)
            if existing is None:
                stored = replace(recorded, seq=len(self._by_seq) + 1)
                self._outcomes[recorded.request_id] = stored
                self._by_seq.append(stored)
                return stored, True
        if same_outcome(existing, recorded):
            return existing, False
        raise ConflictingOutcomeError(recorded.request_id)

    def get_outcome(self, request_id: str) -> RecordedOutcome | None:
        with self._lock:
            self._check_open("get_outcome")
            return self._outcomes.get(request_id)

    def outcomes_since(self, task_type: str, after_seq: int, limit: int) -> list[OutcomeRow]:
        _check_limit("limit", limit, minimum=0)
        with self._lock:
            self._check_open("outcomes_since")
            rows: list[OutcomeRow] = []
            for recorded in self._by_seq[max(after_seq, 0) :]:
                if len(rows) >= limit:
                    break
                if recorded.task_type == task_type:
                    rows.append((self._decisions[recorded.request_id], recorded))
            return rows

    def last_outcome_seq(self, task_type: str) -> int:
        with self._lock:
            self._check_open("last_outcome_seq")
            return next((r.seq for r in reversed(self._by_seq) if r.task_type == task_type), 0)

    def pending_decisions(self, task_type: str, before: float, limit: int) -> list[Decision]:
        _check_limit("limit", limit, minimum=0)
        with self._lock:
            self._check_open("pending_decisions")
            pending = (
                ((d.timestamp, i), d)
                for i, d in enumerate(self._log)
                if d.task_type == task_type
                and d.timestamp < before
                and d.request_id not in self._outcomes
            )
            return [d for _, d in heapq.nsmallest(limit, pending, key=_key_of)]

    def iter_logged(
        self,
        task_type: str,
        start: float | None = None,
        end: float | None = None,
        chunk_size: int = 10_000,
    ) -> Iterator[list[LoggedRow]]:
        """Stream decisions of a task type in ``[start, end)``, oldest first, in chunks.

        As in the SQL stores: arguments and the open state are checked when
        called, each chunk is read when it is asked for (from after the last
        row of the previous one, so rows logged meanwhile are included if they
        sort later), and a store closed in between refuses the next chunk.
        """
        self._check_open("iter_logged")
        _check_limit("chunk_size", chunk_size, minimum=1)
        return self._iter_chunks(task_type, start, end, chunk_size)

    def iter_evaluation_rows(
        self,
        task_type: str,
        start: float | None = None,
        end: float | None = None,
        chunk_size: int = 50_000,
    ) -> Iterator[list[EvaluationRow]]:
        """As :meth:`iter_logged`'s applied decisions with an outcome, as :data:`EvaluationRow`."""
        self._check_open("iter_evaluation_rows")
        _check_limit("chunk_size", chunk_size, minimum=1)
        chunks = self._iter_chunks(task_type, start, end, chunk_size)
        return (
            [evaluation_row(d, o) for d, o in chunk if o is not None and d.applied]
            for chunk in chunks
        )

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
        with self._lock:
            self._check_open("summarize_log")
            rows = [
                (d, self._outcomes.get(d.request_id))
                for d in self._log
                if d.task_type == task_type
                and (start is None or d.timestamp >= start)
                and (end is None or d.timestamp < end)
            ]
        return summarize_rows(rows, max_latency_ms, max_tokens, max_cost)

    def import_logged(self, rows: list[LoggedRow]) -> int:
        for _, recorded in rows:
            if recorded is not None and recorded.source not in _OUTCOME_SOURCES:
                raise OutcomeError(
                    "source",
                    f"must be one of {', '.join(_OUTCOME_SOURCES)}, got {recorded.source!r}",
                )
        with self._lock:
            self._check_open("import_logged")
            seen: set[str] = set()
            for decision, recorded in rows:
                if decision.request_id in seen or decision.request_id in self._decisions:
                    raise DuplicateRequestError(decision.request_id)
                seen.add(decision.request_id)
                if recorded is not None and recorded.request_id != decision.request_id:
                    raise OutcomeError(
                        "request_id",
                        f"the outcome {recorded.request_id!r} is paired with decision "
                        f"{decision.request_id!r}",
                    )
                if recorded is not None and recorded.task_type != decision.task_type:
                    raise OutcomeError(
                        "task_type",
                        f"is {recorded.task_type!r} but request_id {recorded.request_id!r} "
                        f"was logged under task type {decision.task_type!r}",
                    )
            for decision, recorded in rows:
                self._add(decision)
                if recorded is not None:
                    stored = replace(recorded, seq=len(self._by_seq) + 1)
                    self._outcomes[recorded.request_id] = stored
                    self._by_seq.append(stored)
        return len(rows)

    def count_decisions(self, task_type: str | None = None) -> int:
        with self._lock:
            self._check_open("count_decisions")
            if task_type is None:
                return len(self._log)
            return sum(1 for d in self._log if d.task_type == task_type)

    def save_measurement(
        self, request_id: str, task_type: str, measured: Outcome, timestamp: float
    ) -> bool:
        check_measured(measured)
        with self._lock:
            self._check_open("save_measurement")
            decision = self._decisions.get(request_id)
            if decision is None:
                raise UnknownRequestError(request_id)
            if decision.task_type != task_type:
                raise OutcomeError(
                    "task_type",
                    f"is {task_type!r} but request_id {request_id!r} was logged under task "
                    f"type {decision.task_type!r}",
                )
            existing = self._measurements.get(request_id)
            if existing is None:
                self._measurements[request_id] = measured
                return True
        if existing == measured:
            return False
        raise ConflictingOutcomeError(request_id)

    def get_measurement(self, request_id: str) -> Outcome | None:
        with self._lock:
            self._check_open("get_measurement")
            return self._measurements.get(request_id)

    def pending_measurements(self, task_type: str, before: float, limit: int) -> list[MeasuredRow]:
        _check_limit("limit", limit, minimum=0)
        with self._lock:
            self._check_open("pending_measurements")
            pending = (
                ((d.timestamp, i), d)
                for i, d in enumerate(self._log)
                if d.task_type == task_type
                and d.timestamp < before
                and d.request_id in self._measurements
                and d.request_id not in self._outcomes
            )
            chosen = heapq.nsmallest(limit, pending, key=_key_of)
            return [(d, self._measurements[d.request_id]) for _, d in chosen]

    def save_snapshot(self, snapshot: PolicySnapshot) -> None:
        with self._lock:
            self._check_open("save_snapshot")
            # Only the latest is ever read, so the history is not kept.
            self._snapshots[snapshot.task_type] = snapshot

    def latest_snapshot(self, task_type: str) -> PolicySnapshot | None:
        with self._lock:
            self._check_open("latest_snapshot")
            return self._snapshots.get(task_type)

    # -- AuditLog ----------------------------------------------------------------------

    def save_gate_report(self, report: GateReportRecord) -> GateReportRecord:
        row = gate_report_row(report)
        with self._lock:
            self._check_open("save_gate_report")
            row["id"] = len(self._gate_reports) + 1
            self._gate_reports.append(row)
            self._latest_gate_report[row["task_type"]] = row
        return gate_report_from_row(row)

    def get_gate_report(self, report_id: int) -> GateReportRecord | None:
        with self._lock:
            self._check_open("get_gate_report")
            if not 1 <= report_id <= len(self._gate_reports):
                return None
            row = self._gate_reports[report_id - 1]
        return gate_report_from_row(row)

    def latest_gate_report(self, task_type: str) -> GateReportRecord | None:
        with self._lock:
            self._check_open("latest_gate_report")
            row = self._latest_gate_report.get(task_type)
        return None if row is None else gate_report_from_row(row)

    def append_provenance(self, record: ProvenanceRecord) -> ProvenanceRecord:
        row = provenance_row(record)
        with self._lock:
            self._check_open("append_provenance")
            row["id"] = len(self._provenance) + 1
            self._provenance.append(row)
        return provenance_from_row(row)

    def list_provenance(
        self, task_type: str | None = None, kind: str | None = None, limit: int = 100
    ) -> list[ProvenanceRecord]:
        _check_limit("limit", limit, minimum=0)
        with self._lock:
            self._check_open("list_provenance")
            rows: list[_Row] = []
            for row in reversed(self._provenance):
                if len(rows) >= limit:
                    break
                if (task_type is None or row["task_type"] == task_type) and (
                    kind is None or row["kind"] == kind
                ):
                    rows.append(row)
        return [provenance_from_row(row) for row in rows]

    # -- StateStore: kept as the rows the SQL stores would write, like the audit log --

    def get_state(self, kind: str, key: str) -> StateRecord | None:
        with self._lock:
            self._check_open("get_state")
            row = self._states.get((kind, key))
        return None if row is None else state_from_row(row)

    def put_state(self, record: StateRecord, expected_version: int) -> StateRecord:
        expected = check_expected_version(expected_version)
        row = {**state_row(record), "version": expected + 1}
        with self._lock:
            self._check_open("put_state")
            current = self._states.get((row["kind"], row["key"]))
            found = 0 if current is None else int(current["version"])
            if found != expected:
                raise StaleStateError(row["kind"], row["key"], expected, found)
            self._states[(row["kind"], row["key"])] = row
        return state_from_row(row)

    def list_states(self, kind: str) -> list[StateRecord]:
        with self._lock:
            self._check_open("list_states")
            rows = [row for (k, _), row in sorted(self._states.items()) if k == kind]
        return [state_from_row(row) for row in rows]

    def append_alert(self, alert: AlertRecord) -> AlertRecord:
        row = alert_row(alert)
        with self._lock:
            self._check_open("append_alert")
            row["id"] = len(self._alerts) + 1
            self._alerts.append(row)
        return alert_from_row(row)

    def list_alerts(
        self,
        task_type: str | None = None,
        *,
        dedup_key: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[AlertRecord]:
        _check_limit("limit", limit, minimum=0)
        with self._lock:
            self._check_open("list_alerts")
            rows = [
                row
                for row in reversed(self._alerts)
                if (task_type is None or row["task_type"] == task_type)
                and (dedup_key is None or row["dedup_key"] == dedup_key)
                and (since is None or row["created_at"] >= since)
            ][:limit]
        return [alert_from_row(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._closed = True

    # -- internals ----------------------------------------------------------------------

    def _add(self, decision: Decision) -> None:
        self._log.append(decision)
        self._decisions[decision.request_id] = decision

    def _iter_chunks(
        self, task_type: str, start: float | None, end: float | None, chunk_size: int
    ) -> Iterator[list[LoggedRow]]:
        after: _Key | None = None
        while True:
            with self._lock:
                self._check_open("iter_logged")
                window = (
                    ((d.timestamp, i), d)
                    for i, d in enumerate(self._log)
                    if d.task_type == task_type
                    and (start is None or d.timestamp >= start)
                    and (end is None or d.timestamp < end)
                    and (after is None or (d.timestamp, i) > after)
                )
                chunk = heapq.nsmallest(chunk_size, window, key=_key_of)
                rows: list[LoggedRow] = [(d, self._outcomes.get(d.request_id)) for _, d in chunk]
            if not rows:
                return
            yield rows
            after = chunk[-1][0]
            if len(rows) < chunk_size:
                return

    def _check_open(self, operation: str) -> None:
        if self._closed:
            raise StoreError(f"{operation}: the in-memory store is closed")


def _key_of(item: tuple[_Key, Decision]) -> _Key:
    return item[0]


def _check_limit(field: str, value: int, *, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(field, f"must be >= {minimum}, got {value!r}")


__all__ = ["MemoryDecisionLog"]
