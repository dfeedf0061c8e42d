"""The six estimators, each one hook on :class:`~paramloop.core.ope.base.Estimator`.

References (cited once):

- IPS: Horvitz & Thompson (1952), "A generalization of sampling without
  replacement from a finite universe", JASA 47(260).
- SNIPS: Swaminathan & Joachims (2015), "The self-normalized estimator for
  counterfactual learning", NeurIPS.
- DM and DR: Dudík, Langford & Li (2011), "Doubly robust policy evaluation and
  learning", ICML.
- SNDR: the self-normalized doubly robust estimator as in Kallus & Uehara
  (2019), "Intrinsically efficient, stable, and bounded off-policy evaluation
  for reinforcement learning", NeurIPS, and Open Bandit Pipeline's
  ``SelfNormalizedDoublyRobust``.
- Switch-DR: Wang, Agarwal & Dudík (2017), "Optimal and adaptive off-policy
  evaluation in contextual bandits", ICML.

>>> import numpy as np
>>> data = LoggedBandit(
...     rewards=np.array([1.0, 0.0, 1.0]),
...     actions=np.array([0, 1, 0]),
...     propensities=np.array([0.5, 0.5, 0.5]),
...     target=np.array([[1.0, 0.0]] * 3),
... )
>>> round(IPS().value(data), 4), SNIPS().value(data)
(1.3333, 1.0)
"""

from __future__ import annotations

import math

import numpy as np

from paramloop.core.ope.base import Estimator, register
from paramloop.core.ope.data import FloatArray, LoggedBandit
from paramloop.errors import ConfigError

__all__ = ["DM", "DR", "IPS", "SNDR", "SNIPS", "Estimator", "LoggedBandit", "SwitchDR"]


@register
class IPS(Estimator):
    """Inverse propensity scoring: the mean of ``w_i · r_i``.

    ``clip`` caps every weight at that value (bias for variance); ``None`` keeps
    the estimator unbiased.
    """

    name = "ips"

    def __init__(self, clip: float | None = None) -> None:
        if clip is not None and not (math.isfinite(clip) and clip > 0.0):
            raise ConfigError(f"{self.name}.clip", f"must be a positive number, got {clip!r}")
        self.clip = clip

    def hyperparameters(self) -> dict[str, float]:
        return {} if self.clip is None else {"clip": self.clip}

    def _weights(self, data: LoggedBandit) -> FloatArray:
        return data.weights if self.clip is None else np.minimum(data.weights, self.clip)


@register
class SNIPS(IPS):
    """Self-normalized IPS: ``Σ w_i r_i / Σ w_i``, always inside the range of the rewards."""

    name = "snips"
    self_normalized = True


@register
class DM(Estimator):
    """Direct method: the mean over rounds of ``Σ_a target[i, a] · predicted[i, a]``."""

    name = "dm"
    uses_model = True

    def _weights(self, data: LoggedBandit) -> FloatArray:
        return np.zeros(data.n)


@register
class DR(Estimator):
    """Doubly robust: DM plus the importance-weighted residual ``w_i (r_i − q̂(x_i, a_i))``."""

    name = "dr"
    uses_model = True

    def _weights(self, data: LoggedBandit) -> FloatArray:
        return data.weights


@register
class SNDR(DR):
    """Self-normalized doubly robust: DR with the residual term divided by the mean weight."""

    name = "sndr"
    self_normalized = True


@register
class SwitchDR(Estimator):
    """Switch-DR: DR on rounds whose weight is at most ``tau``, DM alone on the others.

    ``tau = inf`` is DR; ``tau`` near 0 approaches DM.
    """

    name = "switch-dr"
    uses_model = True

    def __init__(self, tau: float) -> None:
        if math.isnan(tau) or tau <= 0.0:
            raise ConfigError(f"{self.name}.tau", f"must be a positive number, got {tau!r}")
        self.tau = tau

    def hyperparameters(self) -> dict[str, float]:
        return {"tau": self.tau}

    def _weights(self, data: LoggedBandit) -> FloatArray:
        return np.where(data.weights <= self.tau, data.weights, 0.0)
