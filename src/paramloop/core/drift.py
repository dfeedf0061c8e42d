"""Context drift: has the distribution of a task's context features moved since the reference?

A learned policy is only trusted on contexts like those it was evaluated on.
Each feature is binned once from a reference window (numeric: quantile bins of
the reference; categorical: its levels plus one bin for levels never seen), and
the current window's bin frequencies are compared with two standard scores:

* Jensen–Shannon divergence, base 2, in [0, 1]: symmetric, finite even with
  empty bins (0 = identical, 1 = disjoint supports);
* population stability index, PSI = Σ (a − e)·ln(a / e), the credit-scoring
  convention (< 0.1 stable, 0.1–0.25 moderate, > 0.25 major shift).  An empty
  bin makes it infinite, so counts are smoothed by ``smoothing`` pseudo-counts
  per bin (default ½, Jeffreys) on *both* sides before taking proportions.

:class:`DriftDetector` has the streaming shape ``update(x)`` + ``drifted``.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy.spatial.distance import jensenshannon  # type: ignore[import-untyped, unused-ignore]

from paramloop.errors import ConfigError, FeatureError, InputError
from paramloop.types import FeatureValue

FloatArray = npt.NDArray[np.float64]
#: The bin of categorical levels absent from the reference.
OTHER = "__other__"


def _distribution(name: str, counts: npt.ArrayLike) -> FloatArray:
    array = np.asarray(counts, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise InputError(name, "must be a non-empty 1-d sequence of counts")
    if not np.all(np.isfinite(array)) or np.any(array < 0) or array.sum() <= 0:
        raise InputError(name, "counts must be finite, ≥ 0 and not all zero")
    return array


def js_divergence(expected: npt.ArrayLike, actual: npt.ArrayLike) -> float:
    """Jensen–Shannon divergence (base 2, in [0, 1]) of two count or frequency vectors.

    scipy returns the JS *distance*, the square root of the divergence; it is
    squared here.

    >>> js_divergence([1, 1], [1, 1])
    0.0
    >>> js_divergence([1, 0], [0, 1])
    1.0
    """
    p, q = _distribution("expected", expected), _distribution("actual", actual)
    if p.size != q.size:
        raise InputError("actual", f"has {q.size} bins; expected has {p.size}")
    distance = float(jensenshannon(p, q, base=2.0))
    return min(1.0, max(0.0, distance * distance))


def psi(expected: npt.ArrayLike, actual: npt.ArrayLike, smoothing: float = 0.5) -> float:
    """Population stability index of two count vectors, each smoothed by ``smoothing`` per bin.

    With ``smoothing=0`` an empty bin on either side gives ``inf``.

    >>> round(psi([50, 50], [25, 75], smoothing=0.0), 4)
    0.2747
    """
    e, a = _distribution("expected", expected), _distribution("actual", actual)
    if e.size != a.size:
        raise InputError("actual", f"has {a.size} bins; expected has {e.size}")
    if not (math.isfinite(smoothing) and smoothing >= 0):
        raise InputError("smoothing", f"must be ≥ 0, got {smoothing!r}")
    e, a = (e + smoothing) / (e + smoothing).sum(), (a + smoothing) / (a + smoothing).sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(a == e, 0.0, (a - e) * np.log(a / e))
    return float(terms.sum())


@dataclass(frozen=True, slots=True)
class Binning:
    """How one feature's values map to bins, fixed from the reference window.

    Numeric: ``edges`` are the interior quantile cut points of the reference
    (duplicates dropped, so heavy ties give fewer bins); a value goes to the bin
    ``searchsorted(edges, value, side="right")``.  Categorical: ``levels`` of the
    reference in sorted order, then :data:`OTHER`.
    """

    feature: str
    edges: tuple[float, ...] = ()
    levels: tuple[str, ...] = ()

    @property
    def is_numeric(self) -> bool:
        return not self.levels

    @property
    def size(self) -> int:
        return len(self.edges) + 1 if self.is_numeric else len(self.levels) + 1

    @classmethod
    def from_reference(
        cls, feature: str, values: Sequence[FeatureValue], bins: int = 10
    ) -> Binning:
        """Quantile bins for numbers, levels for strings, booleans and tuples of strings."""
        if not values:
            raise FeatureError(feature, "the reference window has no values")
        if bins < 2:
            raise ConfigError("drift.bins", f"must be ≥ 2, got {bins!r}")
        if all(_is_number(v) for v in values):
            data = np.asarray(values, dtype=float)
            if not np.all(np.isfinite(data)):
                raise FeatureError(feature, "reference values must be finite")
            cuts = np.quantile(data, np.arange(1, bins) / bins)
            return cls(feature, edges=tuple(float(c) for c in np.unique(cuts)))
        return cls(feature, levels=tuple(sorted({_level(feature, v) for v in values})))

    def index(self, value: FeatureValue) -> int:
        """The bin of one value."""
        if self.is_numeric:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise FeatureError(self.feature, f"expected a number, got {value!r}")
            if not math.isfinite(value):
                raise FeatureError(self.feature, f"expected a finite number, got {value!r}")
            return bisect.bisect_right(self.edges, float(value))
        level = _level(self.feature, value)
        position = bisect.bisect_left(self.levels, level)
        found = position < len(self.levels) and self.levels[position] == level
        return position if found else len(self.levels)

    def counts(self, values: Iterable[FeatureValue]) -> npt.NDArray[np.int64]:
        out = np.zeros(self.size, dtype=np.int64)
        for value in values:
            out[self.index(value)] += 1
        return out


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _level(feature: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
        return "|".join(sorted(value))
    raise FeatureError(feature, f"expected a category (string, boolean or tuple), got {value!r}")


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    """One feature's scores against the reference."""

    feature: str
    js: float
    psi: float
    drifted: bool


class DriftDetector:
    """Streaming drift detector over contexts (feature name → value) against a reference window.

    Keeps the last ``window`` contexts and their per-feature bin counts
    (O(features) per update).  ``drifted`` is true when, with at least
    ``min_samples`` contexts in the window, some feature's ``metric`` exceeds
    ``threshold``.  Under no drift, PSI·(1/n + 1/N)⁻¹ is roughly χ² with
    (bins − 1) degrees of freedom, so a window of n contexts against N reference
    ones reads about (bins − 1)·(1/n + 1/N) by chance: the defaults (10 bins,
    n ≥ 200) keep that near 0.05, far below 0.2.

    >>> reference = [{"tokens": float(i % 100)} for i in range(1_000)]
    >>> detector = DriftDetector(reference, window=200, min_samples=200)
    >>> for i in range(200):
    ...     detector.update({"tokens": 500.0 + i})
    >>> detector.drifted
    True
    """

    def __init__(
        self,
        reference: Sequence[Mapping[str, FeatureValue]],
        *,
        metric: Literal["psi", "js"] = "psi",
        threshold: float = 0.2,
        window: int = 1_000,
        min_samples: int = 200,
        bins: int = 10,
        smoothing: float = 0.5,
    ) -> None:
        if not reference:
            raise ConfigError("drift.reference", "the reference window is empty")
        features = sorted(reference[0])
        for row in reference:
            if sorted(row) != features:
                raise FeatureError(next(iter(set(row) ^ set(features)), "?"), "missing in a row")
        binnings = {f: Binning.from_reference(f, [r[f] for r in reference], bins) for f in features}
        self._setup(
            binnings,
            {f: b.counts(r[f] for r in reference) for f, b in binnings.items()},
            metric=metric,
            threshold=threshold,
            window=window,
            min_samples=min_samples,
            smoothing=smoothing,
        )

    def _setup(
        self,
        binnings: dict[str, Binning],
        reference_counts: dict[str, npt.NDArray[np.int64]],
        *,
        metric: Literal["psi", "js"],
        threshold: float,
        window: int,
        min_samples: int,
        smoothing: float,
    ) -> None:
        if metric not in ("psi", "js"):
            raise ConfigError("drift.metric", f"must be 'psi' or 'js', got {metric!r}")
        if not (math.isfinite(threshold) and threshold > 0):
            raise ConfigError("drift.threshold", f"must be > 0, got {threshold!r}")
        if not 1 <= min_samples <= window:
            raise ConfigError("drift.min_samples", "must be in [1, window]")
        self.metric, self.threshold, self.min_samples, self.smoothing = (
            metric,
            threshold,
            min_samples,
            smoothing,
        )
        self.binnings = binnings
        self.reference_counts = reference_counts
        self._window: deque[dict[str, int]] = deque(maxlen=window)
        self._counts = {f: np.zeros(b.size, dtype=np.int64) for f, b in self.binnings.items()}

    def to_dict(self) -> dict[str, Any]:
        """The detector's state as plain JSON: its bins, the reference's counts and the
        window as bin numbers (a few KB whatever the contexts hold)."""
        return {
            "binnings": {
                f: {"edges": list(b.edges), "levels": list(b.levels)}
                for f, b in self.binnings.items()
            },
            "reference": {f: counts.tolist() for f, counts in self.reference_counts.items()},
            "window": {f: [bins[f] for bins in self._window] for f in self.binnings},
        }

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        metric: Literal["psi", "js"] = "psi",
        threshold: float = 0.2,
        window: int = 1_000,
        min_samples: int = 200,
        smoothing: float = 0.5,
    ) -> DriftDetector:
        """The detector :meth:`to_dict` saved (with the settings now configured).

        Raises ``ValueError``/``KeyError``/``TypeError`` on a malformed state.
        """
        binnings = {
            str(f): Binning(
                str(f),
                edges=tuple(float(e) for e in spec["edges"]),
                levels=tuple(str(level) for level in spec["levels"]),
            )
            for f, spec in data["binnings"].items()
        }
        reference = {f: np.asarray(data["reference"][f], dtype=np.int64) for f in binnings}
        columns = {f: [int(i) for i in data["window"][f]] for f in binnings}
        for f, binning in binnings.items():
            if reference[f].shape != (binning.size,) or any(
                not 0 <= i < binning.size for i in columns[f]
            ):
                raise ValueError(f"drift state of {f!r} does not match its bins")
        if len({len(column) for column in columns.values()}) > 1:
            raise ValueError("drift state: the window's columns differ in length")
        detector = cls.__new__(cls)
        detector._setup(
            binnings,
            reference,
            metric=metric,
            threshold=threshold,
            window=window,
            min_samples=min_samples,
            smoothing=smoothing,
        )
        length = len(next(iter(columns.values()), []))
        for row in range(length):
            detector._add({f: columns[f][row] for f in binnings})
        return detector

    @property
    def reference_size(self) -> int:
        """How many contexts formed the reference."""
        return int(next(iter(self.reference_counts.values())).sum())

    def update(self, x: Mapping[str, FeatureValue]) -> None:
        """Add one context; the oldest falls out once the window is full."""
        missing = set(self.binnings) - set(x)
        if missing:
            raise FeatureError(sorted(missing)[0], "missing from the context")
        self._add({f: b.index(x[f]) for f, b in self.binnings.items()})

    def _add(self, bins: dict[str, int]) -> None:
        if len(self._window) == self._window.maxlen:
            for f, i in self._window[0].items():
                self._counts[f][i] -= 1
        self._window.append(bins)
        for f, i in bins.items():
            self._counts[f][i] += 1

    @property
    def n(self) -> int:
        return len(self._window)

    def report(self) -> tuple[FeatureDrift, ...]:
        """Per-feature scores of the current window (empty until ``min_samples``)."""
        if self.n < self.min_samples:
            return ()
        out = []
        for f, reference in self.reference_counts.items():
            js = js_divergence(reference, self._counts[f])
            stability = psi(reference, self._counts[f], self.smoothing)
            score = stability if self.metric == "psi" else js
            out.append(FeatureDrift(f, js, stability, score > self.threshold))
        return tuple(out)

    @property
    def drifted(self) -> bool:
        return any(feature.drifted for feature in self.report())
