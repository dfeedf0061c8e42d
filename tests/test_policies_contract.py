"""Contract suite: every registered policy obeys the same rules."""

from __future__ import annotations

import numpy as np
import pytest

from paramloop.core.policies import (
    POLICIES,
    ArmDesign,
    LinUCB,
    Policy,
    decide,
    make_policy,
    restore_policy,
)
from paramloop.core.policies.base import confidence
from paramloop.core.policies.linear import LinearPolicy
from paramloop.errors import ConfigError, OutcomeError, SnapshotError

N_CONTEXT = 4


def design(n_arms: int = 12) -> ArmDesign:
    grid = np.linspace(-1.0, 1.0, n_arms)
    features = np.column_stack([np.ones(n_arms), grid, grid**2])
    return ArmDesign(
        features=features, n_interacting=2, context_dim=N_CONTEXT, baseline=n_arms // 2
    )


def context(rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([[1.0], rng.random(N_CONTEXT - 1)])


def true_reward(x: np.ndarray, arm: int, d: ArmDesign) -> float:
    # A bump whose peak moves with the context: arm features generalize.
    z = d.features[arm, 1]
    peak = -0.5 + x[1]
    return float(0.8 - 0.5 * (z - peak) ** 2)


def label_design(n_arms: int = 12) -> ArmDesign:
    """Arms that are plain labels (the linear policies pick their per-arm model), with
    numeric context columns to standardize."""
    features = np.column_stack([np.ones(n_arms), np.eye(n_arms)[:, 1:]])
    return ArmDesign(
        features=features,
        n_interacting=n_arms,
        context_dim=N_CONTEXT,
        baseline=0,
        scaled=tuple(range(1, N_CONTEXT)),
    )


@pytest.fixture(
    params=[(name, kind) for name in sorted(POLICIES) for kind in ("structured", "labels")],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def policy(request: pytest.FixtureRequest) -> Policy:
    name, kind = request.param
    return make_policy(name, design() if kind == "structured" else label_design())


def train(policy: Policy, rounds: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    d = policy.design
    arms = np.arange(d.n_arms)
    for i in range(rounds):
        x = context(rng)
        choice = decide(policy, x, arms, seed=int(rng.integers(2**63)), exploration=0.1)
        reward = float(np.clip(true_reward(x, choice.arm, d) + rng.normal(0, 0.05), 0, 1))
        policy.update(x, choice.arm, reward)
        assert policy.revision == i + 1


def test_probabilities_sum_to_one_over_feasible_subsets(policy: Policy) -> None:
    train(policy, 50)
    rng = np.random.default_rng(1)
    for subset in (np.arange(12), np.array([0, 3, 7]), np.array([5])):
        probs = policy.probabilities(context(rng), subset, np.random.default_rng(2))
        assert probs.shape == subset.shape
        assert np.all(probs >= 0)
        assert probs.sum() == pytest.approx(1.0, abs=1e-12)


def test_batch_probabilities_match_row_by_row(policy: Policy) -> None:
    train(policy, 80)
    rng = np.random.default_rng(3)
    X = np.array([context(rng) for _ in range(40)])
    for subset in (np.arange(12), np.array([1, 4, 9])):

        def rngs(i: int) -> np.random.Generator:
            return np.random.default_rng(1000 + i)

        batch = policy.probabilities_many(X, subset, rngs if policy.stochastic else None)
        rows = [policy.probabilities(x, subset, rngs(i)) for i, x in enumerate(X)]
        # A closed form over the batch sums in another order: equal to rounding.
        np.testing.assert_allclose(batch, np.array(rows), rtol=0, atol=1e-9)
    if policy.stochastic:
        with pytest.raises(ValueError, match="rngs"):
            policy.probabilities_many(X, subset)


def test_linucb_batch_moments_match_the_projection() -> None:
    policy = LinUCB(design())
    train(policy, 200)
    rng = np.random.default_rng(4)
    X = np.array([context(rng) for _ in range(30)])
    arms = np.arange(12)
    mean, width = policy.moments_many(X, arms)
    for i, x in enumerate(X):
        m, w, _, _ = policy.moments(x, arms)
        np.testing.assert_allclose(mean[i], m, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(width[i], w, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        policy.moments_many(X[:, :2], arms)


@pytest.mark.parametrize("exploration", [0.0, 0.05, 0.5, 1.0])
def test_decide_respects_floor_and_logs_exact_propensity(
    policy: Policy, exploration: float
) -> None:
    train(policy, 30)
    rng = np.random.default_rng(3)
    x = context(rng)
    arms = np.arange(12)
    seed = 99
    mc_rng = np.random.Generator(np.random.SFC64(seed)) if policy.stochastic else None
    probs = policy.probabilities(x, arms, mc_rng)
    floored = (1 - exploration) * probs + exploration / len(arms)
    choice = decide(policy, x, arms, seed=seed, exploration=exploration)
    assert choice.propensity == pytest.approx(floored[choice.arm], rel=1e-12)
    assert choice.propensity >= exploration / len(arms) - 1e-15
    assert 0.0 <= choice.confidence <= 1.0
    # The choice carries the distribution it was drawn from (a rollout's control group
    # logs the baseline's probability under it).
    assert choice.probability_of(choice.arm) == pytest.approx(choice.propensity, rel=1e-12)
    assert [choice.probability_of(int(a)) for a in arms] == pytest.approx(list(floored), rel=1e-12)
    assert choice.probability_of(99) == 0.0


def test_empirical_choice_frequencies_match_logged_propensities(policy: Policy) -> None:
    """Sampling with many seeds reproduces the floored distribution (multinomial 5-sigma bound)."""
    train(policy, 40)
    x = context(np.random.default_rng(4))
    arms = np.arange(12)
    n = 4000
    counts = np.zeros(12)
    logged: dict[int, list[float]] = {}
    for seed in range(n):
        choice = decide(policy, x, arms, seed=seed * 7919 + 1, exploration=0.2)
        counts[choice.arm] += 1
        logged.setdefault(choice.arm, []).append(choice.propensity)
    if not policy.stochastic:  # deterministic policies: one distribution for every seed
        expected = np.array([np.mean(logged.get(a, [0.2 / 12])) for a in range(12)])
        sigma = np.sqrt(expected * (1 - expected) / n)
        assert np.all(np.abs(counts / n - expected) <= 5 * sigma + 1e-12)
    # For every policy the floor holds for every logged propensity.
    assert min(min(v) for v in logged.values()) >= 0.2 / 12 - 1e-15


def test_same_seed_same_decision(policy: Policy) -> None:
    train(policy, 20)
    x = context(np.random.default_rng(5))
    arms = np.arange(12)
    first = decide(policy, x, arms, seed=123456789, exploration=0.1)
    for _ in range(50):
        assert decide(policy, x, arms, seed=123456789, exploration=0.1) == first


def test_snapshot_round_trip_preserves_behaviour(policy: Policy) -> None:
    train(policy, 60)
    data = policy.snapshot()
    restored = restore_policy(data, policy.design)
    assert type(restored) is type(policy)
    assert restored.revision == policy.revision
    assert restored.label == policy.label
    rng = np.random.default_rng(6)
    arms = np.arange(12)
    for _ in range(5):
        x = context(rng)
        mean_a, std_a = policy.estimate(x, arms)
        mean_b, std_b = restored.estimate(x, arms)
        np.testing.assert_allclose(mean_a, mean_b, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(std_a, std_b, rtol=1e-9, atol=1e-12)
        assert decide(policy, x, arms, 77, 0.1) == decide(restored, x, arms, 77, 0.1)


def test_snapshot_refuses_other_design_and_garbage(policy: Policy) -> None:
    data = policy.snapshot()
    with pytest.raises(SnapshotError, match="different parameter space"):
        restore_policy(data, design(13))
    with pytest.raises(SnapshotError, match="magic"):
        restore_policy(b"not a snapshot", policy.design)
    with pytest.raises(SnapshotError, match="corrupt"):
        restore_policy(data[:-20], policy.design)


def test_update_rejects_bad_reward_and_arm(policy: Policy) -> None:
    x = np.ones(N_CONTEXT)
    for reward in (-0.1, 1.5, float("nan"), float("inf")):
        with pytest.raises(OutcomeError, match="reward"):
            policy.update(x, 0, reward)
    with pytest.raises(ValueError, match="arm must be in"):
        policy.update(x, 12, 0.5)
    assert policy.revision == 0


def test_no_feasible_arm_is_an_error(policy: Policy) -> None:
    with pytest.raises(ValueError, match="no feasible arm"):
        policy.probabilities(
            np.ones(N_CONTEXT), np.array([], dtype=np.intp), np.random.default_rng(0)
        )


@pytest.mark.parametrize("name", sorted(set(POLICIES) - {"baseline"}))
def test_learning_policies_beat_uniform_choice(name: str) -> None:
    """After training, the greedy arm's true reward beats the mean arm's by a clear margin.

    (The baseline does not learn by design; its own test is below.)
    """
    policy = make_policy(name, design())
    train(policy, 600, seed=7)
    rng = np.random.default_rng(8)
    arms = np.arange(12)
    gains = []
    for _ in range(50):
        x = context(rng)
        values = np.array([true_reward(x, int(a), policy.design) for a in arms])
        gains.append(values[policy.greedy(x, arms)] - values.mean())
    # The mean arm is ~0.1 below the best; a learner must recover most of that gap.
    assert np.mean(gains) > 0.05


def test_baseline_always_serves_the_baseline() -> None:
    policy = make_policy("baseline", design())
    arms = np.arange(12)
    probs = policy.probabilities(np.ones(N_CONTEXT), arms)
    assert probs.tolist() == [1.0 if a == 6 else 0.0 for a in arms]
    assert decide(policy, np.ones(N_CONTEXT), arms, seed=1, exploration=0.0).propensity == 1.0


def test_unknown_policy_and_bad_hyperparameters() -> None:
    with pytest.raises(ConfigError, match="unknown policy 'ucb9'; available: baseline"):
        make_policy("ucb9", design())
    with pytest.raises(ConfigError, match=r"policy\.linucb\.alpha"):
        make_policy("linucb", design(), alpha=-1.0)
    with pytest.raises(ConfigError, match="invalid hyperparameters"):
        make_policy("linucb", design(), alpah=1.0)
    with pytest.raises(ConfigError, match=r"draws"):
        make_policy("lints", design(), draws=0)


@pytest.mark.parametrize("model", ["shared", "per_arm"])
def test_linear_update_matches_batch_ridge_solution(model: str) -> None:
    """Sherman–Morrison + RLS updates, re-expressed at every change of standardization,
    equal the closed-form ridge solution on the contexts standardized by the final statistics."""
    scaled = ArmDesign(
        features=design().features,
        n_interacting=2,
        context_dim=N_CONTEXT,
        baseline=6,
        scaled=(1, 2, 3),
    )
    policy = make_policy("linucb", scaled, model=model)
    assert isinstance(policy, LinUCB)
    rng = np.random.default_rng(9)
    raw, arms, rewards = [], [], []
    for _ in range(1024):  # the last update is a refresh point: statistics adopted
        x = context(rng) * np.array([1.0, 50.0, 0.01, 3.0]) + np.array([0.0, -7.0, 2.0, 0.0])
        arm = int(rng.integers(12))
        reward = float(rng.random())
        policy.update(x, arm, reward)
        raw.append(x)
        arms.append(arm)
        rewards.append(reward)
    X = np.array(raw)
    np.testing.assert_allclose(policy.center[1:], X[:, 1:].mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(policy.scale[1:], X[:, 1:].std(axis=0, ddof=1), rtol=1e-9)
    Xs = policy.standardized(X)
    y = np.array(rewards) - policy.arm_prior[np.array(arms)]
    if model == "shared":
        rows = np.array(
            [policy.project(x) @ policy.design.features[a] for x, a in zip(Xs, arms, strict=True)]
        )
        prior = np.diag(policy.prior_precision)
        theta = np.linalg.solve(rows.T @ rows + prior, rows.T @ y)
        np.testing.assert_allclose(policy.theta, theta, atol=1e-9)
        return
    for arm in range(12):
        mine = np.array(arms) == arm
        A = Xs[mine].T @ Xs[mine] + np.diag(policy.prior_precision)
        theta = np.linalg.solve(A, Xs[mine].T @ y[mine])
        np.testing.assert_allclose(policy.theta[arm], theta, atol=1e-9)


def test_confidence_is_a_probability_of_beating_the_rival() -> None:
    assert confidence(np.array([1.0]), np.array([0.0]), 0) == 1.0
    assert confidence(np.array([0.6, 0.4]), np.array([0.0, 0.0]), 0) == 1.0
    assert confidence(np.array([0.6, 0.4]), np.array([0.1, 0.1]), 1) < 0.1
    assert confidence(np.array([0.6, 0.4]), np.array([0.1, 0.1]), 0) > 0.9


def test_replicas_merge_their_statistics_whatever_their_standardization() -> None:
    """Two replicas learn different halves (so they standardize differently); after
    merge, A's data part equals S(Σ x xᵀ)Sᵀ per arm over *all* rows, S being the merged
    policy's standardization, and the running moments are those of all rows."""
    d = label_design(4)
    left, right = make_policy("linucb", d), make_policy("linucb", d)
    assert isinstance(left, LinearPolicy) and isinstance(right, LinearPolicy)
    rng = np.random.default_rng(21)
    rows: dict[int, list[np.ndarray]] = {a: [] for a in range(4)}
    every = []
    for i in range(600):
        x = context(rng) * np.array([1.0, 40.0, 0.2, 5.0]) + (0 if i < 300 else 3.0) * np.array(
            [0.0, 1.0, 1.0, 1.0]
        )
        arm = int(rng.integers(4))
        (left if i < 300 else right).update(x, arm, float(rng.random()))
        rows[arm].append(x)
        every.append(x)
    assert not np.allclose(left.center, right.center)
    left.merge(right)
    X = np.array(every)
    np.testing.assert_allclose(left.running_mean[1:], X[:, 1:].mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(
        left.running_m2[1:], ((X[:, 1:] - X[:, 1:].mean(axis=0)) ** 2).sum(axis=0), rtol=1e-9
    )
    S = np.diag(1.0 / left.scale)
    S[:, 0] -= left.center / left.scale
    for arm, xs in rows.items():
        R = np.array(xs)
        expected = S @ (R.T @ R) @ S.T
        np.testing.assert_allclose(
            left.A[arm] - np.diag(left.prior_precision), expected, rtol=1e-9, atol=1e-8
        )
    assert left.revision == 600
