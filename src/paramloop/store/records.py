"""What every store can hold exactly, and the rows of the audit log.

Pure Python (no database driver), so the in-memory store applies the same
rules as the SQL stores: an audit record is validated and turned into its row
here, and read back from its row here, by every backend.  A record therefore
reads back equal on every backend, and a record one backend refuses is
refused by all of them.

The JSON fields of an audit record (``report``, ``evidence``,
``policy_versions``) hold JSON data that reads back equal: mappings with
string keys, lists, strings, integers, floats (not NaN), booleans and
``None``.  Anything else is refused instead of being changed on the way in
(a tuple would read back as a list, an integer key as a string).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from paramloop.errors import ConfigError, StoreError
from paramloop.types import (
    AlertRecord,
    GateReportRecord,
    ProvenanceRecord,
    RecordedOutcome,
    StateRecord,
)

#: Values of ``gate_reports.verdict`` (the values of ``paramloop.core.gates.Verdict``).
VERDICTS = ("pass", "fail", "inconclusive")


def storable_text(field: str, value: str) -> str:
    """``value`` if every database holds it exactly, else a :class:`StoreError`."""
    if "\x00" in value:
        raise StoreError(f"cannot store {field} {value!r}: PostgreSQL text cannot hold NUL (\\x00)")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise StoreError(
                f"cannot store {field} {value!r}: it holds a lone surrogate, which is not UTF-8"
            ) from None
    return value


def storable_real(field: str, value: float) -> float:
    """``value`` unless it is a NaN, which SQLite would store as NULL."""
    if math.isnan(value):
        raise StoreError(
            f"cannot store {field}: NaN does not round-trip (SQLite stores it as NULL)"
        )
    return value


def dumps(value: object) -> str:
    """Compact JSON; it keeps each float's ``repr``, so floats read back bit for bit."""
    return json.dumps(value, separators=(",", ":"))


# -- audit records <-> rows ----------------------------------------------------------


def gate_report_row(report: GateReportRecord) -> dict[str, Any]:
    """The ``gate_reports`` row of ``report`` (without its id), or the error that refuses it.

    Raises :class:`ConfigError` for an empty ``task_type``, ``candidate`` or
    ``baseline``, a verdict other than ``pass``, ``fail`` or ``inconclusive``
    and an ``id`` other than 0 (the store assigns it), and
    :class:`StoreError` for a value no database holds exactly.
    """
    _check_unsaved("gate_report", report.id)
    if not isinstance(report.verdict, str) or report.verdict not in VERDICTS:
        raise ConfigError(
            "gate_report.verdict", f"must be one of {', '.join(VERDICTS)}, got {report.verdict!r}"
        )
    return {
        "task_type": _required_text("gate_report.task_type", report.task_type),
        "candidate": _required_text("gate_report.candidate", report.candidate),
        "baseline": _required_text("gate_report.baseline", report.baseline),
        # The tuple's own string: a str-valued enum member is stored as its value.
        "verdict": VERDICTS[VERDICTS.index(report.verdict)],
        "report": _json_object("gate_report.report", report.report),
        "created_at": _real_number("gate_report.created_at", report.created_at),
    }


def gate_report_from_row(row: Mapping[Any, Any]) -> GateReportRecord:
    return GateReportRecord(
        task_type=row["task_type"],
        candidate=row["candidate"],
        baseline=row["baseline"],
        verdict=row["verdict"],
        report=json.loads(row["report"]),
        created_at=float(row["created_at"]),
        id=int(row["id"]),
    )


def provenance_row(record: ProvenanceRecord) -> dict[str, Any]:
    """The ``provenance`` row of ``record`` (without its id), or the error that refuses it.

    Raises :class:`ConfigError` for an empty ``kind``, ``task_type`` or
    ``actor``, a ``policy_versions`` that does not map strings to strings and
    an ``id`` other than 0, and :class:`StoreError` for a value no database
    holds exactly.  ``reason`` may be empty.
    """
    _check_unsaved("provenance", record.id)
    versions = record.policy_versions
    if not isinstance(versions, Mapping):
        raise ConfigError(
            "provenance.policy_versions",
            f"must map role to policy version, got {type(versions).__name__}",
        )
    for role, version in versions.items():
        if not isinstance(role, str) or not isinstance(version, str):
            raise ConfigError(
                "provenance.policy_versions",
                f"must map strings to strings, got {role!r}: {version!r}",
            )
    return {
        "kind": _required_text("provenance.kind", record.kind),
        "task_type": _required_text("provenance.task_type", record.task_type),
        "actor": _required_text("provenance.actor", record.actor),
        "reason": storable_text("provenance.reason", _string("provenance.reason", record.reason)),
        "evidence": _json_object("provenance.evidence", record.evidence),
        "policy_versions": _json_object("provenance.policy_versions", versions),
        "timestamp": _real_number("provenance.timestamp", record.timestamp),
    }


def provenance_from_row(row: Mapping[Any, Any]) -> ProvenanceRecord:
    return ProvenanceRecord(
        kind=row["kind"],
        task_type=row["task_type"],
        actor=row["actor"],
        reason=row["reason"],
        evidence=json.loads(row["evidence"]),
        policy_versions=json.loads(row["policy_versions"]),
        timestamp=float(row["timestamp"]),
        id=int(row["id"]),
    )


#: Values of ``alerts.severity``.
SEVERITIES = ("info", "warning", "critical")


def state_row(record: StateRecord) -> dict[str, Any]:
    """The ``engine_state`` row of ``record`` (without its version), or the error that refuses it."""
    return {
        "kind": _required_text("state.kind", record.kind),
        "key": _required_text("state.key", record.key),
        "data": _json_object("state.data", record.data),
        "updated_at": _real_number("state.updated_at", record.updated_at),
    }


def state_from_row(row: Mapping[Any, Any]) -> StateRecord:
    return StateRecord(
        kind=row["kind"],
        key=row["key"],
        data=json.loads(row["data"]),
        updated_at=float(row["updated_at"]),
        version=int(row["version"]),
    )


def alert_row(alert: AlertRecord) -> dict[str, Any]:
    """The ``alerts`` row of ``alert`` (without its id), or the error that refuses it."""
    _check_unsaved("alert", alert.id)
    if alert.severity not in SEVERITIES:
        raise ConfigError(
            "alert.severity", f"must be one of {', '.join(SEVERITIES)}, got {alert.severity!r}"
        )
    return {
        "severity": SEVERITIES[SEVERITIES.index(alert.severity)],
        "kind": _required_text("alert.kind", alert.kind),
        "task_type": _required_text("alert.task_type", alert.task_type),
        "message": storable_text("alert.message", _string("alert.message", alert.message)),
        "evidence": _json_object("alert.evidence", alert.evidence),
        "dedup_key": _required_text("alert.dedup_key", alert.dedup_key),
        "created_at": _real_number("alert.created_at", alert.created_at),
    }


def alert_from_row(row: Mapping[Any, Any]) -> AlertRecord:
    return AlertRecord(
        severity=row["severity"],
        kind=row["kind"],
        task_type=row["task_type"],
        message=row["message"],
        evidence=json.loads(row["evidence"]),
        dedup_key=row["dedup_key"],
        created_at=float(row["created_at"]),
        id=int(row["id"]),
    )


def check_expected_version(expected_version: object) -> int:
    if isinstance(expected_version, bool) or not isinstance(expected_version, int):
        raise ConfigError("expected_version", f"must be an integer, got {expected_version!r}")
    if expected_version < 0:
        raise ConfigError("expected_version", f"must be ≥ 0, got {expected_version!r}")
    return expected_version


# -- checks ----------------------------------------------------------------------------


def _check_unsaved(record: str, record_id: int) -> None:
    if record_id != 0:
        raise ConfigError(
            f"{record}.id",
            f"is assigned by the store; a record to save has id 0, got {record_id!r} "
            "(records are never updated)",
        )


def _string(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(field, f"must be a string, got {type(value).__name__}")
    return value


def _required_text(field: str, value: object) -> str:
    text = _string(field, value)
    if not text.strip():
        raise ConfigError(field, f"must not be empty, got {text!r}")
    return storable_text(field, text)


def _real_number(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(field, f"must be a number (epoch seconds), got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        raise ConfigError(field, f"is too large for a double, got {value!r}") from None
    return storable_real(field, number)


def _json_object(field: str, value: object) -> str:
    if not isinstance(value, Mapping):
        raise StoreError(
            f"cannot store {field}: must be a mapping (a JSON object), got {type(value).__name__}"
        )
    try:
        return dumps(_json_data(field, value, ancestors=set()))
    except RecursionError:
        raise StoreError(f"cannot store {field}: it is nested too deeply") from None


def _json_data(path: str, value: object, ancestors: set[int]) -> object:
    """``value`` as plain JSON data, or a :class:`StoreError` naming what is not.

    Refuses what JSON cannot encode and what would read back different; any
    mapping becomes a dict (``json`` encodes only dicts).
    """
    if value is None or isinstance(value, str | int):  # bool is an int
        return value
    if isinstance(value, float):
        if math.isnan(value):
            raise StoreError(f"cannot store {path}: NaN is not JSON and never reads back equal")
        return value
    if not isinstance(value, Mapping | list):
        hint = " (use a list)" if isinstance(value, tuple) else ""
        raise StoreError(
            f"cannot store {path}: {type(value).__name__} is not JSON data{hint}; "
            "use mappings with string keys, lists, str, int, float, bool or None"
        )
    if id(value) in ancestors:
        raise StoreError(f"cannot store {path}: it contains itself")
    ancestors.add(id(value))
    data: object
    if isinstance(value, Mapping):
        mapping: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise StoreError(
                    f"cannot store {path}: key {key!r} is a {type(key).__name__}; "
                    "JSON keys are strings"
                )
            mapping[key] = _json_data(f"{path}[{key!r}]", item, ancestors)
        data = mapping
    else:
        data = [_json_data(f"{path}[{i}]", item, ancestors) for i, item in enumerate(value)]
    ancestors.discard(id(value))
    return data


__all__ = [
    "VERDICTS",
    "dumps",
    "gate_report_from_row",
    "gate_report_row",
    "provenance_from_row",
    "provenance_row",
    "storable_real",
    "storable_text",
]


def same_outcome(stored: RecordedOutcome, new: RecordedOutcome) -> bool:
    """Whether ``new`` records what ``stored`` recorded (its timestamp and seq say only when)."""
    return (
        stored.outcome == new.outcome
        and stored.reward == new.reward
        and stored.reward_version == new.reward_version
        and stored.source == new.source
    )
