"""Confidence intervals: a vectorized row bootstrap and the CLT interval.

The bootstrap resamples the n logged rows with replacement.  Every estimate
is a function of a few per-round column sums (:meth:`Terms.columns`), so a
resample is summarized by its counts ``c`` (how often each row was drawn) and
its estimate needs only ``c @ columns``.  The columns of all estimators are
stacked and multiplied by each resample's counts at once, so evaluating six
estimators — or a candidate and a baseline on the *same* resamples — costs
little more than one.  Draws are made in chunks of about
:data:`CHUNK_ELEMENTS` indices, which bounds memory.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from paramloop.core.ope.data import FloatArray
from paramloop.errors import InputError

#: Roughly how many row indices one chunk of resamples draws (bounds memory: 8 bytes each).
CHUNK_ELEMENTS = 1 << 21


def check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise InputError("alpha", f"must be in (0, 1), got {alpha!r}")


def check_resamples(resamples: int) -> None:
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise InputError("resamples", f"must be a positive integer, got {resamples!r}")


def resample_sums(columns: FloatArray, resamples: int, rng: np.random.Generator) -> FloatArray:
    """Column sums over ``resamples`` bootstrap resamples of the rows of ``columns`` (n, m).

    Row ``b`` of the result is ``Σ_i c_bi · columns[i]`` where ``c_b`` counts
    how often each of the n rows was drawn in n draws with replacement.
    """
    check_resamples(resamples)
    n, m = columns.shape
    by_column = np.ascontiguousarray(columns.T)
    out = np.empty((resamples, m))
    chunk = max(1, min(resamples, CHUNK_ELEMENTS // n))
    for start in range(0, resamples, chunk):
        draws = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        for r, drawn in enumerate(draws):
            # One resample's counts fit in cache; a matrix-vector product per resample beats
            # one matrix product per chunk, which pays for BLAS threads on a busy machine.
            out[start + r] = by_column @ np.bincount(drawn, minlength=n).astype(np.float64)
    return out


def percentile_interval(values: FloatArray, alpha: float) -> tuple[float, float]:
    """The two-sided percentile interval of bootstrap ``values`` at level 1 − alpha."""
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def standard_error(influence: FloatArray) -> float:
    """Standard error of an estimate from its per-round influence (sample sd / √n)."""
    n = influence.shape[0]
    if n < 2:
        raise InputError("interval", "the CLT interval needs at least 2 rounds; use the bootstrap")
    return float(np.std(influence, ddof=1)) / math.sqrt(n)


def normal_quantile(p: float) -> float:
    return NormalDist().inv_cdf(p)
