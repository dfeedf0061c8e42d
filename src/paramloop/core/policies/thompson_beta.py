"""Beta–Bernoulli Thompson sampling, one Beta posterior per arm (Thompson, 1933).

Made for binary rewards (success/failure).  A fractional reward r in [0, 1]
counts as r successes and 1 − r failures, the usual generalization; the
posterior mean is then the running mean reward.
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
from paramloop.core.policies.thompson_gaussian import _load_arrays


@register
class ThompsonBeta(Policy):
    """Per-arm Beta(α, β) Thompson sampling with prior Beta(``prior_alpha``, ``prior_beta``)."""

    name = "thompson_beta"
    version = "1.0.0"
    stochastic = True

    def __init__(
        self,
        design: ArmDesign,
        *,
        draws: int = 256,
        prior_alpha: float = 1.0,
        prior_beta: float = 1.0,
    ) -> None:
        super().__init__(design)
        self.draws = check_draws(self.name, draws)
        self.prior_alpha = check_positive(self.name, "prior_alpha", prior_alpha)
        self.prior_beta = check_positive(self.name, "prior_beta", prior_beta)
        self.successes = np.zeros(design.n_arms)
        self.failures = np.zeros(design.n_arms)

    def _distribution(
        self, x: FloatArray, arms: IntArray, rng: np.random.Generator | None
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        if rng is None:
            raise ValueError("ThompsonBeta needs an rng for its Monte Carlo draws")
        a = self.prior_alpha + self.successes[arms]
        b = self.prior_beta + self.failures[arms]
        samples = rng.beta(a, b, size=(self.draws, len(arms)))
        mean, std = self._estimate(x, arms)
        return monte_carlo_best(samples), mean, std

    def _estimate(self, x: FloatArray, arms: IntArray) -> tuple[FloatArray, FloatArray]:
        a = self.prior_alpha + self.successes[arms]
        b = self.prior_beta + self.failures[arms]
        total = a + b
        return a / total, np.sqrt(a * b / (total**2 * (total + 1)))

    def _update(self, x: FloatArray, arm: int, reward: float) -> None:
        self.successes[arm] += reward
        self.failures[arm] += 1.0 - reward

    def hyperparameters(self) -> dict[str, Any]:
        return {"draws": self.draws, "prior_alpha": self.prior_alpha, "prior_beta": self.prior_beta}

    def _state(self) -> dict[str, FloatArray]:
        return {"successes": self.successes, "failures": self.failures}

    def _load_state(self, state: Mapping[str, FloatArray]) -> None:
        _load_arrays(self, state, ("successes", "failures"), self.design.n_arms)
