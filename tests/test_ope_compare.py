"""Candidate against baseline on the same logged rounds: paired differences and verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from paramloop.core.ope import (
    DM,
    DR,
    IPS,
    SNDR,
    SNIPS,
    LoggedBandit,
    SwitchDR,
    compare,
    compare_all,
)
from paramloop.core.ope.evaluate import IntervalMethod

ALL = [IPS(), SNIPS(), DM(), DR(), SNDR(), SwitchDR(tau=5.0)]
MEANS = np.array([0.2, 0.35, 0.5, 0.65, 0.8])
K = MEANS.size


def uniform_log(n: int, seed: int) -> tuple[LoggedBandit, np.ndarray]:
    """Uniform-random logs over K arms with Bernoulli rewards, and a noisy outcome model."""
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, K, n)
    rewards = (rng.random(n) < MEANS[actions]).astype(float)
    logging = np.full((n, K), 1.0 / K)
    data = LoggedBandit(rewards, actions, np.full(n, 1.0 / K), logging, logging)
    predicted = np.clip(MEANS + rng.normal(0.0, 0.05, (n, K)), 0.0, 1.0)
    return data, predicted


def policy(n: int, probabilities: list[float]) -> np.ndarray:
    return np.tile(probabilities, (n, 1))


METHODS: list[IntervalMethod] = ["bootstrap", "clt"]


@pytest.mark.parametrize("interval", METHODS)
def test_candidate_equal_to_baseline_differs_by_exactly_zero(interval: IntervalMethod) -> None:
    data, q = uniform_log(3000, 1)
    same = policy(data.n, [0.1, 0.1, 0.2, 0.3, 0.3])
    results = compare_all(
        data, same, same.copy(), ALL, q, rng=np.random.default_rng(0), interval=interval
    )
    for result in results:
        assert result.difference == 0.0
        assert (result.low, result.high) == (0.0, 0.0)
        assert (result.lower_bound, result.upper_bound) == (0.0, 0.0)
        assert result.verdict == "inconclusive" and result.reason is None
        assert result.candidate.value == result.baseline.value is not None


def test_clearly_better_candidate_has_a_positive_lower_bound() -> None:
    data, q = uniform_log(3000, 2)
    best = policy(data.n, [0.0, 0.0, 0.0, 0.1, 0.9])
    worst = policy(data.n, [0.9, 0.1, 0.0, 0.0, 0.0])
    for interval in METHODS:
        better = compare_all(
            data, best, worst, ALL, q, rng=np.random.default_rng(1), interval=interval
        )
        for result in better:
            assert result.lower_bound is not None and result.lower_bound > 0.0
            assert result.verdict == "better"
            assert result.difference is not None and result.low is not None
            assert result.low <= result.lower_bound <= result.difference
        worse = compare_all(
            data, worst, best, ALL, q, rng=np.random.default_rng(1), interval=interval
        )
        for result in worse:
            assert result.upper_bound is not None and result.upper_bound < 0.0
            assert result.verdict == "worse"


def test_paired_resamples_make_a_small_change_precise() -> None:
    """A candidate that moves 10 % of the baseline's mass: the paired difference varies with
    that 10 % only, so its interval is far narrower than either estimate's own interval
    (independent resamples would make it about √2 times wider than they are)."""
    data, _ = uniform_log(3000, 3)
    baseline = policy(data.n, [0.3, 0.3, 0.2, 0.1, 0.1])
    candidate = 0.9 * baseline + 0.1 * policy(data.n, [0.0, 0.0, 0.0, 0.0, 1.0])
    result = compare(data, candidate, baseline, IPS(), rng=np.random.default_rng(2))
    assert result.low is not None and result.high is not None
    assert result.baseline.low is not None and result.baseline.high is not None
    assert result.high - result.low < 0.5 * (result.baseline.high - result.baseline.low)


def test_clt_bounds_of_a_difference_by_formula() -> None:
    data, _ = uniform_log(2000, 4)
    candidate = policy(data.n, [0.1, 0.1, 0.2, 0.3, 0.3])
    baseline = policy(data.n, [0.3, 0.3, 0.2, 0.1, 0.1])
    result = compare(data, candidate, baseline, IPS(), rng=np.random.default_rng(0), interval="clt")
    rows = np.arange(data.n)
    per_round = (candidate[rows, data.actions] - baseline[rows, data.actions]) * K * data.rewards
    se = float(np.std(per_round, ddof=1)) / math.sqrt(data.n)
    difference = float(np.mean(per_round))
    assert result.difference == pytest.approx(difference, abs=1e-14)
    assert result.lower_bound == pytest.approx(difference - 1.6448536269514722 * se)
    assert result.low == pytest.approx(difference - 1.959963984540054 * se)


def test_the_bootstrap_lower_bound_is_the_alpha_quantile_of_the_paired_differences() -> None:
    """The one-sided bound at α sits between the two-sided bounds at α and 2α; at n = 3,000
    it matches the CLT bound within 10 % of the interval's width."""
    data, _ = uniform_log(3000, 5)
    candidate = policy(data.n, [0.0, 0.1, 0.2, 0.3, 0.4])
    baseline = policy(data.n, [0.2, 0.2, 0.2, 0.2, 0.2])
    boot = compare(data, candidate, baseline, SNIPS(), rng=np.random.default_rng(3))
    clt = compare(data, candidate, baseline, SNIPS(), rng=np.random.default_rng(3), interval="clt")
    assert boot.low is not None and boot.lower_bound is not None and boot.difference is not None
    assert clt.lower_bound is not None and clt.low is not None and clt.high is not None
    assert boot.low <= boot.lower_bound <= boot.difference
    assert abs(boot.lower_bound - clt.lower_bound) <= 0.1 * (clt.high - clt.low)
    assert boot.resamples == 10_000


def test_unsupported_candidate_gives_no_difference() -> None:
    n = 500
    rng = np.random.default_rng(6)
    only_arm_1 = policy(n, [0.0, 1.0, 0.0, 0.0, 0.0])
    data = LoggedBandit(rng.random(n), np.ones(n, dtype=int), np.ones(n), only_arm_1, only_arm_1)
    candidate = policy(n, [0.0, 0.5, 0.5, 0.0, 0.0])
    result = compare(data, candidate, only_arm_1, IPS(), rng=np.random.default_rng(0))
    assert result.verdict == "insufficient"
    assert (result.difference, result.low, result.high, result.lower_bound) == (None,) * 4
    assert result.reason is not None and result.reason.startswith("candidate: the target puts")
    assert result.candidate.value is None
    assert result.baseline.support == "ok" and result.baseline.value == float(np.mean(data.rewards))


def test_compare_uses_only_the_logged_rows_of_data() -> None:
    data, q = uniform_log(800, 7)
    candidate = policy(data.n, [0.0, 0.1, 0.2, 0.3, 0.4])
    baseline = policy(data.n, [0.2, 0.2, 0.2, 0.2, 0.2])
    first = compare(data, candidate, baseline, DR(), q, rng=np.random.default_rng(4))
    other = data.with_target(policy(data.n, [1.0, 0.0, 0.0, 0.0, 0.0]))
    second = compare(other, candidate, baseline, DR(), q, rng=np.random.default_rng(4))
    assert first == second
