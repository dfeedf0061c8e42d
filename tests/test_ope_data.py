"""Bad input to off-policy evaluation: specific errors naming the rows or fields, never a number."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from paramloop.core.ope import (
    DR,
    IPS,
    LoggedBandit,
    SwitchDR,
    compare,
    estimate,
    make_estimator,
)
from paramloop.errors import ConfigError, EvaluationError, InputError

K = 3


def arrays(n: int = 6) -> dict[str, Any]:
    """A valid log: uniform logging over K actions, a target that prefers action 0."""
    actions = np.arange(n) % K
    logging = np.full((n, K), 1.0 / K)
    return {
        "rewards": np.linspace(0.0, 1.0, n),
        "actions": actions,
        "propensities": logging[np.arange(n), actions],
        "target": np.tile([0.5, 0.3, 0.2], (n, 1)),
        "logging": logging,
    }


def refused(**changes: Any) -> EvaluationError:
    with pytest.raises(EvaluationError) as info:
        LoggedBandit(**(arrays() | changes))
    return info.value


def test_valid_log_derives_read_only_weights() -> None:
    data = LoggedBandit(**arrays())
    assert data.n == 6 and data.n_actions == K
    np.testing.assert_allclose(data.weights, np.tile([1.5, 0.9, 0.6], 2))
    with pytest.raises(ValueError, match="read-only"):
        data.weights[0] = 2.0
    with pytest.raises(ValueError, match="read-only"):
        data.rewards[0] = 2.0


@pytest.mark.parametrize("bad", [0.0, -0.25])
def test_propensity_at_or_below_zero_names_the_row(bad: float) -> None:
    p = np.full(6, 1.0 / K)
    p[2] = bad
    error = refused(propensities=p, logging=None)
    assert error.field == "propensities"
    assert error.rows == (2,)
    assert f"1 of 6 rows outside (0, 1]: propensities[2] = {bad!r}" in str(error)


def test_propensity_above_one_names_the_row() -> None:
    p = np.full(6, 1.0 / K)
    p[4] = 1.5
    error = refused(propensities=p, logging=None)
    assert "propensities[4] = 1.5" in str(error) and "outside (0, 1]" in str(error)


def test_missing_propensities_name_the_rows() -> None:
    listed: list[float | None] = [1.0 / K] * 6
    listed[1] = None
    listed[5] = None
    error = refused(propensities=listed, logging=None)
    assert error.rows == (1, 5)
    assert "2 of 6 rows missing (None or NaN): propensities[1] = nan, propensities[5] = nan" in str(
        error
    )
    assert "exact propensity" in str(error)


def test_propensities_absent_altogether() -> None:
    error = refused(propensities=None)
    assert str(error) == "propensities: missing (None); it is required"


def test_many_bad_rows_are_counted_not_all_listed() -> None:
    data = arrays(40)
    data["propensities"] = np.zeros(40)
    with pytest.raises(EvaluationError, match=r"40 of 40 rows .* and 35 more") as info:
        LoggedBandit(**(data | {"logging": None}))
    assert info.value.rows == (0, 1, 2, 3, 4)


def test_propensity_must_match_the_logging_distribution() -> None:
    p = np.full(6, 1.0 / K)
    p[3] = 0.5
    error = refused(propensities=p)
    assert "propensities[3] = 0.5 but logging[3, 0] = 0.3333333333333333" in str(error)


def test_target_rows_not_summing_to_one_are_named() -> None:
    target = np.tile([0.5, 0.3, 0.2], (6, 1))
    target[1] = [0.5, 0.3, 0.1]
    target[4] = [0.5, 0.5, 0.2]
    error = refused(target=target)
    assert error.field == "target"
    assert error.rows == (1, 4)
    assert "2 of 6 rows do not sum to 1 (tolerance 1e-06): target[1] sums to 0.9" in str(error)
    assert "target[4] sums to 1.2" in str(error)


def test_target_sum_tolerance_is_one_in_a_million() -> None:
    target = np.tile([0.5, 0.3, 0.2], (6, 1))
    target[0, 0] += 5e-7
    LoggedBandit(**(arrays() | {"target": target}))
    target[0, 0] += 1e-6
    assert refused(target=target).rows == (0,)


def test_negative_target_probability_is_named() -> None:
    target = np.tile([0.5, 0.3, 0.2], (6, 1))
    target[2] = [0.7, -0.1, 0.4]
    error = refused(target=target)
    assert "rows hold negative probabilities: target[2, 1] = -0.1" in str(error)


def test_non_finite_logging_distribution_is_named() -> None:
    logging = np.full((6, K), 1.0 / K)
    logging[5, 2] = np.nan
    error = refused(logging=logging)
    assert error.field == "logging" and "logging[5] contains nan" in str(error)


def test_action_outside_the_arm_set_is_named() -> None:
    actions = np.arange(6) % K
    actions[3] = K
    error = refused(actions=actions, logging=None)
    assert "1 of 6 rows outside [0, 3): actions[3] = 3; target covers 3 actions" in str(error)


def test_actions_must_be_integers() -> None:
    error = refused(actions=np.arange(6, dtype=float))
    assert "must be integer action indices, got dtype float64" in str(error)


def test_mismatched_arm_sets_are_refused() -> None:
    error = refused(logging=np.full((6, K + 1), 1.0 / (K + 1)))
    assert error.field == "logging"
    assert "same arm set" in str(error) and "(6, 4)" in str(error) and "(6, 3)" in str(error)


@pytest.mark.parametrize("name", ["actions", "propensities", "target"])
def test_arrays_must_have_one_row_per_round(name: str) -> None:
    error = refused(**{name: arrays()[name][:5]})
    assert str(error).startswith(f"{name}: has 5 rows but rewards has 6")


def test_target_must_be_a_matrix() -> None:
    error = refused(target=np.full(6, 1.0))
    assert "must have shape (n, K), got shape (6,)" in str(error)


def test_empty_window_is_refused() -> None:
    empty = {
        "rewards": np.array([]),
        "actions": np.array([], dtype=int),
        "propensities": np.array([]),
        "target": np.zeros((0, K)),
    }
    with pytest.raises(EvaluationError, match="empty window") as info:
        LoggedBandit(**empty)
    assert info.value.field == "window"


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_rewards_are_named(bad: float) -> None:
    rewards = np.linspace(0.0, 1.0, 6)
    rewards[1] = bad
    error = refused(rewards=rewards)
    assert error.rows == (1,)
    assert f"1 of 6 rows not finite: rewards[1] = {bad!r}" in str(error)


def test_rewards_must_be_numbers() -> None:
    error = refused(rewards=["good", "bad", "ok", "fine", "meh", "top"])
    assert error.field == "rewards" and "must be numbers" in str(error)


def test_subset_and_with_target_validate_again() -> None:
    data = LoggedBandit(**arrays())
    part = data.subset(np.array([0, 0, 5]))
    np.testing.assert_array_equal(part.actions, [0, 0, 2])
    with pytest.raises(InputError, match=r"row 6 is outside \[0, 6\)"):
        data.subset(np.array([1, 6]))
    with pytest.raises(InputError, match="integer row indices"):
        data.subset(np.array([0.5]))
    with pytest.raises(EvaluationError, match="do not sum to 1"):
        data.with_target(np.full((6, K), 0.5))


def test_predicted_rewards_are_required_and_checked() -> None:
    data = LoggedBandit(**arrays())
    with pytest.raises(
        EvaluationError, match=r"dr needs predicted rewards: an \(n, K\) = \(6, 3\)"
    ):
        DR().value(data)
    with pytest.raises(EvaluationError, match=r"has shape \(6, 2\) but the log needs \(6, 3\)"):
        DR().value(data, np.zeros((6, 2)))
    q = np.zeros((6, K))
    q[2, 1] = np.nan
    with pytest.raises(
        EvaluationError, match="1 of 6 rows hold values that are not finite: rows 2"
    ):
        IPS().value(data, q)  # validated even where unused: a bad array is never ignored


def test_estimator_hyperparameters_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"ips.clip: must be a positive number, got 0.0"):
        IPS(clip=0.0)
    with pytest.raises(ConfigError, match=r"switch-dr\.tau"):
        SwitchDR(tau=-1.0)
    with pytest.raises(ConfigError, match="unknown estimator 'ipw'; available: dm, dr, ips"):
        make_estimator("ipw")
    with pytest.raises(ConfigError, match="invalid hyperparameters"):
        make_estimator("ips", clipp=3.0)
    assert make_estimator("switch-dr", tau=5.0).label == "switch-dr(tau=5)"


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("alpha", 1.5, "alpha: must be in (0, 1)"),
        ("resamples", 0, "resamples: must be a positive integer"),
        ("interval", "exact", "interval: must be 'bootstrap' or 'clt'"),
        ("min_ess", -1.0, "min_ess: must be a number >= 0"),
        ("max_unsupported", 2.0, "max_unsupported: must be in [0, 1]"),
    ],
)
def test_settings_are_validated(setting: str, value: object, message: str) -> None:
    data = LoggedBandit(**arrays())
    kwargs: dict[str, Any] = {setting: value}
    with pytest.raises(InputError) as info:
        estimate(data, IPS(), rng=np.random.default_rng(0), **kwargs)
    assert str(info.value).startswith(message)
    with pytest.raises(InputError):
        compare(data, data.target, data.target, IPS(), rng=np.random.default_rng(0), **kwargs)


def test_clt_interval_needs_two_rounds() -> None:
    one = LoggedBandit(**{k: v[:1] for k, v in arrays().items()})
    with pytest.raises(InputError, match="at least 2 rounds"):
        estimate(one, IPS(), rng=np.random.default_rng(0), interval="clt", min_ess=0.0)
