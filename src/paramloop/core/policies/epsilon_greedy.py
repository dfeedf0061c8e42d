"""Epsilon-greedy over per-arm sample means (Sutton & Barto, 1998).

With probability ``epsilon`` a uniformly random feasible arm, otherwise the arm
with the best mean (untried arms first, so every arm is tried once).  The
probabilities are exact: (1 − ε)·[best] + ε/K.
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
    argmax_share,
    register,
)
from paramloop.core.policies.thompson_gaussian import _load_arrays
from paramloop.errors import ConfigError


@register
class EpsilonGreedy(Policy):
    """Exploit the best sample mean, explore uniformly with probability ``epsilon``."""

    name = "epsilon_greedy"
    version = "1.0.0"

    def __init__(self, design: ArmDesign, *, epsilon: float = 0.1) -> None:
        super().__init__(design)
        if (
            isinstance(epsilon, bool)
            or not isinstance(epsilon, int | float)
            or not 0.0 <= epsilon <= 1.0
        ):
            raise ConfigError(
                "policy.epsilon_greedy.epsilon", f"must be in [0, 1], got {epsilon!r}"
            )
        self.epsilon = float(epsilon)
        self.count = np.zeros(design.n_arms)
        self.total = np.zeros(design.n_arms)
        self.total_sq = np.zeros(design.n_arms)

    def _distribution(
        self, x: FloatArray, arms: IntArray, rng: np.random.Generator | None
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        count = self.count[arms]
        # Untried arms score +inf so each is tried once before exploitation settles.
        scores = np.where(count > 0, self.total[arms] / np.maximum(count, 1), np.inf)
        probs = (1.0 - self.epsilon) * argmax_share(scores) + self.epsilon / len(arms)
        mean, std = self._estimate(x, arms)
        return probs, mean, std

    def _estimate(self, x: FloatArray, arms: IntArray) -> tuple[FloatArray, FloatArray]:
        n = np.maximum(self.count[arms], 1)
        mean = self.total[arms] / n
        variance = np.maximum(self.total_sq[arms] / n - mean**2, 0.0)
        # Standard error of the mean, with a unit-variance guess for arms seen fewer than twice.
        std = np.where(self.count[arms] >= 2, np.sqrt(variance / n), 1.0)
        return mean, std

    def _update(self, x: FloatArray, arm: int, reward: float) -> None:
        self.count[arm] += 1
        self.total[arm] += reward
        self.total_sq[arm] += reward * reward

    def hyperparameters(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon}

    def _state(self) -> dict[str, FloatArray]:
        return {"count": self.count, "total": self.total, "total_sq": self.total_sq}

    def _load_state(self, state: Mapping[str, FloatArray]) -> None:
        _load_arrays(self, state, ("count", "total", "total_sq"), self.design.n_arms)
