"""Contract suite over every registered estimator, the formulas themselves, and properties."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from paramloop.core.ope import (
    DM,
    DR,
    ESTIMATORS,
    IPS,
    SNDR,
    SNIPS,
    Estimator,
    LoggedBandit,
    SwitchDR,
    estimate_all,
    make_estimator,
)
from paramloop.core.ope.evaluate import IntervalMethod

#: Hyperparameters for estimators that have required ones; a new one without an entry fails here.
PARAMS: dict[str, dict[str, Any]] = {"switch-dr": {"tau": 4.0}}


def every_estimator() -> list[Estimator]:
    return [make_estimator(name, **PARAMS.get(name, {})) for name in sorted(ESTIMATORS)]


def test_the_six_estimators_are_registered() -> None:
    assert sorted(ESTIMATORS) == ["dm", "dr", "ips", "sndr", "snips", "switch-dr"]


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return p


class World:
    """A contextual bandit over a finite context set: every policy value is known exactly."""

    def __init__(self, seed: int = 7, contexts: int = 30, k: int = 5, floor: float = 0.3) -> None:
        g = np.random.default_rng(seed)
        x = g.normal(size=(contexts, 3))
        theta = g.normal(size=(3, k))
        self.k = k
        self.means = 1.0 / (1.0 + np.exp(-(x @ theta)))
        self.logging = (1 - floor) * softmax(0.5 * x @ g.normal(size=(3, k))) + floor / k
        self.target = softmax(x @ theta)

    def value(self, policy: np.ndarray) -> float:
        return float(np.mean((policy * self.means).sum(axis=1)))

    def log(
        self, n: int, rng: np.random.Generator, target: np.ndarray | None = None
    ) -> tuple[LoggedBandit, np.ndarray]:
        """n logged rounds (with the logging distribution) and the context of each round."""
        ctx = rng.integers(0, self.means.shape[0], n)
        cumulative = np.cumsum(self.logging[ctx], axis=1)
        actions = np.minimum((cumulative < rng.random(n)[:, None]).sum(axis=1), self.k - 1)
        rewards = (rng.random(n) < self.means[ctx, actions]).astype(float)
        policy = self.target if target is None else target
        data = LoggedBandit(
            rewards, actions, self.logging[ctx, actions], policy[ctx], self.logging[ctx]
        )
        return data, ctx


@pytest.fixture(params=every_estimator(), ids=lambda e: e.label)
def estimator(request: pytest.FixtureRequest) -> Estimator:
    est: Estimator = request.param
    return est


# -- contract: target = logging policy recovers the logged mean reward -------------------------


def test_target_equal_to_logging_recovers_the_logged_mean(estimator: Estimator) -> None:
    """With the true outcome model every estimator's value minus the logged mean is a mean of
    zero-mean terms; it must lie within 4 standard errors (exactly 0 for IPS and SNIPS)."""
    world = World()
    data, ctx = world.log(4000, np.random.default_rng(11), target=world.logging)
    assert np.all(data.weights == 1.0)
    gap = estimator.contributions(data, world.means[ctx]) - data.rewards
    tolerance = 4.0 * float(np.std(gap, ddof=1)) / math.sqrt(data.n)
    value = estimator.value(data, world.means[ctx])
    assert abs(value - float(np.mean(data.rewards))) <= tolerance + 1e-12


@pytest.mark.parametrize("estimator", [IPS(), SNIPS()], ids=["ips", "snips"])
def test_pure_weighting_estimators_are_exactly_the_mean_when_weights_are_one(
    estimator: Estimator,
) -> None:
    world = World()
    data, _ = world.log(1000, np.random.default_rng(3), target=world.logging)
    assert estimator.value(data) == float(np.mean(data.rewards))


@pytest.mark.parametrize("estimator", [DR(), SNDR(), SwitchDR(tau=math.inf)], ids=str)
def test_doubly_robust_estimators_recover_the_mean_with_a_wrong_model(
    estimator: Estimator,
) -> None:
    """Known propensities make the DR family unbiased whatever the model: the gap to the logged
    mean, Σ_a μ(a) q̂(a) − q̂(a_i), has mean 0 over a_i ~ μ (tolerance: 4 standard errors)."""
    world = World()
    rng = np.random.default_rng(5)
    data, ctx = world.log(4000, rng, target=world.logging)
    wrong = rng.random(world.means.shape)[ctx]
    gap = estimator.contributions(data, wrong) - data.rewards
    tolerance = 4.0 * float(np.std(gap, ddof=1)) / math.sqrt(data.n)
    assert abs(estimator.value(data, wrong) - float(np.mean(data.rewards))) <= tolerance


def test_every_estimator_is_close_to_the_true_value_of_another_policy(
    estimator: Estimator,
) -> None:
    """With the true model and enough rounds every estimator lands within 4 CLT standard errors
    of the exact value (Switch-DR's τ = 4 drops rounds to DM, unbiased with the true model)."""
    world = World()
    data, ctx = world.log(20_000, np.random.default_rng(8))
    (result,) = estimate_all(
        data, [estimator], world.means[ctx], rng=np.random.default_rng(0), interval="clt"
    )
    assert result.value is not None and result.low is not None and result.high is not None
    se = (result.high - result.low) / (2 * 1.959963984540054)
    assert abs(result.value - world.value(world.target)) <= 4 * se + 1e-12


# -- the formulas, on a log small enough to check by hand -------------------------------------


def hand_log() -> tuple[LoggedBandit, np.ndarray]:
    data = LoggedBandit(
        rewards=np.array([1.0, 0.0, 1.0, 0.5]),
        actions=np.array([0, 1, 0, 1]),
        propensities=np.array([0.5, 0.5, 0.25, 0.8]),
        target=np.array([[0.75, 0.25], [0.75, 0.25], [1.0, 0.0], [0.2, 0.8]]),
    )
    predicted = np.array([[0.6, 0.2], [0.6, 0.2], [0.9, 0.1], [0.3, 0.4]])
    return data, predicted


def test_formulas_by_hand() -> None:
    data, q = hand_log()
    w = np.array([1.5, 0.5, 4.0, 1.0])
    r = data.rewards
    np.testing.assert_allclose(data.weights, w)
    dm = np.array([0.75 * 0.6 + 0.25 * 0.2] * 2 + [0.9, 0.2 * 0.3 + 0.8 * 0.4])
    residual = r - np.array([0.6, 0.2, 0.9, 0.4])
    assert IPS().value(data) == pytest.approx(np.mean(w * r), abs=1e-15)
    assert IPS(clip=2.0).value(data) == pytest.approx(np.mean(np.minimum(w, 2.0) * r), abs=1e-15)
    assert SNIPS().value(data) == pytest.approx(np.sum(w * r) / np.sum(w), abs=1e-15)
    assert DM().value(data, q) == pytest.approx(np.mean(dm), abs=1e-15)
    assert DR().value(data, q) == pytest.approx(np.mean(dm + w * residual), abs=1e-15)
    assert SNDR().value(data, q) == pytest.approx(
        np.mean(dm) + np.sum(w * residual) / np.sum(w), abs=1e-15
    )
    switched = np.where(w <= 1.5, w, 0.0)
    assert SwitchDR(tau=1.5).value(data, q) == pytest.approx(
        np.mean(dm + switched * residual), abs=1e-15
    )
    assert SwitchDR(tau=math.inf).value(data, q) == DR().value(data, q)


def test_value_is_the_mean_of_the_contributions(estimator: Estimator) -> None:
    data, q = hand_log()
    contributions = estimator.contributions(data, q)
    assert contributions.shape == (data.n,)
    assert estimator.value(data, q) == float(np.mean(contributions))


# -- properties -------------------------------------------------------------------------------


@st.composite
def weighted_logs(draw: st.DrawFn, max_n: int = 25) -> LoggedBandit:
    """Logs over two actions where action 0 is always logged: any weights w_i = t_i / p_i ≥ 0."""
    n = draw(st.integers(1, max_n))
    rewards = draw(hnp.arrays(np.float64, n, elements=st.floats(-1e6, 1e6)))
    at_logged = draw(hnp.arrays(np.float64, n, elements=st.floats(0.0, 1.0)))
    propensities = draw(hnp.arrays(np.float64, n, elements=st.floats(1e-6, 1.0)))
    return LoggedBandit(
        rewards=rewards,
        actions=np.zeros(n, dtype=np.intp),
        propensities=propensities,
        target=np.column_stack([at_logged, 1.0 - at_logged]),
    )


@given(weighted_logs())
@settings(max_examples=300, deadline=None)
def test_snips_lies_within_the_range_of_the_rewards(data: LoggedBandit) -> None:
    if not data.weights.sum() > 0:
        return  # undefined, and refused: see the support tests
    value = SNIPS().value(data)
    # A weighted mean of the rewards, up to the rounding of sums over n terms.
    slack = 4 * data.n * np.finfo(float).eps * float(np.max(np.abs(data.rewards)))
    assert float(np.min(data.rewards)) - slack <= value <= float(np.max(data.rewards)) + slack


METHODS: list[IntervalMethod] = ["bootstrap", "clt"]


@given(weighted_logs(max_n=40), st.integers(0, 2**32 - 1), st.sampled_from(METHODS))
@settings(max_examples=80, deadline=None)
def test_interval_contains_the_estimate(
    data: LoggedBandit, seed: int, interval: IntervalMethod
) -> None:
    if data.n < 2 or not data.weights.sum() > 0:
        return
    predicted = np.random.default_rng(seed).random((data.n, 2))
    results = estimate_all(
        data,
        every_estimator(),
        predicted,
        rng=np.random.default_rng(seed),
        resamples=200,
        interval=interval,
        min_ess=0.0,
        max_unsupported=1.0,  # a propensity of 1 leaves other actions unsupported: not tested here
    )
    for result in results:
        assert result.support == "ok"
        assert result.low is not None and result.value is not None and result.high is not None
        assert result.low <= result.value <= result.high


def test_snips_with_subnormal_weights_is_still_a_weighted_mean() -> None:
    """The mean of subnormal weights rounds badly; normalizing must not bias the ratio."""
    tiny = 5e-324
    data = LoggedBandit(
        rewards=np.array([0.5, 0.5, 0.7]),
        actions=np.array([0, 0, 1]),
        propensities=np.ones(3),
        target=np.array([[tiny, 1 - tiny], [tiny, 1 - tiny], [1.0, 0.0]]),
    )
    assert SNIPS().value(data) == pytest.approx(0.5, abs=1e-12)
