"""Budget arithmetic: days, levels, waivers, forecasts, feasibility, and the reservation invariant."""

from __future__ import annotations

import contextlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paramloop.core.budget import (
    BudgetLevel,
    BudgetLimits,
    BudgetState,
    Reservation,
    Spend,
    SpendStats,
    apply_waiver,
    day_bounds,
    day_of,
    feasible_arms,
    forecast,
    level,
    limit,
    release,
    remaining,
    reserve,
    roll_over,
    settle,
)
from paramloop.errors import BudgetExhaustedError, ConfigError, InputError

LIMITS = BudgetLimits(tokens_per_day=10_000, cost_per_day=1.0, max_waiver_percent=20.0)
DAY = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


@pytest.mark.parametrize(
    ("now", "day", "start"),
    [
        (0.0, "1970-01-01", 0.0),
        (86_399.999, "1970-01-01", 0.0),
        (86_400.0, "1970-01-02", 86_400.0),
        (DAY, "2023-11-14", 1_699_920_000.0),
        (-1.0, "1969-12-31", -86_400.0),
    ],
)
def test_utc_days(now: float, day: str, start: float) -> None:
    assert day_of(now) == day
    assert day_bounds(now) == (start, start + 86_400.0)


def test_roll_over_resets_spend_and_waiver_but_keeps_calls_in_flight() -> None:
    state = apply_waiver(BudgetState.start("summarize", DAY), LIMITS, 10.0)
    state, held = reserve(state, LIMITS, Spend(100, 0.01))
    state, _ = settle(*reserve(state, LIMITS, Spend(200, 0.02)), Spend(150, 0.015))
    assert roll_over(state, DAY + 60) is state
    tomorrow = roll_over(state, DAY + 86_400)
    assert (tomorrow.day, tomorrow.spent, tomorrow.waiver_percent) == ("2023-11-15", Spend(), 0.0)
    assert tomorrow.reservations == {held}
    settled, _ = settle(tomorrow, held, Spend(80, 0.008))
    assert settled.spent == Spend(80, 0.008)  # charged to the day it settled on
    with pytest.raises(InputError):
        roll_over(tomorrow, DAY)


@pytest.mark.parametrize(
    ("spent", "reserved", "expected"),
    [
        (Spend(0, 0), Spend(0, 0), BudgetLevel.OK),
        (Spend(7_999, 0.5), Spend(0, 0), BudgetLevel.OK),
        (Spend(8_000, 0.5), Spend(0, 0), BudgetLevel.WARNING),
        (Spend(100, 0.75), Spend(0, 0.1), BudgetLevel.WARNING),  # reservations count
        (Spend(100, 0.5), Spend(0, 0.5), BudgetLevel.EXHAUSTED),
        (Spend(10_000, 0.0), Spend(0, 0), BudgetLevel.EXHAUSTED),
        (Spend(12_000, 0.0), Spend(0, 0), BudgetLevel.EXHAUSTED),
    ],
)
def test_levels(spent: Spend, reserved: Spend, expected: BudgetLevel) -> None:
    state = BudgetState("summarize", "2023-11-14", spent)
    if reserved != Spend():
        state = BudgetState(
            "summarize", "2023-11-14", spent, frozenset({Reservation(0, reserved)}), next_id=1
        )
    assert level(state, LIMITS) is expected


def test_unlimited_resources() -> None:
    state = BudgetState("summarize", "2023-11-14", Spend(1e12, 1e6))
    unlimited = BudgetLimits()
    assert level(state, unlimited) is BudgetLevel.OK
    assert remaining(state, unlimited, "tokens") == math.inf
    tokens_only = BudgetLimits(tokens_per_day=100)
    assert remaining(BudgetState("t", "d"), tokens_only, "cost") == math.inf


def test_waivers_raise_the_limit_within_the_maximum() -> None:
    state = BudgetState.start("summarize", DAY)
    waived = apply_waiver(state, LIMITS, 20.0)
    assert limit(waived, LIMITS, "tokens") == pytest.approx(12_000)
    assert limit(waived, LIMITS, "cost") == pytest.approx(1.2)
    assert limit(apply_waiver(waived, LIMITS, 5.0), LIMITS, "tokens") == pytest.approx(10_500)
    for bad in (20.01, -1.0, math.nan):
        with pytest.raises(InputError) as info:
            apply_waiver(state, LIMITS, bad)
        assert info.value.field == "waiver_percent"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tokens_per_day": 0}, "budget.tokens_per_day"),
        ({"cost_per_day": -1.0}, "budget.cost_per_day"),
        ({"cost_per_day": math.inf}, "budget.cost_per_day"),
        ({"warn_fraction": 1.0}, "budget.warn_fraction"),
        ({"max_waiver_percent": 150.0}, "budget.max_waiver_percent"),
        ({"over_budget_action": "pray"}, "budget.over_budget_action"),
    ],
)
def test_bad_limits(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        BudgetLimits(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


@pytest.mark.parametrize(
    ("tokens", "cost"), [(-1.0, 0.0), (0.0, math.nan), (math.inf, 0.0), (True, 0.0)]
)
def test_bad_spend(tokens: float, cost: float) -> None:
    with pytest.raises(InputError):
        Spend(tokens, cost)


def test_reserve_settle_release() -> None:
    state = BudgetState.start("summarize", DAY)
    state, first = reserve(state, LIMITS, Spend(6_000, 0.5))
    state, second = reserve(state, LIMITS, Spend(4_000, 0.1))
    assert first.id != second.id
    assert state.reserved == Spend(10_000, 0.6)
    with pytest.raises(BudgetExhaustedError) as info:
        reserve(state, LIMITS, Spend(1, 0.0))
    assert (info.value.resource, info.value.remaining) == ("tokens", 0.0)
    state, overrun = settle(state, first, Spend(5_000, 0.4))
    assert overrun == Spend()
    assert (state.spent, state.reserved) == (Spend(5_000, 0.4), Spend(4_000, 0.1))
    with pytest.raises(InputError, match="already settled"):
        settle(state, first, Spend(5_000, 0.4))
    state = release(state, second)
    assert (state.spent, state.reserved) == (Spend(5_000, 0.4), Spend())
    assert remaining(state, LIMITS, "tokens") == 5_000


def test_an_overrun_is_charged_and_reported_and_stops_further_reservations() -> None:
    state, held = reserve(BudgetState.start("summarize", DAY), LIMITS, Spend(9_000, 0.5))
    state, overrun = settle(state, held, Spend(11_000, 0.5))
    assert overrun == Spend(2_000, 0.0)
    assert state.spent.tokens == 11_000  # truthful accounting
    assert remaining(state, LIMITS, "tokens") == 0.0  # never negative
    assert level(state, LIMITS) is BudgetLevel.EXHAUSTED
    with pytest.raises(BudgetExhaustedError):
        reserve(state, LIMITS, Spend(1, 0.0))


def test_forecast_is_mean_plus_k_sd_capped() -> None:
    stats = SpendStats()
    for tokens in (90.0, 100.0, 110.0):
        stats = stats.add(Spend(tokens, tokens / 1_000))
    spend = forecast(stats, k=2.0, min_history=3)
    assert spend.tokens == pytest.approx(120.0)  # mean 100, sample sd 10
    assert spend.cost == pytest.approx(0.12)
    assert forecast(stats, k=0.0, min_history=3).tokens == pytest.approx(100.0)
    capped = forecast(stats, k=2.0, min_history=3, cap=Spend(115, 1.0))
    assert capped.tokens == 115 and capped.cost == pytest.approx(0.12)
    assert forecast(stats, cap=Spend(4_096, 0.05)) == Spend(4_096, 0.05)  # short history → cap
    with pytest.raises(InputError):
        forecast(stats)
    with pytest.raises(InputError):
        forecast(stats, k=-1.0, min_history=3)


@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.floats(0, 1)), max_size=30), st.integers(0, 30)
)
def test_spend_stats_merge_by_addition(spends: list[tuple[int, float]], cut: int) -> None:
    every = [Spend(t, c) for t, c in spends]
    whole, left, right = SpendStats(), SpendStats(), SpendStats()
    for i, spend in enumerate(every):
        whole = whole.add(spend)
        left, right = (left.add(spend), right) if i < cut else (left, right.add(spend))
    merged = left.merge(right)
    assert merged.n == whole.n
    assert merged.tokens_sum == pytest.approx(whole.tokens_sum)
    assert merged.cost_sq == pytest.approx(whole.cost_sq)


def test_feasible_arms_and_over_budget_actions() -> None:
    state = BudgetState("summarize", "2023-11-14", Spend(9_000, 0.5))
    forecasts = {
        0: Spend(800, 0.05),
        1: Spend(1_500, 0.05),
        2: Spend(500, 0.6),
        3: Spend(300, 0.01),
    }
    result = feasible_arms(state, LIMITS, forecasts, baseline_arm=0)
    assert (result.arms, result.infeasible, result.action) == ((0, 3), (1, 2), "none")
    assert result.level is BudgetLevel.WARNING
    full = BudgetState("summarize", "2023-11-14", Spend(10_000, 0.5))
    to_baseline = feasible_arms(full, LIMITS, forecasts, baseline_arm=0)
    assert (to_baseline.arms, to_baseline.action) == ((0,), "baseline")
    assert to_baseline.level is BudgetLevel.EXHAUSTED and "baseline" in to_baseline.reason
    cheapest = feasible_arms(
        full, BudgetLimits(10_000, 1.0, over_budget_action="cheapest"), forecasts, 0
    )
    assert (cheapest.arms, cheapest.action) == ((3,), "cheapest")
    with pytest.raises(InputError):
        feasible_arms(state, LIMITS, {}, baseline_arm=0)


# Operations for the invariant test: reserve an amount, settle the k-th open reservation
# with a fraction of its amount, release it, or move to the next UTC day.
operation = st.one_of(
    st.tuples(st.just("reserve"), st.integers(0, 4_000), st.floats(0, 0.4)),
    st.tuples(st.just("settle"), st.integers(0, 50), st.floats(0, 1)),
    st.tuples(st.just("release"), st.integers(0, 50), st.just(0.0)),
    st.tuples(st.just("next_day"), st.just(0), st.just(0.0)),
)


@settings(max_examples=300)
@given(st.lists(operation, max_size=60), st.floats(0, 20))
def test_spent_plus_reserved_never_exceeds_the_limit(
    operations: list[tuple[str, float, float]], waiver: float
) -> None:
    now = DAY
    state = apply_waiver(BudgetState.start("summarize", now), LIMITS, waiver)
    carried = Spend()  # reservations in flight at the last midnight
    for name, a, b in operations:
        if name == "reserve":
            with contextlib.suppress(BudgetExhaustedError):  # refusing is the point
                state, _ = reserve(state, LIMITS, Spend(a, b))
        elif name in ("settle", "release") and state.reservations:
            chosen = sorted(state.reservations, key=lambda r: r.id)[
                int(a) % len(state.reservations)
            ]
            if name == "release":
                state = release(state, chosen)
            else:  # an honest call: its actual spend is at most what it reserved
                actual = Spend(math.floor(chosen.amount.tokens * b), chosen.amount.cost * b)
                state, overrun = settle(state, chosen, actual)
                assert overrun == Spend()
        elif name == "next_day":
            now += 86_400
            state = roll_over(state, now)
            carried = state.reserved
        for resource in ("tokens", "cost"):
            spent = getattr(state.spent, resource)
            reserved = getattr(state.reserved, resource)
            assert spent >= 0 and reserved >= 0
            assert remaining(state, LIMITS, resource) >= 0
            # The invariant.  The one exception is documented: calls admitted yesterday under
            # a waiver that has since expired may settle today; they never let new ones in.
            ceiling = max(limit(state, LIMITS, resource), getattr(carried, resource))
            assert spent + reserved <= ceiling * (1 + 1e-12)
