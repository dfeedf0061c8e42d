"""Contract suite: every DecisionLog implementation obeys the same rules.

Each test of the ``store`` fixture runs against the in-memory store, SQLite
and PostgreSQL (see ``conftest.py``).  What only a database has (values it
cannot hold, reopening, migrations) runs against SQLite and PostgreSQL.  The
backend-specific tests at the end cover what only one backend has: SQLite's
journal and in-memory mode, PostgreSQL's URL handling.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import replace
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from paramloop.errors import (
    ConfigError,
    ConflictingOutcomeError,
    DuplicateRequestError,
    OutcomeError,
    StoreError,
    UnknownRequestError,
)
from paramloop.store import AuditLog, DecisionLog, Store, open_store
from paramloop.store.base import LogSummary, evaluation_row
from paramloop.store.migrate import HEAD, MIGRATIONS_DIR, downgrade, upgrade
from paramloop.store.postgres import PostgresDecisionLog, psycopg_url
from paramloop.store.schema import metadata
from paramloop.store.sqlite import SQLiteDecisionLog
from paramloop.types import (
    Decision,
    GateReportRecord,
    Outcome,
    Params,
    PolicySnapshot,
    ProvenanceRecord,
    RecordedOutcome,
)

StoreSpec = tuple[str, str, str | None]
T0 = 1_700_000_000.0

_ids = count()


def make_decision(
    request_id: str | None = None,
    *,
    task_type: str = "summarize",
    timestamp: float = T0,
    **changes: Any,
) -> Decision:
    decision = Decision(
        request_id=request_id if request_id is not None else f"req-{next(_ids)}",
        task_type=task_type,
        arm=3,
        params=Params(
            "gpt-4o-mini",
            temperature=0.7,
            top_p=0.9,
            max_tokens=512,
            stop=("\n\n", "END"),
            seed=7,
        ),
        propensity=0.1 + 0.2,  # 0.30000000000000004: not a "round" float
        confidence=0.25,
        policy="linucb@2.0.0",
        policy_revision=12,
        origin="bandit:linucb",
        context={"risk_tier": 2, "prompt_tokens": 431.5, "retry": False, "tags": ("a", "b")},
        context_fingerprint=2**64 - 1,
        timestamp=timestamp,
        seed=42,
        phase="canary",
    )
    return replace(decision, **changes)


def make_outcome(
    decision: Decision, *, reward: float = 0.75, timestamp: float = T0 + 5, **changes: Any
) -> RecordedOutcome:
    recorded = RecordedOutcome(
        request_id=decision.request_id,
        task_type=decision.task_type,
        outcome=Outcome(quality=0.8, latency_ms=812.25, prompt_tokens=431, completion_tokens=97),
        reward=reward,
        reward_version="weighted@1",
        source="observed",
        timestamp=timestamp,
    )
    return replace(recorded, **changes)


def all_logged(store: DecisionLog, task_type: str, **window: Any) -> list[Any]:
    return [row for chunk in store.iter_logged(task_type, **window) for row in chunk]


# -- round trips -------------------------------------------------------------------


def test_store_implements_the_protocols(store: Store) -> None:
    assert isinstance(store, DecisionLog)
    assert isinstance(store, AuditLog)
    assert isinstance(store, Store)


def test_decision_reads_back_equal_everywhere(store: DecisionLog) -> None:
    decision = make_decision(
        propensity=5e-324,  # the smallest subnormal double
        confidence=1 / 3,
        timestamp=T0 + 0.1,
        context={"x": -0.0, "big": 2**80, "tiny": 1e-308, "name": "日本語 ✓", "tags": ()},
        context_fingerprint=2**63,  # the first value that is negative as a signed BIGINT
        seed=-(2**63),
        error="fallback: ValueError",
        applied=False,
    )
    store.append_decision(decision)
    assert store.get_decision(decision.request_id) == decision
    assert store.pending_decisions("summarize", before=math.inf, limit=10) == [decision]
    assert all_logged(store, "summarize") == [(decision, None)]

    stored, new = store.attach_outcome(make_outcome(decision))
    assert new
    assert store.outcomes_since("summarize", 0, 10) == [(decision, stored)]
    assert all_logged(store, "summarize") == [(decision, stored)]


def test_outcome_reads_back_equal(store: DecisionLog) -> None:
    decision = make_decision()
    store.append_decision(decision)
    recorded = make_outcome(
        decision,
        outcome=Outcome(cost=1e-7, error=True, feedback=0.0, reward=0.1 + 0.7),
        reward=-0.0,
        source="default",
    )
    stored, new = store.attach_outcome(recorded)
    assert new
    assert stored.seq > 0
    assert stored == replace(recorded, seq=stored.seq)
    assert store.get_outcome(decision.request_id) == stored
    assert store.get_outcome("never-logged") is None
    assert store.get_decision("never-logged") is None


finite = st.floats(allow_nan=False, allow_infinity=False)
# Text columns hold UTF-8 without NUL; the SQL stores refuse anything else (see
# test_unstorable_values_are_refused_by_every_database).  JSON columns hold any str.
plain_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)
any_text = st.text(st.characters(), max_size=10)  # NUL and lone surrogates included
feature_values = st.one_of(
    st.floats(allow_nan=False),
    st.integers(),
    st.booleans(),
    any_text,
    st.lists(any_text, max_size=3).map(tuple),
)
params = st.builds(
    Params,
    model=plain_text,
    temperature=st.none() | finite,
    top_p=st.none() | finite,
    max_tokens=st.none() | st.integers(),
    frequency_penalty=st.none() | finite,
    presence_penalty=st.none() | finite,
    prompt_variant=st.none() | any_text,
    stop=st.lists(any_text, max_size=3).map(tuple),
    seed=st.none() | st.integers(),
    max_tokens_field=st.sampled_from(["max_tokens", "max_completion_tokens"]),
)
decisions = st.builds(
    Decision,
    request_id=plain_text,
    task_type=plain_text,
    arm=st.integers(0, 2**31 - 1),
    params=params,
    propensity=st.floats(0.0, 1.0, exclude_min=True),
    confidence=st.floats(0.0, 1.0),
    policy=plain_text,
    policy_revision=st.integers(0, 2**63 - 1),
    origin=plain_text,
    context=st.dictionaries(any_text, feature_values, max_size=5),
    context_fingerprint=st.integers(0, 2**64 - 1),
    timestamp=st.floats(allow_nan=False),
    seed=st.none() | st.integers(-(2**63), 2**63 - 1),
    phase=plain_text,
    applied=st.booleans(),
    error=st.none() | plain_text,
    schema_version=st.integers(1, 2**31 - 1),
)
unit = st.none() | st.floats(0.0, 1.0)
non_negative = st.none() | st.floats(0.0, allow_infinity=False)
tokens = st.none() | st.integers(0, 2**63 - 1)
outcomes = st.builds(
    Outcome,
    quality=unit,
    latency_ms=non_negative,
    prompt_tokens=tokens,
    completion_tokens=tokens,
    cost=non_negative,
    error=st.booleans(),
    feedback=unit,
    reward=st.none() | finite,
)


@settings(
    max_examples=100,
    deadline=None,
    database=None,
    # The store is shared by all examples on purpose: each example logs under
    # a request id no other example uses, so examples cannot see each other.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    decision=decisions,
    outcome=outcomes,
    reward=st.floats(allow_nan=False),
    reward_version=plain_text,
    source=st.sampled_from(["observed", "default"]),
    timestamp=st.floats(allow_nan=False),
)
def test_any_decision_and_outcome_round_trip_exactly(
    store: DecisionLog,
    decision: Decision,
    outcome: Outcome,
    reward: float,
    reward_version: str,
    source: str,
    timestamp: float,
) -> None:
    decision = replace(decision, request_id=f"{next(_ids)}:{decision.request_id}")
    store.append_decision(decision)
    assert store.get_decision(decision.request_id) == decision

    recorded = RecordedOutcome(
        decision.request_id, decision.task_type, outcome, reward, reward_version, source, timestamp
    )
    stored, new = store.attach_outcome(recorded)
    assert new
    assert stored == replace(recorded, seq=stored.seq)
    assert store.get_outcome(decision.request_id) == stored
    assert store.outcomes_since(decision.task_type, stored.seq - 1, 1) == [(decision, stored)]
    assert store.attach_outcome(recorded) == (stored, False)


def test_unstorable_values_are_refused_by_every_database(durable_store: DecisionLog) -> None:
    # Each would read back different (or be refused) on one of the databases.
    # The in-memory store keeps objects as they are, so it has nothing to refuse.
    store = durable_store
    for bad in (
        make_decision(propensity=math.nan),
        make_decision(timestamp=math.nan),
        make_decision(request_id="nul\x00inside"),
        make_decision(phase="lone \ud800 surrogate"),
        make_decision(context_fingerprint=2**64),
        make_decision(context_fingerprint=-1),
        make_decision(seed=2**63),
        make_decision(policy_revision=-(2**63) - 1),
        make_decision(context={"not_json": {1, 2}}),
    ):
        with pytest.raises(StoreError, match="cannot store"):
            store.append_decision(bad)
    decision = make_decision()
    store.append_decision(decision)
    with pytest.raises(StoreError, match="cannot store reward"):
        store.attach_outcome(make_outcome(decision, reward=math.nan))
    assert store.count_decisions() == 1
    assert store.get_outcome(decision.request_id) is None


# -- write-once semantics ------------------------------------------------------------


def test_duplicate_request_id_is_refused_and_changes_nothing(store: DecisionLog) -> None:
    first = make_decision("dup", arm=1)
    store.append_decision(first)
    with pytest.raises(DuplicateRequestError, match="'dup'"):
        store.append_decision(make_decision("dup", arm=2))
    assert store.get_decision("dup") == first
    assert store.count_decisions() == 1


def test_append_decisions_is_all_or_none(store: DecisionLog) -> None:
    store.append_decision(make_decision("taken"))
    batch = [make_decision("new-1"), make_decision("taken"), make_decision("new-2")]
    with pytest.raises(DuplicateRequestError, match="'taken'"):
        store.append_decisions(batch)
    with pytest.raises(DuplicateRequestError, match="'twice'"):
        store.append_decisions([make_decision("twice"), make_decision("twice")])
    assert store.count_decisions() == 1
    assert store.get_decision("new-1") is None

    store.append_decisions([])
    good = [make_decision(f"batch-{i}", timestamp=T0 + i) for i in range(50)]
    store.append_decisions(good)
    assert store.count_decisions() == 51
    assert [d for d, _ in all_logged(store, "summarize")][1:] == good


def test_outcome_for_unknown_request_is_refused(store: DecisionLog) -> None:
    ghost = make_decision("ghost")
    with pytest.raises(UnknownRequestError, match="'ghost'"):
        store.attach_outcome(make_outcome(ghost))
    assert store.get_outcome("ghost") is None
    assert store.outcomes_since("summarize", 0, 10) == []


def test_repeating_an_outcome_counts_once(store: DecisionLog) -> None:
    decision = make_decision()
    store.append_decision(decision)
    stored, new = store.attach_outcome(make_outcome(decision))
    # A retry arrives later: same outcome, new timestamp.
    again, new_again = store.attach_outcome(make_outcome(decision, timestamp=T0 + 60))
    assert (new, new_again) == (True, False)
    assert again == stored
    assert store.outcomes_since("summarize", 0, 10) == [(decision, stored)]


@pytest.mark.parametrize(
    "change",
    [
        {"outcome": Outcome(quality=0.1)},
        {"reward": 0.5},
        {"reward_version": "weighted@2"},
        {"source": "default"},
    ],
    ids=["outcome", "reward", "reward_version", "source"],
)
def test_a_different_outcome_conflicts_and_changes_nothing(
    store: DecisionLog, change: dict[str, Any]
) -> None:
    decision = make_decision()
    store.append_decision(decision)
    stored, _ = store.attach_outcome(make_outcome(decision))
    with pytest.raises(ConflictingOutcomeError, match=decision.request_id):
        store.attach_outcome(make_outcome(decision, **change))
    assert store.get_outcome(decision.request_id) == stored
    assert store.outcomes_since("summarize", 0, 10) == [(decision, stored)]


def test_outcome_must_match_the_decision(store: DecisionLog) -> None:
    decision = make_decision()
    store.append_decision(decision)
    with pytest.raises(OutcomeError, match="task_type"):
        store.attach_outcome(make_outcome(decision, task_type="code_review"))
    with pytest.raises(OutcomeError, match="source"):
        store.attach_outcome(make_outcome(decision, source="guessed"))
    assert store.get_outcome(decision.request_id) is None


# -- reads ---------------------------------------------------------------------------


def test_outcomes_since_follows_seq_with_limit(store: DecisionLog) -> None:
    logged = [make_decision(f"s-{i}", timestamp=T0 + i) for i in range(6)]
    other = make_decision("other", task_type="code_review")
    store.append_decisions([*logged, other])
    # Outcomes arrive in another order than the decisions were made.
    order = [4, 0, 5, 2]
    recorded = [store.attach_outcome(make_outcome(logged[i]))[0] for i in order]
    store.attach_outcome(make_outcome(other))

    rows = store.outcomes_since("summarize", 0, 100)
    assert [d.request_id for d, _ in rows] == [f"s-{i}" for i in order]
    assert [o for _, o in rows] == recorded
    assert [o.seq for o in recorded] == sorted({o.seq for o in recorded})

    first = store.outcomes_since("summarize", 0, 3)
    rest = store.outcomes_since("summarize", first[-1][1].seq, 3)
    assert first + rest == rows
    assert store.outcomes_since("summarize", recorded[-1].seq, 10) == []
    assert store.outcomes_since("summarize", 0, 0) == []
    with pytest.raises(ConfigError, match="limit"):
        store.outcomes_since("summarize", 0, -1)


def test_pending_decisions_are_the_oldest_without_outcome(store: DecisionLog) -> None:
    logged = [make_decision(f"p-{i}", timestamp=T0 + 10 - i) for i in range(8)]
    store.append_decisions([*logged, make_decision("elsewhere", task_type="code_review")])
    for i in (1, 6):
        store.attach_outcome(make_outcome(logged[i]))

    waiting = [logged[i] for i in (7, 5, 4, 3, 2, 0)]  # oldest first
    assert store.pending_decisions("summarize", before=math.inf, limit=100) == waiting
    assert store.pending_decisions("summarize", before=math.inf, limit=2) == waiting[:2]
    # ``before`` is strict: p-3 was logged at exactly T0 + 7.
    assert store.pending_decisions("summarize", before=T0 + 7, limit=100) == waiting[:3]
    assert store.pending_decisions("summarize", before=T0, limit=100) == []
    assert store.pending_decisions("summarize", before=math.inf, limit=0) == []
    with pytest.raises(ConfigError, match="limit"):
        store.pending_decisions("summarize", before=math.inf, limit=-1)


def test_iter_logged_streams_the_window_in_chunks(store: DecisionLog) -> None:
    # Insertion order differs from time order, and timestamps repeat across
    # chunk boundaries: paging must neither skip nor repeat a row.
    stamps = [T0 + (i * 7) % 10 for i in range(25)]
    logged = [make_decision(f"w-{i:02d}", timestamp=t) for i, t in enumerate(stamps)]
    store.append_decisions(logged)
    store.append_decision(make_decision("elsewhere", task_type="code_review"))
    outcome, _ = store.attach_outcome(make_outcome(logged[3]))
    by_time = sorted(logged, key=lambda d: (d.timestamp, d.request_id))

    chunks = list(store.iter_logged("summarize", chunk_size=7))
    assert [len(c) for c in chunks] == [7, 7, 7, 4]
    rows = [row for chunk in chunks for row in chunk]
    assert [d for d, _ in rows] == by_time
    assert {d.request_id: o for d, o in rows if o is not None} == {"w-03": outcome}

    assert [len(c) for c in store.iter_logged("summarize", chunk_size=5)] == [5] * 5
    window = all_logged(store, "summarize", start=T0 + 2, end=T0 + 5)
    assert [d for d, _ in window] == [d for d in by_time if T0 + 2 <= d.timestamp < T0 + 5]
    assert all_logged(store, "summarize", start=T0 + 10) == []
    assert list(store.iter_logged("unknown_task")) == []
    with pytest.raises(ConfigError, match="chunk_size"):
        store.iter_logged("summarize", chunk_size=0)


def test_evaluation_rows_are_the_applied_rows_with_an_outcome(store: DecisionLog) -> None:
    stamps = [T0 + (i * 7) % 10 for i in range(25)]
    logged = [make_decision(f"e-{i:02d}", timestamp=t) for i, t in enumerate(stamps)]
    logged[5] = replace(logged[5], applied=False)  # shadow: logged, not served
    store.append_decisions(logged)
    store.append_decision(make_decision("other", task_type="code_review"))
    for i in (3, 5, 8, 11, 12, 20):
        store.attach_outcome(make_outcome(logged[i], reward=i / 100))

    for window in ({}, {"start": T0 + 2, "end": T0 + 5}):
        expected = [
            evaluation_row(d, o)
            for d, o in all_logged(store, "summarize", **window)
            if o is not None and d.applied
        ]
        chunks = list(store.iter_evaluation_rows("summarize", chunk_size=2, **window))
        assert all(len(chunk) <= 2 for chunk in chunks)
        assert [row for chunk in chunks for row in chunk] == expected
    rows = [row for chunk in store.iter_evaluation_rows("summarize") for row in chunk]
    assert sorted(row[4] for row in rows) == [0.03, 0.08, 0.11, 0.12, 0.2]
    assert json.loads(rows[0][3])["tags"] == ["a", "b"]
    assert json.loads(rows[0][5])["seed"] == 7 and rows[0][6] == "linucb@2.0.0"
    assert list(store.iter_evaluation_rows("unknown_task")) == []
    with pytest.raises(ConfigError, match="chunk_size"):
        store.iter_evaluation_rows("summarize", chunk_size=0)


def test_the_log_summary_counts_by_window_source_and_limit(store: DecisionLog) -> None:
    logged = [make_decision(f"c-{i}", timestamp=T0 + i) for i in range(6)]
    logged[5] = replace(logged[5], applied=False)
    store.append_decisions([*logged, make_decision("other", task_type="code_review")])
    slow = Outcome(latency_ms=2_000.0, prompt_tokens=900, completion_tokens=200, cost=0.5)
    store.attach_outcome(make_outcome(logged[0]))  # 812.25 ms, 528 tokens, no cost
    store.attach_outcome(make_outcome(logged[1], outcome=slow))
    store.attach_outcome(make_outcome(logged[2], source="default", outcome=Outcome(reward=0.0)))
    store.attach_outcome(make_outcome(logged[3], outcome=Outcome(latency_ms=1_500.0)))
    store.attach_outcome(make_outcome(logged[5]))
    store.attach_outcome(make_outcome(store.get_decision("other"), outcome=slow))  # type: ignore[arg-type]
    limits = {"max_latency_ms": 1_000.0, "max_tokens": 1_000.0, "max_cost": 0.25}
    # c-1 breaks all three limits, c-3 the latency one; a missing value breaks none.
    summary = store.summarize_log("summarize", **limits)
    assert (summary.decisions, summary.outcomes, summary.defaulted, summary.violations) == (
        6,
        5,
        1,
        4,
    )
    windowed = store.summarize_log("summarize", T0 + 1, T0 + 4, **limits)
    assert (windowed.decisions, windowed.outcomes, windowed.defaulted, windowed.violations) == (
        3,
        3,
        1,
        4,
    )
    bare = store.summarize_log("summarize", max_latency_ms=1_600.0)
    assert (bare.defaulted, bare.violations) == (1, 1)
    assert store.summarize_log("summarize").violations == 0
    assert store.summarize_log("unknown") == LogSummary(0, 0, 0, 0)


def test_import_logged_restores_an_export_all_or_none(store: DecisionLog) -> None:
    decisions = [make_decision(f"i-{i}", timestamp=T0 + i) for i in range(5)]
    rows = [(d, make_outcome(d) if i % 2 == 0 else None) for i, d in enumerate(decisions)]
    assert store.import_logged(rows) == 5
    back = all_logged(store, "summarize")
    assert [d for d, _ in back] == decisions
    assert [o is None for _, o in back] == [False, True, False, True, False]
    assert [o.outcome for _, o in back if o is not None] == [r[1].outcome for r in rows if r[1]]
    # The imported outcomes are ordinary outcomes: they replay and they block a second one.
    assert [o.request_id for _, o in store.outcomes_since("summarize", 0, 10)] == [
        "i-0",
        "i-2",
        "i-4",
    ]
    with pytest.raises(ConflictingOutcomeError):
        store.attach_outcome(make_outcome(decisions[0], reward=0.1))

    fresh = make_decision("i-new")
    with pytest.raises(DuplicateRequestError, match="i-1"):
        store.import_logged([(fresh, None), (decisions[1], None)])
    with pytest.raises(DuplicateRequestError, match="i-new"):
        store.import_logged([(fresh, None), (fresh, None)])
    stray = make_outcome(make_decision("elsewhere"))
    with pytest.raises(OutcomeError, match="request_id"):
        store.import_logged([(fresh, stray)])
    with pytest.raises(OutcomeError, match="task_type"):
        store.import_logged([(fresh, make_outcome(fresh, task_type="code_review"))])
    with pytest.raises(OutcomeError, match="source"):
        store.import_logged([(fresh, make_outcome(fresh, source="guessed"))])
    assert store.get_decision("i-new") is None
    assert store.count_decisions("summarize") == 5
    assert store.import_logged([]) == 0


def test_iter_logged_reads_each_chunk_when_asked_for(store: DecisionLog) -> None:
    store.append_decisions([make_decision(f"l-{i}", timestamp=T0 + i) for i in range(4)])
    chunks = store.iter_logged("summarize", chunk_size=2)
    assert [d.request_id for d, _ in next(chunks)] == ["l-0", "l-1"]
    # Logged after the first chunk was read: included when it sorts later, not otherwise.
    store.append_decision(make_decision("late", timestamp=T0 + 2.5))
    store.append_decision(make_decision("early", timestamp=T0 - 1))
    assert [d.request_id for d, _ in next(chunks)] == ["l-2", "late"]

    store.close()
    with pytest.raises(StoreError, match="closed"):
        next(chunks)


def test_count_decisions(store: DecisionLog) -> None:
    assert store.count_decisions() == 0
    store.append_decisions([make_decision() for _ in range(3)])
    store.append_decision(make_decision(task_type="code_review"))
    assert store.count_decisions() == 4
    assert store.count_decisions("summarize") == 3
    assert store.count_decisions("code_review") == 1
    assert store.count_decisions("unknown_task") == 0


def test_latest_snapshot_is_the_last_saved_for_its_task_type(store: DecisionLog) -> None:
    assert store.latest_snapshot("summarize") is None
    first = PolicySnapshot("summarize", "linucb@2.0.0", 1, 10, b"\x00\xffstate", T0)
    second = PolicySnapshot("summarize", "linucb@2.0.0", 2, 25, bytes(range(256)) * 40, T0 + 1)
    other = PolicySnapshot("code_review", "thompson@1.0.0", 7, 3, b"", T0 + 2)
    for snapshot in (first, second, other):
        store.save_snapshot(snapshot)
    assert store.latest_snapshot("summarize") == second
    assert store.latest_snapshot("code_review") == other
    # Latest means saved last, even with an older timestamp or revision.
    rollback = replace(first, timestamp=T0 - 100)
    store.save_snapshot(rollback)
    assert store.latest_snapshot("summarize") == rollback


# -- lifecycle -----------------------------------------------------------------------

CALLS: dict[str, Callable[[Store], object]] = {
    "append_decision": lambda s: s.append_decision(make_decision()),
    "append_decisions": lambda s: s.append_decisions([make_decision()]),
    "get_decision": lambda s: s.get_decision("x"),
    "attach_outcome": lambda s: s.attach_outcome(make_outcome(make_decision())),
    "get_outcome": lambda s: s.get_outcome("x"),
    "outcomes_since": lambda s: s.outcomes_since("summarize", 0, 10),
    "pending_decisions": lambda s: s.pending_decisions("summarize", T0, 10),
    "iter_logged": lambda s: s.iter_logged("summarize"),
    "count_decisions": lambda s: s.count_decisions(),
    "save_snapshot": lambda s: s.save_snapshot(PolicySnapshot("summarize", "p", 1, 0, b"")),
    "latest_snapshot": lambda s: s.latest_snapshot("summarize"),
    "save_gate_report": lambda s: s.save_gate_report(
        GateReportRecord("summarize", "c@1", "b@1", "pass", {}, T0)
    ),
    "get_gate_report": lambda s: s.get_gate_report(1),
    "latest_gate_report": lambda s: s.latest_gate_report("summarize"),
    "append_provenance": lambda s: s.append_provenance(
        ProvenanceRecord("gate_approval", "summarize", "alice", "", {}, {}, T0)
    ),
    "list_provenance": lambda s: s.list_provenance(),
}


def test_a_closed_store_refuses_every_call(store: Store) -> None:
    store.close()
    store.close()  # idempotent
    refused = []
    for name, call in CALLS.items():
        try:
            call(store)
        except StoreError as exc:
            if "closed" in str(exc):
                refused.append(name)
    assert refused == list(CALLS)


def test_reopening_keeps_data_and_does_not_migrate_again(
    open_store_at: Callable[[], DecisionLog], engine: Engine
) -> None:
    store = open_store_at()
    decision = make_decision()
    store.append_decision(decision)
    stored, _ = store.attach_outcome(make_outcome(decision))
    store.close()

    for _ in range(2):
        reopened = open_store_at()
        assert reopened.get_decision(decision.request_id) == decision
        assert reopened.get_outcome(decision.request_id) == stored
        reopened.close()
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_heads() == (HEAD,)
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1


def test_migrations_create_exactly_the_schema_the_queries_use(
    durable_store: DecisionLog, engine: Engine
) -> None:
    assert ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head() == HEAD
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_migrations_go_down_and_up_again(
    open_store_at: Callable[[], DecisionLog], engine: Engine
) -> None:
    open_store_at().close()
    with engine.connect() as conn:
        downgrade(conn, "base")
        assert MigrationContext.configure(conn).get_current_heads() == ()
        upgrade(conn)
        assert MigrationContext.configure(conn).get_current_heads() == (HEAD,)
    store = open_store_at()
    store.append_decision(make_decision())
    assert store.count_decisions() == 1


# The columns of logged_decisions at revision 0001, frozen like the revision itself.
_COLUMNS_0001 = (
    "request_id, task_type, model_name, context_fingerprint, context_features, chosen_params, "
    "log_propensity, outcome, policy_version, timestamp, arm, confidence, policy_revision, "
    "origin, phase, applied, seed, error, schema_version, reward"
)


def _row_0001(decision: Decision) -> dict[str, Any]:
    data = decision.to_dict()
    assert decision.context_fingerprint < 2**63  # stored as is, not two's complement
    return {
        "request_id": decision.request_id,
        "task_type": decision.task_type,
        "model_name": decision.params.model,
        "context_fingerprint": decision.context_fingerprint,
        "context_features": json.dumps(data["context"]),
        "chosen_params": json.dumps(data["params"]),
        "log_propensity": decision.propensity,
        "outcome": None,
        "policy_version": decision.policy,
        "timestamp": decision.timestamp,
        "arm": decision.arm,
        "confidence": decision.confidence,
        "policy_revision": decision.policy_revision,
        "origin": decision.origin,
        "phase": decision.phase,
        "applied": decision.applied,
        "seed": decision.seed,
        "error": decision.error,
        "schema_version": decision.schema_version,
        "reward": None,
    }


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def _has_append_only_function(conn: Connection) -> bool:
    """Whether PostgreSQL's trigger function of revision 0002 exists in the current schema."""
    query = (
        "SELECT count(*) FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace "
        "WHERE p.proname = 'provenance_append_only' AND n.nspname = current_schema()"
    )
    return bool(conn.execute(text(query)).scalar_one())


def test_a_0001_database_upgrades_on_open_and_keeps_its_rows(
    open_store_at: Callable[[], Store], engine: Engine
) -> None:
    old = [
        make_decision(f"old-{i}", timestamp=T0 + i, context_fingerprint=2**40 + i) for i in range(3)
    ]
    with engine.connect() as conn:
        upgrade(conn, "0001")
        assert MigrationContext.configure(conn).get_current_heads() == ("0001",)
        assert {"gate_reports", "provenance"}.isdisjoint(_tables(conn))
    with engine.begin() as conn:
        placeholders = ", ".join(f":{name}" for name in _COLUMNS_0001.split(", "))
        conn.execute(
            text(f"INSERT INTO logged_decisions ({_COLUMNS_0001}) VALUES ({placeholders})"),
            [_row_0001(decision) for decision in old],
        )

    store = open_store_at()
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_heads() == (HEAD,)
    assert [store.get_decision(d.request_id) for d in old] == old
    assert store.pending_decisions("summarize", before=math.inf, limit=10) == old
    stored, _ = store.attach_outcome(make_outcome(old[0]))
    assert store.outcomes_since("summarize", 0, 10) == [(old[0], stored)]
    record = ProvenanceRecord("gate_approval", "summarize", "alice", "", {"id": 1}, {}, T0)
    appended = store.append_provenance(record)
    assert store.list_provenance() == [appended]
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text("DELETE FROM provenance"))
    store.close()


def test_downgrading_0002_drops_the_audit_log_and_keeps_the_decisions(
    open_store_at: Callable[[], Store], engine: Engine
) -> None:
    store = open_store_at()
    decision = make_decision()
    store.append_decision(decision)
    store.append_provenance(ProvenanceRecord("rollback", "summarize", "bob", "", {}, {}, T0))
    store.close()
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        downgrade(conn, "0001")
        assert MigrationContext.configure(conn).get_current_heads() == ("0001",)
        assert {"gate_reports", "provenance"}.isdisjoint(_tables(conn))
        if postgres:
            assert not _has_append_only_function(conn)
    reopened = open_store_at()
    assert reopened.get_decision(decision.request_id) == decision
    assert reopened.list_provenance() == []
    if postgres:
        with engine.connect() as conn:
            assert _has_append_only_function(conn)


def test_a_database_from_a_newer_version_is_refused(
    open_store_at: Callable[[], DecisionLog], engine: Engine
) -> None:
    open_store_at().close()
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StoreError, match="9999"):
        open_store_at()


def test_concurrent_writers_lose_nothing(store: DecisionLog) -> None:
    threads, per_thread = 8, 25
    logged = [
        [make_decision(f"t{t}-{i}", timestamp=T0 + i) for i in range(per_thread)]
        for t in range(threads)
    ]
    errors: list[BaseException] = []

    def write(batch: list[Decision]) -> None:
        try:
            for decision in batch:
                store.append_decision(decision)
                store.attach_outcome(make_outcome(decision))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=write, args=(batch,)) for batch in logged]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    assert store.count_decisions() == threads * per_thread
    rows = store.outcomes_since("summarize", 0, 10_000)
    assert len(rows) == threads * per_thread
    seqs = [o.seq for _, o in rows]
    assert seqs == sorted(set(seqs))
    assert {d.request_id: d for d, _ in rows} == {d.request_id: d for b in logged for d in b}


def test_racing_identical_outcomes_are_recorded_once(store: DecisionLog) -> None:
    decision = make_decision()
    store.append_decision(decision)
    results: list[tuple[RecordedOutcome, bool]] = []
    barrier = threading.Barrier(6)

    def record() -> None:
        barrier.wait()
        results.append(store.attach_outcome(make_outcome(decision)))

    workers = [threading.Thread(target=record) for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(new for _, new in results) == [False] * 5 + [True]
    assert len({stored for stored, _ in results}) == 1


# -- SQLite ----------------------------------------------------------------------------


def test_sqlite_file_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    SQLiteDecisionLog(path, durability="power").close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


def test_sqlite_in_memory_store_works_across_threads() -> None:
    store = SQLiteDecisionLog(":memory:")
    decision = make_decision()
    worker = threading.Thread(target=store.append_decision, args=(decision,))
    worker.start()
    worker.join()
    assert store.get_decision(decision.request_id) == decision
    store.close()


def test_sqlite_refuses_unknown_durability_and_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="durability"):
        SQLiteDecisionLog(tmp_path / "x.db", durability="sometimes")  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="no-such-dir"):
        SQLiteDecisionLog(tmp_path / "no-such-dir" / "x.db")


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///:memory:",
        "sqlite://",
        "sqlite:///relative.db",
        "sqlite:///relative.db?durability=power",
        "sqlite:///{tmp}/absolute.db",
        "{tmp}/bare.db",
        "bare.db",
    ],
)
def test_open_store_opens_sqlite(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store(url.format(tmp=tmp_path))
    assert isinstance(store, SQLiteDecisionLog)
    store.append_decision(make_decision())
    store.close()
    if ":memory:" not in url and url != "sqlite://":
        assert store.location.endswith(".db")
        assert Path(store.location).exists()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "empty"),
        ("mysql://user:s3cret@db/paramloop", "unsupported scheme 'mysql'"),
        ("postgres://user:s3cret@db/paramloop", "unsupported scheme 'postgres'"),
        (
            "postgresql+psycopg2://user:s3cret@db/paramloop",
            "unsupported scheme 'postgresql+psycopg2'",
        ),
        ("sqlite://host/x.db", "no host"),
        ("sqlite:///x.db?journal=delete", "unknown SQLite URL option 'journal'"),
        ("sqlite:///x.db?durability=sometimes", "durability"),
    ],
)
def test_open_store_refuses_other_urls_without_leaking_passwords(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="database_url") as info:
        open_store(url)
    assert problem in str(info.value)
    assert "s3cret" not in str(info.value)


def test_an_unsupported_scheme_error_names_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as info:
        open_store("redis://localhost:6379/0")
    for allowed in (
        "sqlite:///",
        ":memory:",
        "file path",
        "postgresql://",
        "postgresql+psycopg://",
    ):
        assert allowed in str(info.value)


# -- PostgreSQL ------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg"])
def test_open_store_opens_postgres(
    scheme: str, postgres_engine: Engine, postgres_schema: str
) -> None:
    with postgres_engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{postgres_schema}"')
    url = psycopg_url(postgres_engine.url.render_as_string(hide_password=False)).set(
        drivername=scheme, query={"options": f"-csearch_path={postgres_schema}"}
    )
    store = open_store(url.render_as_string(hide_password=False))
    assert isinstance(store, PostgresDecisionLog)
    store.append_decision(make_decision())
    assert store.count_decisions() == 1
    store.close()


def test_postgres_errors_never_show_the_password() -> None:
    # Port 1 refuses connections at once.
    with pytest.raises(StoreError, match="PostgreSQL") as info:
        PostgresDecisionLog("postgresql://paramloop:hunter2@127.0.0.1:1/paramloop")
    assert "hunter2" not in str(info.value)
    assert "***" in str(info.value)


def test_postgres_refuses_a_schema_name_it_would_have_to_quote() -> None:
    with pytest.raises(ConfigError, match="schema"):
        # Never contacted: the name is checked before connecting.
        PostgresDecisionLog("postgresql://nobody@127.0.0.1:1/none", schema='x"; DROP TABLE y; --')


def test_last_outcome_seq_is_the_task_types_greatest(store: DecisionLog) -> None:
    assert store.last_outcome_seq("summarize") == 0
    first = make_decision("a")
    other = make_decision("b", task_type="translate")
    later = make_decision("c")
    store.append_decisions([first, other, later])
    seqs = [store.attach_outcome(make_outcome(d))[0].seq for d in (first, other, later)]
    assert store.last_outcome_seq("summarize") == seqs[2]
    assert store.last_outcome_seq("translate") == seqs[1]
    assert store.last_outcome_seq("never-seen") == 0
