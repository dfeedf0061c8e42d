"""Parameter spaces: typed dimensions, per-model rules, baseline and trust region.

A :class:`ParameterSpace` enumerates its arms once (the Cartesian product of the
dimensions, reduced by the model rules) and answers, as arrays, which arms are
feasible: inside the hard bounds, allowed by the model's rules and inside the
trust region around the baseline.  It also gives every arm a feature vector for
the linear policies, so that learning one arm teaches its neighbours.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from paramloop.errors import ConfigError
from paramloop.types import Params

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

#: The numeric dimensions and their hard bounds (inclusive).
HARD_BOUNDS: Mapping[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "max_tokens": (1.0, 1_000_000.0),
    "frequency_penalty": (-2.0, 2.0),
    "presence_penalty": (-2.0, 2.0),
}
NUMERIC_DIMS: tuple[str, ...] = tuple(HARD_BOUNDS)
CATEGORICAL_DIMS: tuple[str, ...] = ("model", "prompt_variant")
#: Default trust-region radii around the baseline (|Δ| allowed per numeric dimension).
DEFAULT_RADIUS: Mapping[str, float] = {"temperature": 0.2, "max_tokens": 200.0}
MAX_ARMS = 1_000
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class ModelRule:
    """What one model accepts, declared as data.

    ``rejects`` lists parameters the model refuses (they are left out of the
    request, e.g. a reasoning model's temperature); ``fixed`` pins parameters to
    the only value the model accepts (e.g. ``{"temperature": 1.0}``);
    ``max_tokens_field`` names the request field carrying ``max_tokens``;
    ``max_tokens_limit`` caps it.
    """

    model: str
    rejects: frozenset[str] = frozenset()
    fixed: Mapping[str, float] = field(default_factory=dict)
    max_tokens_field: str = "max_tokens"
    max_tokens_limit: int | None = None

    def __post_init__(self) -> None:
        where = f"models.{self.model}"
        for name in self.rejects:
            if name not in NUMERIC_DIMS:
                raise ConfigError(
                    f"{where}.rejects",
                    f"{name!r} is not a numeric parameter ({', '.join(NUMERIC_DIMS)})",
                )
        for name, value in self.fixed.items():
            if name not in NUMERIC_DIMS or name == "max_tokens":
                raise ConfigError(
                    f"{where}.fixed",
                    f"{name!r} cannot be fixed; allowed: temperature, top_p, penalties",
                )
            _check_bound(f"{where}.fixed.{name}", name, value)
            if name in self.rejects:
                raise ConfigError(f"{where}.fixed", f"{name!r} is both rejected and fixed")
        if self.max_tokens_field not in ("max_tokens", "max_completion_tokens"):
            raise ConfigError(
                f"{where}.max_tokens_field",
                f"must be 'max_tokens' or 'max_completion_tokens', got {self.max_tokens_field!r}",
            )
        if self.max_tokens_limit is not None and self.max_tokens_limit < 1:
            raise ConfigError(
                f"{where}.max_tokens_limit", f"must be >= 1, got {self.max_tokens_limit!r}"
            )


@dataclass(frozen=True, slots=True)
class TrustRegion:
    """The arms allowed near the baseline.

    ``radius`` bounds |Δ| per numeric dimension (defaults: temperature 0.2,
    max_tokens 200; a dimension without a radius is unrestricted).
    ``allowed`` restricts categorical dimensions to listed values (default: all).
    """

    radius: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_RADIUS))
    allowed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in self.radius.items():
            if name not in NUMERIC_DIMS:
                raise ConfigError(
                    f"trust_region.{name}", f"unknown dimension; allowed: {', '.join(NUMERIC_DIMS)}"
                )
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigError(
                    f"trust_region.{name}", f"radius must be a finite number >= 0, got {value!r}"
                )
        for name in self.allowed:
            if name not in CATEGORICAL_DIMS:
                raise ConfigError(
                    f"trust_region.allowed.{name}",
                    f"unknown categorical dimension; allowed: {', '.join(CATEGORICAL_DIMS)}",
                )


class ParameterSpace:
    """The arms a task type may use, the baseline, and which arms are feasible.

    Grids are given per dimension; a dimension left out keeps the baseline's
    value.  Arms are the product of the grids with each model's rules applied
    (a rejected parameter becomes ``None``; a fixed one takes its fixed value),
    duplicates removed, in a stable order.

    >>> space = ParameterSpace(
    ...     baseline=Params("m", temperature=0.7, max_tokens=256),
    ...     grids={"temperature": [0.3, 0.5, 0.7, 0.9, 1.1], "max_tokens": [128, 256, 512]},
    ... )
    >>> space.n_arms, int(space.feasible.sum())  # |Δt| ≤ 0.2 and |Δmax_tokens| ≤ 200
    (15, 6)
    >>> space.arms[space.baseline_arm] == space.baseline
    True
    """

    def __init__(
        self,
        *,
        baseline: Params,
        grids: Mapping[str, Sequence[float | int | str | None]] | None = None,
        model_rules: Sequence[ModelRule] = (),
        trust_region: TrustRegion | None = None,
        stop: Sequence[str] = (),
        max_arms: int = MAX_ARMS,
        choices: Mapping[str, Sequence[str] | Mapping[str, Mapping[str, float]]] | None = None,
    ) -> None:
        grids = dict(grids or {})
        self.choices = _choices(choices or {}, baseline)
        self.trust_region = trust_region if trust_region is not None else TrustRegion()
        self.rules: dict[str, ModelRule] = {rule.model: rule for rule in model_rules}
        self.stop = tuple(stop)
        for name in grids:
            if name not in NUMERIC_DIMS and name not in CATEGORICAL_DIMS:
                raise ConfigError(
                    f"space.{name}",
                    f"unknown dimension; allowed: {', '.join(NUMERIC_DIMS + CATEGORICAL_DIMS)}",
                )
        values = {
            name: self._grid(name, grids.get(name), baseline)
            for name in NUMERIC_DIMS + CATEGORICAL_DIMS
        }
        self.dimensions: dict[str, tuple[float | int | str | None, ...]] = values
        rule = self.rules.get(baseline.model)
        for name, grid in values.items():
            value = getattr(baseline, name)
            pinned = rule is not None and (name in rule.rejects or name in rule.fixed)
            if not pinned and value not in grid:
                raise ConfigError(
                    f"baseline.{name}",
                    f"{value!r} is not in the grid space.{name} = {list(grid)!r}",
                )
        self.baseline = self._apply_rules(baseline)
        self.arms: tuple[Params, ...] = self._enumerate(values, max_arms)
        try:
            self.baseline_arm = self.arms.index(self.baseline)
        except ValueError:
            raise ConfigError(
                "baseline", f"{self.baseline.to_request()} is not an arm of the space"
            ) from None
        self.n_arms = len(self.arms)
        self._columns = {name: self._column(name) for name in NUMERIC_DIMS}
        self.in_bounds = self._in_bounds()
        for name, (low, high) in HARD_BOUNDS.items():
            value = getattr(self.baseline, name)
            if value is not None and not low <= value <= high:
                raise ConfigError(
                    f"baseline.{name}", f"must be within [{low:g}, {high:g}], got {value!r}"
                )
        self.feasible: npt.NDArray[np.bool_] = self.in_bounds & self._in_trust_region()
        self.feasible_arms: IntArray = np.flatnonzero(self.feasible).astype(np.intp)
        self.features, self.n_interacting, self.feature_names = self._arm_features()

    # -- construction -------------------------------------------------------------------

    def _grid(
        self, name: str, grid: Sequence[float | int | str | None] | None, baseline: Params
    ) -> tuple[float | int | str | None, ...]:
        base_value = getattr(baseline, name)
        if grid is None:
            return (base_value,)
        if isinstance(grid, str | bytes) or not isinstance(grid, Sequence) or len(grid) == 0:
            raise ConfigError(f"space.{name}", "must be a non-empty list of values")
        out: list[float | int | str | None] = []
        for i, value in enumerate(grid):
            where = f"space.{name}[{i}]"
            if name in CATEGORICAL_DIMS:
                if value is not None and not isinstance(value, str):
                    raise ConfigError(where, f"must be a string, got {value!r}")
                out.append(value)
            elif name == "max_tokens":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigError(where, f"must be an integer, got {value!r}")
                _check_bound(where, name, value)
                out.append(value)
            else:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConfigError(where, f"must be a number, got {value!r}")
                _check_bound(where, name, value)
                out.append(float(value))
        if len(set(out)) != len(out):
            raise ConfigError(f"space.{name}", f"values must be distinct, got {list(grid)!r}")
        return tuple(out)

    def _apply_rules(self, params: Params) -> Params:
        rule = self.rules.get(params.model)
        if rule is None:
            return replace(params, stop=self.stop, seed=None, max_tokens_field="max_tokens")
        fields: dict[str, float | int | None] = {}
        for name in NUMERIC_DIMS:
            value = getattr(params, name)
            if name in rule.rejects:
                value = None
            elif name in rule.fixed:
                value = rule.fixed[name]
            elif name == "max_tokens" and rule.max_tokens_limit is not None and value is not None:
                value = min(int(value), rule.max_tokens_limit)
            fields[name] = value
        max_tokens = fields["max_tokens"]
        return Params(
            model=params.model,
            temperature=_opt_float(fields["temperature"]),
            top_p=_opt_float(fields["top_p"]),
            max_tokens=None if max_tokens is None else int(max_tokens),
            frequency_penalty=_opt_float(fields["frequency_penalty"]),
            presence_penalty=_opt_float(fields["presence_penalty"]),
            prompt_variant=params.prompt_variant,
            stop=self.stop,
            max_tokens_field=rule.max_tokens_field,
            choices=params.choices,
        )

    def _enumerate(
        self, values: Mapping[str, tuple[float | int | str | None, ...]], max_arms: int
    ) -> tuple[Params, ...]:
        names = CATEGORICAL_DIMS + NUMERIC_DIMS
        seen: dict[Params, None] = {}
        labels = [tuple(levels) for levels in self.choices.values()]
        for combo in itertools.product(*(values[name] for name in names), *labels):
            raw = dict(zip(names, combo[: len(names)], strict=True))
            picked = tuple(zip(self.choices, map(str, combo[len(names) :]), strict=True))
            model = raw["model"]
            if not isinstance(model, str) or not model:
                raise ConfigError("space.model", "every arm needs a model name")
            arm = self._apply_rules(
                Params(
                    model=model,
                    temperature=_opt_float(raw["temperature"]),
                    top_p=_opt_float(raw["top_p"]),
                    max_tokens=None if raw["max_tokens"] is None else int(raw["max_tokens"]),
                    frequency_penalty=_opt_float(raw["frequency_penalty"]),
                    presence_penalty=_opt_float(raw["presence_penalty"]),
                    prompt_variant=raw["prompt_variant"]
                    if isinstance(raw["prompt_variant"], str)
                    else None,
                    choices=picked,
                )
            )
            seen.setdefault(arm, None)
            if len(seen) > max_arms:
                raise ConfigError(
                    "space",
                    f"has more than {max_arms} arms after model rules; coarsen a grid or raise max_arms",
                )
        return tuple(seen)

    def _column(self, name: str) -> FloatArray:
        return np.array(
            [
                np.nan if getattr(arm, name) is None else float(getattr(arm, name))
                for arm in self.arms
            ],
            dtype=np.float64,
        )

    def _in_bounds(self) -> npt.NDArray[np.bool_]:
        ok = np.ones(self.n_arms, dtype=bool)
        for name, (low, high) in HARD_BOUNDS.items():
            column = self._columns[name]
            ok &= np.isnan(column) | ((column >= low) & (column <= high))
        return ok

    def _in_trust_region(self) -> npt.NDArray[np.bool_]:
        ok = np.ones(self.n_arms, dtype=bool)
        for name, radius in self.trust_region.radius.items():
            base = getattr(self.baseline, name)
            if base is None:
                continue
            column = self._columns[name]
            ok &= np.isnan(column) | (np.abs(column - float(base)) <= radius + _EPS)
        for name, allowed in self.trust_region.allowed.items():
            base_value = getattr(self.baseline, name)
            permitted = set(allowed) | {base_value}
            ok &= np.array([getattr(arm, name) in permitted for arm in self.arms], dtype=bool)
        return ok

    def _arm_features(self) -> tuple[FloatArray, int, tuple[str, ...]]:
        """Features of every arm: [1, linear terms, one-hots | squares].

        The first ``n_interacting`` columns are crossed with the context by the
        linear policies (so the optimum can move with the context); the squares
        give each numeric dimension a curvature shared across contexts.

        Every feature is measured *from the baseline*: numeric terms are
        (v − baseline)/half-range and one-hots mark levels other than the
        baseline's.  The baseline arm is then [1, 0, …, 0], so a ridge model's
        shrinkage pulls every arm's estimate towards the baseline's, and moving
        away from the baseline needs evidence: the conservative direction.
        """
        linear: list[FloatArray] = []
        squares: list[FloatArray] = []
        names: list[str] = ["bias"]
        square_names: list[str] = []
        for name in NUMERIC_DIMS:
            column = self._columns[name]
            present = column[~np.isnan(column)]
            if np.unique(present).size < 2:
                continue
            low, high = float(present.min()), float(present.max())
            base = getattr(self.baseline, name)
            center = (low + high) / 2 if base is None else float(base)
            scaled = np.where(np.isnan(column), 0.0, (column - center) / ((high - low) / 2))
            linear.append(scaled)
            squares.append(scaled**2)
            names.append(name)
            square_names.append(f"{name}^2")
        for name in CATEGORICAL_DIMS:
            base_level = str(getattr(self.baseline, name))
            levels = sorted({str(getattr(arm, name)) for arm in self.arms} - {base_level})
            for level in levels:
                linear.append(
                    np.array([float(str(getattr(arm, name)) == level) for arm in self.arms])
                )
                names.append(f"{name}={level}")
        for name, table in self.choices.items():
            base_level = self.baseline.choice(name)
            picked = [arm.choice(name) for arm in self.arms]
            for level in table:
                if level != base_level:
                    linear.append(np.array([float(p == level) for p in picked]))
                    names.append(f"{name}={level}")
            for key in sorted({k for features in table.values() for k in features}):
                column = np.array([table[p].get(key, 0.0) for p in picked])
                spread = (float(column.max()) - float(column.min())) / 2
                if spread > 0:
                    base = table[base_level].get(key, 0.0)
                    linear.append((column - base) / spread)
                    names.append(f"{name}.{key}")
        columns = [np.ones(self.n_arms), *linear, *squares]
        return np.column_stack(columns), 1 + len(linear), tuple(names + square_names)

    # -- queries ------------------------------------------------------------------------

    def params(self, arm: int, *, seed: int | None = None) -> Params:
        """The concrete parameters of ``arm`` (with the request's seed carried through)."""
        params = self.arms[arm]
        return params if seed is None else replace(params, seed=seed)

    def satisfies(self, params: Params) -> bool:
        """Whether ``params`` is a feasible arm: bounds, model rules and trust region."""
        stripped = replace(params, seed=None)
        try:
            index = self.arms.index(stripped)
        except ValueError:
            return False
        return bool(self.feasible[index]) and self._obeys_rule(stripped)

    def _obeys_rule(self, params: Params) -> bool:
        rule = self.rules.get(params.model)
        if rule is None:
            return True
        for name in rule.rejects:
            if getattr(params, name) is not None:
                return False
        for name, value in rule.fixed.items():
            if getattr(params, name) != value:
                return False
        if rule.max_tokens_limit is not None and (params.max_tokens or 0) > rule.max_tokens_limit:
            return False
        return params.max_tokens_field == rule.max_tokens_field

    def column(self, name: str) -> FloatArray:
        """The values of a numeric dimension across arms (NaN where the model rejects it)."""
        return self._columns[name]


def _choices(
    choices: Mapping[str, Sequence[str] | Mapping[str, Mapping[str, float]]], baseline: Params
) -> dict[str, dict[str, dict[str, float]]]:
    """Generic categorical dimensions: name → level → the level's numeric arm features."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, levels in choices.items():
        where = f"choices.{name}"
        if not isinstance(name, str) or not name or name in NUMERIC_DIMS + CATEGORICAL_DIMS:
            raise ConfigError(where, "needs a name that is not a built-in parameter")
        if isinstance(levels, str) or not isinstance(levels, Sequence | Mapping) or not levels:
            raise ConfigError(where, "must be a non-empty list of levels (or level → features)")
        table: dict[str, dict[str, float]] = {}
        for level in levels:
            if not isinstance(level, str) or not level:
                raise ConfigError(where, f"levels must be non-empty strings, got {level!r}")
            if level in table:
                raise ConfigError(where, f"level {level!r} is listed twice")
            features = levels[level] if isinstance(levels, Mapping) else {}
            if not isinstance(features, Mapping):
                raise ConfigError(f"{where}.{level}", "must be a table of numeric arm features")
            for key, value in features.items():
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or not math.isfinite(value)
                ):
                    raise ConfigError(
                        f"{where}.{level}.{key}", f"must be a finite number, got {value!r}"
                    )
            table[level] = {str(k): float(v) for k, v in features.items()}
        given = dict(baseline.pairs)
        if name not in given:
            raise ConfigError(f"baseline.choices.{name}", f"is required: one of {', '.join(table)}")
        if given[name] not in table:
            raise ConfigError(
                f"baseline.choices.{name}", f"{given[name]!r} is not one of {', '.join(table)}"
            )
        out[name] = table
    unknown = sorted(set(dict(baseline.pairs)) - set(out))
    if unknown:
        raise ConfigError(f"baseline.choices.{unknown[0]}", "is not a declared choice dimension")
    return out


def _check_bound(where: str, name: str, value: float) -> None:
    low, high = HARD_BOUNDS[name]
    if not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(where, f"{name} must be within [{low:g}, {high:g}], got {value!r}")


def _opt_float(value: object) -> float | None:
    if value is None:
        return None
    return float(value)  # type: ignore[arg-type]
