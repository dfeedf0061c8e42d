"""From an outcome to one number: an explicit, versioned weighted scalarization.

The reward of an outcome is

    r = (w_q·quality + w_l·(1 − ℓ) + w_t·(1 − τ) + w_c·(1 − c) + w_e·(1 − error)) / Σw
        − Σ penalty_k · [hard constraint k violated],   clipped below at 0,

where ℓ = min(latency_ms / latency_scale, 1), τ = min(total_tokens / token_scale, 1),
c = min(cost / cost_scale, 1) are the normalized costs and each weight is ≥ 0.
Every term lies in [0, 1], so **the reward lies in [0, 1]**: 1 is a perfect, free,
instant answer and 0 is the worst.  A missing field counts as its worst value
(quality 0, latency/tokens/cost at their scale), so an outcome that says nothing
is never rewarded for it; user ``feedback`` stands in for a missing quality.

An ``Outcome.reward`` given by the caller is used as it is, after a check that it
lies in the declared reward range (``low``, ``high``; default [0, 1]).  A range
such as [−1, 1] lets a caller report quality − λ·cost, which can be negative.
Policies learn the reward mapped linearly onto [0, 1] (:meth:`RewardFunction.unit`);
the decision log, the estimates and the gates keep the reward in its own units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from paramloop.errors import ConfigError, OutcomeError
from paramloop.types import Outcome

FloatArray = npt.NDArray[np.float64]

#: The default reward range (a reward function may declare another: ``low``, ``high``).
REWARD_RANGE = (0.0, 1.0)


@dataclass(frozen=True, slots=True)
class RewardFunction:
    """Weighted scalarization of quality, latency, tokens, cost and error.

    ``max_*`` are hard constraints: an outcome above one loses ``penalty``
    (default 1.0, i.e. down to the floor of 0).  ``version`` names the function
    in every stored reward, so rewards from different functions are never mixed
    silently.

    >>> rf = RewardFunction(quality=1.0, latency=0.0, tokens=0.0, cost=0.0, error=0.0)
    >>> rf(Outcome(quality=0.8))
    0.8
    >>> rf(Outcome(quality=0.8, latency_ms=10.0), ) == rf(Outcome(quality=0.8))
    True
    >>> RewardFunction(max_latency_ms=100)(Outcome(quality=1.0, latency_ms=150))
    0.0
    """

    quality: float = 0.6
    latency: float = 0.15
    tokens: float = 0.05
    cost: float = 0.1
    error: float = 0.1
    latency_scale_ms: float = 10_000.0
    token_scale: float = 4_000.0
    cost_scale: float = 0.01
    max_latency_ms: float | None = None
    max_tokens: int | None = None
    max_cost: float | None = None
    penalty: float = 1.0
    version: str = "weighted@1"
    low: float = REWARD_RANGE[0]
    high: float = REWARD_RANGE[1]

    def __post_init__(self) -> None:
        weights = {
            "quality": self.quality,
            "latency": self.latency,
            "tokens": self.tokens,
            "cost": self.cost,
            "error": self.error,
        }
        for name, value in weights.items():
            _check_finite(f"reward.{name}", value)
            if value < 0:
                raise ConfigError(f"reward.{name}", f"weight must be >= 0, got {value!r}")
        if sum(weights.values()) <= 0:
            raise ConfigError("reward", "at least one weight must be > 0")
        for name in ("latency_scale_ms", "token_scale", "cost_scale"):
            value = getattr(self, name)
            _check_finite(f"reward.{name}", value)
            if value <= 0:
                raise ConfigError(f"reward.{name}", f"must be > 0, got {value!r}")
        for name in ("max_latency_ms", "max_tokens", "max_cost"):
            value = getattr(self, name)
            if value is not None:
                _check_finite(f"reward.{name}", value)
                if value <= 0:
                    raise ConfigError(f"reward.{name}", f"must be > 0 when set, got {value!r}")
        _check_finite("reward.penalty", self.penalty)
        if not 0.0 <= self.penalty <= 1.0:
            raise ConfigError("reward.penalty", f"must be in [0, 1], got {self.penalty!r}")
        if not self.version:
            raise ConfigError("reward.version", "must be a non-empty string")
        _check_finite("reward.low", self.low)
        _check_finite("reward.high", self.high)
        if not self.low < self.high:
            raise ConfigError("reward.high", f"must be > low ({self.low!r}), got {self.high!r}")

    @property
    def range(self) -> tuple[float, float]:
        return (self.low, self.high)

    def unit(self, reward: float) -> float:
        """``reward`` mapped from the declared range onto [0, 1] (what policies learn)."""
        return min(1.0, max(0.0, (reward - self.low) / (self.high - self.low)))

    def __call__(self, outcome: Outcome) -> float:
        """The reward of ``outcome`` (raises :class:`OutcomeError` if a given reward is out of range)."""
        if outcome.reward is not None:
            low, high = self.low, self.high
            if not low <= outcome.reward <= high:
                raise OutcomeError(
                    "reward",
                    f"must lie in the reward range [{low}, {high}], got {outcome.reward!r}",
                )
            return float(outcome.reward)
        latency = _normalized(outcome.latency_ms, self.latency_scale_ms)
        tokens = outcome.total_tokens
        token_cost = _normalized(None if tokens is None else float(tokens), self.token_scale)
        cost = _normalized(outcome.cost, self.cost_scale)
        quality = outcome.quality if outcome.quality is not None else outcome.feedback
        quality = 0.0 if quality is None else quality
        total = self.quality + self.latency + self.tokens + self.cost + self.error
        value = (
            self.quality * quality
            + self.latency * (1.0 - latency)
            + self.tokens * (1.0 - token_cost)
            + self.cost * (1.0 - cost)
            + self.error * (0.0 if outcome.error else 1.0)
        ) / total
        value -= self.penalty * self.violations(outcome)
        # The weighted score lies in [0, 1]; a declared range maps it there linearly.
        return self.low + (self.high - self.low) * max(0.0, min(1.0, value))

    def violations(self, outcome: Outcome) -> int:
        """Number of hard constraints ``outcome`` breaks (a missing field breaks none)."""
        count = 0
        if self.max_latency_ms is not None and (outcome.latency_ms or 0.0) > self.max_latency_ms:
            count += 1
        if self.max_tokens is not None and (outcome.total_tokens or 0) > self.max_tokens:
            count += 1
        if self.max_cost is not None and (outcome.cost or 0.0) > self.max_cost:
            count += 1
        return count

    def count_violations(
        self, latency_ms: FloatArray, total_tokens: FloatArray, cost: FloatArray
    ) -> int:
        """:meth:`violations` summed over many outcomes given as columns (NaN where missing)."""
        count = 0
        for column, limit in (
            (latency_ms, self.max_latency_ms),
            (total_tokens, self.max_tokens),
            (cost, self.max_cost),
        ):
            if limit is not None:
                count += int(np.count_nonzero(np.nan_to_num(column, nan=0.0) > limit))
        return count


def _normalized(value: float | None, scale: float) -> float:
    if value is None:
        return 1.0
    return min(value / scale, 1.0)


def _check_finite(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(field, f"must be a finite number, got {value!r}")
