"""The decision loop end to end over the in-memory store: outcomes, idempotence, windows, failures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from paramloop.core.policies import LinUCB
from paramloop.engine import Optimizer, task
from paramloop.errors import (
    ConflictingOutcomeError,
    DuplicateRequestError,
    FeatureError,
    InputError,
    LateOutcomeError,
    OutcomeError,
    UnknownRequestError,
    UnknownTaskTypeError,
)
from paramloop.store.memory import MemoryDecisionLog
from paramloop.types import Outcome, Params


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def tasks(**options: object) -> list:  # type: ignore[type-arg]
    return [
        task(
            "summarize",
            preset="published",
            baseline=Params("gpt-small", temperature=0.3, max_tokens=256),
            grids={"temperature": [0.1, 0.2, 0.3, 0.4, 0.5], "max_tokens": [128, 256, 384]},
            reward_wait_s=60.0,
            **options,  # type: ignore[arg-type]
        ),
        task(
            "classify",
            preset="published",
            baseline=Params("gpt-small", temperature=0.0, max_tokens=16),
            policy="baseline",
        ),
    ]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> MemoryDecisionLog:
    return MemoryDecisionLog()


@pytest.fixture
def opt(clock: Clock, store: MemoryDecisionLog) -> Optimizer:
    return Optimizer(tasks(), store, clock=clock)


def test_decision_carries_everything_needed(opt: Optimizer, clock: Clock) -> None:
    d = opt.recommend(
        "summarize", {"risk_tier": "high", "prompt_tokens": 900}, request_id="r1", seed=42
    )
    assert d.request_id == "r1" and d.task_type == "summarize"
    assert d.params.model == "gpt-small" and d.params.seed == 42
    assert d.params.temperature in (0.1, 0.2, 0.3, 0.4, 0.5)
    assert d.policy == "linucb@2.0.0" and d.origin == "bandit:linucb@2.0.0"
    assert d.policy_revision == 0 and d.timestamp == clock.now
    assert d.schema_version == 1 and d.error is None
    assert d.context["risk_tier"] == "high" and d.context_fingerprint > 0
    assert 0 < d.propensity <= 1 and 0 <= d.confidence <= 1
    assert opt.store.get_decision("r1") == d


def test_outcomes_update_the_policy_once(opt: Optimizer) -> None:
    d = opt.recommend("summarize", {}, request_id="r1")
    first = opt.record_outcome(
        "r1", Outcome(quality=0.9, latency_ms=500, completion_tokens=100, cost=0.001)
    )
    assert first.source == "observed" and 0 <= first.reward <= 1 and first.seq == 1
    assert opt.policy("summarize").revision == 1
    again = opt.record_outcome(
        "r1", Outcome(quality=0.9, latency_ms=500, completion_tokens=100, cost=0.001)
    )
    assert again == first
    assert opt.policy("summarize").revision == 1  # counted once
    assert opt.stats.duplicate_outcomes == 1
    with pytest.raises(ConflictingOutcomeError, match="a different outcome was already recorded"):
        opt.record_outcome("r1", Outcome(quality=0.1))
    assert opt.store.get_outcome("r1") == first
    assert d.request_id == "r1"


def test_bad_inputs_have_specific_errors_and_change_nothing(
    opt: Optimizer, store: MemoryDecisionLog
) -> None:
    with pytest.raises(
        UnknownTaskTypeError,
        match="unknown task type 'translate'; configured task types: classify, summarize",
    ):
        opt.recommend("translate", {})
    with pytest.raises(FeatureError, match="'prompt_tokens': must be an integer, got str"):
        opt.recommend("summarize", {"prompt_tokens": "many"})
    with pytest.raises(FeatureError, match="'prompt_tokens': must be finite"):
        opt.recommend("summarize", {"prompt_tokens": float("nan")})
    with pytest.raises(FeatureError, match="'title_length': must be finite"):
        opt.recommend("summarize", {"title_length": math.inf})
    with pytest.raises(
        FeatureError, match="'risk_tier': must be one of low, medium, high; got 'extreme'"
    ):
        opt.recommend("summarize", {"risk_tier": "extreme"})
    with pytest.raises(
        FeatureError, match="'colour': is not declared; declared features: risk_tier"
    ):
        opt.recommend("summarize", {"colour": "blue"})
    with pytest.raises(FeatureError, match="'has_external_deps': must be true/false or 0/1"):
        opt.recommend("summarize", {"has_external_deps": 2})
    with pytest.raises(InputError, match="seed: must be an integer in"):
        opt.recommend("summarize", {}, seed=-1)
    with pytest.raises(InputError, match="request_id: must be a non-empty string"):
        opt.recommend("summarize", {}, request_id="")
    assert store.count_decisions() == 0
    opt.recommend("summarize", {}, request_id="dup")
    with pytest.raises(DuplicateRequestError, match="'dup' was already used"):
        opt.recommend("summarize", {}, request_id="dup")
    with pytest.raises(UnknownRequestError, match="no decision was logged with request_id 'nope'"):
        opt.record_outcome("nope", Outcome(quality=1.0))
    with pytest.raises(OutcomeError, match="'reward': must lie in the reward range"):
        opt.record_outcome("dup", Outcome(reward=1.5))
    with pytest.raises(OutcomeError, match="'quality': must be in \\[0, 1\\]"):
        Outcome(quality=2.0)
    with pytest.raises(OutcomeError, match="'latency_ms': must be finite"):
        Outcome(latency_ms=float("nan"))
    assert store.count_decisions() == 1
    assert store.get_outcome("dup") is None
    assert opt.policy("summarize").revision == 0


def test_reward_wait_window_refuses_late_outcomes(opt: Optimizer, clock: Clock) -> None:
    opt.recommend("summarize", {}, request_id="late")
    clock.now += 61
    with pytest.raises(
        LateOutcomeError,
        match=r"arrived 61\.0s after the decision; the reward wait window of this task type is 60\.0s",
    ):
        opt.record_outcome("late", Outcome(quality=1.0))
    assert opt.store.get_outcome("late") is None


def test_default_reward_after_window(clock: Clock, store: MemoryDecisionLog) -> None:
    opt = Optimizer(tasks(default_reward=0.25), store, clock=clock)
    for i in range(3):
        opt.recommend("summarize", {}, request_id=f"r{i}")
    opt.record_outcome("r0", Outcome(quality=1.0))
    assert opt.expire() == 0  # nothing is due yet
    clock.now += 61
    assert opt.expire() == 2
    assert {store.get_outcome(f"r{i}").source for i in (1, 2)} == {"default"}  # type: ignore[union-attr]
    assert store.get_outcome("r1").reward == 0.25  # type: ignore[union-attr]
    assert opt.policy("summarize").revision == 3
    assert opt.expire() == 0  # idempotent


def test_same_seed_context_revision_same_arm(opt: Optimizer) -> None:
    a = opt.recommend("summarize", {"prompt_tokens": 5}, request_id="a", seed=7)
    b = opt.recommend("summarize", {"prompt_tokens": 5}, request_id="b", seed=7)
    assert (a.arm, a.propensity) == (b.arm, b.propensity)


def test_baseline_task_always_serves_baseline_with_propensity_one(opt: Optimizer) -> None:
    for _ in range(20):
        d = opt.recommend("classify", {})
        assert d.origin == "baseline" and d.propensity == 1.0 and d.params.max_tokens == 16


def test_internal_failure_serves_the_baseline_visibly(
    opt: Optimizer, store: MemoryDecisionLog
) -> None:
    policy = opt.policy("summarize")
    assert isinstance(policy, LinUCB)
    policy.theta = np.full((*policy.theta.shape, 2), 0.5)  # corrupt the state: scoring raises
    d = opt.recommend("summarize", {}, request_id="f1")
    assert d.origin == "fallback:baseline" and d.params == opt.config("summarize").space.baseline
    assert d.error is not None and "ValueError" in d.error
    assert opt.stats.fallbacks == 1 and opt.stats.last_error is not None


def test_store_failure_serves_the_baseline(clock: Clock) -> None:
    store = MemoryDecisionLog()
    opt = Optimizer(tasks(), store, clock=clock)
    store.close()
    d = opt.recommend("summarize", {})
    assert d.origin == "fallback:baseline" and "StoreError" in (d.error or "")


def test_restart_restores_snapshot_and_replays_later_outcomes(
    clock: Clock, store: MemoryDecisionLog
) -> None:
    opt = Optimizer(tasks(snapshot_every=10), store, clock=clock)
    rng = np.random.default_rng(0)
    for i in range(25):
        d = opt.recommend(
            "summarize", {"prompt_tokens": int(rng.integers(1000))}, request_id=f"r{i}"
        )
        opt.record_outcome(d.request_id, Outcome(reward=float(rng.random())))
    snap = store.latest_snapshot("summarize")
    assert snap is not None and snap.revision == 20 and snap.last_outcome_seq == 20
    before = opt.policy("summarize")
    # A new process: restores revision 20 and replays outcomes 21..25.
    reopened = Optimizer(tasks(snapshot_every=10), store, clock=clock)
    after = reopened.policy("summarize")
    assert after.revision == 25 and reopened.stats.replayed["summarize"] == 5
    assert isinstance(before, LinUCB) and isinstance(after, LinUCB)
    np.testing.assert_allclose(after.theta, before.theta, atol=1e-12)
    probe = opt.recommend("summarize", {"prompt_tokens": 5}, request_id="p1", seed=3)
    again = reopened.recommend("summarize", {"prompt_tokens": 5}, request_id="p2", seed=3)
    assert probe.arm == again.arm


def test_outcome_for_decision_from_before_a_restart(clock: Clock, store: MemoryDecisionLog) -> None:
    Optimizer(tasks(), store, clock=clock).recommend("summarize", {}, request_id="old")
    reopened = Optimizer(tasks(), store, clock=clock)
    assert reopened.record_outcome("old", Outcome(quality=0.5)).seq == 1
