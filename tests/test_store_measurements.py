"""Contract suite for measurements: what a proxy measured of a call while its outcome waits.

Every test of the ``store`` fixture runs against the in-memory store, SQLite and
PostgreSQL (``conftest.py``).  The migration of revision 0003 is tested on the two
databases.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from itertools import count

import pytest
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from paramloop.errors import (
    ConflictingOutcomeError,
    OutcomeError,
    StoreError,
    UnknownRequestError,
)
from paramloop.store import Store
from paramloop.store.migrate import downgrade
from paramloop.types import Decision, Outcome, Params, RecordedOutcome

T0 = 1_700_000_000.0
_ids = count()


def make_decision(
    request_id: str | None = None, *, task_type: str = "summarize", timestamp: float = T0
) -> Decision:
    return Decision(
        request_id=request_id if request_id is not None else f"meas-{next(_ids)}",
        task_type=task_type,
        arm=1,
        params=Params("smollm2", temperature=0.3, max_tokens=64),
        propensity=0.25,
        confidence=0.5,
        policy="linucb@2.0.0",
        policy_revision=3,
        origin="bandit:linucb@2.0.0",
        context={"risk_tier": "low", "prompt_tokens": 40},
        context_fingerprint=2**63 + 5,
        timestamp=timestamp,
    )


def make_outcome(decision: Decision) -> RecordedOutcome:
    return RecordedOutcome(
        request_id=decision.request_id,
        task_type=decision.task_type,
        outcome=Outcome(quality=1.0, latency_ms=10.0),
        reward=0.9,
        reward_version="weighted@1",
        source="observed",
        timestamp=T0 + 30,
    )


MEASURED = Outcome(latency_ms=812.25, prompt_tokens=431, completion_tokens=97, cost=0.000125)


def test_a_measurement_round_trips_exactly(store: Store) -> None:
    decision = make_decision()
    store.append_decision(decision)
    assert store.get_measurement(decision.request_id) is None
    assert store.save_measurement(decision.request_id, decision.task_type, MEASURED, T0 + 1)
    assert store.get_measurement(decision.request_id) == MEASURED
    failed = make_decision()
    store.append_decision(failed)
    errored = Outcome(latency_ms=30_000.0, error=True)
    store.save_measurement(failed.request_id, failed.task_type, errored, T0 + 2)
    assert store.get_measurement(failed.request_id) == errored


def test_saving_the_same_measurement_again_is_a_no_op_and_a_different_one_conflicts(
    store: Store,
) -> None:
    decision = make_decision()
    store.append_decision(decision)
    assert store.save_measurement(decision.request_id, decision.task_type, MEASURED, T0)
    assert not store.save_measurement(decision.request_id, decision.task_type, MEASURED, T0 + 9)
    with pytest.raises(ConflictingOutcomeError):
        store.save_measurement(decision.request_id, decision.task_type, Outcome(latency_ms=1.0), T0)
    assert store.get_measurement(decision.request_id) == MEASURED


@pytest.mark.parametrize(
    ("field", "measured"),
    [
        ("quality", Outcome(quality=0.5, latency_ms=1.0)),
        ("feedback", Outcome(feedback=1.0)),
        ("reward", Outcome(reward=0.3)),
    ],
)
def test_a_measurement_holds_no_quality_feedback_or_reward(
    store: Store, field: str, measured: Outcome
) -> None:
    decision = make_decision()
    store.append_decision(decision)
    with pytest.raises(OutcomeError) as caught:
        store.save_measurement(decision.request_id, decision.task_type, measured, T0)
    assert caught.value.field == field
    assert store.get_measurement(decision.request_id) is None


def test_unknown_request_and_wrong_task_type_are_refused_and_nothing_is_written(
    store: Store,
) -> None:
    with pytest.raises(UnknownRequestError):
        store.save_measurement("nobody", "summarize", MEASURED, T0)
    decision = make_decision()
    store.append_decision(decision)
    with pytest.raises(OutcomeError, match="task_type"):
        store.save_measurement(decision.request_id, "translate", MEASURED, T0)
    assert store.get_measurement(decision.request_id) is None
    assert store.get_measurement("nobody") is None


def test_pending_measurements_lists_measured_decisions_without_an_outcome_oldest_first(
    store: Store,
) -> None:
    decisions = [make_decision(f"m-{i}", timestamp=T0 + 10 - i) for i in range(5)]
    store.append_decisions(decisions)
    store.append_decision(make_decision("other", task_type="translate", timestamp=T0))
    for i, decision in enumerate(decisions):
        if i != 4:  # m-4 has no measurement
            measured = Outcome(latency_ms=float(i), completion_tokens=i)
            store.save_measurement(decision.request_id, decision.task_type, measured, T0 + 20)
    store.save_measurement("other", "translate", MEASURED, T0 + 20)
    store.attach_outcome(make_outcome(decisions[1]))  # m-1 has its outcome

    pending = store.pending_measurements("summarize", before=math.inf, limit=10)
    assert [(d.request_id, m.latency_ms) for d, m in pending] == [
        ("m-3", 3.0),
        ("m-2", 2.0),
        ("m-0", 0.0),
    ]
    assert pending[0][0] == decisions[3]
    assert [d.request_id for d, _ in store.pending_measurements("summarize", T0 + 8, 10)] == [
        "m-3"
    ]  # strictly before
    assert len(store.pending_measurements("summarize", math.inf, 2)) == 2
    assert store.pending_measurements("summarize", math.inf, 0) == []
    assert [d.request_id for d, _ in store.pending_measurements("translate", math.inf, 9)] == [
        "other"
    ]


def test_racing_identical_measurements_are_saved_once(store: Store) -> None:
    decision = make_decision()
    store.append_decision(decision)
    results: list[bool] = []
    barrier = threading.Barrier(4)

    def save() -> None:
        barrier.wait()
        results.append(store.save_measurement(decision.request_id, "summarize", MEASURED, T0))

    workers = [threading.Thread(target=save) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(results) == [False, False, False, True]


def test_a_closed_store_refuses_measurements(store: Store) -> None:
    store.close()
    calls: list[Callable[[], object]] = [
        lambda: store.save_measurement("x", "summarize", MEASURED, T0),
        lambda: store.get_measurement("x"),
        lambda: store.pending_measurements("summarize", T0, 10),
    ]
    for call in calls:
        with pytest.raises(StoreError, match="closed"):
            call()


def test_downgrading_0003_drops_measurements_and_keeps_the_decisions(
    open_store_at: Callable[[], Store], engine: Engine
) -> None:
    store = open_store_at()
    decision = make_decision()
    store.append_decision(decision)
    store.save_measurement(decision.request_id, decision.task_type, MEASURED, T0)
    store.close()
    with engine.connect() as conn:
        downgrade(conn, "0002")
        assert MigrationContext.configure(conn).get_current_heads() == ("0002",)
        assert "measurements" not in set(inspect(conn).get_table_names())
    reopened = open_store_at()  # upgrades again
    assert reopened.get_decision(decision.request_id) == decision
    assert reopened.get_measurement(decision.request_id) is None
