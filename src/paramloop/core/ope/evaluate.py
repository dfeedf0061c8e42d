"""Estimates with intervals and support verdicts; paired comparisons of two targets.

The shared settings, documented once here:

``rng``
    the generator the bootstrap draws its resamples from (the CLT interval
    draws nothing).
``resamples``
    the number of bootstrap resamples (default 10,000).
``alpha``
    1 − the confidence level of two-sided intervals (default 0.05: 95 %);
    the one-sided bounds of a comparison are at level 1 − alpha.
``interval``
    ``"bootstrap"``: percentile interval over resamples of the rows, each
    estimate recomputed (and re-normalized) inside every resample;
    ``"clt"``: estimate ± z · sd(influence) / √n, the delta method for
    self-normalized estimators.
``min_ess`` and ``max_unsupported``
    the support thresholds (see :func:`~paramloop.core.ope.diagnostics.check_support`).

With insufficient support an :class:`Estimate` carries the diagnostics and
the reason, and ``None`` for the value and the interval: no number to misuse.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from paramloop.core.ope.base import Estimator, Terms
from paramloop.core.ope.data import FloatArray, LoggedBandit
from paramloop.core.ope.diagnostics import (
    Diagnostics,
    Support,
    SupportBasis,
    SupportVerdict,
    check_support,
    diagnose,
)
from paramloop.core.ope.intervals import (
    check_alpha,
    check_resamples,
    normal_quantile,
    percentile_interval,
    resample_sums,
    standard_error,
)
from paramloop.errors import EvaluationError, InputError

IntervalMethod = Literal["bootstrap", "clt"]
ComparisonVerdict = Literal["better", "worse", "inconclusive", "insufficient"]


@dataclass(frozen=True, slots=True)
class Estimate:
    """An off-policy estimate with its interval and support diagnostics.

    ``value``, ``low`` and ``high`` are ``None`` when ``support`` is
    ``"insufficient"`` (``reason`` says why).  The interval always contains
    the value: a percentile bound on the wrong side of it (possible in tiny
    samples, or by rounding when every resample gives the same number) is
    moved to the value.  ``resamples`` counts the bootstrap resamples used
    (0 for the CLT interval); a self-normalized estimate is undefined on a
    resample whose weights are all 0, and such a resample is not counted.
    """

    estimator: str
    value: float | None
    low: float | None
    high: float | None
    interval_method: IntervalMethod
    alpha: float
    resamples: int
    n: int
    ess: float
    max_weight: float
    unsupported_share: float
    support_basis: SupportBasis
    support: SupportVerdict
    reason: str | None


@dataclass(frozen=True, slots=True)
class Comparison:
    """Candidate minus baseline for one estimator, on the same logged rounds.

    ``low``/``high`` is the two-sided interval at level 1 − alpha;
    ``lower_bound``/``upper_bound`` are one-sided bounds at level 1 − alpha
    (with the bootstrap: the alpha and 1 − alpha quantiles of the paired
    differences, each resample evaluating both targets on the same rows).
    ``verdict`` is ``better`` when ``lower_bound > 0``, ``worse`` when
    ``upper_bound < 0``, ``inconclusive`` otherwise, and ``insufficient`` (with
    every number ``None``) when the log supports either target too little.
    """

    estimator: str
    candidate: Estimate
    baseline: Estimate
    difference: float | None
    low: float | None
    high: float | None
    lower_bound: float | None
    upper_bound: float | None
    interval_method: IntervalMethod
    alpha: float
    resamples: int
    verdict: ComparisonVerdict
    reason: str | None


def estimate(
    data: LoggedBandit,
    estimator: Estimator,
    predicted: FloatArray | None = None,
    *,
    rng: np.random.Generator,
    resamples: int = 10_000,
    alpha: float = 0.05,
    interval: IntervalMethod = "bootstrap",
    min_ess: float = 100.0,
    max_unsupported: float = 0.0,
) -> Estimate:
    """Estimate the value of ``data.target`` with one estimator (settings: module docstring).

    Raises :class:`~paramloop.errors.EvaluationError` for invalid predicted
    rewards and :class:`~paramloop.errors.InputError` for invalid settings.
    """
    (result,) = estimate_all(
        data,
        (estimator,),
        predicted,
        rng=rng,
        resamples=resamples,
        alpha=alpha,
        interval=interval,
        min_ess=min_ess,
        max_unsupported=max_unsupported,
    )
    return result


def estimate_all(
    data: LoggedBandit,
    estimators: Sequence[Estimator],
    predicted: FloatArray | None = None,
    *,
    rng: np.random.Generator,
    resamples: int = 10_000,
    alpha: float = 0.05,
    interval: IntervalMethod = "bootstrap",
    min_ess: float = 100.0,
    max_unsupported: float = 0.0,
) -> tuple[Estimate, ...]:
    """:func:`estimate` for several estimators at once, all on the same bootstrap resamples."""
    _check_settings(alpha, resamples, interval)
    side = _Side.of(data, estimators, predicted, min_ess, max_unsupported)
    draws = _bootstrap([side], interval, data.n, resamples, rng)
    return tuple(
        side.summarize(j, e.label, draws[0][j], interval, alpha) for j, e in enumerate(estimators)
    )


def compare(
    data: LoggedBandit,
    candidate: FloatArray,
    baseline: FloatArray,
    estimator: Estimator,
    predicted: FloatArray | None = None,
    *,
    rng: np.random.Generator,
    resamples: int = 10_000,
    alpha: float = 0.05,
    interval: IntervalMethod = "bootstrap",
    min_ess: float = 100.0,
    max_unsupported: float = 0.0,
) -> Comparison:
    """Compare two target policies on ``data``'s logged rounds (its own ``target`` is unused).

    ``candidate`` and ``baseline`` are (n, K) target distributions over the
    same rounds and actions, validated like ``LoggedBandit.target``.  Settings:
    module docstring.
    """
    (result,) = compare_all(
        data,
        candidate,
        baseline,
        (estimator,),
        predicted,
        rng=rng,
        resamples=resamples,
        alpha=alpha,
        interval=interval,
        min_ess=min_ess,
        max_unsupported=max_unsupported,
    )
    return result


def compare_all(
    data: LoggedBandit,
    candidate: FloatArray,
    baseline: FloatArray,
    estimators: Sequence[Estimator],
    predicted: FloatArray | None = None,
    *,
    rng: np.random.Generator,
    resamples: int = 10_000,
    alpha: float = 0.05,
    interval: IntervalMethod = "bootstrap",
    min_ess: float = 100.0,
    max_unsupported: float = 0.0,
) -> tuple[Comparison, ...]:
    """:func:`compare` for several estimators at once, all on the same bootstrap resamples."""
    _check_settings(alpha, resamples, interval)
    cand, base = (
        _Side.of(data.with_target(target), estimators, predicted, min_ess, max_unsupported)
        for target in (candidate, baseline)
    )
    cand_draws, base_draws = _bootstrap([cand, base], interval, data.n, resamples, rng)
    results = []
    for j, e in enumerate(estimators):
        c = cand.summarize(j, e.label, cand_draws[j], interval, alpha)
        b = base.summarize(j, e.label, base_draws[j], interval, alpha)
        if c.value is None or b.value is None:
            reason = "; ".join(
                f"{name}: {r.reason}" for name, r in (("candidate", c), ("baseline", b)) if r.reason
            )
            results.append(_refused(e.label, c, b, interval, alpha, reason))
            continue
        difference = c.value - b.value
        cd, bd = cand_draws[j], base_draws[j]
        if cd is None or bd is None:
            se = standard_error(cand.terms[j].influence() - base.terms[j].influence())
            half = normal_quantile(1.0 - alpha / 2.0) * se
            one_sided = normal_quantile(1.0 - alpha) * se
            low, high = difference - half, difference + half
            lower, upper, used = difference - one_sided, difference + one_sided, 0
        else:
            paired = _defined(cd - bd, e.label)
            qs = np.quantile(paired, [alpha / 2.0, 1.0 - alpha / 2.0, alpha, 1.0 - alpha])
            low, lower = min(float(qs[0]), difference), min(float(qs[2]), difference)
            high, upper = max(float(qs[1]), difference), max(float(qs[3]), difference)
            used = paired.shape[0]
        verdict: ComparisonVerdict = (
            "better" if lower > 0.0 else "worse" if upper < 0.0 else "inconclusive"
        )
        results.append(
            Comparison(
                estimator=e.label,
                candidate=c,
                baseline=b,
                difference=difference,
                low=low,
                high=high,
                lower_bound=lower,
                upper_bound=upper,
                interval_method=interval,
                alpha=alpha,
                resamples=used,
                verdict=verdict,
                reason=None,
            )
        )
    return tuple(results)


@dataclass(frozen=True, slots=True)
class _Side:
    """One target on the log: its estimators' terms, diagnostics and support verdict."""

    terms: list[Terms]
    diagnostics: Diagnostics
    support: Support

    @classmethod
    def of(
        cls,
        data: LoggedBandit,
        estimators: Sequence[Estimator],
        predicted: FloatArray | None,
        min_ess: float,
        max_unsupported: float,
    ) -> _Side:
        # Terms first: invalid predicted rewards are an error even when support is lacking.
        terms = [e.terms(data, predicted) for e in estimators]
        diagnostics = diagnose(data)
        support = check_support(diagnostics, min_ess=min_ess, max_unsupported=max_unsupported)
        return cls(terms, diagnostics, support)

    def summarize(
        self, j: int, label: str, draws: FloatArray | None, interval: IntervalMethod, alpha: float
    ) -> Estimate:
        """The estimate of estimator ``j``, with its interval from ``draws`` or the CLT."""
        value: float | None = None
        bounds: tuple[float, float] | None = None
        used = 0
        if self.support.is_ok:
            terms = self.terms[j]
            value = terms.value()
            if draws is None:
                half = normal_quantile(1.0 - alpha / 2.0) * standard_error(terms.influence())
                bounds = (value - half, value + half)
            else:
                valid = _defined(draws, label)
                low, high = percentile_interval(valid, alpha)
                bounds, used = (min(low, value), max(high, value)), valid.shape[0]
        d = self.diagnostics
        return Estimate(
            estimator=label,
            value=value,
            low=None if bounds is None else bounds[0],
            high=None if bounds is None else bounds[1],
            interval_method=interval,
            alpha=alpha,
            resamples=used,
            n=d.n,
            ess=d.ess,
            max_weight=d.max_weight,
            unsupported_share=d.unsupported_share,
            support_basis=d.support_basis,
            support=self.support.verdict,
            reason=self.support.reason,
        )


def _refused(
    label: str, c: Estimate, b: Estimate, interval: IntervalMethod, alpha: float, reason: str
) -> Comparison:
    return Comparison(
        estimator=label,
        candidate=c,
        baseline=b,
        difference=None,
        low=None,
        high=None,
        lower_bound=None,
        upper_bound=None,
        interval_method=interval,
        alpha=alpha,
        resamples=0,
        verdict="insufficient",
        reason=reason,
    )


def _check_settings(alpha: float, resamples: int, interval: str) -> None:
    check_alpha(alpha)
    check_resamples(resamples)
    if interval not in ("bootstrap", "clt"):
        raise InputError("interval", f"must be 'bootstrap' or 'clt', got {interval!r}")


def _bootstrap(
    sides: Sequence[_Side],
    interval: IntervalMethod,
    n: int,
    resamples: int,
    rng: np.random.Generator,
) -> list[list[FloatArray | None]]:
    """Bootstrap estimates of every supported side's estimators, all on the same resamples.

    Identical columns are summed once, which also makes identical estimates
    (a candidate equal to its baseline) agree exactly on every resample.
    ``None`` stands for "no draws": the CLT interval, or a side without support.
    """
    out: list[list[FloatArray | None]] = [[None] * len(side.terms) for side in sides]
    wanted = [
        (s, j, t)
        for s, side in enumerate(sides)
        if side.support.is_ok and interval == "bootstrap"
        for j, t in enumerate(side.terms)
    ]
    if not wanted:
        return out
    index: dict[bytes, int] = {}
    columns: list[FloatArray] = []
    where: list[list[int]] = []
    for _, _, t in wanted:
        positions = []
        for column in t.columns():
            contiguous = np.ascontiguousarray(column)
            key = hashlib.blake2b(contiguous.data, digest_size=16).digest()
            if key not in index or not np.array_equal(columns[index[key]], contiguous):
                index[key] = len(columns)
                columns.append(contiguous)
            positions.append(index[key])
        where.append(positions)
    sums = resample_sums(np.column_stack(columns), resamples, rng)
    for (s, j, t), positions in zip(wanted, where, strict=True):
        out[s][j] = t.from_sums(sums[:, positions], n)
    return out


def _defined(draws: FloatArray, label: str) -> FloatArray:
    valid = draws[~np.isnan(draws)]
    if valid.shape[0] == 0:
        raise EvaluationError(
            "weights",
            f"{label}: every bootstrap resample has importance weights summing to 0, so the "
            "self-normalized estimate is undefined on all of them; use the CLT interval or more rounds",
        )
    return valid
