"""Gaussian Thompson sampling, one conjugate Normal–Inverse-Gamma posterior per arm.

Context-free: each arm learns its own mean reward and noise.  The posterior of
an arm's mean is Student-t with 2α degrees of freedom, location μ and scale
√(β / (α κ)); the probability of each arm is the share of ``draws`` seeded
Monte Carlo draws it wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from paramloop.core.policies.base import (
    ArmDesign,
    FloatArray,
    IntArray,
    Policy,
    check_draws,
    check_positive,
    monte_carlo_best,
    register,
)
from paramloop.errors import SnapshotError


@register
class ThompsonGaussian(Policy):
    """Per-arm Normal–Inverse-Gamma Thompson sampling (prior mean ``prior_mean``, pseudo-count ``prior_count``)."""

    name = "thompson_gaussian"
    version = "1.0.0"
    stochastic = True

    def __init__(
        self,
        design: ArmDesign,
        *,
        draws: int = 256,
        prior_mean: float = 0.5,
        prior_count: float = 1.0,
        prior_variance: float = 0.05,
    ) -> None:
        super().__init__(design)
        self.draws = check_draws(self.name, draws)
        self.prior_mean = float(prior_mean)
        self.prior_count = check_positive(self.name, "prior_count", prior_count)
        self.prior_variance = check_positive(self.name, "prior_variance", prior_variance)
        n = design.n_arms
        # Sufficient statistics per arm: count, mean, sum of squared deviations (Welford).
        self.count = np.zeros(n)
        self.mean = np.zeros(n)
        self.m2 = np.zeros(n)

    def posterior(self, arms: IntArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """(location, scale, degrees of freedom) of the Student-t posterior of each arm's mean."""
        n, xbar, m2 = self.count[arms], self.mean[arms], self.m2[arms]
        kappa0, mu0 = self.prior_count, self.prior_mean
        alpha0, beta0 = (
            1.0,
            self.prior_variance,
        )  # prior E[σ²] is undefined at α=1; β0 sets its scale
        kappa = kappa0 + n
        loc = (kappa0 * mu0 + n * xbar) / kappa
        alpha = alpha0 + n / 2
        beta = beta0 + m2 / 2 + kappa0 * n * (xbar - mu0) ** 2 / (2 * kappa)
        return loc, np.sqrt(beta / (alpha * kappa)), 2 * alpha

    def _distribution(
        self, x: FloatArray, arms: IntArray, rng: np.random.Generator | None
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        if rng is None:
            raise ValueError("ThompsonGaussian needs an rng for its Monte Carlo draws")
        loc, scale, dof = self.posterior(arms)
        samples = loc + scale * rng.standard_t(dof, size=(self.draws, len(arms)))
        return monte_carlo_best(samples), loc, scale * np.sqrt(dof / np.maximum(dof - 2, 1e-9))

    def _estimate(self, x: FloatArray, arms: IntArray) -> tuple[FloatArray, FloatArray]:
        loc, scale, dof = self.posterior(arms)
        return loc, scale * np.sqrt(dof / np.maximum(dof - 2, 1e-9))

    def _update(self, x: FloatArray, arm: int, reward: float) -> None:
        self.count[arm] += 1
        delta = reward - self.mean[arm]
        self.mean[arm] += delta / self.count[arm]
        self.m2[arm] += delta * (reward - self.mean[arm])

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "draws": self.draws,
            "prior_mean": self.prior_mean,
            "prior_count": self.prior_count,
            "prior_variance": self.prior_variance,
        }

    def _state(self) -> dict[str, FloatArray]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def _load_state(self, state: Mapping[str, FloatArray]) -> None:
        _load_arrays(self, state, ("count", "mean", "m2"), self.design.n_arms)


def _load_arrays(
    policy: Policy, state: Mapping[str, FloatArray], names: tuple[str, ...], n: int
) -> None:
    for name in names:
        value = state.get(name)
        if value is None or value.shape != (n,):
            raise SnapshotError(f"{policy.label} snapshot lacks a {n}-arm array {name!r}")
        setattr(policy, name, value.astype(np.float64))
