"""SLO monitor: treatment versus control, checked continuously without inflating false alarms.

Two views of the same observations, per group:

* a **cumulative stream** since the monitor was created (the engine creates one
  when a phase is entered).  The breach rules run on it with confidence
  sequences (:mod:`paramloop.core.sequential`), so the monitor may be checked
  after every observation: for a healthy treatment, the probability that *any*
  rule *ever* reports a breach before the monitor is replaced is at most
  ``alpha``.  A sliding window would break that guarantee, which needs the
  observations of each group to form one growing sequence.  The guarantee
  assumes each group's outcomes are exchangeable within a phase; both groups
  share the same hours of the day, so a diurnal swing moves them together.
* a **sliding time window** (``window_s``, in ``window_slices`` slices) for the
  figures a dashboard shows: p50/p99 latency from merged DDSketches (relative
  accuracy 1 %), mean quality, error rate, cost per request.

α is split evenly over the enabled metric families (latency, quality, errors).
Within a family each group gets a two-sided (1 − α_family) confidence sequence;
a rule uses one side of each, so it false-alarms with probability ≤ α_family.

Rules (all thresholds in :class:`SLOConfig`):

* latency: breach when the treatment p99's lower bound exceeds (1 + increase) ×
  the control p99's upper bound, or an absolute cap.  The p99 bounds are
  order statistics (Howard & Ramdas), read from a DDSketch and widened by its
  relative accuracy, so the sketch never makes the test anti-conservative;
* quality: breach when the treatment mean's upper bound < (1 − drop) × the
  control's lower bound (relative) or < lower bound − drop (absolute), or below
  an absolute floor (``quality_min``, the deployment's ``SLO_QUALITY_MIN``);
* errors: breach when the treatment error rate's lower bound > a cap (absolute)
  and/or exceeds the control's upper bound by more than an allowed increase.

A rule with fewer than ``min_samples`` observations in a group it needs is
*inconclusive*; otherwise it is a *breach* or *ok* (ok means "no confident
breach", not "proven safe").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt
from ddsketch import DDSketch
from ddsketch.ddsketch import BaseDDSketch
from ddsketch.mapping import LogarithmicMapping
from ddsketch.store import DenseStore

from paramloop.core.assignment import Group
from paramloop.core.sequential import EmpiricalBernsteinCS, Interval, prior_weight, quantile_ranks
from paramloop.errors import ConfigError, InputError

P99 = 0.99


class SLOVerdict(StrEnum):
    BREACH = "breach"
    OK = "ok"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class SLOConfig:
    """SLO thresholds and the monitor's statistics settings.

    A threshold set to ``None`` disables its rule.  ``quality_drop`` is relative
    (a fraction of the control mean) unless ``quality_drop_relative`` is false.
    ``tuned_n`` is the sample size at which the p99 bounds are tightest (they are
    valid at every size).
    """

    latency_p99_increase: float | None = 0.10
    latency_p99_max_ms: float | None = None
    quality_drop: float | None = 0.05
    quality_drop_relative: bool = True
    #: The treatment's absolute quality floor (``None``: no floor).
    quality_min: float | None = None
    error_rate_max: float | None = 0.01
    error_rate_increase: float | None = None
    min_samples: int = 200
    alpha: float = 0.05
    window_s: float = 3600.0
    window_slices: int = 60
    relative_accuracy: float = 0.01
    tuned_n: int = 10_000

    def __post_init__(self) -> None:
        for name in ("latency_p99_increase", "quality_drop", "error_rate_increase"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0.0 <= value < 1.0):
                raise ConfigError(f"slo.{name}", f"must be in [0, 1) or None, got {value!r}")
        if self.latency_p99_max_ms is not None and not (
            math.isfinite(self.latency_p99_max_ms) and self.latency_p99_max_ms > 0
        ):
            raise ConfigError("slo.latency_p99_max_ms", "must be a positive number or None")
        if self.quality_min is not None and not (
            isinstance(self.quality_min, float | int) and 0.0 < self.quality_min <= 1.0
        ):
            raise ConfigError(
                "slo.quality_min", f"must be in (0, 1] or None, got {self.quality_min!r}"
            )
        if self.error_rate_max is not None and not 0.0 <= self.error_rate_max < 1.0:
            raise ConfigError("slo.error_rate_max", "must be in [0, 1) or None")
        if self.min_samples < 1:
            raise ConfigError("slo.min_samples", f"must be ≥ 1, got {self.min_samples!r}")
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError("slo.alpha", f"must be in (0, 1), got {self.alpha!r}")
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ConfigError("slo.window_s", "must be a positive number of seconds")
        if self.window_slices < 1:
            raise ConfigError("slo.window_slices", "must be ≥ 1")
        if not 0.0 < self.relative_accuracy < 0.5:
            raise ConfigError("slo.relative_accuracy", "must be in (0, 0.5)")
        if self.tuned_n < 1:
            raise ConfigError("slo.tuned_n", "must be ≥ 1")

    @property
    def families(self) -> tuple[str, ...]:
        """The metric families with at least one rule enabled."""
        enabled = {
            "latency": self.latency_p99_increase is not None or self.latency_p99_max_ms is not None,
            "quality": self.quality_drop is not None or self.quality_min is not None,
            "errors": self.error_rate_max is not None or self.error_rate_increase is not None,
        }
        return tuple(name for name, on in enabled.items() if on)

    @property
    def family_alpha(self) -> float:
        return self.alpha / max(1, len(self.families))


@dataclass(frozen=True, slots=True)
class SLOStatus:
    """One rule's verdict and the figures behind it (cumulative since the monitor started)."""

    metric: str
    verdict: SLOVerdict
    reason: str
    threshold: float
    n_treatment: int
    n_control: int
    treatment: Interval | None = None
    control: Interval | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "verdict": str(self.verdict),
            "reason": self.reason,
            "threshold": self.threshold,
            "n_treatment": self.n_treatment,
            "n_control": self.n_control,
            "treatment": None if self.treatment is None else self.treatment.to_dict(),
            "control": None if self.control is None else self.control.to_dict(),
        }


def overall(statuses: Sequence[SLOStatus]) -> SLOVerdict:
    """Breach if any rule breaches, inconclusive if any cannot decide (or there are none), else ok."""
    verdicts = {status.verdict for status in statuses}
    if SLOVerdict.BREACH in verdicts:
        return SLOVerdict.BREACH
    if not statuses or SLOVerdict.INCONCLUSIVE in verdicts:
        return SLOVerdict.INCONCLUSIVE
    return SLOVerdict.OK


@dataclass(frozen=True, slots=True)
class WindowSummary:
    """Descriptive figures of one group over the sliding window; ``None`` without data."""

    group: Group
    start: float
    end: float
    n: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    quality_mean: float | None
    error_rate: float | None
    cost_per_request: float | None


@dataclass
class _Slice:
    latency: DDSketch
    n: int = 0
    errors: int = 0
    quality_n: int = 0
    quality_sum: float = 0.0
    cost_n: int = 0
    cost_sum: float = 0.0


@dataclass
class _Stream:
    """Cumulative state of one group: a latency sketch and two mean confidence sequences."""

    latency: DDSketch
    quality: EmpiricalBernsteinCS
    errors: EmpiricalBernsteinCS
    slices: dict[int, _Slice] = field(default_factory=dict)


FloatArray = npt.NDArray[np.float64]


def sketch_to_dict(sketch: BaseDDSketch) -> dict[str, Any]:
    """A DDSketch's bins as JSON data: what ddsketch's own protobuf form keeps, without protobuf.

    Quantiles and counts depend only on these (min, max and sum are not kept,
    as in ddsketch's serialization; the monitor reads none of them).
    """

    def bins(store: DenseStore) -> list[Any]:
        counts = [float(c) for c in store.bins]
        used = [i for i, c in enumerate(counts) if c]
        if not used:
            return [0, []]
        return [store.offset + used[0], counts[used[0] : used[-1] + 1]]

    # The same fields ddsketch.pb.proto reads.
    return {
        "accuracy": sketch._mapping.relative_accuracy,
        "positive": bins(sketch._store),
        "negative": bins(sketch._negative_store),
        "zero": float(sketch._zero_count),
    }


def sketch_from_dict(data: Mapping[str, Any]) -> DDSketch:
    """The sketch :func:`sketch_to_dict` saved (built as ddsketch's ``from_proto`` does)."""

    def store(offset_bins: Sequence[Any]) -> DenseStore:
        offset, bins = int(offset_bins[0]), offset_bins[1]
        built = DenseStore()
        built.offset = offset
        for i, count in enumerate(bins):
            if count:
                built.add(offset + i, float(count))
        return built

    sketch = DDSketch(float(data["accuracy"]))
    BaseDDSketch.__init__(
        sketch,
        mapping=LogarithmicMapping(float(data["accuracy"])),
        store=store(data["positive"]),
        negative_store=store(data["negative"]),
        zero_count=float(data["zero"]),
    )
    return sketch


def _slice_to_list(key: int, piece: _Slice) -> list[Any]:
    return [key, sketch_to_dict(piece.latency), piece.n, piece.errors, piece.quality_n,
            piece.quality_sum, piece.cost_n, piece.cost_sum]  # fmt: skip


def _slice_from_list(row: Sequence[Any]) -> tuple[int, _Slice]:
    key, sketch, n, errors, quality_n, quality_sum, cost_n, cost_sum = row
    return int(key), _Slice(
        sketch_from_dict(sketch), int(n), int(errors), int(quality_n), float(quality_sum),
        int(cost_n), float(cost_sum),
    )  # fmt: skip


def _as_array(name: str, values: npt.ArrayLike, size: int) -> FloatArray:
    array = np.asarray(values, dtype=float).ravel()
    if array.size != size:
        raise InputError(name, f"has {array.size} values; times has {size}")
    return array


class SLOMonitor:
    """Per-group streams and windows; :meth:`statuses` applies the breach rules.

    >>> monitor = SLOMonitor(SLOConfig(min_samples=50))
    >>> for group in (Group.TREATMENT, Group.CONTROL):
    ...     monitor.observe_many(group, np.arange(100.0), latency_ms=np.full(100, 200.0),
    ...                          quality=np.full(100, 0.8), error=np.zeros(100, bool))
    >>> overall(monitor.statuses())
    <SLOVerdict.OK: 'ok'>
    """

    def __init__(self, config: SLOConfig | None = None) -> None:
        self.config = config or SLOConfig()
        alpha = self.config.family_alpha
        self._streams = {
            group: _Stream(
                DDSketch(self.config.relative_accuracy),
                EmpiricalBernsteinCS(alpha),
                EmpiricalBernsteinCS(alpha),
            )
            for group in Group
        }
        self._slice_s = self.config.window_s / self.config.window_slices
        self._r = prior_weight(self.config.tuned_n, alpha / 2.0)

    def observe(
        self,
        group: Group,
        now: float,
        *,
        latency_ms: float | None = None,
        quality: float | None = None,
        error: bool = False,
        cost: float | None = None,
    ) -> None:
        """Add one outcome of ``group`` observed at ``now`` (``None`` = not measured)."""
        nan = math.nan
        self.observe_many(
            group,
            [now],
            latency_ms=[nan if latency_ms is None else latency_ms],
            quality=[nan if quality is None else quality],
            error=[error],
            cost=[nan if cost is None else cost],
        )

    def observe_many(
        self,
        group: Group,
        times: npt.ArrayLike,
        *,
        latency_ms: npt.ArrayLike | None = None,
        quality: npt.ArrayLike | None = None,
        error: npt.ArrayLike | None = None,
        cost: npt.ArrayLike | None = None,
    ) -> None:
        """Add outcomes in arrival order; NaN (or an omitted array) marks a value not measured."""
        if not isinstance(group, Group):
            raise InputError("group", f"must be a Group, got {group!r}")
        t = np.asarray(times, dtype=float).ravel()
        if not np.all(np.isfinite(t)):
            raise InputError("times", "must be finite seconds")
        n = t.size
        lat = _as_array("latency_ms", np.full(n, np.nan) if latency_ms is None else latency_ms, n)
        qual = _as_array("quality", np.full(n, np.nan) if quality is None else quality, n)
        cst = _as_array("cost", np.full(n, np.nan) if cost is None else cost, n)
        err = np.asarray(np.zeros(n, bool) if error is None else error).ravel()
        if err.size != n or err.dtype != bool:
            raise InputError("error", f"must be {n} booleans")
        if np.any(lat < 0) or np.any(np.isinf(lat)):
            raise InputError("latency_ms", "must be finite and ≥ 0 (NaN = not measured)")
        if np.any((qual < 0) | (qual > 1)):
            raise InputError("quality", "must be in [0, 1] (NaN = not measured)")
        if np.any(cst < 0) or np.any(np.isinf(cst)):
            raise InputError("cost", "must be finite and ≥ 0 (NaN = not measured)")
        stream = self._streams[group]
        has_lat, has_qual, has_cost = ~np.isnan(lat), ~np.isnan(qual), ~np.isnan(cst)
        for value in lat[has_lat].tolist():
            stream.latency.add(value)
        stream.quality.update(qual[has_qual])
        stream.errors.update(err.astype(float))
        keys = np.floor(t / self._slice_s).astype(np.int64)
        for key in np.unique(keys).tolist():
            rows = keys == key
            piece = stream.slices.get(key)
            if piece is None:
                piece = stream.slices[key] = _Slice(DDSketch(self.config.relative_accuracy))
            for value in lat[rows & has_lat].tolist():
                piece.latency.add(value)
            piece.n += int(rows.sum())
            piece.errors += int(err[rows].sum())
            piece.quality_n += int((rows & has_qual).sum())
            piece.quality_sum += float(qual[rows & has_qual].sum())
            piece.cost_n += int((rows & has_cost).sum())
            piece.cost_sum += float(cst[rows & has_cost].sum())
        if n:  # slices older than the newest value's window can never be read again
            oldest = math.floor(float(t.max()) / self._slice_s) - self.config.window_slices + 1
            for key in [key for key in stream.slices if key < oldest]:
                del stream.slices[key]

    def to_dict(self) -> dict[str, Any]:
        """The monitor's whole state as JSON data: sketches, sequences, window slices.

        Its size is bounded (sketch bins, ``window_slices`` slices), whatever
        the number of observations, so a saved monitor restores in O(1).
        """
        return {
            str(group): {
                "latency": sketch_to_dict(stream.latency),
                "quality": stream.quality.to_dict(),
                "errors": stream.errors.to_dict(),
                "slices": [
                    _slice_to_list(key, piece) for key, piece in sorted(stream.slices.items())
                ],
            }
            for group, stream in self._streams.items()
        }

    @classmethod
    def from_dict(cls, config: SLOConfig, data: Mapping[str, Any]) -> SLOMonitor:
        """The monitor :meth:`to_dict` saved, under ``config`` (the thresholds may have changed;
        the sequences keep the α they were started with)."""
        monitor = cls(config)
        try:
            for group in Group:
                saved = data[str(group)]
                monitor._streams[group] = _Stream(
                    sketch_from_dict(saved["latency"]),
                    EmpiricalBernsteinCS.from_dict(saved["quality"]),
                    EmpiricalBernsteinCS.from_dict(saved["errors"]),
                    dict(_slice_from_list(row) for row in saved["slices"]),
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError("data", f"not a saved SLO monitor ({exc!r})") from exc
        return monitor

    def window(self, group: Group, now: float) -> WindowSummary:
        """The group's figures over the ``window_slices`` slices up to the one holding ``now``.

        Read-only: slices are dropped by :meth:`observe_many` as data moves on.
        """
        if not math.isfinite(now):
            raise InputError("now", "must be finite seconds")
        current = math.floor(now / self._slice_s)
        first = current - self.config.window_slices + 1
        slices = self._streams[group].slices
        pieces = [piece for key, piece in slices.items() if first <= key <= current]
        merged = DDSketch(self.config.relative_accuracy)
        for piece in pieces:
            merged.merge(piece.latency)
        n = sum(p.n for p in pieces)
        quality_n = sum(p.quality_n for p in pieces)
        cost_n = sum(p.cost_n for p in pieces)
        return WindowSummary(
            group=group,
            start=first * self._slice_s,
            end=now,
            n=n,
            latency_p50_ms=merged.get_quantile_value(0.5),
            latency_p99_ms=merged.get_quantile_value(P99),
            quality_mean=sum(p.quality_sum for p in pieces) / quality_n if quality_n else None,
            error_rate=sum(p.errors for p in pieces) / n if n else None,
            cost_per_request=sum(p.cost_sum for p in pieces) / cost_n if cost_n else None,
        )

    def latency_interval(self, group: Group) -> Interval:
        """Cumulative p99 latency with confidence-sequence bounds (sketch error folded in).

        Before any data: no estimate (NaN) and the trivial bounds [0, ∞).
        """
        sketch = self._streams[group].latency
        n = int(sketch.count)
        if n == 0:
            return Interval(math.nan, 0.0, math.inf)
        lower_rank, upper_rank = quantile_ranks(n, P99, self.config.family_alpha, self._r)
        a = self.config.relative_accuracy

        def order_statistic(rank: int) -> float:
            # DDSketch reads rank q·(n−1) (0-based); aim at the middle of 1-based rank `rank`.
            q = 0.0 if n == 1 else min(1.0, (rank - 0.5) / (n - 1))
            return float(sketch.get_quantile_value(q) or 0.0)

        return Interval(
            estimate=float(sketch.get_quantile_value(P99) or 0.0),
            lower=0.0 if lower_rank is None else order_statistic(lower_rank) / (1.0 + a),
            upper=math.inf if upper_rank is None else order_statistic(upper_rank) / (1.0 - a),
        )

    def statuses(self) -> tuple[SLOStatus, ...]:
        """Every enabled rule's verdict, in a fixed order: latency, quality, errors."""
        cfg, out = self.config, []
        treat, ctrl = self._streams[Group.TREATMENT], self._streams[Group.CONTROL]
        lat_n = (int(treat.latency.count), int(ctrl.latency.count))
        lat_t, lat_c = self.latency_interval(Group.TREATMENT), self.latency_interval(Group.CONTROL)
        q_n, q_t, q_c = (
            (treat.quality.n, ctrl.quality.n),
            treat.quality.interval(),
            ctrl.quality.interval(),
        )
        e_n, e_t, e_c = (
            (treat.errors.n, ctrl.errors.n),
            treat.errors.interval(),
            ctrl.errors.interval(),
        )
        if (increase := cfg.latency_p99_increase) is not None:
            limit = (1.0 + increase) * lat_c.upper
            out.append(self._judge(
                "latency_p99_increase", increase, lat_n, lat_t, lat_c, lat_t.lower > limit,
                f"treatment p99 ≥ {lat_t.lower:.1f} ms vs {1 + increase:.2f} × control p99 "
                f"≤ {lat_c.upper:.1f} ms",
            ))  # fmt: skip
        if (cap := cfg.latency_p99_max_ms) is not None:
            out.append(self._judge(
                "latency_p99_max_ms", cap, lat_n, lat_t, None, lat_t.lower > cap,
                f"treatment p99 ≥ {lat_t.lower:.1f} ms vs cap {cap:.1f} ms",
            ))  # fmt: skip
        if (drop := cfg.quality_drop) is not None:
            floor = (1.0 - drop) * q_c.lower if cfg.quality_drop_relative else q_c.lower - drop
            out.append(self._judge(
                "quality_drop", drop, q_n, q_t, q_c, q_t.upper < floor,
                f"treatment quality ≤ {q_t.upper:.4f} vs floor {floor:.4f} (control ≥ {q_c.lower:.4f})",
            ))  # fmt: skip
        if (least := cfg.quality_min) is not None:
            out.append(self._judge(
                "quality_min", least, q_n, q_t, None, q_t.upper < least,
                f"treatment quality ≤ {q_t.upper:.4f} vs floor {least:.4f}",
            ))  # fmt: skip
        if (rate := cfg.error_rate_max) is not None:
            out.append(self._judge(
                "error_rate_max", rate, e_n, e_t, None, e_t.lower > rate,
                f"treatment error rate ≥ {e_t.lower:.4f} vs cap {rate:.4f}",
            ))  # fmt: skip
        if (more := cfg.error_rate_increase) is not None:
            out.append(self._judge(
                "error_rate_increase", more, e_n, e_t, e_c, e_t.lower - e_c.upper > more,
                f"treatment error rate ≥ {e_t.lower:.4f} vs control ≤ {e_c.upper:.4f} + {more:.4f}",
            ))  # fmt: skip
        return tuple(out)

    def _judge(
        self,
        metric: str,
        threshold: float,
        n: tuple[int, int],
        treatment: Interval,
        control: Interval | None,
        breach: bool,
        reason: str,
    ) -> SLOStatus:
        """Inconclusive while a group the rule reads (control only if given) is too small."""
        needed = self.config.min_samples
        short = [f"treatment has {n[0]}"] if n[0] < needed else []
        if control is not None and n[1] < needed:
            short.append(f"control has {n[1]}")
        if short:
            verdict, reason = (
                SLOVerdict.INCONCLUSIVE,
                f"{' and '.join(short)}; {needed} needed per group",
            )
        else:
            verdict = SLOVerdict.BREACH if breach else SLOVerdict.OK
        return SLOStatus(metric, verdict, reason, threshold, n[0], n[1], treatment, control)
