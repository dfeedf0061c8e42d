"""Daily token and cost budgets per task type, kept exact across threads, processes and machines.

The arithmetic is :mod:`paramloop.core.budget`; this module wires it to the
store and the clock.  Per task type with a budget it keeps two engine states:

* kind ``budget``, key the task type: the day's :class:`~paramloop.core.budget.BudgetState`
  (spent, open reservations, waiver, next reservation id, UTC day) as JSON.  It
  is one document per task type; a new UTC day rolls it over in place.
* kind ``budget_stats``, key the task type: each arm's
  :class:`~paramloop.core.budget.SpendStats` (``{arm: [n, tokens_sum, tokens_sq,
  cost_sum, cost_sq]}``), added to on every settlement and read by the forecasts.

Every mutation reads the state, applies the pure core function and writes it
back by compare and swap; when another writer got there first
(:class:`~paramloop.errors.StaleStateError`) it reads again and retries, at most
:data:`MAX_ATTEMPTS` times, then raises :class:`~paramloop.errors.StoreError`.
So the hard limit holds for every replica sharing the database: spent +
reserved never passes it, provided each call's actual spend is at most what it
reserved (reserve the call's hard maximum: prompt tokens + ``max_tokens``,
priced).  Within one process a lock per task type keeps threads from
retrying against each other.  Only forecasts read a cache (of the spend
statistics, refreshed every ``stats_ttl_s`` seconds); the limit never does.

The request path, per call::

    feasibility = budgets.feasible(task, arms, caps, baseline_arm)   # before the call
    reservation = budgets.reserve(task, arm, caps[arm])              # BudgetExhaustedError: serve the baseline
    ...call the LLM...
    budgets.settle(task, reservation, actual, arm)                  # or release() if no call was made

The optimizer reserves with the request id and the end of its reward wait
window, and settles with :meth:`BudgetManager.settle_request` wherever the
outcome arrives (any replica); :meth:`BudgetManager.expire` charges what no
outcome settled once its window closed, on whichever replica runs it first.

A task type configured without a budget (``None`` in ``limits``) is not
limited: :meth:`BudgetManager.feasible` returns every arm, :meth:`~BudgetManager.reserve`
returns :data:`NO_RESERVATION` and settling or releasing it does nothing;
nothing is stored for it.

Alerts: ``on_level(task_type, level, status)`` is called after a reservation
or settlement that raised the level (ok → warning, → exhausted).  The level
is compared between the state that was read and the one written by compare
and swap, so among all replicas exactly one call reports each rise.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from paramloop.core import budget as core
from paramloop.core.budget import (
    RESOURCES,
    BudgetLevel,
    BudgetLimits,
    BudgetState,
    Feasibility,
    Reservation,
    Spend,
    SpendStats,
)
from paramloop.errors import (
    ConfigError,
    InputError,
    StaleStateError,
    StoreError,
    UnknownTaskTypeError,
)
from paramloop.store.base import Store
from paramloop.types import ProvenanceRecord, StateRecord

log = logging.getLogger(__name__)

#: Engine-state kind of a task type's budget of the day.
STATE_KIND = "budget"
#: Engine-state kind of a task type's per-arm spend statistics.
STATS_KIND = "budget_stats"
#: Provenance kind of a waiver.
WAIVER_KIND = "budget_waiver"
#: Compare-and-swap attempts of one mutation before it gives up with a ``StoreError``.
MAX_ATTEMPTS = 100
#: What :meth:`BudgetManager.reserve` returns for a task type without a budget.
NO_RESERVATION = Reservation(-1, Spend())

#: ``on_level(task_type, level, status)``: the level rose; ``status`` is :meth:`BudgetManager.status`'s.
LevelHook = Callable[[str, BudgetLevel, Mapping[str, Any]], None]

_T = TypeVar("_T")


# -- serialization (JSON data <-> core values) --------------------------------------------------


def spend_to_dict(spend: Spend) -> dict[str, float]:
    return {"tokens": spend.tokens, "cost": spend.cost}


def spend_from_dict(data: Mapping[str, Any]) -> Spend:
    return Spend(data["tokens"], data["cost"])


def reservation_to_dict(reservation: Reservation) -> dict[str, Any]:
    data: dict[str, Any] = {"id": reservation.id, **spend_to_dict(reservation.amount)}
    if reservation.request_id is not None:
        data["request_id"] = reservation.request_id
    if reservation.arm is not None:
        data["arm"] = reservation.arm
    if math.isfinite(reservation.expires):
        data["expires"] = reservation.expires
    return data


def reservation_from_dict(data: Mapping[str, Any]) -> Reservation:
    arm = data.get("arm")
    return Reservation(
        int(data["id"]),
        spend_from_dict(data),
        None if data.get("request_id") is None else str(data["request_id"]),
        None if arm is None else int(arm),
        float(data.get("expires", math.inf)),
    )


def state_to_dict(state: BudgetState) -> dict[str, Any]:
    """JSON data of ``state``; reservations by id, so equal states give equal documents."""
    return {
        "task_type": state.task_type,
        "day": state.day,
        "spent": spend_to_dict(state.spent),
        "reservations": [
            reservation_to_dict(r) for r in sorted(state.reservations, key=lambda r: r.id)
        ],
        "waiver_percent": state.waiver_percent,
        "next_id": state.next_id,
    }


def state_from_dict(data: Mapping[str, Any]) -> BudgetState:
    """The state :func:`state_to_dict` wrote; a :class:`StoreError` names what is corrupt."""
    try:
        return BudgetState(
            task_type=str(data["task_type"]),
            day=str(data["day"]),
            spent=spend_from_dict(data["spent"]),
            reservations=frozenset(reservation_from_dict(r) for r in data["reservations"]),
            waiver_percent=float(data["waiver_percent"]),
            next_id=int(data["next_id"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"stored budget state is corrupt ({exc!r}): {dict(data)!r}") from exc


def stats_to_dict(stats: Mapping[int, SpendStats]) -> dict[str, list[float]]:
    return {
        str(arm): [s.n, s.tokens_sum, s.tokens_sq, s.cost_sum, s.cost_sq]
        for arm, s in sorted(stats.items())
    }


def stats_from_dict(data: Mapping[str, Any]) -> dict[int, SpendStats]:
    try:
        return {
            int(arm): SpendStats(int(v[0]), float(v[1]), float(v[2]), float(v[3]), float(v[4]))
            for arm, v in data.items()
        }
    except (IndexError, TypeError, ValueError) as exc:
        raise StoreError(f"stored budget statistics are corrupt ({exc!r})") from exc


# -- the manager ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _StatsCache:
    loaded_at: float
    stats: dict[int, SpendStats]


class BudgetManager:
    """Budgets of every configured task type on one store (see the module docstring).

    ``limits`` maps every configured task type to its :class:`BudgetLimits`
    (``None``: no budget); any other task type is an
    :class:`~paramloop.errors.UnknownTaskTypeError` naming the configured ones.
    ``clock`` gives epoch seconds (its UTC day is the budget's day); ``k`` and
    ``min_history`` shape the forecasts (:func:`paramloop.core.budget.forecast`);
    ``stats_ttl_s`` is how stale the cached spend statistics may be.
    """

    def __init__(
        self,
        store: Store,
        limits: Mapping[str, BudgetLimits | None],
        *,
        clock: Callable[[], float] = time.time,
        k: float = 2.0,
        min_history: int = 20,
        stats_ttl_s: float = 5.0,
        on_level: LevelHook | None = None,
    ) -> None:
        for task_type, task_limits in limits.items():
            if not isinstance(task_type, str) or not task_type:
                raise ConfigError("budgets", f"task types are non-empty strings, got {task_type!r}")
            if task_limits is not None and not isinstance(task_limits, BudgetLimits):
                raise ConfigError(
                    f"budgets.{task_type}", f"must be BudgetLimits or None, got {task_limits!r}"
                )
        if (
            isinstance(k, bool)
            or not isinstance(k, int | float)
            or not (math.isfinite(k) and k >= 0)
        ):
            raise ConfigError("budgets.k", f"must be a finite number ≥ 0, got {k!r}")
        if isinstance(min_history, bool) or not isinstance(min_history, int) or min_history < 2:
            raise ConfigError("budgets.min_history", f"must be an integer ≥ 2, got {min_history!r}")
        if not (math.isfinite(stats_ttl_s) and stats_ttl_s >= 0):
            raise ConfigError("budgets.stats_ttl_s", f"must be ≥ 0 seconds, got {stats_ttl_s!r}")
        self.store = store
        self.limits: Mapping[str, BudgetLimits | None] = dict(limits)
        self.clock = clock
        self.k = float(k)
        self.min_history = min_history
        self.stats_ttl_s = stats_ttl_s
        self.on_level = on_level
        self._locks = {task_type: threading.Lock() for task_type in self.limits}
        self._stats_locks = {task_type: threading.Lock() for task_type in self.limits}
        self._cache: dict[str, _StatsCache] = {}
        self._jitter = random.Random()

    @property
    def task_types(self) -> tuple[str, ...]:
        return tuple(sorted(self.limits))

    # -- before the call --------------------------------------------------------------------

    def feasible(
        self,
        task_type: str,
        arms: Sequence[int],
        caps: Mapping[int, Spend],
        baseline_arm: int,
    ) -> Feasibility:
        """The arms whose forecast spend fits in what is left today (see :func:`~paramloop.core.budget.feasible_arms`).

        ``caps`` holds each arm's hard maximum spend for one call; an arm with
        too little history is forecast at its cap.  Feasibility reads the
        current state but reserves nothing: an arm forecast to fit can still
        be refused by :meth:`reserve`, which holds the line.
        """
        limits = self._limits(task_type)
        if not arms:
            raise InputError("arms", "needs at least one arm")
        missing = [arm for arm in arms if arm not in caps]
        if missing:
            raise InputError("caps", f"no maximum spend given for arms {sorted(set(missing))}")
        if limits is None:
            return Feasibility(
                tuple(sorted(set(arms))), (), BudgetLevel.OK, "none", "no budget for this task type"
            )
        stats = self._stats(task_type)
        forecasts = {
            arm: core.forecast(
                stats.get(arm, SpendStats()), k=self.k, cap=caps[arm], min_history=self.min_history
            )
            for arm in arms
        }
        state, _ = self._read(task_type)
        return core.feasible_arms(state, limits, forecasts, baseline_arm)

    def reserve(
        self,
        task_type: str,
        arm: int,
        amount: Spend,
        *,
        request_id: str | None = None,
        expires: float = math.inf,
    ) -> Reservation:
        """Set ``amount`` aside for a call of ``arm``.

        With ``request_id`` the reservation can be settled by
        :meth:`settle_request` on any replica; at ``expires`` (epoch seconds,
        the end of the call's reward wait window) :meth:`expire` charges it in
        full if nothing settled it.  Raises
        :class:`~paramloop.errors.BudgetExhaustedError` when it does not fit
        today, leaving the budget unchanged.
        """
        limits = self._limits(task_type)
        _check_spend("amount", amount)
        if limits is None:
            return NO_RESERVATION
        reservation = self._mutate(
            task_type,
            limits,
            lambda state: core.reserve(
                state, limits, amount, request_id=request_id, arm=arm, expires=expires
            ),
        )
        return reservation

    # -- after the call ---------------------------------------------------------------------

    def settle(self, task_type: str, reservation: Reservation, actual: Spend, arm: int) -> Spend:
        """Charge ``actual`` in place of ``reservation`` and add it to ``arm``'s history.

        Returns the overrun (actual beyond the reservation, zero when it fit).
        Settling an unknown or already settled reservation is an
        :class:`~paramloop.errors.InputError` and changes nothing.
        """
        limits = self._limits(task_type)
        _check_spend("actual", actual)
        if limits is None:
            return Spend()
        overrun = self._mutate(
            task_type, limits, lambda state: core.settle(state, reservation, actual)
        )
        self._record_spend_safely(task_type, arm, actual)
        return overrun

    def settle_request(
        self, task_type: str, request_id: str, actual: Spend | None
    ) -> Reservation | None:
        """Settle the reservation ``request_id`` holds, whichever replica made it.

        ``actual=None`` charges what was reserved (an outcome that measured
        nothing).  Returns the settled reservation, or ``None`` when the request
        holds none (no budget, already settled, or expired and charged in
        full): then nothing changes.
        """
        limits = self._limits(task_type)
        if actual is not None:
            _check_spend("actual", actual)
        if limits is None:
            return None

        def change(state: BudgetState) -> tuple[BudgetState, Reservation | None]:
            held = core.held_by(state, request_id)
            if held is None:
                return state, None
            return core.settle(state, held, held.amount if actual is None else actual)[0], held

        held = self._mutate(task_type, limits, change)
        if held is not None and held.arm is not None:
            self._record_spend_safely(
                task_type, held.arm, held.amount if actual is None else actual
            )
        return held

    def expire(
        self, task_type: str, measured: Callable[[str], Spend | None] | None = None
    ) -> tuple[Reservation, ...]:
        """Charge every reservation past its ``expires`` (see :func:`paramloop.core.budget.expire`).

        ``measured(request_id)`` gives what the call spent when its outcome was
        stored but never settled (its replica died in between); anything else
        is charged in full.  Any replica may call it: a reservation made by a
        process that died is charged here when its window closes, not left open
        until the day ends.  Returns the reservations charged.
        """
        limits = self._limits(task_type)
        if limits is None:
            return ()
        now = self.clock()
        spent: dict[int, Spend] = {}
        if measured is not None:
            for reservation in self._read(task_type)[0].reservations:
                if reservation.expires <= now and reservation.request_id is not None:
                    found = measured(reservation.request_id)
                    if found is not None:
                        spent[reservation.id] = found
        due = self._mutate(task_type, limits, lambda state: core.expire(state, now, spent))
        for reservation in due:
            if reservation.arm is not None:
                actual = spent.get(reservation.id, reservation.amount)
                self._record_spend_safely(task_type, reservation.arm, actual)
        return due

    def release(self, task_type: str, reservation: Reservation) -> None:
        """Drop the reservation of a call that never happened (nothing is charged)."""
        limits = self._limits(task_type)
        if limits is None:
            return
        self._mutate(task_type, limits, lambda state: (core.release(state, reservation), None))

    # -- waivers ----------------------------------------------------------------------------

    def waive(self, task_type: str, percent: float, *, actor: str, reason: str) -> BudgetState:
        """Raise today's limits by ``percent`` (at most ``max_waiver_percent``) and record who did.

        The waiver *is* the approval: ``actor`` names the person who grants it
        (and takes responsibility), ``reason`` says why, and a provenance
        record (kind ``budget_waiver``) is appended before the waiver takes
        effect — a waiver is never in force without its record.  A later
        waiver on the same day replaces the earlier one; midnight (UTC) ends it.
        Raises :class:`~paramloop.errors.InputError` for a percent beyond the
        threshold, an empty actor or reason, or a task type without a budget,
        leaving the budget unchanged.
        """
        limits = self._limits(task_type)
        if not isinstance(actor, str) or not actor.strip():
            raise InputError("actor", "a waiver names the person who approves it")
        if not isinstance(reason, str) or not reason.strip():
            raise InputError("reason", "a waiver says why the budget must grow")
        if isinstance(percent, bool) or not isinstance(percent, int | float):
            raise InputError("waiver_percent", f"must be a number, got {percent!r}")
        if limits is None:
            raise InputError("task_type", f"task type {task_type!r} has no budget to waive")
        with self._locks[task_type]:
            state, version = self._read(task_type)
            waived = core.apply_waiver(state, limits, percent)  # InputError beyond the threshold
            self.store.append_provenance(
                ProvenanceRecord(
                    kind=WAIVER_KIND,
                    task_type=task_type,
                    actor=actor.strip(),
                    reason=reason.strip(),
                    evidence={
                        "percent": float(percent),
                        "previous_percent": state.waiver_percent,
                        "max_waiver_percent": limits.max_waiver_percent,
                        "day": state.day,
                        "limits": _limits_dict(waived, limits),
                        "base_limits": {
                            "tokens": limits.tokens_per_day,
                            "cost": limits.cost_per_day,
                        },
                        "spent": spend_to_dict(state.spent),
                        "reserved": spend_to_dict(state.reserved),
                    },
                    policy_versions={},
                    timestamp=self.clock(),
                )
            )
            for _ in range(MAX_ATTEMPTS):
                try:
                    self._write(waived, version)
                    return waived
                except StaleStateError:
                    self._backoff()
                    state, version = self._read(task_type)
                    waived = core.apply_waiver(state, limits, percent)
        raise _contended(task_type)

    # -- reading ----------------------------------------------------------------------------

    def level(self, task_type: str) -> BudgetLevel:
        """Today's level: ok, warning (past ``warn_fraction``) or exhausted."""
        limits = self._limits(task_type)
        if limits is None:
            return BudgetLevel.OK
        return core.level(self._read(task_type)[0], limits)

    def status(self, task_type: str) -> dict[str, Any]:
        """Today's budget as JSON data: day, limits (waiver included), spent, reserved, remaining, level.

        Unlimited amounts are ``None``; a task type without a budget has
        ``budget: False`` and ``None`` amounts.
        """
        limits = self._limits(task_type)
        if limits is None:
            return {
                "task_type": task_type,
                "budget": False,
                "day": core.day_of(self.clock()),
                "level": str(BudgetLevel.OK),
                "limits": None,
                "spent": None,
                "reserved": None,
                "remaining": None,
                "open_reservations": 0,
                "waiver_percent": 0.0,
                "max_waiver_percent": None,
                "over_budget_action": None,
            }
        return _status(self._read(task_type)[0], limits)

    def forecasts(self, task_type: str, caps: Mapping[int, Spend]) -> dict[int, Spend]:
        """Each arm's forecast spend for one call (at most its cap), from the cached history."""
        self._limits(task_type)
        stats = self._stats(task_type)
        return {
            arm: core.forecast(
                stats.get(arm, SpendStats()), k=self.k, cap=cap, min_history=self.min_history
            )
            for arm, cap in caps.items()
        }

    def spend_stats(self, task_type: str) -> dict[int, SpendStats]:
        """Each arm's stored spend history (read from the store, not the cache)."""
        self._limits(task_type)
        record = self.store.get_state(STATS_KIND, task_type)
        return {} if record is None else stats_from_dict(record.data)

    # -- internals --------------------------------------------------------------------------

    def _limits(self, task_type: str) -> BudgetLimits | None:
        try:
            return self.limits[task_type]
        except KeyError:
            raise UnknownTaskTypeError(task_type, sorted(self.limits)) from None

    def _read(self, task_type: str) -> tuple[BudgetState, int]:
        """Today's state (rolled over, not written) and the stored version it came from (0: none)."""
        now = self.clock()
        record = self.store.get_state(STATE_KIND, task_type)
        if record is None:
            return BudgetState.start(task_type, now), 0
        state = state_from_dict(record.data)
        # A replica whose clock lags behind the stored day keeps the later day: days never go back.
        if core.day_of(now) > state.day:
            state = core.roll_over(state, now)
        return state, record.version

    def _write(self, state: BudgetState, version: int) -> None:
        self.store.put_state(
            StateRecord(STATE_KIND, state.task_type, state_to_dict(state), self.clock()), version
        )

    def _mutate(
        self,
        task_type: str,
        limits: BudgetLimits,
        change: Callable[[BudgetState], tuple[BudgetState, _T]],
    ) -> _T:
        """Read, change (pure; may raise and so change nothing), write by compare and swap, retry.

        A change that returns the state it was given writes nothing.
        """
        with self._locks[task_type]:
            for _ in range(MAX_ATTEMPTS):
                before, version = self._read(task_type)
                after, result = change(before)
                if after is before:
                    return result
                try:
                    self._write(after, version)
                except StaleStateError:
                    self._backoff()
                    continue
                self._notify(after, limits, core.level(before, limits))
                return result
        raise _contended(task_type)

    def _notify(self, state: BudgetState, limits: BudgetLimits, previous: BudgetLevel) -> None:
        current = core.level(state, limits)
        if self.on_level is None or _RANK[current] <= _RANK[previous]:
            return
        try:
            self.on_level(state.task_type, current, _status(state, limits))
        except Exception:
            # The spend is committed; an alert sink's failure must not make the caller retry it.
            log.exception("budget level hook failed for task type %r", state.task_type)

    def _record_spend_safely(self, task_type: str, arm: int, actual: Spend) -> None:
        try:
            self._record_spend(task_type, arm, actual)
        except StoreError:
            # The spend is committed; a lost history sample only makes forecasts more cautious
            # (fewer calls of history), and raising would invite a second settlement.
            log.exception("budget of %r: arm %d's spend history was not updated", task_type, arm)

    def _record_spend(self, task_type: str, arm: int, actual: Spend) -> None:
        """Add one call to ``arm``'s stored history (compare and swap) and refresh the cache."""
        with self._stats_locks[task_type]:
            for _ in range(MAX_ATTEMPTS):
                record = self.store.get_state(STATS_KIND, task_type)
                stats = {} if record is None else stats_from_dict(record.data)
                stats[arm] = stats.get(arm, SpendStats()).add(actual)
                try:
                    self.store.put_state(
                        StateRecord(STATS_KIND, task_type, stats_to_dict(stats), self.clock()),
                        0 if record is None else record.version,
                    )
                except StaleStateError:
                    self._backoff()
                    continue
                self._cache[task_type] = _StatsCache(time.monotonic(), stats)
                return
        raise _contended(task_type)

    def _stats(self, task_type: str) -> dict[int, SpendStats]:
        cached = self._cache.get(task_type)
        if cached is not None and time.monotonic() - cached.loaded_at < self.stats_ttl_s:
            return cached.stats
        record = self.store.get_state(STATS_KIND, task_type)
        stats = {} if record is None else stats_from_dict(record.data)
        self._cache[task_type] = _StatsCache(time.monotonic(), stats)
        return stats

    def _backoff(self) -> None:
        # Random, short: replicas that collided should not collide again in lockstep.
        time.sleep(self._jitter.uniform(0.0, 0.002))


_RANK = {BudgetLevel.OK: 0, BudgetLevel.WARNING: 1, BudgetLevel.EXHAUSTED: 2}


def _check_spend(field: str, value: object) -> None:
    if not isinstance(value, Spend):
        raise InputError(field, f"must be a Spend(tokens, cost), got {value!r}")


def _contended(task_type: str) -> StoreError:
    return StoreError(
        f"budget of task type {task_type!r}: gave up after {MAX_ATTEMPTS} attempts, "
        "other writers kept changing it; retry the call"
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _limits_dict(state: BudgetState, limits: BudgetLimits) -> dict[str, float | None]:
    return {r: _finite(core.limit(state, limits, r)) for r in RESOURCES}


def _status(state: BudgetState, limits: BudgetLimits) -> dict[str, Any]:
    return {
        "task_type": state.task_type,
        "budget": True,
        "day": state.day,
        "level": str(core.level(state, limits)),
        "limits": _limits_dict(state, limits),
        "spent": spend_to_dict(state.spent),
        "reserved": spend_to_dict(state.reserved),
        "remaining": {r: _finite(core.remaining(state, limits, r)) for r in RESOURCES},
        "open_reservations": len(state.reservations),
        "waiver_percent": state.waiver_percent,
        "max_waiver_percent": limits.max_waiver_percent,
        "over_budget_action": limits.over_budget_action,
    }


__all__: Sequence[str] = (
    "MAX_ATTEMPTS",
    "NO_RESERVATION",
    "STATE_KIND",
    "STATS_KIND",
    "WAIVER_KIND",
    "BudgetManager",
    "LevelHook",
    "state_from_dict",
    "state_to_dict",
    "stats_from_dict",
    "stats_to_dict",
)
