"""Intervals: the row bootstrap is a real row resample, SN re-normalizes inside it, CLT formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from paramloop.core.ope import DR, IPS, SNDR, SNIPS, LoggedBandit, estimate, estimate_all
from paramloop.core.ope.intervals import resample_sums

Z95 = 1.959963984540054


def random_log(n: int, seed: int, k: int = 4) -> LoggedBandit:
    rng = np.random.default_rng(seed)
    logging = rng.dirichlet(np.full(k, 3.0), size=n)
    target = rng.dirichlet(np.full(k, 1.0), size=n)
    actions = np.array([rng.choice(k, p=row) for row in logging])
    rewards = rng.random(n)
    return LoggedBandit(rewards, actions, logging[np.arange(n), actions], target, logging)


def test_every_resample_draws_n_rows() -> None:
    sums = resample_sums(np.ones((37, 1)), 500, np.random.default_rng(0))
    assert np.all(sums == 37.0)


def test_resampled_sums_have_the_multinomial_mean_and_variance() -> None:
    """Σ_i c_i x_i with c ~ Multinomial(n, 1/n): mean Σx, variance n · var(x) (population).
    With B = 20,000 resamples the sample mean is within 5 standard errors and the sample
    variance within 5 · √(2/B) ≈ 5 % (the sum of 50 draws is close to normal)."""
    x = np.random.default_rng(1).exponential(size=50)
    b = 20_000
    sums = resample_sums(x[:, None], b, np.random.default_rng(2))[:, 0]
    variance = x.size * float(np.var(x))
    assert abs(float(np.mean(sums)) - float(np.sum(x))) <= 5 * math.sqrt(variance / b)
    assert float(np.var(sums, ddof=1)) == pytest.approx(variance, rel=5 * math.sqrt(2 / b))


def test_same_seed_same_estimate() -> None:
    data = random_log(300, 3)
    q = np.random.default_rng(4).random((300, 4))
    first = estimate_all(data, [IPS(), SNDR()], q, rng=np.random.default_rng(9), min_ess=0.0)
    again = estimate_all(data, [IPS(), SNDR()], q, rng=np.random.default_rng(9), min_ess=0.0)
    assert first == again


def test_self_normalized_estimates_renormalize_inside_every_resample() -> None:
    """With constant rewards SNIPS is that constant on every resample, so its bootstrap interval
    has no width; reusing the full sample's mean weight would give it the width of IPS's."""
    data = random_log(400, 5)
    constant = LoggedBandit(
        np.full(400, 0.7), data.actions, data.propensities, data.target, data.logging
    )
    snips, ips = estimate_all(constant, [SNIPS(), IPS()], rng=np.random.default_rng(0), min_ess=0)
    assert snips.low is not None and snips.high is not None
    assert snips.low == pytest.approx(0.7, abs=1e-12) and snips.high == pytest.approx(
        0.7, abs=1e-12
    )
    assert ips.low is not None and ips.high is not None and ips.high - ips.low > 0.05


def test_clt_interval_of_ips_is_the_textbook_one() -> None:
    data = random_log(500, 6)
    result = estimate(data, IPS(), rng=np.random.default_rng(0), interval="clt", min_ess=0)
    terms = data.weights * data.rewards
    half = Z95 * float(np.std(terms, ddof=1)) / math.sqrt(data.n)
    assert result.low == pytest.approx(float(np.mean(terms)) - half, abs=1e-14)
    assert result.high == pytest.approx(float(np.mean(terms)) + half, abs=1e-14)
    assert result.resamples == 0 and result.interval_method == "clt"


def test_clt_interval_of_snips_uses_the_delta_method() -> None:
    data = random_log(500, 7)
    result = estimate(data, SNIPS(), rng=np.random.default_rng(0), interval="clt", min_ess=0)
    w, r = data.weights, data.rewards
    ratio = float(np.sum(w * r) / np.sum(w))
    se = float(np.std(w * (r - ratio), ddof=1)) / (float(np.mean(w)) * math.sqrt(data.n))
    assert result.low == pytest.approx(ratio - Z95 * se, abs=1e-14)
    assert result.high == pytest.approx(ratio + Z95 * se, abs=1e-14)


@pytest.mark.parametrize("estimator", [IPS(), SNIPS(), DR(), SNDR()], ids=str)
def test_bootstrap_and_clt_agree_on_a_large_log(estimator: IPS | DR) -> None:
    """At n = 5,000 both intervals estimate the same normal limit: endpoints within 10 % of the
    width (the bootstrap's Monte Carlo error with 4,000 resamples is about 2 %)."""
    data = random_log(5000, 8)
    q = np.random.default_rng(9).random((5000, 4))
    rng = np.random.default_rng(10)
    boot = estimate(data, estimator, q, rng=rng, resamples=4000)
    clt = estimate(data, estimator, q, rng=rng, interval="clt")
    assert None not in (boot.low, boot.high, clt.low, clt.high)
    assert boot.low is not None and boot.high is not None
    assert clt.low is not None and clt.high is not None
    width = clt.high - clt.low
    assert abs(boot.low - clt.low) <= 0.1 * width
    assert abs(boot.high - clt.high) <= 0.1 * width
    assert boot.resamples == 4000 and boot.value == clt.value
