"""SquareCB: inverse gap weighting over a ridge regression oracle (Foster & Rakhlin, ICML 2020).

The oracle is the linear model of :mod:`paramloop.core.policies.linear` (shared
or per arm).  Every arm but the greedy one gets 1/(K + γ_t·(μ_best − μ_a)),
γ_t = ``gamma`` · (K·(t + 1))^``exponent`` (t = updates learned, K = feasible
arms), and the greedy arm gets the rest.  Foster & Rakhlin's analysis sets
γ ∝ √(K·T); Vowpal Wabbit's ``--squarecb`` drops the K (γ = 10·t^0.5), which
makes the share explored grow with the number of arms: with K·γ, it does not.  The propensities are exact by construction and every arm keeps a
positive one, shrinking as its gap is confirmed, so the policy needs no
exploration floor of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from paramloop.core.policies.base import (
    ArmDesign,
    FloatArray,
    IntArray,
    check_positive,
    inverse_gap_weights,
    register,
)
from paramloop.core.policies.linear import LinearPolicy


@register
class SquareCB(LinearPolicy):
    """Inverse gap weighting on a ridge model's mean rewards.

    >>> import numpy as np
    >>> from paramloop.core.policies.base import ArmDesign
    >>> design = ArmDesign(np.array([[1.0, 0.0], [1.0, 1.0]]), n_interacting=2, context_dim=1, baseline=0)
    >>> policy = SquareCB(design)
    >>> p = policy.probabilities(np.ones(1), np.arange(2))
    >>> bool(p[0] > p[1] > 0)   # no evidence: the baseline is the favourite, the other arm explored
    True
    """

    name = "squarecb"
    version = "1.0.0"
    default_exploration = 0.0

    def __init__(
        self,
        design: ArmDesign,
        *,
        gamma: float = 10.0,
        exponent: float = 0.5,
        **linear: Any,
    ) -> None:
        super().__init__(design, **linear)
        self.gamma = check_positive(self.name, "gamma", gamma)
        self.exponent = check_positive(self.name, "exponent", exponent, allow_zero=True)

    @property
    def keeps_support(self) -> bool:
        return True

    def gamma_t(self, k: int) -> float:
        """γ_t for ``k`` feasible arms."""
        return float(self.gamma * float(k * (self.revision + 1)) ** self.exponent)

    def _distribution(
        self, x: FloatArray, arms: IntArray, rng: np.random.Generator | None
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        mean, width, _, _ = self.moments(x, arms)
        return (
            inverse_gap_weights(mean, self.gamma_t(len(arms))),
            mean,
            self.noise_scale * np.sqrt(width),
        )

    def _probabilities_many(
        self, X: FloatArray, arms: IntArray, rngs: Callable[[int], np.random.Generator] | None
    ) -> FloatArray:
        mean, _ = self.moments_many(X, arms)
        return inverse_gap_weights(mean, self.gamma_t(len(arms)))

    def hyperparameters(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "exponent": self.exponent, **self.linear_hyperparameters()}
