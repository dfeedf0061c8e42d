"""Context: declared task features, a deterministic featurizer and a stable fingerprint.

The published task features (risk tier, title length, …, prior failures) are
declared by :func:`published_features`; users add their own numeric, boolean,
count or categorical features.  :meth:`Featurizer.featurize` validates a raw
context, maps it to a fixed-length vector (bias first) and fingerprints it with
a 64-bit BLAKE2b hash of its canonical form, identical across processes,
machines and Python versions.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from paramloop.errors import ConfigError, FeatureError
from paramloop.types import Context, FeatureValue

FloatArray = npt.NDArray[np.float64]
_log1p = math.log1p


@dataclass(frozen=True, slots=True)
class NumericFeature:
    """A number ≥ ``lower``.  ``log`` scaling maps [0, cap] to [0, 1] by log1p; ``linear`` by (v−lower)/(cap−lower).

    Values above ``cap`` saturate at 1 (a transform, not a correction: the
    fingerprint keeps the raw value).  A missing value takes ``default``.
    """

    name: str
    cap: float
    scale: str = "log"
    lower: float = 0.0
    default: float = 0.0
    integer: bool = False
    _span: float = field(init=False, repr=False, compare=False, default=1.0)

    def __post_init__(self) -> None:
        # The denominator of the encoding, computed once (encode runs on every request).
        span = self.cap - self.lower
        if math.isfinite(span) and span > 0:
            object.__setattr__(self, "_span", math.log1p(span) if self.scale == "log" else span)

    @property
    def width(self) -> int:
        return 1

    def validate(self, value: object) -> FeatureValue:
        if (
            type(value) is int and value >= self.lower
        ):  # the common case, checked first: exact ints are finite
            return value if self.integer else float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            kind = "an integer" if self.integer else "a number"
            raise FeatureError(self.name, f"must be {kind}, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):
            raise FeatureError(self.name, f"must be finite, got {value!r}")
        if self.integer and int(value) != value:
            raise FeatureError(self.name, f"must be a whole number, got {value!r}")
        if value < self.lower:
            raise FeatureError(self.name, f"must be >= {self.lower:g}, got {value!r}")
        return int(value) if self.integer else float(value)

    def encode(self, value: FeatureValue, out: list[float]) -> None:
        v = value - self.lower  # type: ignore[operator]
        scaled = (_log1p(v) if self.scale == "log" else v) / self._span
        out.append(scaled if scaled < 1.0 else 1.0)

    def encode_column(self, values: list[Any]) -> FloatArray:
        v = np.array(values, dtype=np.float64) - self.lower
        scaled = (np.log1p(v) if self.scale == "log" else v) / self._span
        return np.minimum(scaled, 1.0)[:, None]


@dataclass(frozen=True, slots=True)
class BoolFeature:
    """A boolean, encoded as 0/1."""

    name: str
    default: bool = False

    @property
    def width(self) -> int:
        return 1

    def validate(self, value: object) -> FeatureValue:
        if not isinstance(value, bool):
            raise FeatureError(
                self.name, f"must be true or false, got {type(value).__name__} {value!r}"
            )
        return value

    def encode(self, value: FeatureValue, out: list[float]) -> None:
        out.append(1.0 if value else 0.0)

    def encode_column(self, values: list[Any]) -> FloatArray:
        return np.array(values, dtype=bool).astype(np.float64)[:, None]


@dataclass(frozen=True, slots=True)
class CountFeature:
    """A count given either as a whole number or as a list of strings (its length counts)."""

    name: str
    cap: float

    @property
    def width(self) -> int:
        return 1

    @property
    def default(self) -> int:
        return 0

    def validate(self, value: object) -> FeatureValue:
        if isinstance(value, list | tuple):
            if not all(isinstance(item, str) for item in value):
                raise FeatureError(self.name, "a list must contain only strings")
            return tuple(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise FeatureError(
                self.name, f"must be a whole number >= 0 or a list of strings, got {value!r}"
            )
        return value

    def encode(self, value: FeatureValue, out: list[float]) -> None:
        count = len(value) if isinstance(value, tuple) else float(value)
        out.append(min(math.log1p(count) / math.log1p(self.cap), 1.0))

    def encode_column(self, values: list[Any]) -> FloatArray:
        # A list from JSON counts like the tuple it was logged as.
        counts = np.array(
            [len(v) if isinstance(v, tuple | list) else v for v in values], dtype=np.float64
        )
        return np.minimum(np.log1p(counts) / math.log1p(self.cap), 1.0)[:, None]


@dataclass(frozen=True, slots=True)
class CategoricalFeature:
    """One of ``levels``, one-hot encoded.  ``unknown="error"`` rejects other values;
    ``"ignore"`` encodes them as all zeros (useful for open sets such as model names)."""

    name: str
    levels: tuple[str, ...]
    default: str | None = None
    unknown: str = "error"

    @property
    def width(self) -> int:
        return len(self.levels)

    def validate(self, value: object) -> FeatureValue:
        if not isinstance(value, str):
            raise FeatureError(self.name, f"must be a string, got {type(value).__name__} {value!r}")
        if value not in self.levels and self.unknown == "error":
            raise FeatureError(self.name, f"must be one of {', '.join(self.levels)}; got {value!r}")
        return value

    def encode(self, value: FeatureValue, out: list[float]) -> None:
        for level in self.levels:
            out.append(1.0 if value == level else 0.0)

    def encode_column(self, values: list[Any]) -> FloatArray:
        column = {level: i for i, level in enumerate(self.levels)}
        index = np.array([column.get(v, -1) for v in values], dtype=np.intp)
        out = np.zeros((len(values), len(self.levels)))
        known = np.flatnonzero(index >= 0)
        out[known, index[known]] = 1.0
        return out


Feature = NumericFeature | BoolFeature | CountFeature | CategoricalFeature


def published_features(models: Sequence[str] = ()) -> tuple[Feature, ...]:
    """The published task features.  ``models`` are the levels of ``model_name`` (others encode as zeros)."""
    return (
        CategoricalFeature("risk_tier", ("low", "medium", "high"), default="medium"),
        NumericFeature("title_length", cap=200, integer=True),
        NumericFeature("description_length", cap=20_000, integer=True),
        NumericFeature("acceptance_criteria_count", cap=30, integer=True),
        NumericFeature("scope_files_count", cap=200, integer=True),
        NumericFeature("max_files", cap=200, integer=True),
        NumericFeature("max_loc", cap=20_000, integer=True),
        BoolFeature("has_external_deps"),
        CountFeature("complexity_indicators", cap=30),
        CategoricalFeature("model_name", tuple(models), default="", unknown="ignore"),
        NumericFeature("prompt_tokens", cap=128_000, integer=True),
        NumericFeature("prior_failures", cap=20, integer=True),
    )


class Featurizer:
    """Validates raw contexts, encodes them as vectors and fingerprints them.

    >>> f = Featurizer(published_features(models=("gpt-small", "gpt-large")))
    >>> f.dim
    16
    >>> context, x, fp = f.featurize({"risk_tier": "high", "prompt_tokens": 1200})
    >>> float(x[0]), context["risk_tier"], fp == f.featurize({"prompt_tokens": 1200, "risk_tier": "high"})[2]
    (1.0, 'high', True)
    """

    def __init__(self, features: Sequence[Feature]) -> None:
        names = [feature.name for feature in features]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigError("features", f"duplicate feature names: {', '.join(duplicates)}")
        for feature in features:
            if isinstance(feature, NumericFeature | CountFeature):
                lower = feature.lower if isinstance(feature, NumericFeature) else 0.0
                if not math.isfinite(feature.cap) or feature.cap <= lower:
                    raise ConfigError(
                        f"features.{feature.name}.cap", f"must be finite and > {lower:g}"
                    )
            if isinstance(feature, NumericFeature) and feature.scale not in ("log", "linear"):
                raise ConfigError(f"features.{feature.name}.scale", "must be 'log' or 'linear'")
            if isinstance(feature, CategoricalFeature) and feature.unknown not in (
                "error",
                "ignore",
            ):
                raise ConfigError(f"features.{feature.name}.unknown", "must be 'error' or 'ignore'")
        self.features = tuple(features)
        self._by_name = {feature.name: feature for feature in self.features}
        self._names = repr(tuple(self._by_name))
        self.dim = 1 + sum(feature.width for feature in self.features)
        columns = ["bias"]
        for feature in self.features:
            if isinstance(feature, CategoricalFeature):
                columns.extend(f"{feature.name}={level}" for level in feature.levels)
            else:
                columns.append(feature.name)
        self.columns = tuple(columns)

    def validate(self, raw: Mapping[str, object]) -> dict[str, FeatureValue]:
        """The validated context, in declaration order, defaults filled in."""
        if not isinstance(raw, Mapping):
            raise FeatureError(
                "(context)",
                f"must be a mapping of feature names to values, got {type(raw).__name__}",
            )
        for name in raw:
            if name not in self._by_name:
                raise FeatureError(
                    name, f"is not declared; declared features: {', '.join(self._by_name)}"
                )
        context: dict[str, FeatureValue] = {}
        for feature in self.features:
            value = raw.get(feature.name)
            if value is None:
                default = feature.default
                context[feature.name] = default if default is not None else ""
            else:
                context[feature.name] = feature.validate(value)
        return context

    def transform(self, context: Context) -> FloatArray:
        """The vector of an already validated context (bias first)."""
        out = [1.0]
        for feature in self.features:
            feature.encode(context[feature.name], out)
        return np.array(out, dtype=np.float64)

    def transform_many(self, contexts: Sequence[Mapping[str, Any]]) -> FloatArray:
        """The (n, dim) vectors of already validated contexts, one feature column at a time.

        The same numbers as :meth:`transform` row by row (up to the last bit of
        a logarithm: numpy's and the C library's may differ there), ~20× faster
        on large batches.  A context without one of the features raises
        :class:`FeatureError` naming it and how many contexts lack it.
        """
        names = [feature.name for feature in self.features]
        try:
            # One C-level lookup of every feature per context, then a transpose.
            rows = list(map(itemgetter(*names), contexts)) if len(names) > 1 else None
        except KeyError:
            for name in names:
                missing = sum(name not in context for context in contexts)
                if missing:
                    raise FeatureError(
                        name,
                        f"is missing from {missing} of {len(contexts)} contexts (was it declared "
                        "after they were logged?)",
                    ) from None
            raise
        if rows is None:
            by_feature: list[Sequence[Any]] = [
                [context[names[0]] for context in contexts] if names else []
            ]
        else:
            by_feature = list(zip(*rows, strict=True)) if rows else [[] for _ in names]
        columns = [np.ones((len(contexts), 1))]
        for feature, values in zip(self.features, by_feature, strict=False):
            columns.append(feature.encode_column(list(values)))
        return np.hstack(columns)

    def featurize(
        self, raw: Mapping[str, object]
    ) -> tuple[dict[str, FeatureValue], FloatArray, int]:
        """Validate, encode and fingerprint a raw context (one pass: this runs on every request)."""
        by_name = self._by_name
        if not isinstance(raw, Mapping) or any(name not in by_name for name in raw):
            self.validate(raw)  # raises the specific error
        context: dict[str, FeatureValue] = {}
        out = [1.0]
        for feature in self.features:
            value = raw.get(feature.name)
            if value is None:
                default = feature.default
                valid: FeatureValue = default if default is not None else ""
            else:
                valid = feature.validate(value)
            context[feature.name] = valid
            feature.encode(valid, out)
        return context, np.array(out), _fingerprint(self._names, tuple(context.values()))


def fingerprint(context: Context) -> int:
    """A stable unsigned 64-bit fingerprint of a validated context.

    The canonical form is the ``repr`` of its names, then of its values, in the
    featurizer's declaration order (which :meth:`Featurizer.validate` always
    produces); ``repr`` of str/int/float/bool is exact and platform-independent.

    >>> fingerprint({"risk_tier": "low", "prompt_tokens": 10})
    10580822525449072920
    """
    return _fingerprint(repr(tuple(context)), tuple(context.values()))


def _fingerprint(names: str, values: tuple[FeatureValue, ...]) -> int:
    canonical = (names + repr(values)).encode()
    return int.from_bytes(hashlib.blake2b(canonical, digest_size=8).digest(), "little")
