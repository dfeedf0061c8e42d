"""LinUCB (Li, Chu, Langford & Schapire, WWW 2010) with a shrinking, gap-aware support share.

The score of an arm is its ridge estimate plus ``alpha`` · R · √(φᵀA⁻¹φ), with
R = 1/2 the sub-Gaussian constant of any reward in [0, 1] (Hoeffding): the
bonus does not shrink when the rewards look quiet, which keeps the optimism
that finds far-off arms (measured: scaling it by the estimated noise instead
cost the simulator's hardest task types their convergence); most of the probability goes to the best score (ties split).  So
that every feasible arm stays supported for off-policy evaluation, a share

    ε_t = support · √(K / (K + t))          (t = updates learned, K = feasible arms)

is spread by inverse gap weighting over the posterior means (see
:func:`~paramloop.core.policies.base.inverse_gap_weights`, γ_t = ``gamma`` · √(t + 1)):
the share shrinks as evidence accumulates, and an arm whose mean lies far below
the best (a dearer model with no better quality, say) gets little of it — never
a fixed uniform share.  Every arm keeps a positive probability.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from paramloop.core.policies.base import (
    ArmDesign,
    FloatArray,
    IntArray,
    argmax_share,
    check_positive,
    check_share,
    inverse_gap_weights,
    register,
)
from paramloop.core.policies.linear import LinearPolicy

#: R: rewards in [0, 1] are sub-Gaussian with this constant (Hoeffding's lemma).
BOUNDED_REWARD_SCALE = 0.5


@register
class LinUCB(LinearPolicy):
    """Upper confidence bound on a ridge model (shared or per arm), with a support share.

    >>> import numpy as np
    >>> from paramloop.core.policies.base import ArmDesign
    >>> design = ArmDesign(np.array([[1.0, 0.0], [1.0, 1.0]]), n_interacting=2, context_dim=1, baseline=0)
    >>> policy = LinUCB(design, support=0.0)
    >>> policy.probabilities(np.ones(1), np.arange(2)).tolist()  # no evidence: the baseline
    [1.0, 0.0]
    >>> for _ in range(20):
    ...     policy.update(np.ones(1), 1, 0.9)
    ...     policy.update(np.ones(1), 0, 0.1)
    >>> policy.probabilities(np.ones(1), np.arange(2)).tolist()
    [0.0, 1.0]
    """

    name = "linucb"
    version = "2.0.0"
    default_exploration = 0.0

    def __init__(
        self,
        design: ArmDesign,
        *,
        alpha: float = 1.0,
        support: float = 0.05,
        gamma: float = 10.0,
        **linear: Any,
    ) -> None:
        super().__init__(design, **linear)
        self.alpha = check_positive(self.name, "alpha", alpha, allow_zero=True)
        self.support = check_share(self.name, "support", support)
        self.gamma = check_positive(self.name, "gamma", gamma, allow_zero=True)

    @property
    def keeps_support(self) -> bool:
        return self.support > 0.0

    def support_share(self, k: int) -> float:
        """ε_t: the share spread over the arms by inverse gap weighting."""
        return self.support * math.sqrt(k / (k + self.revision))

    def _distribution(
        self, x: FloatArray, arms: IntArray, rng: np.random.Generator | None
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        mean, width, _, _ = self.moments(x, arms)
        root = np.sqrt(width)
        probs = argmax_share(mean + self.alpha * BOUNDED_REWARD_SCALE * root)
        return self._supported(probs, mean), mean, self.noise_scale * root

    def _probabilities_many(
        self, X: FloatArray, arms: IntArray, rngs: Callable[[int], np.random.Generator] | None
    ) -> FloatArray:
        mean, width = self.moments_many(X, arms)
        scores = mean + self.alpha * BOUNDED_REWARD_SCALE * np.sqrt(width)
        best = scores == scores.max(axis=1, keepdims=True)
        probs: FloatArray = best / best.sum(axis=1, keepdims=True)
        return self._supported(probs, mean)

    def _supported(self, probs: FloatArray, mean: FloatArray) -> FloatArray:
        """``probs`` (one context or rows of them) with the support share mixed in."""
        k = mean.shape[-1]
        share = self.support_share(k)
        if share == 0.0 or k == 1:
            return probs
        gamma = self.gamma * math.sqrt(self.revision + 1)
        mixed: FloatArray = (1.0 - share) * probs + share * inverse_gap_weights(mean, gamma)
        return mixed

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "support": self.support,
            "gamma": self.gamma,
            **self.linear_hyperparameters(),
        }
