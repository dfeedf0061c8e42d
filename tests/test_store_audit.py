"""Contract suite, audit half: gate reports and the append-only provenance trail.

Each test of the ``store`` fixture runs against the in-memory store, SQLite
and PostgreSQL (see ``conftest.py``); what only a database has (reopening it,
its append-only triggers, its CHECK constraint) runs against SQLite and
PostgreSQL.  Migrations of the audit tables are tested with the others in
``test_store_contract.py``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from paramloop.core.gates import Verdict
from paramloop.errors import ConfigError, StoreError
from paramloop.store import Store
from paramloop.store.records import VERDICTS
from paramloop.types import GateReportRecord, ProvenanceRecord

T0 = 1_700_000_000.0
R = TypeVar("R", GateReportRecord, ProvenanceRecord)

NESTED = {
    "gates": [
        {
            "name": "improvement",
            "verdict": "pass",
            "reason": "lower bound +0.0123 ≥ +0.0000 (snips)",
            "evidence": {"lower": 0.1 + 0.2, "upper": 1e308, "tiny": 5e-324, "margin": -0.0},
        },
        {"name": "min_ess", "verdict": "pass", "evidence": {"ess": 1 / 3, "n": 2**70}},
    ],
    "unbounded": math.inf,
    "names": ["日本語 ✓", "nul\x00inside", "lone \ud800 surrogate", ""],
    "empty": {"list": [], "map": {}},
    "flags": [True, False, None],
}


def make_report(**changes: Any) -> GateReportRecord:
    report = GateReportRecord(
        task_type="summarize",
        candidate="linucb@2.0.0#r12",
        baseline="baseline@1",
        verdict="pass",
        report=NESTED,
        created_at=T0 + 0.1,
    )
    return replace(report, **changes)


def make_record(**changes: Any) -> ProvenanceRecord:
    record = ProvenanceRecord(
        kind="gate_approval",
        task_type="summarize",
        actor="rule:auto-approve",
        reason="every gate passed — Ünïcödé reason",
        evidence={"gate_report_id": 7, "slo": {"p99_ms": 812.25, "error_rate": 1e-7}},
        policy_versions={"candidate": "linucb@2.0.0", "baseline": "baseline@1"},
        timestamp=T0 + 0.1,
    )
    return replace(record, **changes)


# -- round trips -----------------------------------------------------------------------


def test_gate_report_reads_back_equal(store: Store) -> None:
    report = make_report()
    saved = store.save_gate_report(report)
    assert saved.id > 0
    assert saved == replace(report, id=saved.id)
    assert store.get_gate_report(saved.id) == saved
    assert store.latest_gate_report("summarize") == saved
    assert math.copysign(1.0, saved.report["gates"][0]["evidence"]["margin"]) == -1.0


def test_provenance_record_reads_back_equal(store: Store) -> None:
    record = make_record(evidence=NESTED, reason="")
    appended = store.append_provenance(record)
    assert appended.id > 0
    assert appended == replace(record, id=appended.id)
    assert store.list_provenance() == [appended]


def test_a_verdict_enum_is_stored_as_its_value(store: Store) -> None:
    assert set(VERDICTS) == {str(verdict) for verdict in Verdict}
    saved = store.save_gate_report(make_report(verdict=Verdict.INCONCLUSIVE))
    stored = store.get_gate_report(saved.id)
    assert stored is not None
    assert type(stored.verdict) is str
    assert stored.verdict == "inconclusive"


def test_saved_records_do_not_follow_later_changes_to_the_callers_mappings(store: Store) -> None:
    evidence: dict[str, Any] = {"figures": [1, 2]}
    appended = store.append_provenance(make_record(evidence=evidence))
    saved = store.save_gate_report(make_report(report=evidence))
    evidence["figures"].append(3)
    evidence["added"] = True
    assert [r.evidence for r in store.list_provenance()] == [{"figures": [1, 2]}]
    assert appended.evidence == {"figures": [1, 2]}
    stored = store.get_gate_report(saved.id)
    assert stored is not None
    assert stored.report == {"figures": [1, 2]}


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(st.characters(), max_size=10)  # NUL and lone surrogates included
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
# Text columns hold UTF-8 without NUL; the stores refuse anything else.
field_text = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12
).filter(str.strip)


@settings(
    max_examples=50,
    deadline=None,
    database=None,
    # One store for all examples on purpose: each example reads back only the
    # records it saved, by id.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    task_type=field_text,
    names=st.tuples(field_text, field_text),
    verdict=st.sampled_from(VERDICTS),
    json_data=st.tuples(json_objects, json_objects),
    versions=st.dictionaries(st.text(max_size=5), st.text(max_size=10), max_size=3),
    reason=field_text | st.just(""),
    when=st.floats(allow_nan=False),
)
def test_any_audit_record_round_trips_exactly(
    store: Store,
    task_type: str,
    names: tuple[str, str],
    verdict: str,
    json_data: tuple[dict[str, Any], dict[str, Any]],
    versions: dict[str, str],
    reason: str,
    when: float,
) -> None:
    report = GateReportRecord(task_type, names[0], names[1], verdict, json_data[0], when)
    saved = store.save_gate_report(report)
    assert saved == replace(report, id=saved.id)
    assert store.get_gate_report(saved.id) == saved

    record = ProvenanceRecord(names[0], task_type, names[1], reason, json_data[1], versions, when)
    appended = store.append_provenance(record)
    assert appended == replace(record, id=appended.id)
    assert store.list_provenance(task_type, names[0], limit=1) == [appended]


# -- ids, latest, listing ----------------------------------------------------------------


def test_ids_increase_in_the_order_records_are_saved(store: Store) -> None:
    reports = [store.save_gate_report(make_report(task_type=f"t{i % 2}")) for i in range(5)]
    records = [store.append_provenance(make_record(task_type=f"t{i % 2}")) for i in range(5)]
    for saved in (reports, records):
        ids = [r.id for r in saved]
        assert ids == sorted(set(ids))
        assert ids[0] > 0
    assert [store.get_gate_report(r.id) for r in reports] == reports
    for missing in (0, -1, reports[-1].id + 1, 2**70):
        assert store.get_gate_report(missing) is None


def test_latest_gate_report_is_the_last_saved_for_its_task_type(store: Store) -> None:
    assert store.latest_gate_report("summarize") is None
    first = store.save_gate_report(make_report(verdict="fail"))
    other = store.save_gate_report(make_report(task_type="code_review", verdict="inconclusive"))
    second = store.save_gate_report(make_report(verdict="pass"))
    assert store.latest_gate_report("summarize") == second
    assert store.latest_gate_report("code_review") == other
    # Latest means saved last, even when created earlier.
    late = store.save_gate_report(make_report(created_at=T0 - 100, candidate="older"))
    assert store.latest_gate_report("summarize") == late
    assert store.get_gate_report(first.id) == first
    assert store.latest_gate_report("unknown_task") is None


def test_list_provenance_is_newest_first_filtered_and_limited(store: Store) -> None:
    assert store.list_provenance() == []
    kinds = ["gate_approval", "phase_change", "rollback"]
    appended = [
        store.append_provenance(
            # Timestamps go backwards: "newest" is appended last, not latest timestamp.
            make_record(kind=kinds[i % 3], task_type=f"t{i % 2}", timestamp=T0 - i)
        )
        for i in range(12)
    ]
    newest_first = appended[::-1]
    assert store.list_provenance() == newest_first
    assert store.list_provenance(limit=5) == newest_first[:5]
    assert store.list_provenance(limit=0) == []
    assert store.list_provenance(task_type="t1") == [r for r in newest_first if r.task_type == "t1"]
    assert store.list_provenance(kind="rollback") == [
        r for r in newest_first if r.kind == "rollback"
    ]
    both = [r for r in newest_first if r.task_type == "t0" and r.kind == "phase_change"]
    assert len(both) == 2
    assert store.list_provenance(task_type="t0", kind="phase_change") == both
    assert store.list_provenance(task_type="t0", kind="phase_change", limit=1) == both[:1]
    assert store.list_provenance(task_type="unknown_task") == []
    with pytest.raises(ConfigError, match="limit"):
        store.list_provenance(limit=-1)


def test_concurrent_appends_get_distinct_ids_and_lose_nothing(store: Store) -> None:
    threads, per_thread = 6, 15
    errors: list[BaseException] = []

    def append(worker: int) -> None:
        try:
            for i in range(per_thread):
                store.append_provenance(make_record(actor=f"w{worker}", reason=str(i)))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=append, args=(w,)) for w in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    listed = store.list_provenance(limit=1_000)
    assert len(listed) == threads * per_thread
    assert [r.id for r in listed] == sorted({r.id for r in listed}, reverse=True)
    for w in range(threads):  # each thread's records in the order it appended them
        mine = [r.reason for r in reversed(listed) if r.actor == f"w{w}"]
        assert mine == [str(i) for i in range(per_thread)]


# -- validation --------------------------------------------------------------------------

_CYCLE: dict[str, Any] = {}
_CYCLE["self"] = [_CYCLE]

INVALID_REPORTS: list[tuple[GateReportRecord, type[Exception], str]] = [
    (make_report(task_type=""), ConfigError, "gate_report.task_type"),
    (make_report(task_type="  "), ConfigError, "gate_report.task_type"),
    (make_report(candidate=""), ConfigError, "gate_report.candidate"),
    (make_report(baseline=""), ConfigError, "gate_report.baseline"),
    (make_report(verdict="passed"), ConfigError, "gate_report.verdict"),
    (make_report(verdict="PASS"), ConfigError, "gate_report.verdict"),
    (make_report(id=3), ConfigError, "gate_report.id"),
    (make_report(created_at=math.nan), StoreError, "gate_report.created_at"),
    (make_report(task_type="nul\x00inside"), StoreError, "gate_report.task_type"),
    (make_report(report={"x": {1, 2}}), StoreError, "gate_report.report['x']"),
    (make_report(report={"x": (1, 2)}), StoreError, "gate_report.report['x']"),
    (make_report(report={"n": [0.5, math.nan]}), StoreError, r"gate_report.report['n'][1]"),
    (make_report(report={"a": {1: "one"}}), StoreError, "gate_report.report['a']"),
    (make_report(report=[1, 2]), StoreError, "gate_report.report"),
]
INVALID_RECORDS: list[tuple[ProvenanceRecord, type[Exception], str]] = [
    (make_record(kind=""), ConfigError, "provenance.kind"),
    (make_record(task_type=""), ConfigError, "provenance.task_type"),
    (make_record(actor="\n"), ConfigError, "provenance.actor"),
    (make_record(actor=None), ConfigError, "provenance.actor"),
    (make_record(id=1), ConfigError, "provenance.id"),
    (make_record(policy_versions={"candidate": 1}), ConfigError, "provenance.policy_versions"),
    (make_record(timestamp=math.nan), StoreError, "provenance.timestamp"),
    (make_record(reason="lone \ud800 surrogate"), StoreError, "provenance.reason"),
    (
        make_record(evidence={"a": [{"b": math.nan}]}),
        StoreError,
        "provenance.evidence['a'][0]['b']",
    ),
    (make_record(evidence={"obj": object()}), StoreError, "provenance.evidence['obj']"),
    (make_record(evidence=_CYCLE), StoreError, "provenance.evidence['self'][0]"),
]


# One test per table rather than one per case: each case would open a database.


def test_invalid_gate_reports_are_refused_naming_the_field(store: Store) -> None:
    for report, error, field in INVALID_REPORTS:
        _assert_refused(store.save_gate_report, report, error, field)
    assert store.latest_gate_report("summarize") is None
    assert store.get_gate_report(1) is None


def test_invalid_provenance_records_are_refused_naming_the_field(store: Store) -> None:
    for record, error, field in INVALID_RECORDS:
        _assert_refused(store.append_provenance, record, error, field)
    assert store.list_provenance() == []


def _assert_refused(
    save: Callable[[R], object], record: R, error: type[Exception], field: str
) -> None:
    with pytest.raises(error) as info:
        save(record)
    if isinstance(info.value, ConfigError):
        assert info.value.field == field
    else:
        assert f"cannot store {field}" in str(info.value)


# -- what only a database has ------------------------------------------------------------


def test_audit_records_survive_reopening(open_store_at: Callable[[], Store]) -> None:
    store = open_store_at()
    saved = store.save_gate_report(make_report())
    appended = [store.append_provenance(make_record(reason=str(i))) for i in range(3)]
    store.close()

    reopened = open_store_at()
    assert reopened.get_gate_report(saved.id) == saved
    assert reopened.latest_gate_report("summarize") == saved
    assert reopened.list_provenance() == appended[::-1]
    # Ids keep increasing across reopening.
    assert reopened.append_provenance(make_record()).id > appended[-1].id


def test_the_database_refuses_to_change_or_delete_provenance(
    durable_store: Store, engine: Engine
) -> None:
    appended = [durable_store.append_provenance(make_record(reason=str(i))) for i in range(2)]
    statements = [
        "UPDATE provenance SET actor = 'mallory'",
        f"UPDATE provenance SET reason = 'edited' WHERE id = {appended[0].id}",
        "DELETE FROM provenance",
        f"DELETE FROM provenance WHERE id = {appended[1].id}",
    ]
    if engine.dialect.name == "postgresql":
        statements.append("TRUNCATE provenance")  # skips row triggers, so it has its own
    for statement in statements:
        with pytest.raises(DBAPIError, match="provenance is append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    # Appending through SQL is still allowed; the store sees it.
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO provenance (kind, task_type, actor, reason, evidence, "
                "policy_versions, timestamp) VALUES ('manual', 'summarize', 'ops', '', '{}', "
                "'{}', 0.5)"
            )
        )
    listed = durable_store.list_provenance()
    assert listed[1:] == appended[::-1]
    assert listed[0].kind == "manual"


def test_the_database_refuses_an_unknown_verdict(durable_store: Store, engine: Engine) -> None:
    with pytest.raises(DBAPIError, match="ck_gate_reports_verdict"), engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO gate_reports (task_type, candidate, baseline, verdict, report, "
                "created_at) VALUES ('summarize', 'c', 'b', 'maybe', '{}', 0.5)"
            )
        )
    assert durable_store.latest_gate_report("summarize") is None
