"""Linear Thompson sampling (Agrawal & Goyal, ICML 2013) over action-dependent features.

A draw θ̃ ~ N(θ, v²A⁻¹) scores every arm; the arm with the best score wins.
Because scores only depend on M(x)ᵀθ̃ ~ N(M(x)ᵀθ, v²G), draws are taken in that
k-dimensional space (k = number of arm features), not in the full model space.
The probability of each arm is the share of ``draws`` Monte Carlo draws it wins,
from a generator seeded per decision: the distribution decide() samples from is
exactly the one it logs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from paramloop.core.policies.base import (
    ArmDesign,
    FloatArray,
    IntArray,
    check_draws,
    check_positive,
    monte_carlo_best,
    register,
)
from paramloop.core.policies.linear import LinearPolicy


@register
class LinTS(LinearPolicy):
    """Thompson sampling on a ridge model (shared or per arm); ``draws`` Monte Carlo draws per decision."""

    name = "lints"
    version = "2.0.0"
    stochastic = True

    def __init__(
        self,
        design: ArmDesign,
        *,
        draws: int = 256,
        inflation: float = 1.0,
        **linear: Any,
    ) -> None:
        super().__init__(design, **linear)
        self.draws = check_draws(self.name, draws)
        self.inflation = check_positive(self.name, "inflation", inflation)

    def _distribution(
        self, x: FloatArray, arms: IntArray, rng: np.random.Generator | None
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        if rng is None:
            raise ValueError("LinTS needs an rng for its Monte Carlo draws")
        mean, width, mu, G = self.moments(x, arms)
        scale = self.noise_scale * self.inflation
        if mu is None or G is None:  # per-arm models are independent: draw each arm's mean
            noise = rng.standard_normal((self.draws, len(arms)))
            samples = mean + scale * np.sqrt(width) * noise
            return monte_carlo_best(samples), mean, self.noise_scale * np.sqrt(width)
        k = G.shape[0]
        L = np.linalg.cholesky(G + 1e-12 * np.eye(k))
        draws = mu + scale * rng.standard_normal((self.draws, k)) @ L.T
        samples = draws @ self.design.features[arms].T + self.arm_prior[arms]
        return monte_carlo_best(samples), mean, self.noise_scale * np.sqrt(width)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "draws": self.draws,
            "inflation": self.inflation,
            **self.linear_hyperparameters(),
        }
