"""The incumbent: always the baseline arm.  It learns nothing; it tracks the baseline's mean reward."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from paramloop.core.policies.base import ArmDesign, FloatArray, IntArray, Policy, register


@register
class Baseline(Policy):
    """Probability 1 on the baseline arm (uniform over ``arms`` if the baseline is not feasible).

    Its confidence is 1: the choice is a rule, not an estimate.
    """

    name = "baseline"
    version = "1.0.0"

    def __init__(self, design: ArmDesign) -> None:
        super().__init__(design)
        self.stats = np.zeros(2)  # count, sum of rewards of the baseline arm

    def _distribution(
        self, x: FloatArray, arms: IntArray, rng: np.random.Generator | None
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        chosen = (arms == self.design.baseline).astype(np.float64)
        if chosen.sum() == 0:
            chosen[:] = 1.0
        probs = chosen / chosen.sum()
        mean, std = self._estimate(x, arms)
        return probs, mean, std

    def _probabilities_many(
        self, X: FloatArray, arms: IntArray, rngs: Callable[[int], np.random.Generator] | None
    ) -> FloatArray:
        row = self._distribution(X[0] if len(X) else np.zeros(0), arms, None)[0]
        return np.broadcast_to(row, (X.shape[0], len(arms))).copy()

    def _estimate(self, x: FloatArray, arms: IntArray) -> tuple[FloatArray, FloatArray]:
        base = self.stats[1] / self.stats[0] if self.stats[0] else 0.0
        mean = np.where(arms == self.design.baseline, base, -np.inf)
        if not np.isfinite(mean).any():
            mean = np.zeros(len(arms))
        return mean, np.zeros(len(arms))

    def _update(self, x: FloatArray, arm: int, reward: float) -> None:
        if arm == self.design.baseline:
            self.stats += (1.0, reward)

    def hyperparameters(self) -> dict[str, Any]:
        return {}

    def _state(self) -> dict[str, FloatArray]:
        return {"stats": self.stats}

    def _load_state(self, state: Mapping[str, FloatArray]) -> None:
        stats = state.get("stats")
        self.stats = (
            np.zeros(2) if stats is None or stats.shape != (2,) else stats.astype(np.float64)
        )
