"""The estimator seam: one protocol, the per-round terms it produces, and the registry.

Every estimator here has the same shape (Open Bandit Pipeline's design): the
contribution of round ``i`` is

    direct_i + weight_i · residual_i                       (plain mean)
    direct_i + weight_i · residual_i / mean(weight)        (self-normalized)

where ``direct`` is the outcome model's value of the target policy
(``Σ_a target[i, a] · predicted[i, a]``, absent for pure weighting estimators),
``residual`` is the reward (minus its prediction for model-based estimators)
and ``weight`` is the estimator's own importance weight.  An estimator is one
hook, :meth:`Estimator._weights`, plus two class attributes; fitting the
outcome model stays outside: predicted rewards arrive as an (n, K) array.

The value is the mean of the contributions.  The bootstrap and the CLT
interval work from :class:`Terms`, so self-normalized estimators re-normalize
inside every resample.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from paramloop.core.ope.data import FloatArray, LoggedBandit
from paramloop.errors import ConfigError, EvaluationError


@dataclass(frozen=True, slots=True, eq=False)
class Terms:
    """One estimator's per-round pieces on one :class:`LoggedBandit` (see the module docstring)."""

    direct: FloatArray | None
    weights: FloatArray
    residuals: FloatArray
    self_normalized: bool

    @property
    def n(self) -> int:
        return int(self.weights.shape[0])

    def contributions(self) -> FloatArray:
        """The per-round terms whose mean is the estimate (normalized for SN estimators)."""
        weights = self._normalized() if self.self_normalized else self.weights
        corrections = weights * self.residuals
        return corrections if self.direct is None else self.direct + corrections

    def value(self) -> float:
        return float(np.mean(self.contributions()))

    def influence(self) -> FloatArray:
        """Per-round influence of the estimate: its variance over n is the CLT variance.

        For a plain mean it is the centred contribution; for a self-normalized
        one the delta method gives ``(w·e − R·w) / mean(w)`` for the ratio
        ``R = mean(w·e) / mean(w)``, plus the centred direct part.  (Computed
        with ``w / mean(w)``, which leaves R and the influence unchanged.)
        """
        if not self.self_normalized:
            contributions = self.contributions()
            centred: FloatArray = contributions - contributions.mean()
            return centred
        weights = self._normalized()
        corrections = weights * self.residuals
        psi: FloatArray = corrections - corrections.mean() * weights
        if self.direct is not None:
            psi = psi + (self.direct - self.direct.mean())
        return psi

    def columns(self) -> tuple[FloatArray, ...]:
        """The per-round columns whose resampled sums determine a resampled estimate."""
        if not self.self_normalized:
            return (self.contributions(),)
        weights = self._normalized()
        parts = (weights * self.residuals, weights)
        return parts if self.direct is None else (self.direct, *parts)

    def from_sums(self, sums: FloatArray, n: int) -> FloatArray:
        """Resampled estimates from the resampled sums of :meth:`columns` (one row per resample).

        A self-normalized estimate is undefined (NaN) on a resample whose weights sum to 0.
        """
        if not self.self_normalized:
            plain: FloatArray = sums[:, 0] / n
            return plain
        numerator, denominator = sums[:, -2], sums[:, -1]
        ratio: FloatArray = np.full(numerator.shape, np.nan)
        np.divide(numerator, denominator, out=ratio, where=denominator > 0.0)
        return ratio if self.direct is None else sums[:, 0] / n + ratio

    def _normalized(self) -> FloatArray:
        # Weights over their mean: products with residuals stay near the residuals' scale
        # (w · r underflows when w is tiny), and the self-normalized ratio is unchanged.
        # Scaled by the largest weight first: the mean of subnormal weights rounds to a
        # few bits (5e-324 · 2 / 3 → 5e-324) and would bias the ratio.
        peak = float(self.weights.max())
        if not peak > 0.0:
            raise EvaluationError(
                "weights",
                "every importance weight is 0 (the target never chooses a logged action), "
                "so a self-normalized estimate is undefined",
            )
        scaled = self.weights / peak
        normalized: FloatArray = scaled / float(scaled.mean())
        return normalized


class Estimator(ABC):
    """An off-policy estimator of a target policy's value, defined by its per-round terms.

    ``predicted`` is the outcome model's predicted reward ``q̂(x_i, a)`` for
    every round and action, shape (n, K); estimators with ``uses_model``
    require it, the others ignore it (it is still validated when given).

    Raises :class:`~paramloop.errors.EvaluationError` when ``predicted`` is
    missing, of the wrong shape or not finite.
    """

    name: ClassVar[str]
    #: Whether the estimator needs predicted rewards (DM and the doubly robust family).
    uses_model: ClassVar[bool] = False
    #: Whether contributions are divided by the mean weight (SNIPS, SNDR).
    self_normalized: ClassVar[bool] = False

    @property
    def label(self) -> str:
        """The name with the hyperparameters that differ from the defaults: ``ips(clip=20)``."""
        params = ", ".join(f"{k}={v:g}" for k, v in self.hyperparameters().items())
        return f"{self.name}({params})" if params else self.name

    def hyperparameters(self) -> dict[str, float]:
        return {}

    def terms(self, data: LoggedBandit, predicted: FloatArray | None = None) -> Terms:
        q = None if predicted is None else check_predicted(data, predicted)
        if not self.uses_model:
            return Terms(None, self._weights(data), data.rewards, self.self_normalized)
        if q is None:
            raise EvaluationError(
                "predicted",
                f"{self.label} needs predicted rewards: an (n, K) = ({data.n}, {data.n_actions}) "
                "array of the outcome model's q̂(x_i, a), got None",
            )
        rows = np.arange(data.n)
        direct = np.einsum("ij,ij->i", data.target, q)
        residuals = data.rewards - q[rows, data.actions]
        return Terms(direct, self._weights(data), residuals, self.self_normalized)

    def contributions(self, data: LoggedBandit, predicted: FloatArray | None = None) -> FloatArray:
        """Per-round terms whose mean is the estimate."""
        return self.terms(data, predicted).contributions()

    def value(self, data: LoggedBandit, predicted: FloatArray | None = None) -> float:
        """The point estimate of the target policy's value."""
        return self.terms(data, predicted).value()

    @abstractmethod
    def _weights(self, data: LoggedBandit) -> FloatArray:
        """The weight on each round's residual (the one hook an estimator implements)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


def check_predicted(data: LoggedBandit, predicted: object) -> FloatArray:
    """Predicted rewards as a validated (n, K) float array."""
    try:
        q = np.asarray(predicted, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise EvaluationError("predicted", f"must be numbers ({exc})") from None
    expected = (data.n, data.n_actions)
    if q.shape != expected:
        raise EvaluationError(
            "predicted",
            f"has shape {q.shape} but the log needs {expected}: one predicted reward for every "
            "round and every action",
        )
    bad = ~np.isfinite(q).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        shown = tuple(int(i) for i in rows[:5])
        raise EvaluationError(
            "predicted",
            f"{len(rows)} of {data.n} rows hold values that are not finite: rows "
            f"{', '.join(map(str, shown))}{' …' if len(rows) > len(shown) else ''}",
            rows=shown,
        )
    return q


E = TypeVar("E", bound=type[Estimator])

#: Registered estimators by name; a new estimator registers itself with :func:`register`.
ESTIMATORS: dict[str, type[Estimator]] = {}


def register(cls: E) -> E:
    ESTIMATORS[cls.name] = cls
    return cls


def make_estimator(name: str, **hyperparameters: Any) -> Estimator:
    """Build a registered estimator by name, validating its hyperparameters."""
    try:
        cls = ESTIMATORS[name]
    except KeyError:
        raise ConfigError(
            "estimator", f"unknown estimator {name!r}; available: {', '.join(sorted(ESTIMATORS))}"
        ) from None
    factory: Callable[..., Estimator] = cls
    try:
        return factory(**hyperparameters)
    except TypeError as exc:
        raise ConfigError(f"estimator.{name}", f"invalid hyperparameters: {exc}") from None
