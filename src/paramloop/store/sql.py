"""The decision log on SQLAlchemy Core, shared by the SQLite and PostgreSQL stores.

:class:`SQLDecisionLog` holds every query and every conversion between values
and rows.  A backend says only how to open a transaction
(:meth:`SQLDecisionLog._begin`), how to keep outcome sequence numbers in
commit order (:meth:`SQLDecisionLog._serialize_outcomes`) and how to let go of
its connections (:meth:`SQLDecisionLog._release`).

Values round-trip exactly: floats are stored as double precision and JSON
keeps their ``repr``; the unsigned 64-bit context fingerprint is stored as a
signed BIGINT and mapped back.  Values a backend cannot hold exactly (a NaN,
which SQLite stores as NULL; a NUL character, which PostgreSQL text refuses;
a lone surrogate, which is not UTF-8; an integer outside 64 bits) are refused with a
:class:`~paramloop.errors.StoreError` on every backend, so both backends keep
the same contract.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Insert,
    RowMapping,
    Select,
    and_,
    bindparam,
    case,
    func,
    select,
    tuple_,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
    TimeoutError,
)

from paramloop.errors import (
    ConfigError,
    ConflictingOutcomeError,
    DuplicateRequestError,
    OutcomeError,
    StaleStateError,
    StoreError,
    StoreUnavailableError,
    UnknownRequestError,
)
from paramloop.store.base import (
    EvaluationRow,
    LoggedRow,
    LogSummary,
    MeasuredRow,
    OutcomeRow,
    check_measured,
)
from paramloop.store.records import (
    alert_from_row,
    alert_row,
    check_expected_version,
    dumps,
    gate_report_from_row,
    gate_report_row,
    provenance_from_row,
    provenance_row,
    same_outcome,
    state_from_row,
    state_row,
    storable_real,
    storable_text,
)
from paramloop.store.schema import (
    OUTCOME_SOURCES,
    alerts,
    engine_state,
    gate_reports,
    logged_decisions,
    measurements,
    outcomes,
    policy_snapshots,
    provenance,
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

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1

# How many request ids one "which of these exist?" query names; SQLite caps
# the number of bound parameters of a statement.
_LOOKUP_CHUNK = 500

_D = logged_decisions.c
_O = outcomes.c
_S = policy_snapshots.c
_G = gate_reports.c
_P = provenance.c
_E = engine_state.c
_A = alerts.c
_M = measurements.c

# A decision with its outcome: outcome columns are prefixed ``o_`` because
# both tables have request_id, task_type, error, reward and timestamp.
_OUTCOME_COLUMNS = [column.label(f"o_{column.name}") for column in outcomes.c]
_JOINED_COLUMNS = [*logged_decisions.c, *_OUTCOME_COLUMNS]
# What offline evaluation reads (EVALUATION_COLUMNS), then the keyset position.
_EVALUATION_SELECT = [
    _D.timestamp,
    _D.arm,
    _D.log_propensity,
    _D.context_features,
    _D.reward,
    _D.chosen_params,
    _D.policy_version,
    _D.id,
]

# The per-request statements are built once: building a statement costs more
# than SQLite takes to run it.  (Bind names must differ from column names in
# an UPDATE, where those are reserved for the SET clause.)
_INSERT_DECISION = logged_decisions.insert()
_INSERT_OUTCOME = outcomes.insert()
_GET_DECISION = select(logged_decisions).where(_D.request_id == bindparam("b_request_id"))
_GET_OUTCOME = select(outcomes).where(_O.request_id == bindparam("b_request_id"))
# The decision's task type and, when there is one, its outcome: one round trip.
_DECISION_AND_OUTCOME = (
    select(_D.task_type, *_OUTCOME_COLUMNS)
    .select_from(logged_decisions.outerjoin(outcomes, _O.request_id == _D.request_id))
    .where(_D.request_id == bindparam("b_request_id"))
)
_MEASUREMENT_COLUMNS = [column.label(f"m_{column.name}") for column in measurements.c]
_INSERT_MEASUREMENT = measurements.insert()
_GET_MEASUREMENT = select(measurements).where(_M.request_id == bindparam("b_request_id"))
_DECISION_AND_MEASUREMENT = (
    select(_D.task_type, *_MEASUREMENT_COLUMNS)
    .select_from(logged_decisions.outerjoin(measurements, _M.request_id == _D.request_id))
    .where(_D.request_id == bindparam("b_request_id"))
)
_MARK_DECIDED = (
    logged_decisions.update()
    .where(_D.request_id == bindparam("b_request_id"))
    .values(outcome=bindparam("b_outcome"), reward=bindparam("b_reward"))
)


class SQLDecisionLog(ABC):
    """A :class:`~paramloop.store.base.Store` (decision log and audit log) on a SQLAlchemy engine.

    Not meant to be built directly: use :class:`~paramloop.store.SQLiteDecisionLog`,
    :class:`~paramloop.store.PostgresDecisionLog` or
    :func:`~paramloop.store.open_store`.
    """

    #: Backend name used in error messages.
    backend = "SQL"

    def __init__(self, location: str) -> None:
        # ``location`` names the database in error messages; it never holds a password.
        self._location = location
        self._closed = False

    @property
    def location(self) -> str:
        """The database this store writes to (a path, or a URL without its password)."""
        return self._location

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    # -- backend hooks -------------------------------------------------------

    @abstractmethod
    def _begin(self, *, write: bool) -> AbstractContextManager[Connection]:
        """A connection inside a transaction that commits when the block exits cleanly."""

    @abstractmethod
    def _serialize_outcomes(self, connection: Connection, task_type: str) -> None:
        """Make outcomes of ``task_type`` commit in the order of their ``seq``.

        Readers resume from the last ``seq`` they saw; a smaller ``seq``
        committed after a larger one would be skipped for ever.
        """

    @abstractmethod
    def _release(self) -> None:
        """Close the backend's connections."""

    # -- DecisionLog ---------------------------------------------------------

    def append_decision(self, decision: Decision) -> None:
        row = decision_row(decision)
        try:
            with self._transaction("append_decision", write=True, pass_integrity=True) as conn:
                conn.execute(_INSERT_DECISION, row)
        except IntegrityError as exc:
            raise self._duplicate_error("append_decision", [decision.request_id], exc) from exc

    def append_decisions(self, decisions: list[Decision]) -> None:
        self._check_open("append_decisions")
        seen: set[str] = set()
        for decision in decisions:
            if decision.request_id in seen:
                raise DuplicateRequestError(decision.request_id)
            seen.add(decision.request_id)
        if not decisions:
            return
        rows = [decision_row(decision) for decision in decisions]
        try:
            with self._transaction("append_decisions", write=True, pass_integrity=True) as conn:
                conn.execute(_INSERT_DECISION, rows)
        except IntegrityError as exc:
            ids = [decision.request_id for decision in decisions]
            raise self._duplicate_error("append_decisions", ids, exc) from exc

    def get_decision(self, request_id: str) -> Decision | None:
        with self._transaction("get_decision", write=False) as conn:
            row = conn.execute(_GET_DECISION, {"b_request_id": request_id}).mappings().one_or_none()
        return None if row is None else _decision_from_row(row)

    def attach_outcome(self, recorded: RecordedOutcome) -> tuple[RecordedOutcome, bool]:
        row = outcome_row(recorded)
        try:
            with self._transaction("attach_outcome", write=True, pass_integrity=True) as conn:
                self._serialize_outcomes(conn, recorded.task_type)
                found = (
                    conn.execute(_DECISION_AND_OUTCOME, {"b_request_id": recorded.request_id})
                    .mappings()
                    .one_or_none()
                )
                if found is None:
                    raise UnknownRequestError(recorded.request_id)
                if found["task_type"] != recorded.task_type:
                    raise task_type_mismatch(recorded, found["task_type"])
                if found["o_seq"] is None:
                    key = conn.execute(_INSERT_OUTCOME, row).inserted_primary_key
                    if key is None:
                        raise StoreError(
                            f"attach_outcome: the {self.backend} store did not report the seq "
                            f"of the outcome of {recorded.request_id!r}"
                        )
                    seq = int(key[0])
                    conn.execute(
                        _MARK_DECIDED,
                        {
                            "b_request_id": recorded.request_id,
                            "b_outcome": dumps(recorded.outcome.to_dict()),
                            "b_reward": recorded.reward,
                        },
                    )
                    return replace(recorded, seq=seq), True
                existing = _outcome_from_row(found, prefix="o_")
        except IntegrityError as exc:
            # Another process recorded an outcome for this request between our
            # read and our insert: the unique constraint decided, so compare.
            raced = self.get_outcome(recorded.request_id)
            if raced is None:
                raise self._store_error("attach_outcome", exc) from exc
            existing = raced
        if same_outcome(existing, recorded):
            return existing, False
        raise ConflictingOutcomeError(recorded.request_id)

    def get_outcome(self, request_id: str) -> RecordedOutcome | None:
        with self._transaction("get_outcome", write=False) as conn:
            row = conn.execute(_GET_OUTCOME, {"b_request_id": request_id}).mappings().one_or_none()
        return None if row is None else _outcome_from_row(row)

    def outcomes_since(self, task_type: str, after_seq: int, limit: int) -> list[OutcomeRow]:
        _check_limit("limit", limit, minimum=0)
        query = (
            select(*_JOINED_COLUMNS)
            .select_from(outcomes.join(logged_decisions, _O.request_id == _D.request_id))
            .where(_O.task_type == task_type, _O.seq > after_seq)
            .order_by(_O.seq)
            .limit(limit)
        )
        with self._transaction("outcomes_since", write=False) as conn:
            rows = conn.execute(query).mappings().all()
        return [(_decision_from_row(row), _outcome_from_row(row, prefix="o_")) for row in rows]

    def last_outcome_seq(self, task_type: str) -> int:
        query = select(func.max(_O.seq)).where(_O.task_type == task_type)
        with self._transaction("last_outcome_seq", write=False) as conn:
            return int(conn.execute(query).scalar() or 0)

    def pending_decisions(self, task_type: str, before: float, limit: int) -> list[Decision]:
        _check_limit("limit", limit, minimum=0)
        query = (
            select(logged_decisions)
            .where(_D.task_type == task_type, _D.outcome.is_(None), _D.timestamp < before)
            .order_by(_D.timestamp, _D.id)
            .limit(limit)
        )
        with self._transaction("pending_decisions", write=False) as conn:
            rows = conn.execute(query).mappings().all()
        return [_decision_from_row(row) for row in rows]

    def iter_logged(
        self,
        task_type: str,
        start: float | None = None,
        end: float | None = None,
        chunk_size: int = 10_000,
    ) -> Iterator[list[LoggedRow]]:
        """Stream decisions of a task type in ``[start, end)``, oldest first, in chunks.

        "Oldest" is by timestamp, then by insertion order.  Each chunk is read
        in a short transaction of its own (keyset pagination on
        ``(timestamp, id)``), so a slow consumer never holds a transaction open
        and never holds more than one chunk in memory; rows logged while the
        iteration runs are included if they sort after the current position.
        """
        self._check_open("iter_logged")
        _check_limit("chunk_size", chunk_size, minimum=1)
        window: list[ColumnElement[bool]] = [_D.task_type == task_type]
        if start is not None:
            window.append(_D.timestamp >= start)
        if end is not None:
            window.append(_D.timestamp < end)
        query = (
            select(*_JOINED_COLUMNS)
            .select_from(logged_decisions.outerjoin(outcomes, _O.request_id == _D.request_id))
            .order_by(_D.timestamp, _D.id)
            .limit(chunk_size)
        )
        return self._iter_chunks(query, window, chunk_size)

    def iter_evaluation_rows(
        self,
        task_type: str,
        start: float | None = None,
        end: float | None = None,
        chunk_size: int = 50_000,
    ) -> Iterator[list[EvaluationRow]]:
        """As :meth:`iter_logged` (same order, same keyset pagination), as plain tuples."""
        self._check_open("iter_evaluation_rows")
        _check_limit("chunk_size", chunk_size, minimum=1)
        return self._iter_evaluation_chunks(task_type, start, end, chunk_size)

    def _iter_evaluation_chunks(
        self, task_type: str, start: float | None, end: float | None, chunk_size: int
    ) -> Iterator[list[EvaluationRow]]:
        window = [*_window(task_type, start, end), _D.applied.is_(True), _D.reward.is_not(None)]
        query = select(*_EVALUATION_SELECT).order_by(_D.timestamp, _D.id).limit(chunk_size)
        after: ColumnElement[bool] | None = None
        while True:
            conditions = window if after is None else [*window, after]
            with self._transaction("iter_evaluation_rows", write=False) as conn:
                rows = conn.execute(query.where(and_(*conditions))).all()
            if not rows:
                return
            yield [tuple(row)[:-1] for row in rows]
            after = tuple_(_D.timestamp, _D.id) > tuple_(rows[-1][0], rows[-1][-1])
            if len(rows) < chunk_size:
                return

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
        window = _window(task_type, start, end)
        decisions = select(func.count(), func.count(_D.reward)).where(*window)
        tokens = func.coalesce(_O.prompt_tokens, 0) + func.coalesce(_O.completion_tokens, 0)
        breaches = [
            func.coalesce(func.sum(case((value > limit, 1), else_=0)), 0)
            for value, limit in (
                (func.coalesce(_O.latency_ms, 0.0), max_latency_ms),
                (tokens, max_tokens),
                (func.coalesce(_O.cost, 0.0), max_cost),
            )
            if limit is not None
        ]
        outcome_counts = select(
            func.coalesce(func.sum(case((_O.source == "default", 1), else_=0)), 0), *breaches
        ).where(_O.task_type == task_type)
        if start is not None or end is not None:
            # The window is on the decisions' time: join them (outcomes alone need no join).
            outcome_counts = outcome_counts.select_from(
                outcomes.join(logged_decisions, _D.request_id == _O.request_id)
            ).where(*window[1:])
        with self._transaction("summarize_log", write=False) as conn:
            n, with_outcome = conn.execute(decisions).one()
            counted = conn.execute(outcome_counts).one()
        return LogSummary(
            decisions=int(n),
            outcomes=int(with_outcome),
            defaulted=int(counted[0]),
            violations=sum(int(v) for v in counted[1:]),
        )

    def import_logged(self, rows: list[LoggedRow]) -> int:
        self._check_open("import_logged")
        seen: set[str] = set()
        for decision, recorded in rows:
            if decision.request_id in seen:
                raise DuplicateRequestError(decision.request_id)
            seen.add(decision.request_id)
            if recorded is not None:
                _check_outcome_matches(decision, recorded)
        if not rows:
            return 0
        decision_rows = []
        outcome_rows = []
        for decision, recorded in rows:
            row = decision_row(decision)
            row["outcome"] = row["reward"] = None  # every row of an executemany binds the same keys
            if recorded is not None:
                outcome_rows.append(outcome_row(recorded))
                row["outcome"] = dumps(recorded.outcome.to_dict())
                row["reward"] = recorded.reward
            decision_rows.append(row)
        try:
            with self._transaction("import_logged", write=True, pass_integrity=True) as conn:
                conn.execute(_INSERT_DECISION, decision_rows)
                if outcome_rows:
                    conn.execute(_INSERT_OUTCOME, outcome_rows)
        except IntegrityError as exc:
            raise self._duplicate_error("import_logged", sorted(seen), exc) from exc
        return len(rows)

    def count_decisions(self, task_type: str | None = None) -> int:
        query = select(func.count()).select_from(logged_decisions)
        if task_type is not None:
            query = query.where(_D.task_type == task_type)
        with self._transaction("count_decisions", write=False) as conn:
            return int(conn.execute(query).scalar_one())

    def save_measurement(
        self, request_id: str, task_type: str, measured: Outcome, timestamp: float
    ) -> bool:
        row = measurement_row(request_id, task_type, measured, timestamp)
        try:
            with self._transaction("save_measurement", write=True, pass_integrity=True) as conn:
                found = (
                    conn.execute(_DECISION_AND_MEASUREMENT, {"b_request_id": request_id})
                    .mappings()
                    .one_or_none()
                )
                if found is None:
                    raise UnknownRequestError(request_id)
                if found["task_type"] != task_type:
                    raise measurement_task_type_mismatch(request_id, task_type, found["task_type"])
                if found["m_request_id"] is None:
                    conn.execute(_INSERT_MEASUREMENT, row)
                    return True
                existing = _measurement_from_row(found, prefix="m_")
        except IntegrityError as exc:
            # Saved by another process between our read and our insert.
            raced = self.get_measurement(request_id)
            if raced is None:
                raise self._store_error("save_measurement", exc) from exc
            existing = raced
        if existing == measured:
            return False
        raise ConflictingOutcomeError(request_id)

    def get_measurement(self, request_id: str) -> Outcome | None:
        with self._transaction("get_measurement", write=False) as conn:
            row = (
                conn.execute(_GET_MEASUREMENT, {"b_request_id": request_id})
                .mappings()
                .one_or_none()
            )
        return None if row is None else _measurement_from_row(row)

    def pending_measurements(self, task_type: str, before: float, limit: int) -> list[MeasuredRow]:
        _check_limit("limit", limit, minimum=0)
        query = (
            select(logged_decisions, *_MEASUREMENT_COLUMNS)
            .select_from(logged_decisions.join(measurements, _M.request_id == _D.request_id))
            .where(_D.task_type == task_type, _D.outcome.is_(None), _D.timestamp < before)
            .order_by(_D.timestamp, _D.id)
            .limit(limit)
        )
        with self._transaction("pending_measurements", write=False) as conn:
            rows = conn.execute(query).mappings().all()
        return [(_decision_from_row(row), _measurement_from_row(row, prefix="m_")) for row in rows]

    def save_snapshot(self, snapshot: PolicySnapshot) -> None:
        row = {
            "task_type": storable_text("snapshot.task_type", snapshot.task_type),
            "policy_version": storable_text("snapshot.policy", snapshot.policy),
            "revision": _int64("snapshot.revision", snapshot.revision),
            "last_outcome_seq": _int64("snapshot.last_outcome_seq", snapshot.last_outcome_seq),
            "state": bytes(snapshot.state),
            "timestamp": storable_real("snapshot.timestamp", snapshot.timestamp),
        }
        with self._transaction("save_snapshot", write=True) as conn:
            conn.execute(policy_snapshots.insert(), row)

    def latest_snapshot(self, task_type: str) -> PolicySnapshot | None:
        query = (
            select(policy_snapshots)
            .where(_S.task_type == task_type)
            .order_by(_S.id.desc())
            .limit(1)
        )
        with self._transaction("latest_snapshot", write=False) as conn:
            row = conn.execute(query).mappings().one_or_none()
        if row is None:
            return None
        return PolicySnapshot(
            task_type=row["task_type"],
            policy=row["policy_version"],
            revision=int(row["revision"]),
            last_outcome_seq=int(row["last_outcome_seq"]),
            state=bytes(row["state"]),
            timestamp=float(row["timestamp"]),
        )

    # -- AuditLog ------------------------------------------------------------

    def save_gate_report(self, report: GateReportRecord) -> GateReportRecord:
        row = gate_report_row(report)
        with self._transaction("save_gate_report", write=True) as conn:
            row["id"] = self._insert_returning_id(conn, gate_reports.insert(), row)
        return gate_report_from_row(row)

    def get_gate_report(self, report_id: int) -> GateReportRecord | None:
        if not _INT64_MIN <= report_id <= _INT64_MAX:
            return None  # no row has it, and the driver would refuse the parameter
        query = select(gate_reports).where(_G.id == report_id)
        with self._transaction("get_gate_report", write=False) as conn:
            row = conn.execute(query).mappings().one_or_none()
        return None if row is None else gate_report_from_row(row)

    def latest_gate_report(self, task_type: str) -> GateReportRecord | None:
        query = (
            select(gate_reports).where(_G.task_type == task_type).order_by(_G.id.desc()).limit(1)
        )
        with self._transaction("latest_gate_report", write=False) as conn:
            row = conn.execute(query).mappings().one_or_none()
        return None if row is None else gate_report_from_row(row)

    def append_provenance(self, record: ProvenanceRecord) -> ProvenanceRecord:
        row = provenance_row(record)
        with self._transaction("append_provenance", write=True) as conn:
            row["id"] = self._insert_returning_id(conn, provenance.insert(), row)
        return provenance_from_row(row)

    def list_provenance(
        self, task_type: str | None = None, kind: str | None = None, limit: int = 100
    ) -> list[ProvenanceRecord]:
        _check_limit("limit", limit, minimum=0)
        query = select(provenance).order_by(_P.id.desc()).limit(limit)
        if task_type is not None:
            query = query.where(_P.task_type == task_type)
        if kind is not None:
            query = query.where(_P.kind == kind)
        with self._transaction("list_provenance", write=False) as conn:
            rows = conn.execute(query).mappings().all()
        return [provenance_from_row(row) for row in rows]

    # -- StateStore ----------------------------------------------------------

    def get_state(self, kind: str, key: str) -> StateRecord | None:
        query = select(engine_state).where(_E.kind == kind, _E.key == key)
        with self._transaction("get_state", write=False) as conn:
            row = conn.execute(query).mappings().one_or_none()
        return None if row is None else state_from_row(row)

    def put_state(self, record: StateRecord, expected_version: int) -> StateRecord:
        expected = check_expected_version(expected_version)
        row = {**state_row(record), "version": expected + 1}
        found: int | None = None
        try:
            with self._transaction("put_state", write=True, pass_integrity=True) as conn:
                if expected == 0:
                    conn.execute(engine_state.insert(), row)
                else:
                    changed = conn.execute(
                        engine_state.update()
                        .where(_E.kind == row["kind"], _E.key == row["key"], _E.version == expected)
                        .values(
                            data=row["data"], version=row["version"], updated_at=row["updated_at"]
                        )
                    ).rowcount
                    if changed != 1:
                        current = conn.execute(
                            select(_E.version).where(_E.kind == row["kind"], _E.key == row["key"])
                        ).scalar_one_or_none()
                        found = 0 if current is None else int(current)
        except IntegrityError:
            current_record = self.get_state(row["kind"], row["key"])
            found = 0 if current_record is None else current_record.version
        if found is not None:
            raise StaleStateError(row["kind"], row["key"], expected, found)
        return state_from_row(row)

    def list_states(self, kind: str) -> list[StateRecord]:
        query = select(engine_state).where(_E.kind == kind).order_by(_E.key)
        with self._transaction("list_states", write=False) as conn:
            rows = conn.execute(query).mappings().all()
        return [state_from_row(row) for row in rows]

    def append_alert(self, alert: AlertRecord) -> AlertRecord:
        row = alert_row(alert)
        with self._transaction("append_alert", write=True) as conn:
            row["id"] = self._insert_returning_id(conn, alerts.insert(), row)
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
        query = select(alerts).order_by(_A.id.desc()).limit(limit)
        if task_type is not None:
            query = query.where(_A.task_type == task_type)
        if dedup_key is not None:
            query = query.where(_A.dedup_key == dedup_key)
        if since is not None:
            query = query.where(_A.created_at >= since)
        with self._transaction("list_alerts", write=False) as conn:
            rows = conn.execute(query).mappings().all()
        return [alert_from_row(row) for row in rows]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._release()

    # -- shared machinery ----------------------------------------------------

    def _iter_chunks(
        self, query: Select[Any], window: list[ColumnElement[bool]], chunk_size: int
    ) -> Iterator[list[LoggedRow]]:
        after: ColumnElement[bool] | None = None
        while True:
            conditions = window if after is None else [*window, after]
            with self._transaction("iter_logged", write=False) as conn:
                rows = conn.execute(query.where(and_(*conditions))).mappings().all()
            if not rows:
                return
            yield [_logged_row(row) for row in rows]
            last = rows[-1]
            # A row-value comparison, not the equivalent OR: PostgreSQL seeks
            # the index to a row value, but only filters an OR, which would
            # rescan the task type from its first row for every chunk.
            after = tuple_(_D.timestamp, _D.id) > tuple_(last["timestamp"], last["id"])
            if len(rows) < chunk_size:
                return

    def _check_open(self, operation: str) -> None:
        if self._closed:
            raise StoreError(f"{operation}: the {self.backend} store at {self._location} is closed")

    @contextmanager
    def _transaction(
        self, operation: str, *, write: bool, pass_integrity: bool = False
    ) -> Iterator[Connection]:
        """One transaction, with driver failures turned into :class:`StoreError`.

        With ``pass_integrity`` an :class:`IntegrityError` propagates as it is,
        for callers that turn a unique-constraint violation into a domain error.
        """
        self._check_open(operation)
        try:
            with self._begin(write=write) as conn:
                yield conn
        except SQLAlchemyError as exc:
            if pass_integrity and isinstance(exc, IntegrityError):
                raise
            raise self._store_error(operation, exc) from exc

    def _insert_returning_id(self, conn: Connection, insert: Insert, row: dict[str, Any]) -> int:
        key = conn.execute(insert, row).inserted_primary_key
        if key is None:
            raise StoreError(
                f"the {self.backend} store at {self._location} did not report the id of the "
                f"row it inserted into {insert.table.name}"
            )
        return int(key[0])

    def _store_error(self, operation: str, exc: SQLAlchemyError) -> StoreError:
        """The store error for a driver failure: unavailable when retrying later can succeed.

        Connection failures, timeouts (statement, lock, pool), a locked SQLite
        file and a server shutting down are :class:`StoreUnavailableError`;
        anything about the data is a plain :class:`StoreError`.
        """
        unavailable = isinstance(exc, OperationalError | InterfaceError | TimeoutError) or (
            isinstance(exc, DBAPIError) and exc.connection_invalidated
        )
        kind = StoreUnavailableError if unavailable else StoreError
        return kind(
            f"{operation} failed on the {self.backend} store at {self._location}: {_describe(exc)}"
        )

    def _duplicate_error(
        self, operation: str, request_ids: Sequence[str], exc: IntegrityError
    ) -> Exception:
        """The error to raise for an integrity violation while appending decisions."""
        existing: set[str] = set()
        for i in range(0, len(request_ids), _LOOKUP_CHUNK):
            chunk = request_ids[i : i + _LOOKUP_CHUNK]
            query = select(_D.request_id).where(_D.request_id.in_(chunk))
            with self._transaction(operation, write=False) as conn:
                existing.update(conn.execute(query).scalars())
        for request_id in request_ids:
            if request_id in existing:
                return DuplicateRequestError(request_id)
        return self._store_error(operation, exc)


# -- values <-> rows -------------------------------------------------------------


def decision_row(decision: Decision) -> dict[str, Any]:
    data = decision.to_dict()
    fingerprint = decision.context_fingerprint
    if not 0 <= fingerprint <= _UINT64_MAX:
        raise StoreError(
            f"cannot store decision {decision.request_id!r}: context_fingerprint must be an "
            f"unsigned 64-bit integer (0 to 2**64 - 1), got {fingerprint!r}"
        )
    seed = decision.seed
    return {
        "request_id": storable_text("request_id", decision.request_id),
        "task_type": storable_text("task_type", decision.task_type),
        "model_name": storable_text("params.model", decision.params.model),
        # Two's complement: BIGINT is signed, the fingerprint is not.
        "context_fingerprint": fingerprint - 2**64 if fingerprint > _INT64_MAX else fingerprint,
        "context_features": _json("context", data["context"]),
        "chosen_params": _json("params", data["params"]),
        "log_propensity": storable_real("propensity", decision.propensity),
        "policy_version": storable_text("policy", decision.policy),
        "timestamp": storable_real("timestamp", decision.timestamp),
        "arm": _int_range("arm", decision.arm, -(2**31), 2**31 - 1),
        "confidence": storable_real("confidence", decision.confidence),
        "policy_revision": _int64("policy_revision", decision.policy_revision),
        "origin": storable_text("origin", decision.origin),
        "phase": storable_text("phase", decision.phase),
        "applied": bool(decision.applied),
        "seed": None if seed is None else _int64("seed", seed),
        "error": None if decision.error is None else storable_text("error", decision.error),
        "schema_version": _int_range(
            "schema_version", decision.schema_version, -(2**31), 2**31 - 1
        ),
        "intended_arm": None
        if decision.intended_arm is None
        else _int_range("intended_arm", decision.intended_arm, -(2**31), 2**31 - 1),
    }


def _decision_from_row(row: RowMapping) -> Decision:
    fingerprint = int(row["context_fingerprint"])
    return Decision.from_dict(
        {
            "request_id": row["request_id"],
            "task_type": row["task_type"],
            "arm": row["arm"],
            "params": json.loads(row["chosen_params"]),
            "propensity": row["log_propensity"],
            "confidence": row["confidence"],
            "policy": row["policy_version"],
            "policy_revision": row["policy_revision"],
            "origin": row["origin"],
            "context": json.loads(row["context_features"]),
            "context_fingerprint": fingerprint + 2**64 if fingerprint < 0 else fingerprint,
            "timestamp": row["timestamp"],
            "seed": row["seed"],
            "phase": row["phase"],
            "applied": row["applied"],
            "error": row["error"],
            "schema_version": row["schema_version"],
            "intended_arm": row["intended_arm"],
        }
    )


def _window(task_type: str, start: float | None, end: float | None) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [_D.task_type == task_type]
    if start is not None:
        conditions.append(_D.timestamp >= start)
    if end is not None:
        conditions.append(_D.timestamp < end)
    return conditions


def _check_outcome_matches(decision: Decision, recorded: RecordedOutcome) -> None:
    """Refuse an imported outcome that belongs to another decision."""
    if recorded.request_id != decision.request_id:
        raise OutcomeError(
            "request_id",
            f"the outcome {recorded.request_id!r} is paired with decision {decision.request_id!r}",
        )
    if recorded.task_type != decision.task_type:
        raise task_type_mismatch(recorded, decision.task_type)


def outcome_row(recorded: RecordedOutcome) -> dict[str, Any]:
    if recorded.source not in OUTCOME_SOURCES:
        raise OutcomeError(
            "source", f"must be one of {', '.join(OUTCOME_SOURCES)}, got {recorded.source!r}"
        )
    outcome = recorded.outcome
    return {
        "request_id": storable_text("request_id", recorded.request_id),
        "task_type": storable_text("task_type", recorded.task_type),
        "quality": _optional_real("outcome.quality", outcome.quality),
        "latency_ms": _optional_real("outcome.latency_ms", outcome.latency_ms),
        "prompt_tokens": _optional_int64("outcome.prompt_tokens", outcome.prompt_tokens),
        "completion_tokens": _optional_int64(
            "outcome.completion_tokens", outcome.completion_tokens
        ),
        "cost": _optional_real("outcome.cost", outcome.cost),
        "error": bool(outcome.error),
        "feedback": _optional_real("outcome.feedback", outcome.feedback),
        "explicit_reward": _optional_real("outcome.reward", outcome.reward),
        "reward": storable_real("reward", recorded.reward),
        "reward_version": storable_text("reward_version", recorded.reward_version),
        "source": recorded.source,
        "timestamp": storable_real("timestamp", recorded.timestamp),
    }


def _outcome_from_row(row: RowMapping, prefix: str = "") -> RecordedOutcome:
    def col(name: str) -> Any:
        return row[prefix + name]

    return RecordedOutcome(
        request_id=col("request_id"),
        task_type=col("task_type"),
        outcome=Outcome(
            quality=col("quality"),
            latency_ms=col("latency_ms"),
            prompt_tokens=col("prompt_tokens"),
            completion_tokens=col("completion_tokens"),
            cost=col("cost"),
            error=bool(col("error")),
            feedback=col("feedback"),
            reward=col("explicit_reward"),
        ),
        reward=float(col("reward")),
        reward_version=col("reward_version"),
        source=col("source"),
        timestamp=float(col("timestamp")),
        seq=int(col("seq")),
    )


def measurement_row(
    request_id: str, task_type: str, measured: Outcome, timestamp: float
) -> dict[str, Any]:
    check_measured(measured)
    return {
        "request_id": storable_text("request_id", request_id),
        "task_type": storable_text("task_type", task_type),
        "latency_ms": _optional_real("measurement.latency_ms", measured.latency_ms),
        "prompt_tokens": _optional_int64("measurement.prompt_tokens", measured.prompt_tokens),
        "completion_tokens": _optional_int64(
            "measurement.completion_tokens", measured.completion_tokens
        ),
        "cost": _optional_real("measurement.cost", measured.cost),
        "error": bool(measured.error),
        "timestamp": storable_real("timestamp", timestamp),
    }


def _measurement_from_row(row: RowMapping, prefix: str = "") -> Outcome:
    return Outcome(
        latency_ms=row[prefix + "latency_ms"],
        prompt_tokens=row[prefix + "prompt_tokens"],
        completion_tokens=row[prefix + "completion_tokens"],
        cost=row[prefix + "cost"],
        error=bool(row[prefix + "error"]),
    )


def measurement_task_type_mismatch(
    request_id: str, task_type: str, logged_task_type: str
) -> OutcomeError:
    return OutcomeError(
        "task_type",
        f"is {task_type!r} but request_id {request_id!r} was logged under task type "
        f"{logged_task_type!r}",
    )


def _logged_row(row: RowMapping) -> LoggedRow:
    recorded = None if row["o_seq"] is None else _outcome_from_row(row, prefix="o_")
    return _decision_from_row(row), recorded


def task_type_mismatch(recorded: RecordedOutcome, logged_task_type: str) -> OutcomeError:
    return OutcomeError(
        "task_type",
        f"is {recorded.task_type!r} but request_id {recorded.request_id!r} "
        f"was logged under task type {logged_task_type!r}",
    )


def _json(field: str, value: object) -> str:
    try:
        return dumps(value)
    except (TypeError, ValueError) as exc:  # a value JSON cannot encode (a numpy scalar, …)
        raise StoreError(f"cannot store {field}: {exc}") from exc


# -- what a backend can hold -------------------------------------------------------


def _optional_real(field: str, value: float | None) -> float | None:
    return None if value is None else storable_real(field, value)


def _int_range(field: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise StoreError(f"cannot store {field}: must be in [{low}, {high}], got {value!r}")
    return int(value)


def _int64(field: str, value: int) -> int:
    return _int_range(field, value, _INT64_MIN, _INT64_MAX)


def _optional_int64(field: str, value: int | None) -> int | None:
    return None if value is None else _int64(field, value)


def _check_limit(field: str, value: int, *, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(field, f"must be >= {minimum}, got {value!r}")


def _describe(exc: SQLAlchemyError) -> str:
    """The driver's own message, without SQLAlchemy's statement and parameters."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        origin = exc.orig
        return f"{type(origin).__name__}: {str(origin).strip()}"
    return f"{type(exc).__name__}: {exc}"
