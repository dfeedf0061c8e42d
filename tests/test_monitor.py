"""SLO monitor: confidence-sequence coverage, false alarms under continuous checking, detection delay.

Every tolerance is derived, not tuned: a Monte Carlo count of failures is
compared with the 99.9 % quantile of the binomial it follows when the method
holds its nominal level (so a correct method fails the test with probability
≤ 0.1 %), and detection delays are computed from the boundaries themselves.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats  # type: ignore[import-untyped, unused-ignore]

from paramloop.core.assignment import Group
from paramloop.core.monitor import P99, SLOConfig, SLOMonitor, SLOVerdict, overall
from paramloop.core.sequential import (
    EmpiricalBernsteinCS,
    count_boundary,
    prior_weight,
    quantile_ranks,
)
from paramloop.errors import ConfigError, InputError

Z_001 = float(stats.norm.ppf(0.999))  # one-sided 0.1 % normal quantile, ≈ 3.09


def binomial_tolerance(runs: int, alpha: float) -> int:
    """Most failures a level-α method shows in ``runs`` independent runs, at 99.9 %."""
    return int(stats.binom.ppf(0.999, runs, alpha))


# --- the confidence sequences themselves -------------------------------------------------


def test_empirical_bernstein_covers_uniformly_in_time() -> None:
    # 400 runs of 1,000 Bernoulli(0.05) values (the low-variance case the variance
    # adaptivity is for), checked after every 10: a run fails if the interval misses
    # 0.05 at *any* check.  α = 0.1 makes the test sensitive to an invalid bound.
    rng = np.random.default_rng(11)
    runs, alpha, p = 400, 0.1, 0.05
    misses = 0
    for _ in range(runs):
        cs, data = EmpiricalBernsteinCS(alpha), rng.random(1_000) < p
        for chunk in np.split(data.astype(float), 100):
            cs.update(chunk)
            interval = cs.interval()
            if not interval.lower <= p <= interval.upper:
                misses += 1
                break
    assert misses <= binomial_tolerance(runs, alpha)


def test_empirical_bernstein_batch_equals_one_by_one_and_validates() -> None:
    values = np.random.default_rng(3).random(300)
    one, batch = EmpiricalBernsteinCS(0.05), EmpiricalBernsteinCS(0.05)
    for value in values:
        one.update([value])
    batch.update(values)
    assert one.interval().lower == pytest.approx(batch.interval().lower, rel=1e-9)
    assert one.effective_n == pytest.approx(batch.effective_n, rel=1e-9)
    empty = EmpiricalBernsteinCS(0.05).interval()
    assert math.isnan(empty.estimate) and (empty.lower, empty.upper) == (0.0, 1.0)
    with pytest.raises(InputError):
        batch.update([1.5])
    with pytest.raises(InputError):
        EmpiricalBernsteinCS(0.0)


@pytest.mark.parametrize("p", [0.99, 0.01])
def test_count_boundary_is_crossed_at_most_alpha_of_the_time(p: float) -> None:
    rng = np.random.default_rng(int(p * 100))
    reps, horizon, alpha = 1_000, 3_000, 0.05
    r = prior_weight(1_000, alpha)
    bounds = np.array([count_boundary(t, p, alpha, r) for t in range(1, horizon + 1)])
    counts = np.cumsum(rng.random((reps, horizon)) < p, axis=1)
    crossed = int((counts >= bounds).any(axis=1).sum())
    assert crossed <= binomial_tolerance(reps, alpha)


def test_quantile_ranks_bracket_the_true_quantile_at_every_checkpoint() -> None:
    rng = np.random.default_rng(5)
    runs, alpha, checkpoints = 300, 0.1, (200, 500, 1_000, 2_000, 5_000)
    r = prior_weight(2_000, alpha / 2)
    true_q = float(stats.lognorm.ppf(P99, 0.5, scale=300.0))
    misses = 0
    for _ in range(runs):
        data = rng.lognormal(math.log(300.0), 0.5, checkpoints[-1])
        for n in checkpoints:
            lower, upper = quantile_ranks(n, P99, alpha, r)
            ordered = np.sort(data[:n])
            low = -math.inf if lower is None else ordered[lower - 1]
            high = math.inf if upper is None else ordered[upper - 1]
            if not low <= true_q <= high:
                misses += 1
                break
    assert misses <= binomial_tolerance(runs, alpha)


def test_quantile_ranks_shrink_towards_the_quantile() -> None:
    r = prior_weight(10_000, 0.05)
    assert quantile_ranks(0, P99, 0.05, r) == (None, None)
    assert quantile_ranks(100, P99, 0.05, r)[1] is None  # too few values above p99 to bound it
    widths = []
    for n in (5_000, 20_000, 80_000):
        lower, upper = quantile_ranks(n, P99, 0.05, r)
        assert lower is not None and upper is not None and lower <= 0.99 * n <= upper
        widths.append((upper - lower) / n)
    assert widths == sorted(widths, reverse=True)


# --- the monitor ---------------------------------------------------------------------------


def simulate(
    seed: int,
    n: int,
    chunk: int,
    *,
    latency_factor: float = 1.0,
    error_rate: float = 0.005,
    quality_mean: float = 0.8,
    config: SLOConfig | None = None,
) -> Iterator[tuple[int, SLOMonitor]]:
    """Equal traffic in both groups; yields (observations per group, monitor) after each chunk."""
    rng = np.random.default_rng(seed)
    monitor = SLOMonitor(config or SLOConfig())
    for start in range(0, n, chunk):
        times = np.arange(start, start + chunk, dtype=float)
        for group, factor, errors, quality in (
            (Group.TREATMENT, latency_factor, error_rate, quality_mean),
            (Group.CONTROL, 1.0, 0.005, 0.8),
        ):
            monitor.observe_many(
                group,
                times,
                latency_ms=factor * rng.lognormal(math.log(300.0), 0.5, chunk),
                quality=rng.beta(20 * quality, 20 * (1 - quality), chunk),
                error=rng.random(chunk) < errors,
                cost=rng.gamma(2.0, 0.001, chunk),
            )
        yield start + chunk, monitor


@pytest.mark.slow
def test_healthy_treatment_raises_few_false_alarms_under_continuous_checking() -> None:
    # 200 independent runs, treatment and control identical, 2,000 observations per
    # group, every rule checked after every 50: a run false-alarms if any check of any
    # rule says breach.  The guarantee is P(false alarm) ≤ α = 0.05 per run, so the
    # count is at most Binomial(200, 0.05), whose 99.9 % quantile is 21.  (Measured: 0;
    # the union bounds over groups and metric families make the monitor conservative.)
    runs = 200
    alarms = 0
    for seed in range(runs):
        for _, monitor in simulate(10_000 + seed, 2_000, 50):
            if overall(monitor.statuses()) is SLOVerdict.BREACH:
                alarms += 1
                break
    assert alarms <= binomial_tolerance(runs, 0.05)


def error_detection_n(rate: float, cap: float, alpha: float, chunk: int, min_samples: int) -> int:
    """Observations after which the error-rate rule breaches with probability ≥ 99.9 %.

    The lower bound is the λ-weighted mean minus a width.  On a path whose ones are
    spread exactly at ``rate`` the width is what it will be on a random path (it
    depends on the data only through the variance estimate), so the random lower
    bound is that path's bound plus the weighted mean's noise, whose sd is
    √(rate(1 − rate) / effective_n).  Detection is then certain up to a 0.1 % tail
    once the path's bound clears the cap by Z_001 of those sds.
    """
    cs = EmpiricalBernsteinCS(alpha)
    index = np.arange(1, 200_001)
    path = (np.floor(index * rate) > np.floor((index - 1) * rate)).astype(float)
    for n in range(chunk, path.size + 1, chunk):
        cs.update(path[n - chunk : n])
        noise = math.sqrt(rate * (1 - rate) / cs.effective_n)
        if n >= min_samples and cs.interval().lower - cap >= Z_001 * noise:
            return n
    raise AssertionError("no detection within the path")  # pragma: no cover


def latency_detection_n(factor: float, config: SLOConfig, chunk: int) -> int:
    """Observations per group after which the p99 rule breaches with probability ≥ 99.8 %.

    The bounds are order statistics X_(lower) and X_(upper) read from a sketch.  Each
    X_(k) sits at CDF level k/n up to noise of sd √(p(1 − p)/n), so with probability
    ≥ 99.9 % each it is beyond F⁻¹(k/n ∓ Z_001·sd); the sketch can move each bound by
    its relative accuracy a, which the monitor folds in by dividing by (1 ± a).
    """
    alpha, a = config.family_alpha, config.relative_accuracy
    r = prior_weight(config.tuned_n, alpha / 2)
    increase = config.latency_p99_increase
    assert increase is not None
    for n in range(chunk, 1_000_000, chunk):
        lower, upper = quantile_ranks(n, P99, alpha, r)
        if lower is None or upper is None or n < config.min_samples:
            continue
        sd = math.sqrt(P99 * (1 - P99) / n)
        quantile = stats.lognorm(0.5, scale=300.0).ppf
        treatment_low = factor * quantile(lower / n - Z_001 * sd) * (1 - a) / (1 + a)
        control_high = quantile(min(upper / n + Z_001 * sd, 1 - 1e-12)) * (1 + a) / (1 - a)
        if treatment_low > (1 + increase) * control_high:
            return n
    raise AssertionError("no detection")  # pragma: no cover


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_injected_breach_is_detected_within_the_derived_delay(seed: int) -> None:
    config, chunk = SLOConfig(), 250
    assert config.error_rate_max is not None
    n_errors = error_detection_n(
        0.05, config.error_rate_max, config.family_alpha, chunk, config.min_samples
    )
    n_latency = latency_detection_n(1.3, config, chunk)
    # The derived delays (1,750 and 40,000 at the defaults) are upper bounds; measured over
    # 20 seeds the error rule fired after 250–1,000 observations (median 500) and the p99
    # rule after 4,000–15,000 (median 5,750): a tail quantile needs thousands of values.
    assert n_errors <= 2_000 and n_latency <= 50_000
    first: dict[str, int] = {}
    for n, monitor in simulate(seed, n_latency, chunk, latency_factor=1.3, error_rate=0.05):
        for status in monitor.statuses():
            if status.verdict is SLOVerdict.BREACH:
                first.setdefault(status.metric, n)
        if "latency_p99_increase" in first:
            break
    assert config.min_samples <= first["error_rate_max"] <= n_errors
    assert first["latency_p99_increase"] <= n_latency
    assert "quality_drop" not in first  # quality was not touched


def test_quality_drop_is_detected_and_a_small_drop_is_not() -> None:
    config = SLOConfig(latency_p99_increase=None, error_rate_max=None)
    verdicts = {}
    for mean in (0.7, 0.79):  # −12.5 % breaches the 5 % relative floor; −1.25 % does not
        *_, (_, monitor) = simulate(21, 3_000, 250, quality_mean=mean, config=config)
        (status,) = monitor.statuses()
        verdicts[mean] = status.verdict
        assert status.treatment is not None and status.control is not None
        assert status.treatment.lower <= status.treatment.estimate <= status.treatment.upper
    assert verdicts == {0.7: SLOVerdict.BREACH, 0.79: SLOVerdict.OK}


def test_absolute_rules() -> None:
    config = SLOConfig(
        latency_p99_increase=None,
        latency_p99_max_ms=500.0,
        quality_drop=0.05,
        quality_drop_relative=False,
        error_rate_max=None,
        error_rate_increase=0.01,
        min_samples=100,
    )
    *_, (_, monitor) = simulate(4, 3_000, 500, error_rate=0.08, config=config)
    verdicts = {s.metric: s.verdict for s in monitor.statuses()}
    assert verdicts == {
        "latency_p99_max_ms": SLOVerdict.BREACH,  # p99 of LogNormal(300, 0.5) is ≈ 959 ms
        "quality_drop": SLOVerdict.OK,
        "error_rate_increase": SLOVerdict.BREACH,
    }


def test_too_few_samples_is_inconclusive_and_says_why() -> None:
    monitor = SLOMonitor(SLOConfig(min_samples=100))
    assert overall(monitor.statuses()) is SLOVerdict.INCONCLUSIVE
    assert overall([]) is SLOVerdict.INCONCLUSIVE
    for i in range(150):
        monitor.observe(Group.CONTROL, float(i), latency_ms=300.0, quality=0.8, cost=0.01)
    for i in range(50):
        monitor.observe(Group.TREATMENT, float(i), latency_ms=300.0, quality=0.8, error=True)
    statuses = monitor.statuses()
    assert [s.metric for s in statuses] == [
        "latency_p99_increase",
        "quality_drop",
        "error_rate_max",
    ]
    for status in statuses:
        assert status.verdict is SLOVerdict.INCONCLUSIVE
        assert "treatment has 50" in status.reason and "100 needed" in status.reason
        assert status.to_dict()["verdict"] == "inconclusive"
    assert (statuses[0].n_treatment, statuses[0].n_control) == (50, 150)


def test_window_figures_and_eviction() -> None:
    rng = np.random.default_rng(8)
    monitor = SLOMonitor(SLOConfig(window_s=3_600.0, window_slices=60))
    times = np.arange(7_200, dtype=float)
    latency = rng.lognormal(math.log(300.0), 0.5, times.size)
    quality = rng.random(times.size)
    errors = rng.random(times.size) < 0.1
    cost = rng.random(times.size)
    monitor.observe_many(
        Group.TREATMENT, times, latency_ms=latency, quality=quality, error=errors, cost=cost
    )
    summary = monitor.window(Group.TREATMENT, now=7_199.0)
    recent = times >= 3_600  # slices are 60 s; the window holds the 60 slices up to now
    assert summary.n == int(recent.sum())
    assert summary.quality_mean == pytest.approx(quality[recent].mean())
    assert summary.error_rate == pytest.approx(errors[recent].mean())
    assert summary.cost_per_request == pytest.approx(cost[recent].mean())
    for q, value in ((0.5, summary.latency_p50_ms), (P99, summary.latency_p99_ms)):
        low = np.quantile(latency[recent], q, method="lower")
        high = np.quantile(latency[recent], q, method="higher")
        assert value is not None and low * 0.99 <= value <= high * 1.01  # DDSketch's 1 % guarantee
    later = monitor.window(Group.TREATMENT, now=20_000.0)
    assert (later.n, later.latency_p99_ms, later.error_rate) == (0, None, None)
    assert monitor.window(Group.TREATMENT, now=7_199.0) == summary  # reading changes nothing
    monitor.observe(Group.TREATMENT, 100.0, latency_ms=1.0)  # late, older than any window
    assert monitor.window(Group.TREATMENT, now=7_199.0) == summary
    interval = monitor.latency_interval(Group.TREATMENT)  # cumulative: nothing is evicted
    assert interval.lower <= interval.estimate <= interval.upper
    empty = monitor.latency_interval(Group.CONTROL)
    assert math.isnan(empty.estimate) and (empty.lower, empty.upper) == (0.0, math.inf)
    assert empty.to_dict() == {"estimate": None, "lower": 0.0, "upper": None}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"latency_ms": [-1.0]}, "latency_ms"),
        ({"latency_ms": [math.inf]}, "latency_ms"),
        ({"quality": [1.5]}, "quality"),
        ({"cost": [-0.1]}, "cost"),
        ({"error": [1]}, "error"),
        ({"latency_ms": [1.0, 2.0]}, "latency_ms"),
    ],
)
def test_bad_observations(kwargs: dict[str, list[float]], field: str) -> None:
    with pytest.raises(InputError) as info:
        SLOMonitor().observe_many(Group.TREATMENT, [0.0], **kwargs)
    assert info.value.field == field


def test_bad_group_and_times() -> None:
    with pytest.raises(InputError):
        SLOMonitor().observe("treatment", 0.0)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        SLOMonitor().observe(Group.CONTROL, math.nan)
    with pytest.raises(InputError):
        SLOMonitor().window(Group.CONTROL, math.inf)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"latency_p99_increase": -0.1}, "slo.latency_p99_increase"),
        ({"quality_drop": 1.0}, "slo.quality_drop"),
        ({"error_rate_max": 1.0}, "slo.error_rate_max"),
        ({"latency_p99_max_ms": 0.0}, "slo.latency_p99_max_ms"),
        ({"min_samples": 0}, "slo.min_samples"),
        ({"alpha": 1.0}, "slo.alpha"),
        ({"window_s": 0.0}, "slo.window_s"),
        ({"window_slices": 0}, "slo.window_slices"),
        ({"relative_accuracy": 0.5}, "slo.relative_accuracy"),
        ({"tuned_n": 0}, "slo.tuned_n"),
    ],
)
def test_bad_config(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        SLOConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_alpha_is_split_over_enabled_families() -> None:
    assert SLOConfig().families == ("latency", "quality", "errors")
    assert SLOConfig().family_alpha == pytest.approx(0.05 / 3)
    only_errors = SLOConfig(latency_p99_increase=None, quality_drop=None)
    assert only_errors.families == ("errors",) and only_errors.family_alpha == 0.05


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cut=st.integers(0, 400), zeros=st.booleans())
def test_a_saved_monitor_continues_exactly_as_the_uninterrupted_one(
    seed: int, cut: int, zeros: bool
) -> None:
    """Save and restore at any point (through JSON): every later verdict and window is the same.

    Compared with a monitor fed in the same two batches: a batch update equals
    one-by-one updates only up to float rounding.
    """
    rng = np.random.default_rng(seed)
    n = 400
    times = np.sort(rng.uniform(0.0, 7_200.0, n))
    latency = rng.gamma(2.0, 100.0, n) * (rng.random(n) > 0.1 if zeros else 1.0)
    quality = np.where(rng.random(n) < 0.2, np.nan, rng.random(n))
    error, cost = rng.random(n) < 0.05, rng.random(n)
    groups = rng.random(n) < 0.5
    config = SLOConfig(min_samples=20)

    def feed(monitor: SLOMonitor, rows: slice) -> None:
        for group, mask in ((Group.TREATMENT, groups), (Group.CONTROL, ~groups)):
            pick = mask[rows]
            monitor.observe_many(
                group,
                times[rows][pick],
                latency_ms=latency[rows][pick],
                quality=quality[rows][pick],
                error=error[rows][pick],
                cost=cost[rows][pick],
            )

    whole = SLOMonitor(config)
    feed(whole, slice(0, cut))
    restored = SLOMonitor.from_dict(config, json.loads(json.dumps(whole.to_dict())))
    feed(whole, slice(cut, n))
    feed(restored, slice(cut, n))
    assert [s.to_dict() for s in restored.statuses()] == [s.to_dict() for s in whole.statuses()]
    for group in Group:
        assert restored.window(group, 7_200.0) == whole.window(group, 7_200.0)
        assert restored.latency_interval(group) == whole.latency_interval(group)


def test_a_corrupt_saved_monitor_is_refused_by_name() -> None:
    with pytest.raises(InputError, match="not a saved SLO monitor"):
        SLOMonitor.from_dict(SLOConfig(), {"treatment": {}})


def test_quality_min_is_an_absolute_floor_on_the_treatment_alone() -> None:
    # Treatment at 0.6 is within 5 % of nothing (control is worse still), yet under the floor.
    config = SLOConfig(min_samples=50, quality_min=0.8, quality_drop=None)
    monitor = SLOMonitor(config)
    for group, quality in ((Group.TREATMENT, 0.6), (Group.CONTROL, 0.5)):
        monitor.observe_many(
            group,
            np.arange(200.0),
            latency_ms=np.full(200, 100.0),
            quality=np.full(200, quality),
            error=np.zeros(200, bool),
        )
    (rule,) = [s for s in monitor.statuses() if s.metric == "quality_min"]
    assert rule.verdict is SLOVerdict.BREACH and rule.control is None
    healthy = SLOMonitor(config)
    healthy.observe_many(
        Group.TREATMENT,
        np.arange(200.0),
        latency_ms=np.full(200, 100.0),
        quality=np.full(200, 0.95),
        error=np.zeros(200, bool),
    )
    (rule,) = [s for s in healthy.statuses() if s.metric == "quality_min"]
    assert rule.verdict is SLOVerdict.OK
