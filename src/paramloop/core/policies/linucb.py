"""LinUCB over action-dependent features (Li, Chu, Langford & Schapire, WWW 2010).

The score of an arm is its ridge estimate plus ``alpha`` times its posterior
width; the policy puts all its mass on the best score (ties split), and gets
its support from :func:`~paramloop.core.policies.base.decide`'s exploration floor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from paramloop.core.policies.base import (
    ArmDesign,
    FloatArray,
    IntArray,
    argmax_share,
    check_positive,
    register,
)
from paramloop.core.policies.linear import LinearPolicy


@register
class LinUCB(LinearPolicy):
    """Upper confidence bound on a shared ridge model.

    >>> import numpy as np
    >>> from paramloop.core.policies.base import ArmDesign
    >>> design = ArmDesign(np.array([[1.0, -1.0], [1.0, 1.0]]), n_interacting=2, context_dim=1, baseline=0)
    >>> policy = LinUCB(design, alpha=0.5)
    >>> for _ in range(20):
    ...     policy.update(np.ones(1), 1, 0.9)
    ...     policy.update(np.ones(1), 0, 0.1)
    >>> policy.probabilities(np.ones(1), np.arange(2)).tolist()
    [0.0, 1.0]
    """

    name = "linucb"
    version = "1.0.0"

    def __init__(
        self,
        design: ArmDesign,
        *,
        alpha: float = 0.5,
        ridge: float = 1.0,
        noise: float = 0.1,
        prior_mean: float = 0.5,
        interaction_ridge: float = 10.0,
    ) -> None:
        super().__init__(
            design,
            ridge=ridge,
            noise=noise,
            prior_mean=prior_mean,
            interaction_ridge=interaction_ridge,
        )
        self.alpha = check_positive(self.name, "alpha", alpha, allow_zero=True)

    def _distribution(
        self, x: FloatArray, arms: IntArray, rng: np.random.Generator | None
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        mean, width, _, _ = self.moments(x, arms)
        root = np.sqrt(width)
        return argmax_share(mean + self.alpha * root), mean, self.noise * root

    def _probabilities_many(
        self, X: FloatArray, arms: IntArray, rngs: Callable[[int], np.random.Generator] | None
    ) -> FloatArray:
        mean, width = self.moments_many(X, arms)
        scores = mean + self.alpha * np.sqrt(width)
        best = scores == scores.max(axis=1, keepdims=True)
        share: FloatArray = best / best.sum(axis=1, keepdims=True)
        return share

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            **self.linear_hyperparameters(),
        }
