"""The outcome-model step: cross-fitted predicted rewards for every arm."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsRegressor

from paramloop.engine.outcome_model import fit_predict
from paramloop.errors import InputError


def linear_world(
    n: int, n_actions: int, d: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Contexts, logged arms, noisy rewards and the true mean reward of every arm."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    arm_effect = rng.normal(size=n_actions)
    gamma = rng.normal(size=d)
    truth = 0.5 + arm_effect[None, :] + (X @ gamma)[:, None]
    a = rng.integers(0, n_actions, size=n)
    r = truth[np.arange(n), a] + rng.normal(scale=0.3, size=n)
    return X, a, r, truth


def logistic_world(
    n: int, n_actions: int, d: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    eta = -1.0 + rng.normal(scale=0.5, size=n_actions)[None, :] + (X @ rng.normal(size=d))[:, None]
    truth = 1.0 / (1.0 + np.exp(-eta))
    a = rng.integers(0, n_actions, size=n)
    r = (rng.random(n) < truth[np.arange(n), a]).astype(np.float64)
    return X, a, r, truth


def test_ridge_recovers_a_linear_reward_surface() -> None:
    X, a, r, truth = linear_world(4_000, 5, 3, seed=1)
    q = fit_predict(X, a, r, 5, model="ridge")
    assert q.shape == (4_000, 5)
    assert np.max(np.abs(q - truth)) < 0.1


def test_logistic_recovers_click_probabilities() -> None:
    X, a, r, truth = logistic_world(20_000, 4, 2, seed=2)
    q = fit_predict(X, a, r, 4, model="logistic")
    assert np.all((q > 0) & (q < 1))
    assert np.mean(np.abs(q - truth)) < 0.02


def test_auto_is_logistic_for_binary_rewards_and_ridge_otherwise() -> None:
    X, a, r, _ = logistic_world(2_000, 3, 2, seed=3)
    np.testing.assert_array_equal(
        fit_predict(X, a, r, 3), fit_predict(X, a, r, 3, model="logistic")
    )
    X, a, r, _ = linear_world(2_000, 3, 2, seed=3)
    np.testing.assert_array_equal(fit_predict(X, a, r, 3), fit_predict(X, a, r, 3, model="ridge"))


def test_the_one_matmul_prediction_equals_predicting_every_design_row() -> None:
    """The built-in models' shortcut gives what the estimator's own predict gives per arm.

    The built-in models fit a sparse design to tight tolerances; the instances here
    fit the dense design, so the two agree to the solvers' precision, not bit for bit.
    """
    X, a, r, _ = logistic_world(3_000, 6, 3, seed=4)
    fast = fit_predict(X, a, r, 6, model="logistic", alpha=0.5, rng=9)
    slow = fit_predict(X, a, r, 6, model=LogisticRegression(C=2.0, tol=1e-8, max_iter=1_000), rng=9)
    np.testing.assert_allclose(fast, slow, rtol=1e-6)
    X, a, r, _ = linear_world(3_000, 6, 3, seed=4)
    fast = fit_predict(X, a, r, 6, model="ridge", alpha=2.0, rng=9)
    slow = fit_predict(X, a, r, 6, model=Ridge(alpha=2.0), rng=9)
    np.testing.assert_allclose(fast, slow, rtol=1e-6)


def test_each_row_is_predicted_by_a_model_that_never_saw_it() -> None:
    """A 1-nearest-neighbour model repeats a training row's reward; cross-fitting never repeats the row's own."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(500, 2))
    a = np.zeros(500, dtype=np.int64)
    r = rng.normal(size=500)
    for folds in (2, 5):
        q = fit_predict(X, a, r, 1, model=KNeighborsRegressor(n_neighbors=1), folds=folds)
        assert not np.any(q[:, 0] == r)
        assert np.all(np.isin(q[:, 0], r))  # each prediction is some other row's reward


def test_folds_are_stratified_so_rare_clicks_reach_every_part() -> None:
    """With 3 clicks in 300 rows and 3 folds, every training part still holds clicks."""
    rng = np.random.default_rng(6)
    X = rng.normal(size=(300, 2))
    a = rng.integers(0, 2, size=300)
    r = np.zeros(300)
    r[[10, 150, 290]] = 1.0
    q = fit_predict(X, a, r, 2, folds=3, rng=rng)
    assert np.all((q > 0) & (q < 0.1))


def test_same_seed_same_predictions_and_the_given_estimator_is_left_unfitted() -> None:
    X, a, r, _ = linear_world(1_000, 3, 2, seed=7)
    model = Ridge(alpha=1.0)
    first = fit_predict(X, a, r, 3, model=model, rng=np.random.default_rng(11))
    second = fit_predict(X, a, r, 3, model=model, rng=np.random.default_rng(11))
    np.testing.assert_array_equal(first, second)
    assert not hasattr(model, "coef_")


def test_an_arm_never_logged_gets_the_shared_part_of_the_prediction() -> None:
    X, a, r, _ = linear_world(1_000, 3, 2, seed=8)
    q = fit_predict(X, a, r, 4)  # arm 3 never appears
    assert np.all(np.isfinite(q[:, 3]))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(min_value=4, max_value=60),
    n_actions=st.integers(min_value=1, max_value=6),
    d=st.integers(min_value=0, max_value=3),
    folds=st.integers(min_value=2, max_value=4),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_any_valid_input_gives_finite_predictions_of_shape_n_by_k(
    n: int, n_actions: int, d: int, folds: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    a = rng.integers(0, n_actions, size=n)
    r = rng.normal(size=n)
    q = fit_predict(X, a, r, n_actions, folds=min(folds, n), rng=seed)
    assert q.shape == (n, n_actions)
    assert np.all(np.isfinite(q))


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"actions": np.array([0, 1, 5, 1, 0, 7])}, "actions", "rows 2, 5"),
        ({"actions": np.array([0.0, 1.5, 0, 1, 0, 1])}, "actions", "rows 1"),
        ({"actions": np.array(["a"] * 6)}, "actions", "dtype"),
        ({"actions": np.array([0, 1, 0])}, "actions", "shape"),
        ({"rewards": np.array([1.0, np.nan, 0, 1, 0, np.inf])}, "rewards", "rows 1, 5"),
        ({"rewards": np.array([])}, "rewards", "non-empty"),
        ({"rewards": ["a"] * 6}, "rewards", "must be numbers"),
        ({"features": [["x"]] * 6}, "features", "must be numbers"),
        ({"features": np.ones((5, 2))}, "features", "shape"),
        ({"features": np.array([[1.0], [np.nan], [0], [1], [0], [1]])}, "features", "rows 1"),
        ({"n_actions": 0}, "n_actions", ">= 1"),
        ({"folds": 1}, "folds", "[2, 6]"),
        ({"folds": 7}, "folds", "[2, 6]"),
        ({"alpha": 0.0}, "alpha", "> 0"),
        ({"model": "lasso"}, "model", "'lasso'"),
        ({"model": object()}, "model", "fit() and predict()"),
        ({"model": "logistic", "rewards": np.array([0, 1, 2.0, 1, 0, 1])}, "rewards", "rows 2"),
        ({"model": "logistic", "rewards": np.array([0, 0, 0, 0, 0, 1.0])}, "rewards", "fold"),
    ],
)
def test_bad_input_is_refused_naming_the_field_and_rows(
    change: dict[str, object], field: str, fragment: str
) -> None:
    args: dict[str, object] = {
        "features": np.zeros((6, 1)),
        "actions": np.array([0, 1, 0, 1, 0, 1]),
        "rewards": np.array([0.0, 1, 0, 1, 0, 1]),
        "n_actions": 2,
    }
    args.update(change)
    with pytest.raises(InputError) as info:
        fit_predict(**args)  # type: ignore[arg-type]
    assert info.value.field == field
    assert fragment in str(info.value)


def test_training_rows_can_be_capped_and_stay_cross_fitted() -> None:
    from paramloop.engine.outcome_model import fit_outcome_model

    rng = np.random.default_rng(7)
    n = 4_000
    X = rng.random((n, 3))
    a = rng.integers(0, 4, n)
    r = 0.2 + 0.1 * a + 0.3 * X[:, 0] + rng.normal(0, 0.05, n)
    full = fit_outcome_model(X, a, r, 4, rng=1)
    capped = fit_outcome_model(X, a, r, 4, rng=1, max_train_rows=500)
    rows = np.arange(n)
    # Same folds; each fold's model learned from 500 rows of the other fold: close to the
    # full fit (the truth is linear) but not the same fit.
    np.testing.assert_array_equal(capped.fold_of, full.fold_of)
    difference = np.abs(capped.predict(X, rows) - full.predict(X, rows))
    assert 0.0 < difference.max() < 0.05
    with pytest.raises(InputError, match="max_train_rows"):
        fit_outcome_model(X, a, r, 4, max_train_rows=1)
