"""Budgets inside the decision loop: infeasible arms before the call, reservations, settlement."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from paramloop.core.budget import BudgetLimits
from paramloop.engine import Optimizer
from paramloop.engine.budgets import BudgetManager
from paramloop.errors import DuplicateRequestError
from paramloop.sim.tasks import default_tasks
from paramloop.sim.world import World
from paramloop.store.memory import MemoryDecisionLog

TASK = "summarization"


def test_spend_never_passes_the_daily_limit_and_the_baseline_takes_over() -> None:
    limit = 90_000.0
    config = replace(
        default_tasks(task_types=[TASK], exploration=0.3)[0],
        budget=BudgetLimits(tokens_per_day=limit, over_budget_action="baseline"),
    )
    store = MemoryDecisionLog()
    clock = iter(1_700_000_000.0 + np.arange(10_000.0))
    budgets = BudgetManager(store, {TASK: config.budget}, clock=lambda: float(next(clock)))
    optimizer = Optimizer([config], store, budgets=budgets)
    world, rng = World(), np.random.default_rng(0)
    origins = []
    for i in range(150):
        decision = optimizer.recommend(TASK, world.sample_context(TASK, rng), seed=i)
        origins.append(decision.origin)
        outcome = world.outcome(TASK, decision.context, decision.params, rng)
        optimizer.record_outcome(decision.request_id, outcome)
        status = budgets.status(TASK)
        assert status["spent"]["tokens"] + status["reserved"]["tokens"] <= limit
    status = budgets.status(TASK)
    assert status["level"] == "exhausted" or status["remaining"]["tokens"] < 4_096
    # Once the budget binds, requests get the baseline (an arm only fits again if settled
    # calls spent less than they reserved); an experiment is never served unreserved.
    first = origins.index("budget:baseline")
    assert 5 < first < 140
    assert origins[first:].count("budget:baseline") > len(origins[first:]) / 2
    assert optimizer.stats.fallbacks == 0


def test_a_call_without_an_outcome_is_charged_its_reservation_when_its_window_closes() -> None:
    config = replace(
        default_tasks(task_types=[TASK], exploration=0.3)[0],
        budget=BudgetLimits(tokens_per_day=1_000_000.0),
        reward_wait_s=60.0,
    )
    store = MemoryDecisionLog()
    now = [1_700_000_000.0]
    budgets = BudgetManager(store, {TASK: config.budget}, clock=lambda: now[0])
    optimizer = Optimizer([config], store, budgets=budgets, clock=lambda: now[0])
    decision = optimizer.recommend(TASK, {"prompt_tokens": 500}, seed=1)
    reserved = budgets.status(TASK)["reserved"]["tokens"]
    assert reserved == 500 + decision.params.max_tokens  # type: ignore[operator]
    now[0] += 30.0
    optimizer.expire()
    assert budgets.status(TASK)["reserved"]["tokens"] == reserved  # still inside its window
    now[0] += 31.0
    optimizer.expire()
    status = budgets.status(TASK)
    assert status["reserved"]["tokens"] == 0.0 and status["spent"]["tokens"] == reserved


def _replicas(store: MemoryDecisionLog, now: list[float], wait_s: float = 60.0) -> list[Optimizer]:
    """Two optimizers on one store, as two service replicas on one database."""
    config = replace(
        default_tasks(task_types=[TASK], exploration=0.3)[0],
        budget=BudgetLimits(tokens_per_day=1_000_000.0),
        reward_wait_s=wait_s,
    )
    return [
        Optimizer(
            [config],
            store,
            budgets=BudgetManager(store, {TASK: config.budget}, clock=lambda: now[0]),
            clock=lambda: now[0],
        )
        for _ in range(2)
    ]


def test_an_outcome_that_reaches_another_replica_settles_the_reservation() -> None:
    store, now = MemoryDecisionLog(), [1_700_000_000.0]
    first, second = _replicas(store, now)
    world, rng = World(), np.random.default_rng(3)
    total = 0.0
    for i in range(40):
        decision = first.recommend(TASK, world.sample_context(TASK, rng), seed=i)
        outcome = world.outcome(TASK, decision.context, decision.params, rng)
        total += float(outcome.total_tokens or 0)
        second.record_outcome(decision.request_id, outcome)  # the other replica
        now[0] += 1.0
    status = second.budgets.status(TASK)  # type: ignore[union-attr]
    assert status["open_reservations"] == 0
    assert status["reserved"]["tokens"] == 0.0
    assert status["spent"]["tokens"] == total  # exactly what the outcomes measured


def test_the_reservations_of_a_replica_that_died_are_charged_when_their_window_closes() -> None:
    store, now = MemoryDecisionLog(), [1_700_000_000.0]
    dead, alive = _replicas(store, now)
    decisions = [dead.recommend(TASK, {"prompt_tokens": 100}, seed=i) for i in range(5)]
    del dead  # kill -9: its memory is gone, its reservations are in the store
    reserved = alive.budgets.status(TASK)["reserved"]["tokens"]  # type: ignore[union-attr]
    assert reserved == sum(100 + int(d.params.max_tokens or 0) for d in decisions)
    now[0] += 59.0
    alive.expire()
    assert alive.budgets.status(TASK)["open_reservations"] == 5  # type: ignore[union-attr]
    now[0] += 2.0
    alive.expire()
    status = alive.budgets.status(TASK)  # type: ignore[union-attr]
    assert status["open_reservations"] == 0
    assert status["spent"]["tokens"] == reserved


def test_a_retried_decision_holds_one_reservation() -> None:
    store, now = MemoryDecisionLog(), [1_700_000_000.0]
    first, second = _replicas(store, now)
    decision = first.recommend(TASK, {"prompt_tokens": 100}, request_id="r-1", seed=1)
    for replica in (first, second):
        with pytest.raises(DuplicateRequestError):
            replica.recommend(TASK, {"prompt_tokens": 100}, request_id="r-1", seed=1)
    status = first.budgets.status(TASK)  # type: ignore[union-attr]
    assert status["open_reservations"] == 1
    assert status["reserved"]["tokens"] == 100 + decision.params.max_tokens  # type: ignore[operator]
