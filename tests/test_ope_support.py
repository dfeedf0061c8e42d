"""Support before evaluation: diagnostics, and refusal with a reason instead of a number."""

from __future__ import annotations

import numpy as np
import pytest

from paramloop.core.ope import (
    DM,
    DR,
    IPS,
    SNDR,
    SNIPS,
    Diagnostics,
    LoggedBandit,
    SwitchDR,
    check_support,
    diagnose,
    estimate_all,
)
from paramloop.errors import EvaluationError

K = 4
ALL = [IPS(), SNIPS(), DM(), DR(), SNDR(), SwitchDR(tau=10.0)]


def baseline_log(n: int = 2000, *, with_logging: bool) -> LoggedBandit:
    """Logs of a deterministic baseline that always serves action 2 (propensity 1)."""
    rng = np.random.default_rng(4)
    logging = np.zeros((n, K))
    logging[:, 2] = 1.0
    return LoggedBandit(
        rewards=rng.random(n),
        actions=np.full(n, 2),
        propensities=np.ones(n),
        target=np.full((n, K), 1.0 / K),
        logging=logging if with_logging else None,
    )


@pytest.mark.parametrize("with_logging", [True, False], ids=["logging known", "logging unknown"])
def test_deterministic_baseline_logs_cannot_evaluate_another_policy(with_logging: bool) -> None:
    data = baseline_log(with_logging=with_logging)
    predicted = np.full((data.n, K), 0.5)
    results = estimate_all(data, ALL, predicted, rng=np.random.default_rng(0))
    for result in results:
        assert result.support == "insufficient"
        assert (result.value, result.low, result.high) == (None, None, None)
        assert result.resamples == 0
        assert result.unsupported_share == 1.0
        assert result.reason is not None
        assert "could never choose in 100.0% of rounds" in result.reason
        # Weights are 1/4 everywhere: the effective sample size alone would not have noticed.
        assert result.ess == pytest.approx(data.n)
    assert results[0].support_basis == ("logging" if with_logging else "observed")
    basis = "from the logging distribution" if with_logging else "propensity 1"
    assert basis in (results[0].reason or "")


@pytest.mark.parametrize("with_logging", [True, False], ids=["logging known", "logging unknown"])
def test_deterministic_baseline_logs_do_evaluate_the_baseline_itself(with_logging: bool) -> None:
    data = baseline_log(with_logging=with_logging)
    baseline = np.zeros((data.n, K))
    baseline[:, 2] = 1.0
    (result,) = estimate_all(data.with_target(baseline), [IPS()], rng=np.random.default_rng(0))
    assert result.support == "ok" and result.reason is None
    assert result.value == float(np.mean(data.rewards))


def test_diagnostics_by_hand() -> None:
    data = LoggedBandit(
        rewards=np.zeros(4),
        actions=np.array([0, 1, 0, 1]),
        propensities=np.array([0.5, 0.5, 0.25, 0.5]),
        target=np.array([[1.0, 0.0]] * 4),
    )
    d = diagnose(data)
    w = np.array([2.0, 0.0, 4.0, 0.0])
    assert d.ess == pytest.approx(w.sum() ** 2 / (w**2).sum())
    assert d.max_weight == 4.0 and d.weight_sum == 6.0 and d.n == 4
    assert d.unsupported_share == 0.0 and d.support_basis == "observed"


def test_unsupported_share_from_the_logging_distribution() -> None:
    n = 10
    logging = np.full((n, 3), 1.0 / 3)
    logging[:4] = [0.5, 0.5, 0.0]  # in the first 4 rounds action 2 could never be chosen
    target = np.tile([0.2, 0.2, 0.6], (n, 1))
    target[0] = [0.5, 0.5, 0.0]  # ... but the target does not want it in round 0
    data = LoggedBandit(np.ones(n), np.zeros(n, dtype=int), logging[:, 0], target, logging)
    d = diagnose(data)
    assert d.support_basis == "logging"
    assert d.unsupported_share == pytest.approx(0.3)


def test_without_logging_actions_never_logged_count_as_unsupported() -> None:
    n = 10
    target = np.tile([0.5, 0.5 - 1e-9, 1e-9], (n, 1))
    target[:5] = [0.5, 0.5 - 1e-13, 1e-13]  # below the 1e-12 dust threshold
    data = LoggedBandit(np.ones(n), np.arange(n) % 2, np.full(n, 0.5), target)
    d = diagnose(data)
    assert d.support_basis == "observed"
    assert d.unsupported_share == pytest.approx(0.5)


def test_effective_sample_size_below_the_threshold_is_refused() -> None:
    n = 1000
    logging = np.tile([0.5, 0.5], (n, 1))
    logging[:5] = [0.01, 0.99]  # five rounds rarely logged action 0 ...
    actions = np.ones(n, dtype=int)
    actions[:5] = 0  # ... but did, and the target wants only action 0: weights 100 there, else 0
    propensities = logging[np.arange(n), actions]
    data = LoggedBandit(np.ones(n), actions, propensities, np.tile([1.0, 0.0], (n, 1)), logging)
    d = diagnose(data)
    assert d.ess == pytest.approx(5.0) and d.max_weight == pytest.approx(100.0)
    assert d.unsupported_share == 0.0
    (result,) = estimate_all(data, [IPS()], rng=np.random.default_rng(0))
    assert result.support == "insufficient" and result.value is None
    assert result.reason == f"effective sample size {d.ess:.1f} is below min_ess 100"
    (relaxed,) = estimate_all(data, [IPS()], rng=np.random.default_rng(0), min_ess=1.0)
    assert relaxed.support == "ok" and relaxed.value is not None


def test_all_weights_zero_is_refused() -> None:
    n = 200
    data = LoggedBandit(
        np.ones(n), np.zeros(n, dtype=int), np.full(n, 0.5), np.tile([0.0, 1.0], (n, 1))
    )
    (result,) = estimate_all(data, [SNIPS()], rng=np.random.default_rng(0), min_ess=0.0)
    assert result.support == "insufficient" and result.value is None
    assert result.reason is not None and result.reason.startswith("every importance weight is 0")


def test_reasons_are_combined_and_thresholds_are_parameters() -> None:
    d = Diagnostics(
        n=50, ess=20.0, max_weight=9.0, unsupported_share=0.1, support_basis="logging", weight_sum=1
    )
    verdict = check_support(d)
    assert verdict.verdict == "insufficient" and not verdict.is_ok
    assert verdict.reason is not None
    assert "effective sample size 20.0 is below min_ess 100" in verdict.reason
    assert "; the target puts probability on actions" in verdict.reason
    assert "in 10.0% of rounds (allowed: 0.0%" in verdict.reason
    assert check_support(d, min_ess=20.0, max_unsupported=0.1).is_ok


def test_declared_support_replaces_the_observed_proxy() -> None:
    """A logging policy with an exploration floor supports arms it happened never to log."""
    rewards = np.array([1.0, 0.0, 1.0, 0.0])
    actions = np.array([0, 0, 1, 1])
    propensities = np.full(4, 0.45)
    target = np.tile([0.0, 0.0, 1.0], (4, 1))  # arm 2 was never logged
    observed = diagnose(LoggedBandit(rewards, actions, propensities, target))
    assert observed.support_basis == "observed" and observed.unsupported_share == 1.0
    support = np.ones((4, 3), dtype=bool)
    declared = diagnose(LoggedBandit(rewards, actions, propensities, target, support=support))
    assert declared.support_basis == "declared" and declared.unsupported_share == 0.0
    narrow = support.copy()
    narrow[:2, 2] = False
    assert (
        diagnose(
            LoggedBandit(rewards, actions, propensities, target, support=narrow)
        ).unsupported_share
        == 0.5
    )


def test_declared_support_must_contain_the_logged_action() -> None:
    support = np.zeros((2, 2), dtype=bool)
    support[0, 0] = True
    with pytest.raises(
        EvaluationError,
        match=r"support: 1 rows logged an action outside their declared support: row 1 action 1",
    ):
        LoggedBandit(
            np.ones(2), np.array([0, 1]), np.full(2, 0.5), np.full((2, 2), 0.5), support=support
        )
