"""Anytime-valid confidence sequences: bounds that hold at every sample size at once.

A rollout is watched continuously, so a fixed-n confidence interval checked after
every batch would raise false alarms far more often than its nominal α.  A
*confidence sequence* covers the true value simultaneously for all n with
probability ≥ 1 − α (Ville's inequality applied to a nonnegative supermartingale),
so it can be checked as often as we like and stopped at any time.

Two constructions, both closed-form or one bisection away, both finite-sample:

* :class:`EmpiricalBernsteinCS` — means of values in [0, 1] (quality, error
  indicators): the predictable plug-in empirical-Bernstein CS of Waudby-Smith &
  Ramdas (2023), "Estimating means of bounded random variables by betting",
  JRSS-B, Theorem 2.  Variance-adaptive, so a 1 % error rate gets a bound about
  as narrow as its small variance allows, not the Hoeffding width of a coin.
* :func:`count_boundary` and :func:`quantile_ranks` — quantiles (p99 latency)
  through the indicator 1[X ≤ q_p], which is Bernoulli(p) at the true quantile:
  a one-sided beta-binomial mixture martingale bounds its count uniformly in n,
  and the count bound turns into order statistics, as in Howard & Ramdas (2022),
  "Sequential estimation of quantiles with applications to A/B-testing and
  best-arm identification", Bernoulli.

The PyPI package ``confseq`` implements both but ships only a C++ source
distribution (last release 2023), so the few lines are written out here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import betaincc, betaln, lambertw  # type: ignore[import-untyped, unused-ignore]

from paramloop.errors import InputError

#: λ is truncated at 1/2, the choice of Waudby-Smith & Ramdas (keeps ψ_E finite and small).
_TRUNCATION = 0.5


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, float | int) and 0.0 < alpha < 1.0):
        raise InputError("alpha", f"must be in (0, 1), got {alpha!r}")


@dataclass(frozen=True, slots=True)
class Interval:
    """An estimate with its confidence-sequence bounds (``lower ≤ upper``).

    No data means a NaN estimate; an unbounded side is ±∞.  :meth:`to_dict`
    writes both as ``None`` so the result is plain JSON.
    """

    estimate: float
    lower: float
    upper: float

    def to_dict(self) -> dict[str, float | None]:
        return {
            name: value if math.isfinite(value) else None
            for name, value in (
                ("estimate", self.estimate),
                ("lower", self.lower),
                ("upper", self.upper),
            )
        }


class EmpiricalBernsteinCS:
    """Two-sided predictable plug-in empirical-Bernstein CS for a mean in [0, 1].

    Each side holds with probability ≥ 1 − α/2 for all n simultaneously, so the
    interval covers the mean at every n with probability ≥ 1 − α.  The bets λ_i
    depend only on earlier observations; the state is seven running sums, so
    updating is O(1) per value and a batch update equals one-by-one updates.

    >>> cs = EmpiricalBernsteinCS(alpha=0.05)
    >>> cs.update(np.full(2_000, 0.25))
    >>> interval = cs.interval()
    >>> interval.lower < 0.25 < interval.upper, round(interval.estimate, 3)
    (True, 0.25)
    """

    def __init__(self, alpha: float) -> None:
        _check_alpha(alpha)
        self.alpha = float(alpha)
        self._log_term = math.log(2.0 / self.alpha)
        self.n = 0
        self._sum = 0.0  # Σ x_i, for the smoothed running mean
        self._sum_sq_dev = 0.0  # Σ (x_i − μ̂_i)², for the smoothed running variance
        self._sum_lambda = 0.0
        self._sum_lambda_sq = 0.0
        self._sum_lambda_x = 0.0
        self._sum_v_psi = 0.0

    def update(self, values: npt.ArrayLike) -> None:
        """Add observations in arrival order.  Raises :class:`InputError` outside [0, 1]."""
        x = np.asarray(values, dtype=float).ravel()
        if x.size == 0:
            return
        if not np.all(np.isfinite(x)) or x.min() < 0.0 or x.max() > 1.0:
            raise InputError("values", "confidence sequence inputs must be finite and in [0, 1]")
        i = self.n + np.arange(1, x.size + 1, dtype=float)  # 1-based index of each value
        # Smoothed running mean and variance (prior 1/2 and 1/4 as one fake observation).
        mu = (0.5 + self._sum + np.cumsum(x)) / (i + 1.0)
        mu_prev = np.concatenate(([(0.5 + self._sum) / (self.n + 1.0)], mu[:-1]))
        sq_dev = self._sum_sq_dev + np.cumsum((x - mu) ** 2)
        var_prev = np.concatenate(
            ([(0.25 + self._sum_sq_dev) / (self.n + 1.0)], ((0.25 + sq_dev) / (i + 1.0))[:-1])
        )
        lam = np.minimum(np.sqrt(2.0 * self._log_term / (var_prev * i * np.log1p(i))), _TRUNCATION)
        v = 4.0 * (x - mu_prev) ** 2
        psi = (-np.log1p(-lam) - lam) / 4.0
        self.n += int(x.size)
        self._sum += float(x.sum())
        self._sum_sq_dev = float(sq_dev[-1])
        self._sum_lambda += float(lam.sum())
        self._sum_lambda_sq += float((lam**2).sum())
        self._sum_lambda_x += float((lam * x).sum())
        self._sum_v_psi += float((v * psi).sum())

    #: The running sums :meth:`to_dict` saves, in order.
    _SUMS = ("_sum", "_sum_sq_dev", "_sum_lambda", "_sum_lambda_sq", "_sum_lambda_x", "_sum_v_psi")

    def to_dict(self) -> dict[str, Any]:
        """The sequence's whole state as JSON data (it is its running sums)."""
        return {"alpha": self.alpha, "n": self.n, "sums": [getattr(self, k) for k in self._SUMS]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmpiricalBernsteinCS:
        """The sequence :meth:`to_dict` saved; it continues exactly as the original would."""
        cs = cls(float(data["alpha"]))
        sums = [float(v) for v in data["sums"]]
        if len(sums) != len(cls._SUMS) or int(data["n"]) < 0:
            raise InputError("data", f"not a saved confidence sequence: {dict(data)!r}")
        cs.n = int(data["n"])
        for name, value in zip(cls._SUMS, sums, strict=True):
            setattr(cs, name, value)
        return cs

    @property
    def effective_n(self) -> float:
        """(Σλ)²/Σλ²: how many equally weighted values the λ-weighted centre is worth.

        The bets shrink like 1/√(i log i), so early values weigh more; the
        centre's variance is σ²/effective_n, which is what a detection-time
        calculation needs.
        """
        return self._sum_lambda**2 / self._sum_lambda_sq if self._sum_lambda_sq else 0.0

    def interval(self) -> Interval:
        """The current bounds, clipped to [0, 1]; ``[0, 1]`` before any data."""
        if self.n == 0:
            return Interval(math.nan, 0.0, 1.0)
        center = self._sum_lambda_x / self._sum_lambda
        half = (self._log_term + self._sum_v_psi) / self._sum_lambda
        return Interval(self._sum / self.n, max(0.0, center - half), min(1.0, center + half))


def prior_weight(tuned_n: int, alpha: float) -> float:
    """Beta-prior weight r that makes the count boundary tightest near ``tuned_n`` values.

    A Beta(r·p, r·(1−p)) mixture behaves like a normal mixture of precision
    ρ ≈ (r + 1)·p(1−p) over the natural parameter, whose boundary is tightest at
    intrinsic time V = ρ·(x − 1) with x = −W₋₁(−α²/e) (Howard et al. 2021,
    "Time-uniform, nonparametric, nonasymptotic confidence sequences", §3.5).
    Any r > 0 keeps the guarantee; this only moves where the boundary is tight.
    """
    if tuned_n < 1:
        raise InputError("tuned_n", f"must be ≥ 1, got {tuned_n!r}")
    _check_alpha(alpha)
    x = -float(lambertw(-(alpha**2) / math.e, k=-1).real)
    return max(1.0, tuned_n / (x - 1.0) - 1.0)


def _log_mixture(t: int, s: int, p: float, a: float, b: float) -> float:
    """log of the one-sided (p' ≥ p) beta-binomial mixture martingale after s ones in t draws."""
    tail = float(betaincc(a + s, b + t - s, p))
    if tail <= 0.0:
        return -math.inf
    return (
        float(betaln(a + s, b + t - s))
        + math.log(tail)
        - float(betaln(a, b))
        - math.log(float(betaincc(a, b, p)))
        - s * math.log(p)
        - (t - s) * math.log1p(-p)
    )


@lru_cache(maxsize=8192)
def count_boundary(t: int, p: float, alpha: float, r: float) -> int:
    """The smallest count u such that, uniformly in t, S_t < u_t with probability ≥ 1 − α.

    S_t counts ones among t independent indicators whose mean is at most ``p``.
    The mixture over Beta(r·p, r·(1−p)) restricted to p' ≥ p is a mixture of
    exponential supermartingales exp(λS − tψ(λ)) with λ ≥ 0, so Ville's inequality
    gives the time-uniform guarantee.  The mixture increases with the count, so u
    is found by bisection.  Returns ``t + 1`` when no count up to t crosses.

    >>> count_boundary(100, 0.5, 0.05, 20.0) > 50
    True
    """
    if t < 0:
        raise InputError("t", f"must be ≥ 0, got {t!r}")
    if not 0.0 < p < 1.0:
        raise InputError("p", f"must be in (0, 1), got {p!r}")
    _check_alpha(alpha)
    a, b = r * p, r * (1.0 - p)
    threshold = math.log(1.0 / alpha)
    if _log_mixture(t, t, p, a, b) < threshold:
        return t + 1
    lo, hi = math.floor(t * p), t  # below the mean the mixture is < 1 ≤ 1/α
    while lo < hi:
        mid = (lo + hi) // 2
        if _log_mixture(t, mid, p, a, b) >= threshold:
            hi = mid
        else:
            lo = mid + 1
    return lo


def quantile_ranks(n: int, p: float, alpha: float, r: float) -> tuple[int | None, int | None]:
    """1-based order-statistic ranks (lower, upper) that bracket the p-quantile for all n.

    With probability ≥ 1 − α (α/2 per side), for every n at once,
    X_(lower) ≤ q_p ≤ X_(upper).  ``None`` means that side is unbounded
    (−∞ or +∞) at this n: too few observations in the tail.

    *Upper*: 1[X < q_p] has mean ≤ p, so fewer than u of them lie strictly below
    q_p, hence q_p ≤ X_(u).  *Lower*: 1[X > q_p] has mean ≤ 1 − p, so fewer than
    u' lie strictly above, hence at least n − u' + 1 lie at or below: q_p ≥ X_(n − u' + 1).
    """
    if n < 1:
        return None, None
    upper = count_boundary(n, p, alpha / 2.0, r)
    upper_complement = count_boundary(n, 1.0 - p, alpha / 2.0, r)
    lower = n - upper_complement + 1
    return (lower if lower >= 1 else None), (upper if upper <= n else None)
