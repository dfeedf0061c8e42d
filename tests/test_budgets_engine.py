"""The budget manager on every store: arithmetic, feasibility, waivers, days, and races.

The hard limit is tested where it matters: many threads on one store object
(two managers, as two replicas in one process would be), and several processes
sharing a SQLite file or a PostgreSQL schema.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import paramloop.store
from paramloop.core.budget import BudgetLevel, BudgetLimits, Reservation, Spend
from paramloop.engine.budgets import (
    MAX_ATTEMPTS,
    NO_RESERVATION,
    STATE_KIND,
    STATS_KIND,
    WAIVER_KIND,
    BudgetManager,
    state_from_dict,
    state_to_dict,
)
from paramloop.errors import (
    BudgetExhaustedError,
    InputError,
    StaleStateError,
    StoreError,
    UnknownTaskTypeError,
)
from paramloop.store.base import Store
from paramloop.store.memory import MemoryDecisionLog
from paramloop.types import StateRecord

StoreSpec = tuple[str, str, str | None]

DAY = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
NEXT_DAY = DAY + 86_400.0
LIMITS = BudgetLimits(tokens_per_day=1_000, cost_per_day=1.0, max_waiver_percent=20.0)
CAPS = {0: Spend(100, 0.1), 1: Spend(300, 0.3), 2: Spend(600, 0.6)}


class Clock:
    def __init__(self, now: float = DAY) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def manager(
    store: Store,
    limits: BudgetLimits | None = LIMITS,
    clock: Callable[[], float] | None = None,
    **options: Any,
) -> BudgetManager:
    return BudgetManager(
        store,
        {"summarize": limits, "chat": None},
        clock=clock if clock is not None else Clock(),
        **options,
    )


def test_reserve_settle_release_arithmetic(store: Store) -> None:
    budgets = manager(store)
    first = budgets.reserve("summarize", 0, Spend(100, 0.1))
    second = budgets.reserve("summarize", 1, Spend(300, 0.3))
    assert first.id != second.id
    status = budgets.status("summarize")
    assert status["spent"] == {"tokens": 0, "cost": 0}
    assert status["reserved"] == pytest.approx({"tokens": 400, "cost": 0.4})
    assert status["open_reservations"] == 2

    assert budgets.settle("summarize", first, Spend(60, 0.06), arm=0) == Spend()
    overrun = budgets.settle("summarize", second, Spend(320, 0.31), arm=1)
    assert (overrun.tokens, overrun.cost) == pytest.approx((20, 0.01))
    third = budgets.reserve("summarize", 2, Spend(200, 0.2))
    budgets.release("summarize", third)

    status = budgets.status("summarize")
    assert status["spent"] == pytest.approx({"tokens": 380, "cost": 0.37})
    assert status["reserved"] == {"tokens": 0, "cost": 0}
    assert status["remaining"] == pytest.approx({"tokens": 620, "cost": 0.63})
    assert status["limits"] == {"tokens": 1_000, "cost": 1.0}
    assert (status["day"], status["level"], status["waiver_percent"]) == ("2023-11-14", "ok", 0.0)
    stats = budgets.spend_stats("summarize")
    assert (stats[0].n, stats[1].n, 2 in stats) == (1, 1, False)  # a release is no call

    with pytest.raises(InputError, match="already settled"):
        budgets.settle("summarize", first, Spend(1, 0.001), arm=0)
    assert budgets.status("summarize") == status


def test_a_reservation_that_does_not_fit_is_refused_and_changes_nothing(store: Store) -> None:
    budgets = manager(store)
    budgets.reserve("summarize", 2, Spend(600, 0.1))
    before = store.get_state(STATE_KIND, "summarize")
    with pytest.raises(BudgetExhaustedError) as refused:
        budgets.reserve("summarize", 2, Spend(600, 0.1))
    assert (refused.value.resource, refused.value.remaining) == ("tokens", 400)
    with pytest.raises(BudgetExhaustedError, match="cost"):
        budgets.reserve("summarize", 0, Spend(1, 0.95))
    assert store.get_state(STATE_KIND, "summarize") == before
    budgets.reserve("summarize", 1, Spend(400, 0.9))  # exactly the rest fits
    assert budgets.level("summarize") is BudgetLevel.EXHAUSTED


def test_over_budget_arms_are_infeasible_before_the_call(store: Store) -> None:
    budgets = manager(store, min_history=3, stats_ttl_s=0.0)
    assert budgets.feasible("summarize", [0, 1, 2], CAPS, baseline_arm=0).arms == (0, 1, 2)
    budgets.settle(
        "summarize", budgets.reserve("summarize", 1, Spend(300, 0.3)), Spend(300, 0.3), 1
    )
    budgets.settle(
        "summarize", budgets.reserve("summarize", 1, Spend(300, 0.3)), Spend(300, 0.3), 1
    )
    feasibility = budgets.feasible("summarize", [0, 1, 2], CAPS, baseline_arm=0)
    # 400 tokens left: arm 2 could spend 600 (its cap, no history yet)
    assert (feasibility.arms, feasibility.infeasible, feasibility.action) == ((0, 1), (2,), "none")
    assert feasibility.level is BudgetLevel.OK

    # Arm 2's history shows it spends far less than its cap: forecast mean + 2 sd fits again.
    for tokens in (9.0, 10.0, 11.0):
        held = budgets.reserve("summarize", 2, Spend(tokens, 0.001))
        budgets.settle("summarize", held, Spend(tokens, 0.001), arm=2)
    forecast = budgets.forecasts("summarize", CAPS)[2]
    assert (forecast.tokens, forecast.cost) == pytest.approx((12, 0.001))
    assert budgets.feasible("summarize", [0, 1, 2], CAPS, baseline_arm=0).arms == (0, 1, 2)


@pytest.mark.parametrize(("action", "served"), [("cheapest", 1), ("baseline", 2)])
def test_when_no_arm_fits_the_over_budget_action_picks_one(
    store: Store, action: str, served: int
) -> None:
    limits = BudgetLimits(tokens_per_day=1_000, cost_per_day=1.0, over_budget_action=action)  # type: ignore[arg-type]
    budgets = manager(store, limits)
    budgets.settle(
        "summarize", budgets.reserve("summarize", 0, Spend(950, 0.5)), Spend(950, 0.5), 0
    )
    caps = {1: Spend(100, 0.1), 2: Spend(500, 0.5), 3: Spend(200, 0.2)}
    feasibility = budgets.feasible("summarize", [1, 2, 3], caps, baseline_arm=2)
    assert (feasibility.arms, feasibility.infeasible) == ((served,), (1, 2, 3))
    assert (feasibility.action, feasibility.level) == (action, BudgetLevel.WARNING)


def test_a_new_utc_day_resets_spend_and_waiver_but_keeps_calls_in_flight(store: Store) -> None:
    clock = Clock(DAY)
    budgets = manager(store, clock=clock)
    budgets.waive("summarize", 10, actor="alice", reason="launch")
    budgets.settle(
        "summarize", budgets.reserve("summarize", 0, Spend(900, 0.5)), Spend(900, 0.5), 0
    )
    in_flight = budgets.reserve("summarize", 1, Spend(150, 0.1))
    assert budgets.level("summarize") is BudgetLevel.WARNING

    clock.now = NEXT_DAY
    status = budgets.status("summarize")
    assert (status["day"], status["waiver_percent"], status["level"]) == ("2023-11-15", 0.0, "ok")
    assert status["spent"] == {"tokens": 0, "cost": 0}
    assert status["reserved"] == pytest.approx({"tokens": 150, "cost": 0.1})
    budgets.settle("summarize", in_flight, Spend(100, 0.05), arm=1)  # charged to the day it settles
    assert budgets.status("summarize")["spent"] == pytest.approx({"tokens": 100, "cost": 0.05})

    # A replica whose clock lags behind keeps the later day: days never go back.
    lagging = manager(store, clock=Clock(DAY))
    assert lagging.status("summarize")["day"] == "2023-11-15"


def test_a_waiver_within_the_threshold_raises_the_limits_and_leaves_provenance(
    store: Store,
) -> None:
    budgets = manager(store)
    budgets.settle(
        "summarize", budgets.reserve("summarize", 0, Spend(990, 0.2)), Spend(990, 0.2), 0
    )
    with pytest.raises(BudgetExhaustedError):
        budgets.reserve("summarize", 0, Spend(100, 0.01))

    state = budgets.waive("summarize", 15, actor=" alice ", reason="quarter-end batch")
    assert state.waiver_percent == 15.0
    status = budgets.status("summarize")
    assert status["limits"] == pytest.approx({"tokens": 1_150, "cost": 1.15})
    budgets.reserve("summarize", 0, Spend(100, 0.01))

    (record,) = store.list_provenance("summarize", kind=WAIVER_KIND)
    assert (record.actor, record.reason, record.policy_versions) == (
        "alice",
        "quarter-end batch",
        {},
    )
    assert record.evidence["percent"] == 15.0
    assert record.evidence["day"] == "2023-11-14"
    assert record.evidence["limits"] == pytest.approx({"tokens": 1_150, "cost": 1.15})
    assert record.evidence["spent"] == pytest.approx({"tokens": 990, "cost": 0.2})
    assert record.timestamp == DAY


@pytest.mark.parametrize(
    ("percent", "actor", "reason", "field"),
    [
        (20.5, "alice", "launch", "waiver_percent"),
        (-1.0, "alice", "launch", "waiver_percent"),
        (math.nan, "alice", "launch", "waiver_percent"),
        ("10", "alice", "launch", "waiver_percent"),
        (10.0, " ", "launch", "actor"),
        (10.0, "alice", "", "reason"),
    ],
)
def test_a_refused_waiver_changes_nothing_and_records_nothing(
    store: Store, percent: Any, actor: str, reason: str, field: str
) -> None:
    budgets = manager(store)
    budgets.waive("summarize", 5, actor="alice", reason="earlier")
    before = store.get_state(STATE_KIND, "summarize")
    with pytest.raises(InputError) as refused:
        budgets.waive("summarize", percent, actor=actor, reason=reason)
    assert refused.value.field == field
    assert store.get_state(STATE_KIND, "summarize") == before
    assert len(store.list_provenance(kind=WAIVER_KIND)) == 1


def test_unknown_task_types_are_refused_by_name(store: Store) -> None:
    budgets = manager(store)
    calls: list[Callable[[], object]] = [
        lambda: budgets.feasible("translate", [0], CAPS, 0),
        lambda: budgets.reserve("translate", 0, Spend(1, 0.0)),
        lambda: budgets.settle("translate", Reservation(0, Spend()), Spend(), 0),
        lambda: budgets.release("translate", Reservation(0, Spend())),
        lambda: budgets.waive("translate", 5, actor="alice", reason="why"),
        lambda: budgets.status("translate"),
        lambda: budgets.level("translate"),
    ]
    for call in calls:
        with pytest.raises(UnknownTaskTypeError, match="chat, summarize") as refused:
            call()
        assert refused.value.known == ["chat", "summarize"]
    assert store.list_states(STATE_KIND) == []
    assert store.list_provenance() == []


def test_a_task_type_without_a_budget_is_not_limited_and_stores_nothing(store: Store) -> None:
    budgets = manager(store)
    feasibility = budgets.feasible("chat", [2, 0, 1], CAPS, baseline_arm=0)
    assert (feasibility.arms, feasibility.action) == ((0, 1, 2), "none")
    held = budgets.reserve("chat", 0, Spend(10**9, 10**6))
    assert held == NO_RESERVATION
    assert budgets.settle("chat", held, Spend(10**9, 10**6), arm=0) == Spend()
    budgets.release("chat", held)
    assert budgets.level("chat") is BudgetLevel.OK
    assert budgets.status("chat")["budget"] is False
    with pytest.raises(InputError, match="no budget"):
        budgets.waive("chat", 5, actor="alice", reason="why")
    assert store.list_states(STATE_KIND) == store.list_states(STATS_KIND) == []


def test_bad_input_is_refused_with_the_field_named(store: Store) -> None:
    budgets = manager(store)
    with pytest.raises(InputError, match="caps"):
        budgets.feasible("summarize", [0, 7], CAPS, baseline_arm=0)
    with pytest.raises(InputError, match="arms"):
        budgets.feasible("summarize", [], CAPS, baseline_arm=0)
    with pytest.raises(InputError, match="amount"):
        budgets.reserve("summarize", 0, (1, 0.1))  # type: ignore[arg-type]
    assert store.list_states(STATE_KIND) == []


def test_the_level_hook_reports_each_rise_once(store: Store) -> None:
    seen: list[tuple[str, BudgetLevel, float]] = []

    def hook(task_type: str, level: BudgetLevel, status: Any) -> None:
        seen.append((task_type, level, status["reserved"]["tokens"] + status["spent"]["tokens"]))

    budgets = manager(store, on_level=hook)
    held = budgets.reserve("summarize", 0, Spend(700, 0.1))
    budgets.settle("summarize", held, Spend(700, 0.1), 0)
    budgets.reserve("summarize", 0, Spend(150, 0.1))  # 850: warning
    budgets.reserve("summarize", 0, Spend(50, 0.1))  # 900: still warning
    budgets.reserve("summarize", 0, Spend(100, 0.1))  # 1000: exhausted
    assert seen == [
        ("summarize", BudgetLevel.WARNING, 850),
        ("summarize", BudgetLevel.EXHAUSTED, 1_000),
    ]


def test_state_documents_round_trip(store: Store) -> None:
    budgets = manager(store)
    budgets.reserve("summarize", 0, Spend(1 / 3, 0.1))
    budgets.reserve("summarize", 3, Spend(7, 1e-9), request_id="r-7", expires=1_800_000_000.5)
    budgets.waive("summarize", 2.5, actor="alice", reason="why")
    record = store.get_state(STATE_KIND, "summarize")
    assert record is not None
    state = state_from_dict(record.data)
    assert (state.next_id, state.waiver_percent, len(state.reservations)) == (2, 2.5, 2)
    assert state_from_dict(json.loads(json.dumps(state_to_dict(state)))) == state
    assert state_to_dict(state) == record.data
    held = [r for r in state.reservations if r.request_id == "r-7"]
    assert [(r.arm, r.expires) for r in held] == [(3, 1_800_000_000.5)]


def test_a_reservation_settles_by_request_id_once_and_expires_in_full(store: Store) -> None:
    now = [1_700_000_000.0]
    budgets = manager(store, clock=lambda: now[0])
    budgets.reserve("summarize", 1, Spend(300, 0.3), request_id="a", expires=now[0] + 60)
    budgets.reserve("summarize", 2, Spend(200, 0.2), request_id="b", expires=now[0] + 60)
    settled = budgets.settle_request("summarize", "a", Spend(120, 0.1))
    assert settled is not None and settled.arm == 1
    assert budgets.settle_request("summarize", "a", Spend(120, 0.1)) is None  # once
    assert budgets.settle_request("summarize", "never-reserved", None) is None
    assert budgets.expire("summarize") == ()  # still inside its window
    now[0] += 60.0
    (expired,) = budgets.expire("summarize")
    assert expired.request_id == "b"
    status = budgets.status("summarize")
    assert status["open_reservations"] == 0
    assert status["spent"] == {"tokens": 320.0, "cost": pytest.approx(0.3)}  # 120 + 200 in full
    assert budgets.spend_stats("summarize")[2].n == 1  # the expired call counts at its maximum


class ContendedStore(MemoryDecisionLog):
    """A store where another writer always wins the race for the budget."""

    def put_state(self, record: StateRecord, expected_version: int) -> StateRecord:
        if record.kind == STATE_KIND:
            raise StaleStateError(record.kind, record.key, expected_version, expected_version + 1)
        return super().put_state(record, expected_version)


def test_endless_contention_gives_up_with_a_store_error() -> None:
    store = ContendedStore()
    budgets = manager(store)
    with pytest.raises(StoreError, match=f"{MAX_ATTEMPTS} attempts"):
        budgets.reserve("summarize", 0, Spend(1, 0.001))
    with pytest.raises(StoreError, match=f"{MAX_ATTEMPTS} attempts"):
        budgets.waive("summarize", 5, actor="alice", reason="why")
    assert store.list_states(STATE_KIND) == []
    # The approval is recorded before the waiver takes effect: never a waiver without its record.
    assert len(store.list_provenance(kind=WAIVER_KIND)) == 1


# -- concurrency -------------------------------------------------------------------------------

RACE_LIMITS = BudgetLimits(tokens_per_day=2_000, cost_per_day=2.0)


def race(budgets: BudgetManager, rounds: int, seed: int) -> tuple[float, int, float]:
    """Reserve random amounts, settle most at most what was reserved, release some.

    Returns (tokens settled, calls settled, largest spent + reserved seen).
    """
    rng = random.Random(seed)
    settled, calls, highest = 0.0, 0, 0.0
    for _ in range(rounds):
        tokens = float(rng.randint(10, 150))
        try:
            held = budgets.reserve("summarize", 0, Spend(tokens, tokens / 1000))
        except BudgetExhaustedError:
            continue
        status = budgets.status("summarize")
        highest = max(highest, status["spent"]["tokens"] + status["reserved"]["tokens"])
        if rng.random() < 0.2:
            budgets.release("summarize", held)
            continue
        actual = float(rng.randint(0, int(tokens)))
        budgets.settle("summarize", held, Spend(actual, actual / 1000), arm=0)
        settled += actual
        calls += 1
    return settled, calls, highest


def test_threads_racing_never_pass_the_hard_limit(store: Store) -> None:
    replicas = [manager(store, RACE_LIMITS), manager(store, RACE_LIMITS)]
    results: list[tuple[float, int, float]] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            results.append(race(replicas[i % 2], 50, seed=i))
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    status = replicas[0].status("summarize")
    assert max(highest for _, _, highest in results) <= 2_000
    assert status["reserved"] == {"tokens": 0, "cost": 0}
    assert status["spent"]["tokens"] == sum(settled for settled, _, _ in results) <= 2_000
    assert replicas[1].spend_stats("summarize")[0].n == sum(calls for _, calls, _ in results)


CHILD = """
import json, sys
sys.path.insert(0, sys.argv[5])
from paramloop.core.budget import BudgetLimits
from paramloop.engine.budgets import BudgetManager
from paramloop.store.postgres import PostgresDecisionLog
from paramloop.store.sqlite import SQLiteDecisionLog
from test_budgets_engine import race

backend, location, schema, seed = sys.argv[1], sys.argv[2], sys.argv[3] or None, int(sys.argv[4])
store = SQLiteDecisionLog(location) if backend == "sqlite" else PostgresDecisionLog(location, schema=schema)
budgets = BudgetManager(store, {"summarize": BudgetLimits(tokens_per_day=2_000, cost_per_day=2.0)})
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps(race(budgets, 30, seed)), flush=True)
store.close()
"""


def test_processes_racing_never_pass_the_hard_limit(
    durable_store_spec: StoreSpec, open_store_at: Callable[[], Store], tmp_path: Path
) -> None:
    open_store_at().close()  # migrate once, before the children race
    src = Path(paramloop.store.__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    backend, location, schema = durable_store_spec
    here = str(Path(__file__).parent)
    logs = [(tmp_path / f"child-{seed}.err").open("wb") for seed in range(3)]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, backend, location, schema or "", str(seed), here],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            text=True,
        )
        for seed, log in enumerate(logs)
    ]
    results: list[tuple[float, int, float]] = []
    try:
        for child in children:  # every child is connected before any of them starts
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        for seed, child in enumerate(children):
            out, _ = child.communicate(timeout=60)
            assert child.returncode == 0, (tmp_path / f"child-{seed}.err").read_text()
            settled, calls, highest = json.loads(out)
            results.append((settled, calls, highest))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.communicate()
        for log in logs:
            log.close()

    budgets = BudgetManager(open_store_at(), {"summarize": RACE_LIMITS})
    status = budgets.status("summarize")
    assert max(highest for _, _, highest in results) <= 2_000
    assert status["reserved"] == {"tokens": 0, "cost": 0}
    assert status["spent"]["tokens"] == sum(settled for settled, _, _ in results) <= 2_000
    assert budgets.spend_stats("summarize")[0].n == sum(calls for _, calls, _ in results)


def test_a_restart_keeps_spend_waiver_and_calls_in_flight(
    open_store_at: Callable[[], Store],
) -> None:
    budgets = manager(open_store_at())
    budgets.settle(
        "summarize", budgets.reserve("summarize", 0, Spend(400, 0.4)), Spend(350, 0.3), 0
    )
    budgets.waive("summarize", 10, actor="alice", reason="launch")
    in_flight = budgets.reserve("summarize", 1, Spend(200, 0.2))
    before = budgets.status("summarize")
    budgets.store.close()

    reopened = manager(open_store_at())
    assert reopened.status("summarize") == before
    reopened.settle("summarize", in_flight, Spend(100, 0.1), arm=1)
    assert reopened.status("summarize")["spent"] == pytest.approx({"tokens": 450, "cost": 0.4})
    assert len(reopened.store.list_provenance("summarize", kind=WAIVER_KIND)) == 1


# -- property ----------------------------------------------------------------------------------

amounts = st.builds(
    Spend,
    st.floats(0, 400, allow_nan=False),
    st.floats(0, 0.4, allow_nan=False),
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), amounts),
        st.tuples(st.just("settle"), st.integers(0, 10), st.floats(0, 1)),
        st.tuples(st.just("release"), st.integers(0, 10)),
        st.tuples(st.just("waive"), st.floats(-5, 25, allow_nan=False)),
        st.tuples(st.just("next_day")),
    ),
    max_size=40,
)


def committed(budgets: BudgetManager) -> tuple[float, float]:
    status = budgets.status("summarize")
    return (
        status["spent"]["tokens"] + status["reserved"]["tokens"],
        status["spent"]["cost"] + status["reserved"]["cost"],
    )


@settings(max_examples=150, deadline=None)
@given(operations)
def test_spend_passes_the_limit_only_through_a_successful_reservation_that_fits(
    ops: list[tuple[Any, ...]],
) -> None:
    """Committed spend grows only by a reservation that fits under today's limit.

    So with calls whose actual is at most their reservation, spent + reserved
    stays within the limit in force — lowering a waiver or midnight can leave it
    above the new one, and then nothing more is admitted.
    """
    clock = Clock()
    budgets = manager(MemoryDecisionLog(), clock=clock)
    held: list[Reservation] = []
    for op in ops:
        before = committed(budgets)
        if op[0] == "reserve":
            try:
                held.append(budgets.reserve("summarize", 0, op[1]))
            except BudgetExhaustedError:
                assert committed(budgets) == before
                continue
            limits = budgets.status("summarize")["limits"]
            tokens, cost = committed(budgets)
            assert tokens <= limits["tokens"] * (1 + 1e-12)
            assert cost <= limits["cost"] * (1 + 1e-12)
            continue
        if op[0] == "settle" and held:
            reservation = held.pop(op[1] % len(held))
            fraction = op[2]
            actual = Spend(reservation.amount.tokens * fraction, reservation.amount.cost * fraction)
            assert budgets.settle("summarize", reservation, actual, 0) == Spend()
        elif op[0] == "release" and held:
            budgets.release("summarize", held.pop(op[1] % len(held)))
        elif op[0] == "waive":
            try:
                budgets.waive("summarize", op[1], actor="alice", reason="property")
            except InputError:
                assert not 0 <= op[1] <= 20
        elif op[0] == "next_day":
            clock.now += 86_400.0
        tokens, cost = committed(budgets)
        assert tokens <= before[0] * (1 + 1e-12) + 1e-9
        assert cost <= before[1] * (1 + 1e-12) + 1e-12
        assert min(tokens, cost) >= 0


def test_an_expired_reservation_whose_outcome_was_stored_is_charged_what_it_spent(
    store: Store,
) -> None:
    """The outcome reached the store but its replica died before settling: charge the outcome."""
    now = [1_700_000_000.0]
    budgets = manager(store, clock=lambda: now[0])
    budgets.reserve("summarize", 1, Spend(300, 0.3), request_id="told", expires=now[0] + 60)
    budgets.reserve("summarize", 2, Spend(200, 0.2), request_id="silent", expires=now[0] + 60)
    now[0] += 60.0
    measured = {"told": Spend(80, 0.05)}
    assert len(budgets.expire("summarize", measured=measured.get)) == 2
    status = budgets.status("summarize")
    assert status["open_reservations"] == 0
    assert status["spent"] == {"tokens": 280.0, "cost": pytest.approx(0.25)}  # 80 + 200 in full
