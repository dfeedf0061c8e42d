"""Context: declared task features, a deterministic featurizer and a stable fingerprint.

The published task features (risk tier, title length, …, prior failures) are
declared by :func:`published_features`, a preset a task type opts into; users
declare their own numeric, boolean, count or categorical features, and may let
the featurizer hash keys nobody declared (``undeclared="hash"``).  :meth:`Featurizer.featurize` validates a raw
context, maps it to a fixed-length vector (bias first) and fingerprints it with
a 64-bit BLAKE2b hash of its canonical form, identical across processes,
machines and Python versions.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from paramloop.errors import ConfigError, FeatureError
from paramloop.types import Context, FeatureValue

FloatArray = npt.NDArray[np.float64]
_log1p = math.log1p
#: Integers in a context must fit 64 bits: beyond, a float cannot hold them and no store can.
INT_LIMIT = 2**63


def _too_large(name: str, value: int) -> FeatureError:
    return FeatureError(
        name,
        f"must lie within ±2**63 (a 64-bit integer), got an integer of {len(str(abs(value)))} digits",
    )


@dataclass(frozen=True, slots=True)
class NumericFeature:
    """A number, given in its natural scale: the linear policies standardize it online.

    ``lower`` and ``upper`` (both optional) are a validity check: a value outside
    is refused, never squeezed.  ``log`` encodes log1p(value) (for counts and
    sizes spanning orders of magnitude; needs ``lower`` ≥ 0, and sets it to 0 when
    left out).  A missing value takes ``default``.
    """

    name: str
    lower: float | None = None
    upper: float | None = None
    log: bool = False
    default: float = 0.0
    integer: bool = False

    def __post_init__(self) -> None:
        where = f"features.{self.name}"
        for bound in ("lower", "upper", "default"):
            value = getattr(self, bound)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise ConfigError(f"{where}.{bound}", f"must be a finite number, got {value!r}")
        if not isinstance(self.log, bool) or not isinstance(self.integer, bool):
            raise ConfigError(where, "`log` and `integer` must be true or false")
        if self.log:
            if self.lower is None:
                object.__setattr__(self, "lower", 0.0)
            elif self.lower < 0:
                raise ConfigError(f"{where}.lower", f"must be >= 0 with log, got {self.lower!r}")
        if self.lower is not None and self.upper is not None and self.upper <= self.lower:
            raise ConfigError(f"{where}.upper", f"must be > lower ({self.lower:g})")
        if not self._inside(self.default):
            raise ConfigError(
                f"{where}.default", f"must lie in the feature's range, got {self.default!r}"
            )

    @property
    def width(self) -> int:
        return 1

    def _inside(self, value: float) -> bool:
        return (self.lower is None or value >= self.lower) and (
            self.upper is None or value <= self.upper
        )

    def validate(self, value: object) -> FeatureValue:
        if type(value) is int and -INT_LIMIT < value < INT_LIMIT and self._inside(value):
            return value if self.integer else float(value)  # the common case
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= INT_LIMIT:
            raise _too_large(self.name, value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            kind = "an integer" if self.integer else "a number"
            raise FeatureError(self.name, f"must be {kind}, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):
            raise FeatureError(self.name, f"must be finite, got {value!r}")
        if self.integer and abs(value) >= INT_LIMIT:
            raise FeatureError(
                self.name, f"must lie within ±2**63 (a 64-bit integer), got {value!r}"
            )
        if self.integer and int(value) != value:
            raise FeatureError(self.name, f"must be a whole number, got {value!r}")
        if not self._inside(value):
            low = "-inf" if self.lower is None else f"{self.lower:g}"
            high = "inf" if self.upper is None else f"{self.upper:g}"
            raise FeatureError(self.name, f"must lie in [{low}, {high}], got {value!r}")
        return int(value) if self.integer else float(value)

    def encode(self, value: FeatureValue, out: list[float]) -> None:
        out.append(_log1p(value) if self.log else float(value))  # type: ignore[arg-type]

    def encode_column(self, values: list[Any]) -> FloatArray:
        v = np.array(values, dtype=np.float64)
        return (np.log1p(v) if self.log else v)[:, None]


@dataclass(frozen=True, slots=True)
class BoolFeature:
    """A boolean, given as true/false or 0/1, encoded as 0/1."""

    name: str
    default: bool = False

    @property
    def width(self) -> int:
        return 1

    def validate(self, value: object) -> FeatureValue:
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        raise FeatureError(
            self.name, f"must be true/false or 0/1, got {type(value).__name__} {value!r}"
        )

    def encode(self, value: FeatureValue, out: list[float]) -> None:
        out.append(1.0 if value else 0.0)

    def encode_column(self, values: list[Any]) -> FloatArray:
        return np.array(values, dtype=bool).astype(np.float64)[:, None]


@dataclass(frozen=True, slots=True)
class CountFeature:
    """A count given either as a whole number or as a list of strings (its length counts).

    Encoded as log1p(count), in its natural scale (the linear policies standardize it).
    """

    name: str

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
        if value >= INT_LIMIT:
            raise _too_large(self.name, value)
        return value

    def encode(self, value: FeatureValue, out: list[float]) -> None:
        out.append(math.log1p(len(value) if isinstance(value, tuple) else float(value)))

    def encode_column(self, values: list[Any]) -> FloatArray:
        # A list from JSON counts like the tuple it was logged as.
        counts = np.array(
            [len(v) if isinstance(v, tuple | list) else v for v in values], dtype=np.float64
        )
        return np.log1p(counts)[:, None]


#: How a categorical feature treats a value outside its levels.
UNKNOWN = ("error", "ignore", "other", "hash")


@dataclass(frozen=True, slots=True)
class CategoricalFeature:
    """A string category, one-hot encoded.

    With ``levels`` listed, ``unknown`` says what an unlisted value does:
    ``"error"`` refuses it, ``"ignore"`` encodes it as all zeros, ``"other"``
    sets one extra column.  ``unknown="hash"`` is an open vocabulary: no levels,
    every value one-hot in ``buckets`` columns by a stable hash (collisions are
    possible; raise ``buckets`` when there are many values).
    """

    name: str
    levels: tuple[str, ...] = ()
    default: str | None = None
    unknown: str = "error"
    buckets: int = 16

    def __post_init__(self) -> None:
        where = f"features.{self.name}"
        if self.unknown not in UNKNOWN:
            raise ConfigError(f"{where}.unknown", f"must be one of {', '.join(UNKNOWN)}")
        if not all(isinstance(level, str) for level in self.levels):
            raise ConfigError(f"{where}.levels", "must be strings")
        if len(set(self.levels)) != len(self.levels):
            raise ConfigError(f"{where}.levels", "must be distinct")
        if self.unknown == "hash":
            if self.levels:
                raise ConfigError(
                    f"{where}.levels", 'an open vocabulary (unknown = "hash") lists no levels'
                )
            if (
                isinstance(self.buckets, bool)
                or not isinstance(self.buckets, int)
                or not 1 <= self.buckets <= 4096
            ):
                raise ConfigError(
                    f"{where}.buckets", f"must be an integer in [1, 4096], got {self.buckets!r}"
                )
        elif not self.levels:
            raise ConfigError(
                f"{where}.levels", 'list the levels, or use unknown = "hash" for an open vocabulary'
            )
        if self.default is not None and not isinstance(self.default, str):
            raise ConfigError(f"{where}.default", "must be a string")

    @property
    def width(self) -> int:
        if self.unknown == "hash":
            return self.buckets
        return len(self.levels) + (self.unknown == "other")

    @property
    def columns(self) -> tuple[str, ...]:
        if self.unknown == "hash":
            return tuple(f"{self.name}#{i}" for i in range(self.buckets))
        other = ("(other)",) if self.unknown == "other" else ()
        return tuple(f"{self.name}={level}" for level in (*self.levels, *other))

    def validate(self, value: object) -> FeatureValue:
        if not isinstance(value, str):
            raise FeatureError(self.name, f"must be a string, got {type(value).__name__} {value!r}")
        if self.unknown == "error" and value not in self.levels:
            raise FeatureError(self.name, f"must be one of {', '.join(self.levels)}; got {value!r}")
        return value

    def index(self, value: object) -> int:
        """The column of ``value`` (−1: no column, all zeros)."""
        if self.unknown == "hash":
            return stable_hash(f"{self.name}={value}") % self.buckets
        try:
            return self.levels.index(value)
        except ValueError:
            return len(self.levels) if self.unknown == "other" else -1

    def encode(self, value: FeatureValue, out: list[float]) -> None:
        row = [0.0] * self.width
        column = self.index(value)
        if column >= 0:
            row[column] = 1.0
        out.extend(row)

    def encode_column(self, values: list[Any]) -> FloatArray:
        lookup = {value: self.index(value) for value in dict.fromkeys(values)}
        index = np.array([lookup[v] for v in values], dtype=np.intp)
        out = np.zeros((len(values), self.width))
        known = np.flatnonzero(index >= 0)
        out[known, index[known]] = 1.0
        return out


Feature = NumericFeature | BoolFeature | CountFeature | CategoricalFeature
#: How a featurizer treats context keys no feature declares.
UNDECLARED = ("error", "hash")
#: Bumped when an encoding changes, so snapshots and evaluations refuse the old vectors.
ENCODING_VERSION = 2


def stable_hash(text: str) -> int:
    """A 64-bit hash of ``text``, identical across processes, machines and Python versions."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def published_features(models: Sequence[str] = ()) -> tuple[Feature, ...]:
    """The published task features, a preset a task type opts into (``preset = "published"``).

    ``models`` are the levels of ``model_name`` (other names encode as zeros).
    """
    return (
        CategoricalFeature("risk_tier", ("low", "medium", "high"), default="medium"),
        NumericFeature("title_length", log=True, integer=True),
        NumericFeature("description_length", log=True, integer=True),
        NumericFeature("acceptance_criteria_count", log=True, integer=True),
        NumericFeature("scope_files_count", log=True, integer=True),
        NumericFeature("max_files", log=True, integer=True),
        NumericFeature("max_loc", log=True, integer=True),
        BoolFeature("has_external_deps"),
        CountFeature("complexity_indicators"),
        CategoricalFeature("model_name", tuple(models), default="", unknown="ignore")
        if models
        else CategoricalFeature("model_name", unknown="hash", buckets=4, default=""),
        NumericFeature("prompt_tokens", log=True, integer=True),
        NumericFeature("prior_failures", log=True, integer=True),
    )


class Featurizer:
    """Validates raw contexts, encodes them as vectors and fingerprints them.

    The vector is the bias, then each declared feature's columns in declaration
    order, then (``undeclared="hash"``) ``hash_buckets`` columns into which the
    keys no feature declares are hashed: a number adds its value to the column
    of its name, ``true`` adds 1, a string sets the column of ``name=value``,
    a list of strings each of its items.  Numbers stay in their natural scale;
    :attr:`scaled` lists their columns, which the linear policies standardize.
    :attr:`digest` names the encoding: snapshots and evaluations replay it.

    >>> f = Featurizer(published_features(models=("gpt-small", "gpt-large")))
    >>> f.dim
    16
    >>> context, x, fp = f.featurize({"risk_tier": "high", "prompt_tokens": 1200})
    >>> float(x[0]), context["risk_tier"], fp == f.featurize({"prompt_tokens": 1200, "risk_tier": "high"})[2]
    (1.0, 'high', True)
    >>> open_ = Featurizer((), undeclared="hash", hash_buckets=8)
    >>> open_.featurize({"plan": "pro", "latency_ms": 120.0})[1].shape
    (9,)
    """

    def __init__(
        self,
        features: Sequence[Feature],
        *,
        undeclared: str = "error",
        hash_buckets: int = 32,
    ) -> None:
        names = [feature.name for feature in features]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigError("features", f"duplicate feature names: {', '.join(duplicates)}")
        if undeclared not in UNDECLARED:
            raise ConfigError(
                "features.undeclared", f"must be one of {', '.join(UNDECLARED)}, got {undeclared!r}"
            )
        if (
            isinstance(hash_buckets, bool)
            or not isinstance(hash_buckets, int)
            or not 1 <= hash_buckets <= 4096
        ):
            raise ConfigError(
                "features.hash_buckets", f"must be an integer in [1, 4096], got {hash_buckets!r}"
            )
        self.features = tuple(features)
        self.undeclared = undeclared
        self.hash_buckets = hash_buckets if undeclared == "hash" else 0
        self._by_name = {feature.name: feature for feature in self.features}
        self._names = repr(tuple(self._by_name))
        columns = ["bias"]
        scaled: list[int] = []
        for feature in self.features:
            if isinstance(feature, CategoricalFeature):
                columns.extend(feature.columns)
            else:
                if isinstance(feature, NumericFeature | CountFeature):
                    scaled.append(len(columns))
                columns.append(feature.name)
        if self.hash_buckets:
            scaled.extend(range(len(columns), len(columns) + self.hash_buckets))
            columns.extend(f"(undeclared)#{i}" for i in range(self.hash_buckets))
        self.columns = tuple(columns)
        self.dim = len(columns)
        self.scaled: tuple[int, ...] = tuple(scaled)
        spec = repr((ENCODING_VERSION, self.features, self.undeclared, self.hash_buckets))
        self.digest = hashlib.blake2b(spec.encode(), digest_size=8).hexdigest()

    def validate(self, raw: Mapping[str, object]) -> dict[str, FeatureValue]:
        """The validated context, in declaration order (then undeclared keys, sorted), defaults filled in."""
        return self.featurize(raw)[0]

    def _validate_undeclared(self, raw: Mapping[str, object]) -> dict[str, FeatureValue]:
        if not isinstance(raw, Mapping):
            raise FeatureError(
                "(context)",
                f"must be a mapping of feature names to values, got {type(raw).__name__}",
            )
        extra = sorted(str(name) for name in raw if name not in self._by_name)
        if not extra:
            return {}
        if self.undeclared == "error":
            declared = ", ".join(self._by_name) or "none"
            raise FeatureError(
                extra[0],
                f"is not declared; declared features: {declared} (declare it, or accept "
                'undeclared keys with undeclared = "hash")',
            )
        out: dict[str, FeatureValue] = {}
        for name in extra:
            value = raw[name]
            if isinstance(value, bool | str):
                out[name] = value
            elif isinstance(value, int | float):
                if isinstance(value, int) and abs(value) >= INT_LIMIT:
                    raise _too_large(name, value)
                if not math.isfinite(value):
                    raise FeatureError(name, f"must be finite, got {value!r}")
                out[name] = float(value)
            elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                out[name] = tuple(value)
            elif value is None:
                continue
            else:
                raise FeatureError(
                    name,
                    "an undeclared feature must be a number, true/false, a string or a list "
                    f"of strings, got {type(value).__name__}",
                )
        return out

    def _encode_undeclared(self, context: Context, out: list[float]) -> None:
        row = [0.0] * self.hash_buckets
        for name, value in context.items():
            if name in self._by_name:
                continue
            if isinstance(value, str):
                row[stable_hash(f"{name}={value}") % self.hash_buckets] += 1.0
            elif isinstance(value, tuple):
                for item in value:
                    row[stable_hash(f"{name}={item}") % self.hash_buckets] += 1.0
            else:
                row[stable_hash(name) % self.hash_buckets] += float(value)
        out.extend(row)

    def transform(self, context: Context) -> FloatArray:
        """The vector of an already validated context (bias first)."""
        out = [1.0]
        for feature in self.features:
            feature.encode(context[feature.name], out)
        if self.hash_buckets:
            self._encode_undeclared(context, out)
        return np.array(out, dtype=np.float64)

    def transform_many(self, contexts: Sequence[Mapping[str, Any]]) -> FloatArray:
        """The (n, dim) vectors of already validated contexts, one feature column at a time.

        The same numbers as :meth:`transform` row by row (up to the last bit of
        a logarithm: numpy's and the C library's may differ there), ~20× faster
        on large batches.  A context without one of the features raises
        :class:`FeatureError` naming it and how many contexts lack it.
        """
        if self.hash_buckets:  # keys differ from context to context: row by row
            return (
                np.array([self.transform(c) for c in contexts])
                if contexts
                else np.zeros((0, self.dim))
            )
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
        extra: dict[str, FeatureValue] = {}
        if not isinstance(raw, Mapping) or any(name not in by_name for name in raw):
            extra = self._validate_undeclared(raw)  # raises the specific error
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
        if not self.hash_buckets:
            return context, np.array(out), _fingerprint(self._names, tuple(context.values()))
        context.update(extra)
        self._encode_undeclared(context, out)
        return context, np.array(out), fingerprint(context)


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
