"""Budget arithmetic: daily token and cost limits per task type, checked before the call.

Three steps per request, all pure (the store makes each one atomic):

1. :func:`feasible_arms` drops arms whose :func:`forecast` spend would not fit
   in what is left today; when none fits, the limits' ``over_budget_action``
   picks the cheapest arm or the baseline.
2. :func:`reserve` sets the chosen call's spend aside; it refuses (raises
   :class:`~paramloop.errors.BudgetExhaustedError`) when spent + reserved +
   amount would pass the limit.
3. :func:`settle` replaces the reservation by the actual spend.

A reservation names the request it holds spend for and when it expires (the
end of the request's reward wait window), so any replica can settle it by
request id (:func:`held_by`) and any replica can charge one whose outcome never
came (:func:`expire`): the reservation lives in the shared state, never only in
the memory of the process that made it.

Invariant: spent + reserved ≤ limit, whatever the interleaving of concurrent
reservations and settlements, provided each actual spend is at most its
reservation, i.e. the caller reserves an upper bound of the call (prompt tokens
+ ``max_tokens``, priced).  An actual above its reservation is still charged
(accounting stays truthful) and reported as an overrun.

Days are UTC calendar days of ``now``.  At a new day spending and waivers reset;
outstanding reservations carry over and are charged to the day they settle on.
So the one way past a day's limit is a call admitted yesterday under a waiver
that expired at midnight: it still settles, but nothing new is admitted until
the day is back under its limit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Literal

from paramloop.errors import BudgetExhaustedError, ConfigError, InputError

Resource = Literal["tokens", "cost"]
RESOURCES: tuple[Resource, ...] = ("tokens", "cost")


@dataclass(frozen=True, slots=True)
class Spend:
    """Tokens and cost of one call, a forecast, or a running total (finite, ≥ 0)."""

    tokens: float = 0.0
    cost: float = 0.0

    def __post_init__(self) -> None:
        for name in RESOURCES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InputError(name, f"must be a number, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise InputError(name, f"must be finite and ≥ 0, got {value!r}")

    def __add__(self, other: Spend) -> Spend:
        return Spend(self.tokens + other.tokens, self.cost + other.cost)


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    """Daily limits of one task type (``None`` = unlimited) and what to do when they bind.

    ``warn_fraction`` of a limit raises a warning; the limit itself is the hard
    stop.  A waiver raises both limits by a percentage, at most
    ``max_waiver_percent``, for the rest of the day.
    """

    tokens_per_day: float | None = None
    cost_per_day: float | None = None
    warn_fraction: float = 0.8
    max_waiver_percent: float = 20.0
    over_budget_action: Literal["cheapest", "baseline"] = "baseline"

    def __post_init__(self) -> None:
        for name in ("tokens_per_day", "cost_per_day"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"budget.{name}", f"must be > 0 or absent, got {value!r}")
        if not 0.0 < self.warn_fraction < 1.0:
            raise ConfigError(
                "budget.warn_fraction", f"must be in (0, 1), got {self.warn_fraction!r}"
            )
        if not 0.0 <= self.max_waiver_percent <= 100.0:
            raise ConfigError(
                "budget.max_waiver_percent", f"must be in [0, 100], got {self.max_waiver_percent!r}"
            )
        if self.over_budget_action not in ("cheapest", "baseline"):
            raise ConfigError(
                "budget.over_budget_action",
                f"must be 'cheapest' or 'baseline', got {self.over_budget_action!r}",
            )

    def base(self, resource: Resource) -> float | None:
        return self.tokens_per_day if resource == "tokens" else self.cost_per_day


class BudgetLevel(StrEnum):
    OK = "ok"
    WARNING = "warning"
    EXHAUSTED = "exhausted"


def day_of(now: float) -> str:
    """The UTC calendar day of ``now`` (epoch seconds), ISO formatted.

    >>> day_of(0.0), day_of(86_399.9), day_of(86_400.0)
    ('1970-01-01', '1970-01-01', '1970-01-02')
    """
    if not math.isfinite(now):
        raise InputError("now", "must be finite epoch seconds")
    return datetime.fromtimestamp(now, tz=UTC).date().isoformat()


def day_bounds(now: float) -> tuple[float, float]:
    """Start (inclusive) and end (exclusive) of the UTC day of ``now``, in epoch seconds."""
    start = datetime.fromisoformat(day_of(now)).replace(tzinfo=UTC)
    return start.timestamp(), (start + timedelta(days=1)).timestamp()


@dataclass(frozen=True, slots=True)
class Reservation:
    """Spend set aside for one call in flight.

    ``request_id`` names the call and ``arm`` what it serves, so the outcome can
    settle it wherever it arrives; at ``expires`` (epoch seconds) a reservation
    still open is charged in full by :func:`expire`.
    """

    id: int
    amount: Spend
    request_id: str | None = None
    arm: int | None = None
    expires: float = math.inf


@dataclass(frozen=True, slots=True)
class BudgetState:
    """One task type's spending on ``day``; ``reserved`` is derived from the open reservations."""

    task_type: str
    day: str
    spent: Spend = Spend()
    reservations: frozenset[Reservation] = frozenset()
    waiver_percent: float = 0.0
    next_id: int = 0

    @classmethod
    def start(cls, task_type: str, now: float) -> BudgetState:
        return cls(task_type, day_of(now))

    @property
    def reserved(self) -> Spend:
        return Spend(
            math.fsum(r.amount.tokens for r in self.reservations),
            math.fsum(r.amount.cost for r in self.reservations),
        )


def roll_over(state: BudgetState, now: float) -> BudgetState:
    """The state for the UTC day of ``now``: a new day resets spending and the waiver."""
    day = day_of(now)
    if day == state.day:
        return state
    if day < state.day:
        raise InputError("now", f"{day} is before the budget's day {state.day}")
    return replace(state, day=day, spent=Spend(), waiver_percent=0.0)


def apply_waiver(state: BudgetState, limits: BudgetLimits, percent: float) -> BudgetState:
    """Raise today's limits by ``percent`` (replacing any earlier waiver), within the allowed maximum."""
    if not (math.isfinite(percent) and 0.0 <= percent <= limits.max_waiver_percent):
        raise InputError(
            "waiver_percent", f"must be in [0, {limits.max_waiver_percent:g}], got {percent!r}"
        )
    return replace(state, waiver_percent=float(percent))


def _amount(spend: Spend, resource: Resource) -> float:
    return spend.tokens if resource == "tokens" else spend.cost


def limit(state: BudgetState, limits: BudgetLimits, resource: Resource) -> float:
    """Today's hard limit of ``resource`` (waiver included); ``inf`` when unlimited."""
    base = limits.base(resource)
    return math.inf if base is None else base * (1.0 + state.waiver_percent / 100.0)


def remaining(state: BudgetState, limits: BudgetLimits, resource: Resource) -> float:
    """What can still be reserved today; never negative (an overrun leaves 0)."""
    committed = _amount(state.spent, resource) + _amount(state.reserved, resource)
    return max(0.0, limit(state, limits, resource) - committed)


def level(state: BudgetState, limits: BudgetLimits) -> BudgetLevel:
    """Exhausted when spent + reserved reaches a limit, warning past ``warn_fraction`` of one."""
    worst = 0.0
    for resource in RESOURCES:
        cap = limit(state, limits, resource)
        if math.isfinite(cap):
            committed = _amount(state.spent, resource) + _amount(state.reserved, resource)
            worst = max(worst, committed / cap)
    if worst >= 1.0:
        return BudgetLevel.EXHAUSTED
    return BudgetLevel.WARNING if worst >= limits.warn_fraction else BudgetLevel.OK


def reserve(
    state: BudgetState,
    limits: BudgetLimits,
    amount: Spend,
    *,
    request_id: str | None = None,
    arm: int | None = None,
    expires: float = math.inf,
) -> tuple[BudgetState, Reservation]:
    """Set ``amount`` aside, or raise :class:`BudgetExhaustedError` if it does not fit."""
    if math.isnan(expires):
        raise InputError("expires", "must be epoch seconds or inf, got nan")
    for resource in RESOURCES:
        requested, left = _amount(amount, resource), remaining(state, limits, resource)
        if requested > left:
            raise BudgetExhaustedError(state.task_type, resource, requested, left)
    reservation = Reservation(state.next_id, amount, request_id, arm, float(expires))
    new = replace(state, reservations=state.reservations | {reservation}, next_id=state.next_id + 1)
    return new, reservation


def settle(
    state: BudgetState, reservation: Reservation, actual: Spend
) -> tuple[BudgetState, Spend]:
    """Charge ``actual`` in place of ``reservation``; returns the state and the overrun (≥ 0).

    Settling a reservation twice, or one this state does not hold, is an
    :class:`InputError`: it would count a call twice.
    """
    if reservation not in state.reservations:
        raise InputError(
            "reservation", f"reservation {reservation.id} is unknown or already settled"
        )
    overrun = Spend(
        max(0.0, actual.tokens - reservation.amount.tokens),
        max(0.0, actual.cost - reservation.amount.cost),
    )
    new = replace(
        state, spent=state.spent + actual, reservations=state.reservations - {reservation}
    )
    return new, overrun


def release(state: BudgetState, reservation: Reservation) -> BudgetState:
    """Drop a reservation whose call never happened (nothing is charged)."""
    return settle(state, reservation, Spend())[0]


def held_by(state: BudgetState, request_id: str) -> Reservation | None:
    """The open reservation of ``request_id`` (the oldest, should a retry have made two)."""
    held = [r for r in state.reservations if r.request_id == request_id]
    return min(held, key=lambda r: r.id) if held else None


def expire(
    state: BudgetState, now: float, measured: Mapping[int, Spend] | None = None
) -> tuple[BudgetState, tuple[Reservation, ...]]:
    """Charge every reservation whose ``expires`` has passed; returns them.

    A reservation is charged what ``measured`` says its call spent (by
    reservation id: an outcome was stored but its replica died before settling
    it) or, when nothing says, its full amount: what the call could have spent.
    The budget errs on the safe side, and a reservation whose process died does
    not stay open until the day ends.
    """
    due = tuple(sorted((r for r in state.reservations if r.expires <= now), key=lambda r: r.id))
    if not due:
        return state, ()
    known = measured or {}
    spends = [known.get(r.id, r.amount) for r in due]
    charged = Spend(math.fsum(s.tokens for s in spends), math.fsum(s.cost for s in spends))
    new = replace(
        state, spent=state.spent + charged, reservations=state.reservations - frozenset(due)
    )
    return new, due


@dataclass(frozen=True, slots=True)
class SpendStats:
    """Additive sufficient statistics of one arm's past spend (replicas merge by addition)."""

    n: int = 0
    tokens_sum: float = 0.0
    tokens_sq: float = 0.0
    cost_sum: float = 0.0
    cost_sq: float = 0.0

    def add(self, spend: Spend) -> SpendStats:
        return SpendStats(
            self.n + 1,
            self.tokens_sum + spend.tokens,
            self.tokens_sq + spend.tokens**2,
            self.cost_sum + spend.cost,
            self.cost_sq + spend.cost**2,
        )

    def merge(self, other: SpendStats) -> SpendStats:
        return SpendStats(
            self.n + other.n,
            self.tokens_sum + other.tokens_sum,
            self.tokens_sq + other.tokens_sq,
            self.cost_sum + other.cost_sum,
            self.cost_sq + other.cost_sq,
        )


def forecast(
    stats: SpendStats, *, k: float = 2.0, cap: Spend | None = None, min_history: int = 20
) -> Spend:
    """A conservative forecast of one call's spend: mean + k·sd of past calls, at most ``cap``.

    It forecasts a single call, not the average, so it uses the spread of calls
    rather than the standard error.  By Cantelli's inequality
    P(X ≥ μ + kσ) ≤ 1/(1 + k²), so for any distribution k = 2 is at least the
    80th percentile (k = 3: the 90th).  Mean and sd come from additive
    sufficient statistics, unlike an empirical quantile, so replicas merge them
    by addition.  With fewer than ``min_history`` calls the forecast is ``cap``
    (the call's hard maximum); without a cap that is an :class:`InputError`.

    >>> stats = SpendStats()
    >>> for tokens in (90.0, 100.0, 110.0):
    ...     stats = stats.add(Spend(tokens, tokens / 1000))
    >>> forecast(stats, k=2.0, min_history=3).tokens
    120.0
    """
    if not (math.isfinite(k) and k >= 0):
        raise InputError("k", f"must be ≥ 0, got {k!r}")
    if stats.n < max(2, min_history):
        if cap is None:
            raise InputError("stats", f"{stats.n} past calls; {min_history} needed without a cap")
        return cap

    def upper(total: float, squares: float) -> float:
        mean = total / stats.n
        variance = max(0.0, (squares - stats.n * mean * mean) / (stats.n - 1))
        return mean + k * math.sqrt(variance)

    tokens, cost = upper(stats.tokens_sum, stats.tokens_sq), upper(stats.cost_sum, stats.cost_sq)
    if cap is not None:
        tokens, cost = min(tokens, cap.tokens), min(cost, cap.cost)
    return Spend(tokens, cost)


@dataclass(frozen=True, slots=True)
class Feasibility:
    """Which arms may be chosen under the budget, and why."""

    arms: tuple[int, ...]
    infeasible: tuple[int, ...]
    level: BudgetLevel
    action: Literal["none", "cheapest", "baseline"]
    reason: str


def feasible_arms(
    state: BudgetState, limits: BudgetLimits, forecasts: Mapping[int, Spend], baseline_arm: int
) -> Feasibility:
    """Arms whose forecast fits in what is left today; else the over-budget action's one arm.

    The baseline fallback is served even when its forecast does not fit: the
    budget limits what paramloop experiments with, not production traffic.
    """
    if not forecasts:
        raise InputError("forecasts", "needs at least one arm")
    left = {resource: remaining(state, limits, resource) for resource in RESOURCES}
    fits = [
        arm
        for arm, spend in sorted(forecasts.items())
        if spend.tokens <= left["tokens"] and spend.cost <= left["cost"]
    ]
    fitting = frozenset(fits)
    unfit = tuple(arm for arm in sorted(forecasts) if arm not in fitting)
    current = level(state, limits)
    if fits:
        return Feasibility(tuple(fits), unfit, current, "none", f"{len(fits)} arms fit the budget")
    if limits.over_budget_action == "cheapest":
        cheapest = min(forecasts, key=lambda arm: (forecasts[arm].cost, forecasts[arm].tokens, arm))
        reason = f"no arm fits the {current} budget; serving the cheapest forecast, arm {cheapest}"
        return Feasibility((cheapest,), unfit, current, "cheapest", reason)
    reason = f"no arm fits the {current} budget; serving the baseline, arm {baseline_arm}"
    return Feasibility((baseline_arm,), unfit, current, "baseline", reason)
