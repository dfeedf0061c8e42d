"""The hidden world of the simulator: what an LLM call would have returned.

A :class:`World` stands in for LLM traffic.  For each task type it samples
realistic contexts (:meth:`World.sample_context`) and answers calls
(:meth:`World.outcome`) from a hidden, context-dependent quality surface over
the generation parameters.  The optimizer never sees any of this; the oracle
methods (:meth:`World.expected_quality`, :meth:`World.expected_reward`) exist
so that tests and benchmarks can measure regret against the truth.

How one call is answered, given a context ``x`` and parameters ``θ``:

* ``x`` is reduced to eight signals in [0, 1] (risk, complexity, prior failures,
  prompt size, code scope, acceptance criteria, external dependencies,
  description length) and to a task difficulty ``d = clip(d₀ + w·signals, 0, 1)``.
* The answer needs ``n(x)`` visible tokens (task base + per-feature rates) times a
  prompt-variant factor.  A reasoning model first spends hidden reasoning tokens
  from the same ``max_tokens`` budget.  Models write longer when given room: with
  ``room`` = budget left after reasoning, the answer is ``n·(room/n)^e`` tokens when
  ``room > n`` (``e`` is the task's length elasticity; ``e = 0`` gives the plain
  ``min(max_tokens, n)``), and a budget below ``n`` truncates it.
* The noise-free quality is ``floor + (ceiling - floor)·Π factors``; every factor
  lies in (0, 1]: model capability against difficulty, a Gaussian bump in the
  effective temperature ``T·(0.3 + 0.7·top_p)`` around a context-dependent optimum
  (different widths below and above), bumps in top_p and both penalties,
  truncation ``rho^gamma`` (``rho`` = visible fraction of the needed answer), rambling
  past the needed length, and the prompt variant (concise hurts hard requests,
  detailed wastes effort on easy ones).
* Latency, tokens and cost are deterministic given ``(x, θ)``; the call fails with
  probability ``p = failure_rate·(1 + prompt/20k) + τ·(1 - rho)²``; on success the
  quality is drawn from ``Beta(q̄·κ, (1 - q̄)·κ)``, whose mean is ``q̄``.

That last point is what makes :meth:`World.expected_reward` exact rather than
estimated: a :class:`~paramloop.core.reward.RewardFunction` is linear in quality
before its clipping at 0, and every other field it reads is deterministic.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

import numpy as np

# scipy ships no type information; the ignore stays harmless once stubs are installed.
from scipy import special  # type: ignore[import-untyped, unused-ignore]

from paramloop.core.reward import RewardFunction
from paramloop.errors import ConfigError, FeatureError, UnknownTaskTypeError
from paramloop.types import FeatureValue, Outcome, Params

#: The risk tiers a context may carry, with the level each one contributes to the risk signal.
RISK_TIERS: Final[Mapping[str, float]] = MappingProxyType({"low": 0.0, "medium": 0.5, "high": 1.0})

_TIERS: Final = tuple(RISK_TIERS)

#: The prompt variants a call may use (``None`` is the caller's own prompt).
PROMPT_VARIANTS: Final[tuple[str | None, ...]] = (None, "concise", "detailed")

#: The numeric task features of every context, in the order the world reads them.
NUMERIC_FEATURES: Final[tuple[str, ...]] = (
    "title_length",
    "description_length",
    "acceptance_criteria_count",
    "scope_files_count",
    "max_files",
    "max_loc",
    "complexity_indicators",
    "prompt_tokens",
    "prior_failures",
)

#: The normalized context signals (each in [0, 1]) that difficulty and optima depend on.
SIGNALS: Final[tuple[str, ...]] = (
    "risk",
    "complexity",
    "failures",
    "prompt",
    "scope",
    "criteria",
    "deps",
    "description",
)

# A variant changes how long the answer is and how many instruction tokens the
# prompt carries; a detailed prompt costs tokens on every call, which is what
# makes it a trade-off rather than a free upgrade.
_VARIANT_LENGTH: Final[Mapping[str | None, float]] = MappingProxyType(
    {None: 1.0, "concise": 0.8, "detailed": 1.15}
)
_VARIANT_PROMPT_TOKENS: Final[Mapping[str | None, int]] = MappingProxyType(
    {None: 0, "concise": 30, "detailed": 150}
)

# Quality never reaches 0 or 1 exactly, so the Beta noise is always well defined.
_QUALITY_FLOOR: Final = 0.02
# Failure probability is capped so that every arm keeps some successes to learn from.
_MAX_FAILURE: Final = 0.95
# Top-p narrows the sampled tail, so it lowers the effective temperature.
_TOP_P_DAMPING: Final = 0.7
# Prompts near the context window time out and get rate-limited more often.
_FAILURE_PROMPT_SCALE: Final = 20_000.0


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """An LLM as the world sees it: prices, speed, reliability and skill.

    Prices are in dollars per 1,000 tokens.  ``capability`` (in [0, 1]) is how well
    the model does on a request of difficulty 0; ``hard_task_bonus`` is added per
    unit of difficulty (a reasoning model catches up on hard requests).  A model
    with ``reasoning_tokens > 0`` spends about ``reasoning_tokens·(0.5 + d)``
    hidden tokens before it answers, billed and timed as completion tokens.  A
    model with ``accepts_sampling=False`` ignores temperature, top_p and both
    penalties: it samples with its own tuned settings, which cost it nothing.
    ``default_temperature`` is used when a call leaves temperature unset.
    """

    name: str
    price_prompt_per_1k: float
    price_completion_per_1k: float
    base_latency_ms: float
    ms_per_token: float
    failure_rate: float
    capability: float
    hard_task_bonus: float = 0.0
    reasoning_tokens: int = 0
    accepts_sampling: bool = True
    default_temperature: float = 1.0
    ms_per_1k_prompt_tokens: float = 30.0
    max_output_tokens: int = 16_384

    def __post_init__(self) -> None:
        where = f"models.{self.name}"
        if not self.name:
            raise ConfigError("models", "a model name must be a non-empty string")
        for name in (
            "price_prompt_per_1k",
            "price_completion_per_1k",
            "base_latency_ms",
            "ms_per_token",
            "ms_per_1k_prompt_tokens",
            "hard_task_bonus",
        ):
            _check_range(f"{where}.{name}", getattr(self, name), 0.0, math.inf)
        _check_range(f"{where}.failure_rate", self.failure_rate, 0.0, _MAX_FAILURE)
        _check_range(f"{where}.capability", self.capability, 0.0, 1.0)
        _check_range(f"{where}.default_temperature", self.default_temperature, 0.0, 2.0)
        _check_int(f"{where}.reasoning_tokens", self.reasoning_tokens, 0)
        _check_int(f"{where}.max_output_tokens", self.max_output_tokens, 1)
        if not isinstance(self.accepts_sampling, bool):
            raise ConfigError(f"{where}.accepts_sampling", "must be true or false")


@dataclass(frozen=True, slots=True)
class Bump:
    """A smooth preference for one numeric parameter.

    The factor is ``1 - weight·(1 - exp(-½·((v - v*)/width)²))``: 1 at the optimum
    ``v*`` and ``1 - weight`` far from it, with ``width_below``/``width_above`` on
    either side.  The optimum moves with the context: ``v* = optimum + Σ shift[s]·s``
    over the :data:`SIGNALS`.
    """

    optimum: float
    width_below: float
    width_above: float
    weight: float
    shift: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _freeze(self, "shift")


@dataclass(frozen=True, slots=True)
class IntFeature:
    """How one integer task feature is distributed for a task type.

    ``lognormal``: ``round(center·exp(spread·z))``; ``poisson``: mean ``center``;
    ``constant``: ``center``.  The draw is clipped to ``[low, high]``.
    """

    kind: Literal["constant", "poisson", "lognormal"]
    center: float
    spread: float = 0.0
    low: int = 0
    high: int = 1_000_000


@dataclass(frozen=True, slots=True)
class ContextSpec:
    """The distribution of contexts of one task type.

    ``risk_tiers`` are the probabilities of low, medium and high risk.
    ``default_models`` are the probabilities of the caller's default model
    (the ``model_name`` feature).  ``max_files`` is raised to at least
    ``scope_files_count``, because a task may always touch the files it scopes.
    """

    risk_tiers: tuple[float, float, float]
    title_length: IntFeature
    description_length: IntFeature
    acceptance_criteria_count: IntFeature
    scope_files_count: IntFeature
    max_files: IntFeature
    max_loc: IntFeature
    complexity_indicators: IntFeature
    prompt_tokens: IntFeature
    prior_failures: IntFeature
    external_deps_probability: float
    default_models: Mapping[str, float]

    def __post_init__(self) -> None:
        _freeze(self, "default_models")


@dataclass(frozen=True, slots=True)
class TaskProfile:
    """A task type: its contexts and its hidden quality surface.

    ``difficulty`` + ``difficulty_weights``·signals gives the difficulty ``d``.
    ``capability_weight`` scales how much a weak model loses:
    ``exp(-capability_weight·(1 - capability_eff)·(0.25 + 1.5·d))``.
    The answer needs ``needed_tokens + Σ needed_tokens_per[f]·x[f]`` tokens over the
    :data:`NUMERIC_FEATURES`; a truncated answer keeps ``rho^truncation_exponent`` of
    its quality and fails with extra probability ``truncation_failure·(1 - rho)²``.
    ``length_elasticity`` is how much a model lengthens its answer when given room;
    ``excess_penalty`` is the quality lost to rambling,
    ``exp(-excess_penalty·ln²(length/needed))``.  A concise prompt loses
    ``concise_penalty·d``; a detailed one loses ``detailed_penalty·(1 - d)``.
    ``ceiling`` is the best mean quality reachable; ``noise_concentration`` is the
    Beta concentration κ of the quality noise (larger is quieter).
    """

    name: str
    description: str
    contexts: ContextSpec
    difficulty: float
    difficulty_weights: Mapping[str, float]
    capability_weight: float
    temperature: Bump
    top_p: Bump
    frequency_penalty: Bump
    presence_penalty: Bump
    needed_tokens: float
    needed_tokens_per: Mapping[str, float]
    truncation_exponent: float
    truncation_failure: float
    length_elasticity: float
    excess_penalty: float
    concise_penalty: float
    detailed_penalty: float
    ceiling: float = 0.95
    noise_concentration: float = 20.0

    def __post_init__(self) -> None:
        _freeze(self, "difficulty_weights")
        _freeze(self, "needed_tokens_per")


def _freeze(profile: object, name: str) -> None:
    # A profile is shared by every World built from it; a copy behind a read-only
    # view keeps a later edit of the caller's dict from changing it silently.
    object.__setattr__(profile, name, MappingProxyType(dict(getattr(profile, name))))


# Per-task arrays aligned with SIGNALS / NUMERIC_FEATURES, built once so that a
# call does no dictionary work beyond reading the context.
@dataclass(frozen=True, slots=True)
class _Compiled:
    task: TaskProfile
    difficulty: tuple[float, ...]
    temperature_shift: tuple[float, ...]
    top_p_shift: tuple[float, ...]
    needed: tuple[float, ...]
    risk_cdf: tuple[float, ...]
    default_models: tuple[str, ...]
    default_model_cdf: tuple[float, ...]


# (mean quality, failure probability, latency ms, prompt tokens, completion tokens, cost, κ)
_Call = tuple[float, float, float, int, int, float, float]


class World:
    """The simulator's ground truth: contexts, noisy calls and their exact expectations.

    >>> world = World()
    >>> rng = np.random.default_rng(7)
    >>> context = world.sample_context("summarization", rng)
    >>> params = Params("gpt-small", temperature=0.3, max_tokens=800)
    >>> outcome = world.outcome("summarization", context, params, rng)
    >>> outcome.latency_ms > 0 and outcome.cost > 0
    True
    >>> 0.0 < world.expected_quality("summarization", context, params) < 1.0
    True

    Raises :class:`~paramloop.errors.ConfigError` for an invalid profile, an unknown
    model or a parameter out of range, :class:`~paramloop.errors.UnknownTaskTypeError`
    for an unknown task type and :class:`~paramloop.errors.FeatureError` for a
    missing or malformed context feature.
    """

    task_types: tuple[str, ...]
    models: tuple[str, ...]

    def __init__(
        self,
        *,
        models: Mapping[str, ModelProfile] | None = None,
        tasks: Mapping[str, TaskProfile] | None = None,
    ) -> None:
        model_map = dict(DEFAULT_MODELS if models is None else models)
        task_map = dict(DEFAULT_TASKS if tasks is None else tasks)
        if not model_map:
            raise ConfigError("models", "at least one model is required")
        if not task_map:
            raise ConfigError("tasks", "at least one task type is required")
        for key, model in model_map.items():
            if not isinstance(model, ModelProfile):
                raise ConfigError(f"models.{key}", f"must be a ModelProfile, got {model!r}")
            if model.name != key:
                raise ConfigError(
                    f"models.{key}", f"is keyed differently from its name {model.name!r}"
                )
        self._models: dict[str, ModelProfile] = model_map
        self._compiled: dict[str, _Compiled] = {}
        for key, task in task_map.items():
            if not isinstance(task, TaskProfile):
                raise ConfigError(f"tasks.{key}", f"must be a TaskProfile, got {task!r}")
            if task.name != key:
                raise ConfigError(
                    f"tasks.{key}", f"is keyed differently from its name {task.name!r}"
                )
            self._compiled[key] = _compile(task, frozenset(model_map))
        self.task_types = tuple(task_map)
        self.models = tuple(model_map)

    def describe(self, task_type: str) -> str:
        """A one-line human description of ``task_type``."""
        return self._task(task_type).task.description

    def sample_context(self, task_type: str, rng: np.random.Generator) -> dict[str, FeatureValue]:
        """Draw one request's published features from the task type's distribution."""
        compiled = self._task(task_type)
        spec = compiled.task.contexts
        risk = _TIERS[_pick(compiled.risk_cdf, rng)]
        numbers = {name: _draw(getattr(spec, name), rng) for name in NUMERIC_FEATURES}
        numbers["max_files"] = max(numbers["max_files"], numbers["scope_files_count"])
        model_name = compiled.default_models[_pick(compiled.default_model_cdf, rng)]
        context: dict[str, FeatureValue] = {"risk_tier": risk}
        context.update(numbers)
        context["has_external_deps"] = bool(rng.random() < spec.external_deps_probability)
        context["model_name"] = model_name
        return context

    def outcome(
        self,
        task_type: str,
        context: Mapping[str, object],
        params: Params,
        rng: np.random.Generator,
    ) -> Outcome:
        """One noisy call.  Draws exactly one uniform and one Beta variate from ``rng``."""
        quality, failure, latency, prompt, completion, cost, kappa = self._call(
            task_type, context, params
        )
        # Both draws happen on every call so that the stream stays aligned
        # across arms (common random numbers when comparing parameters).
        failed = rng.random() < failure
        drawn = float(rng.beta(quality * kappa, (1.0 - quality) * kappa))
        return Outcome(
            quality=None if failed else drawn,
            latency_ms=latency,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost=cost,
            error=bool(failed),
        )

    def expected_quality(
        self, task_type: str, context: Mapping[str, object], params: Params
    ) -> float:
        """The noise-free mean quality of a successful call, in (0, 1).

        A failed call carries no quality (``None``); :meth:`expected_reward`
        accounts for failures separately.
        """
        return self._call(task_type, context, params)[0]

    def failure_probability(
        self, task_type: str, context: Mapping[str, object], params: Params
    ) -> float:
        """The probability that the call fails (``Outcome.error``)."""
        return self._call(task_type, context, params)[1]

    def expected_reward(
        self,
        task_type: str,
        context: Mapping[str, object],
        params: Params,
        reward: RewardFunction,
    ) -> float:
        """The exact expectation of ``reward(outcome(...))`` over the noise.

        Latency, tokens and cost are deterministic, so the reward of a success is
        ``max(0, a + b·Q)`` with ``b = reward.quality/Σ weights`` (the upper clip
        never binds: the weighted sum is at most 1 and penalties only subtract).
        When ``a < 0`` the clip binds on part of the Beta's support, and the
        expectation uses the Beta tail: ``E[(a + bQ)⁺] = a·P(Q > t) + b·q̄·P(Q' > t)``
        with ``t = -a/b`` and ``Q' ~ Beta(alpha + 1, beta)``.
        """
        quality, failure, latency, prompt, completion, cost, kappa = self._call(
            task_type, context, params
        )

        def of(value: float | None, error: bool) -> float:
            return reward(
                Outcome(
                    quality=value,
                    latency_ms=latency,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    cost=cost,
                    error=error,
                )
            )

        failed = of(None, True)
        at_mean = of(quality, False)
        slope = reward.quality / (
            reward.quality + reward.latency + reward.tokens + reward.cost + reward.error
        )
        at_best = of(1.0, False)
        intercept = at_best - slope
        if slope == 0.0 or intercept >= 0.0:
            succeeded = at_mean
        elif at_best <= 0.0:
            succeeded = 0.0
        else:
            alpha, beta = quality * kappa, (1.0 - quality) * kappa
            threshold = -intercept / slope
            above = float(special.betainc(beta, alpha, 1.0 - threshold))
            above_tilted = float(special.betainc(beta, alpha + 1.0, 1.0 - threshold))
            succeeded = intercept * above + slope * quality * above_tilted
        return (1.0 - failure) * succeeded + failure * failed

    def _task(self, task_type: str) -> _Compiled:
        try:
            return self._compiled[task_type]
        except KeyError:
            raise UnknownTaskTypeError(task_type, list(self.task_types)) from None

    def _call(self, task_type: str, context: Mapping[str, object], params: Params) -> _Call:
        compiled = self._task(task_type)
        task = compiled.task
        model = self._models.get(params.model)
        if model is None:
            raise ConfigError(
                "params.model", f"unknown model {params.model!r}; known: {', '.join(self.models)}"
            )
        raw, signals = _read(context)
        difficulty = min(1.0, max(0.0, task.difficulty + _dot(compiled.difficulty, signals)))

        variant = params.prompt_variant
        if variant not in _VARIANT_LENGTH:
            raise ConfigError(
                "params.prompt_variant", f"must be 'concise', 'detailed' or None, got {variant!r}"
            )
        needed = (
            max(1.0, task.needed_tokens + _dot(compiled.needed, raw)) * _VARIANT_LENGTH[variant]
        )
        reasoning = model.reasoning_tokens * (0.5 + difficulty)
        budget = _budget(params.max_tokens, model)
        if params.max_tokens is not None and budget > needed + reasoning:
            # Room invites length: the answer stretches toward the budget.
            room = (budget - reasoning) / needed
            written = needed * room**task.length_elasticity
        else:
            written = needed
        completion = min(budget, round(reasoning + written))
        visible = max(0.0, completion - reasoning)
        coverage = min(1.0, visible / needed)

        factor = math.exp(
            -task.capability_weight
            * (1.0 - min(1.0, model.capability + model.hard_task_bonus * difficulty))
            * (0.25 + 1.5 * difficulty)
        )
        factor *= _sampling(compiled, model, params, signals)
        factor *= coverage**task.truncation_exponent
        if visible > needed:
            factor *= math.exp(-task.excess_penalty * math.log(visible / needed) ** 2)
        if variant == "concise":
            factor *= 1.0 - task.concise_penalty * difficulty
        elif variant == "detailed":
            factor *= 1.0 - task.detailed_penalty * (1.0 - difficulty)
        else:
            factor *= 1.0 - 0.5 * (
                task.concise_penalty * difficulty + task.detailed_penalty * (1.0 - difficulty)
            )
        quality = _QUALITY_FLOOR + (task.ceiling - _QUALITY_FLOOR) * factor

        prompt = int(raw[7]) + _VARIANT_PROMPT_TOKENS[variant]
        failure = min(
            _MAX_FAILURE,
            model.failure_rate * (1.0 + prompt / _FAILURE_PROMPT_SCALE)
            + task.truncation_failure * (1.0 - coverage) ** 2,
        )
        latency = (
            model.base_latency_ms
            + model.ms_per_1k_prompt_tokens * prompt / 1000.0
            + model.ms_per_token * completion
        )
        cost = (
            prompt * model.price_prompt_per_1k + completion * model.price_completion_per_1k
        ) / 1000.0
        return quality, failure, latency, prompt, completion, cost, task.noise_concentration


def _sampling(
    compiled: _Compiled, model: ModelProfile, params: Params, signals: tuple[float, ...]
) -> float:
    """The quality factor of temperature, top_p and both penalties."""
    temperature = params.temperature
    top_p = params.top_p
    frequency = params.frequency_penalty
    presence = params.presence_penalty
    if temperature is not None:
        _check_param("params.temperature", temperature, 0.0, 2.0)
    if top_p is not None:
        _check_param("params.top_p", top_p, 0.0, 1.0)
        if top_p == 0.0:
            raise ConfigError("params.top_p", "must be > 0, got 0.0")
    if frequency is not None:
        _check_param("params.frequency_penalty", frequency, -2.0, 2.0)
    if presence is not None:
        _check_param("params.presence_penalty", presence, -2.0, 2.0)
    if not model.accepts_sampling:
        return 1.0
    task = compiled.task
    t = model.default_temperature if temperature is None else temperature
    p = 1.0 if top_p is None else top_p
    effective = t * (1.0 - _TOP_P_DAMPING + _TOP_P_DAMPING * p)
    factor = _bump(task.temperature, effective, _dot(compiled.temperature_shift, signals))
    factor *= _bump(task.top_p, p, _dot(compiled.top_p_shift, signals))
    factor *= _bump(task.frequency_penalty, 0.0 if frequency is None else frequency, 0.0)
    factor *= _bump(task.presence_penalty, 0.0 if presence is None else presence, 0.0)
    return factor


def _bump(bump: Bump, value: float, shift: float) -> float:
    offset = value - (bump.optimum + shift)
    width = bump.width_below if offset < 0.0 else bump.width_above
    return 1.0 - bump.weight * (1.0 - math.exp(-0.5 * (offset / width) ** 2))


def _budget(max_tokens: int | None, model: ModelProfile) -> int:
    if max_tokens is None:
        return model.max_output_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int | np.integer):
        raise ConfigError("params.max_tokens", f"must be a whole number, got {max_tokens!r}")
    if not 1 <= max_tokens <= model.max_output_tokens:
        raise ConfigError(
            "params.max_tokens",
            f"must be in [1, {model.max_output_tokens}] for model {model.name!r}, "
            f"got {max_tokens!r}",
        )
    return int(max_tokens)


def _read(context: Mapping[str, object]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The raw numeric features (in NUMERIC_FEATURES order) and the signals."""
    raw = tuple(_number(context, name) for name in NUMERIC_FEATURES)
    tier = _feature(context, "risk_tier")
    risk = RISK_TIERS.get(tier) if isinstance(tier, str) else None
    if risk is None:
        raise FeatureError("risk_tier", f"must be one of {', '.join(RISK_TIERS)}, got {tier!r}")
    deps = _feature(context, "has_external_deps")
    if not isinstance(deps, bool | np.bool_):
        raise FeatureError("has_external_deps", f"must be true or false, got {deps!r}")
    _, description, criteria, files, _, loc, complexity, prompt, failures = raw
    signals = (
        risk,
        complexity / (complexity + 3.0),
        failures / (failures + 1.5),
        min(1.0, math.log1p(prompt / 250.0) / _LOG_PROMPT_FULL),
        min(1.0, 0.7 * math.log1p(loc / 10.0) / _LOG_LOC_FULL + 0.3 * files / (files + 8.0)),
        criteria / (criteria + 4.0),
        1.0 if deps else 0.0,
        description / (description + 1000.0),
    )
    return raw, signals


# A prompt of 32k tokens, or a change of 5,000 lines, saturates its signal.
_LOG_PROMPT_FULL: Final = math.log1p(32_000 / 250.0)
_LOG_LOC_FULL: Final = math.log1p(5_000 / 10.0)


def _feature(context: Mapping[str, object], name: str) -> object:
    try:
        return context[name]
    except KeyError:
        raise FeatureError(
            name, "is missing; the simulator reads every published task feature"
        ) from None


def _number(context: Mapping[str, object], name: str) -> float:
    value = _feature(context, name)
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise FeatureError(name, f"must be a number, got {value!r}")
    number = float(value)
    if not 0.0 <= number < math.inf:
        raise FeatureError(name, f"must be a finite number >= 0, got {value!r}")
    return number


def _dot(weights: tuple[float, ...], values: tuple[float, ...]) -> float:
    return math.fsum(map(operator.mul, weights, values))


def _draw(feature: IntFeature, rng: np.random.Generator) -> int:
    if feature.kind == "constant":
        value = round(feature.center)
    elif feature.kind == "poisson":
        value = int(rng.poisson(feature.center))
    else:
        value = round(feature.center * math.exp(feature.spread * float(rng.standard_normal())))
    return min(feature.high, max(feature.low, value))


def _compile(task: TaskProfile, models: frozenset[str]) -> _Compiled:
    """Validate ``task`` and align its weights with SIGNALS and NUMERIC_FEATURES."""
    where = f"tasks.{task.name}"
    if not task.name:
        raise ConfigError("tasks", "a task type name must be a non-empty string")
    if not task.description:
        raise ConfigError(f"{where}.description", "must be a non-empty string")
    _check_range(f"{where}.difficulty", task.difficulty, 0.0, 1.0)
    _check_range(f"{where}.capability_weight", task.capability_weight, 0.0, math.inf)
    _check_range(f"{where}.needed_tokens", task.needed_tokens, 1.0, math.inf)
    _check_range(f"{where}.truncation_exponent", task.truncation_exponent, 0.0, math.inf)
    _check_range(f"{where}.truncation_failure", task.truncation_failure, 0.0, 1.0)
    _check_range(f"{where}.length_elasticity", task.length_elasticity, 0.0, 1.0)
    _check_range(f"{where}.excess_penalty", task.excess_penalty, 0.0, math.inf)
    _check_range(f"{where}.concise_penalty", task.concise_penalty, 0.0, 1.0)
    _check_range(f"{where}.detailed_penalty", task.detailed_penalty, 0.0, 1.0)
    _check_range(f"{where}.ceiling", task.ceiling, _QUALITY_FLOOR, 0.999)
    if task.ceiling <= _QUALITY_FLOOR:
        raise ConfigError(f"{where}.ceiling", f"must be > {_QUALITY_FLOOR}, got {task.ceiling!r}")
    _check_range(f"{where}.noise_concentration", task.noise_concentration, 0.5, math.inf)
    for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
        bump: Bump = getattr(task, name)
        _check_range(f"{where}.{name}.optimum", bump.optimum, -2.0, 2.0)
        _check_range(f"{where}.{name}.weight", bump.weight, 0.0, 1.0)
        for side in ("width_below", "width_above"):
            _check_range(f"{where}.{name}.{side}", getattr(bump, side), 1e-6, math.inf)
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(task, name).shift:
            raise ConfigError(f"{where}.{name}.shift", "penalty optima do not move with context")
    for name in NUMERIC_FEATURES:
        feature: IntFeature = getattr(task.contexts, name)
        fwhere = f"{where}.contexts.{name}"
        if feature.kind not in ("constant", "poisson", "lognormal"):
            raise ConfigError(
                f"{fwhere}.kind", f"must be constant, poisson or lognormal, got {feature.kind!r}"
            )
        _check_range(f"{fwhere}.center", feature.center, 0.0, 1e9)
        _check_range(f"{fwhere}.spread", feature.spread, 0.0, 5.0)
        _check_int(f"{fwhere}.low", feature.low, 0)
        _check_int(f"{fwhere}.high", feature.high, feature.low)
    tiers = task.contexts.risk_tiers
    if len(tiers) != 3:
        raise ConfigError(
            f"{where}.contexts.risk_tiers", "needs three probabilities (low, medium, high)"
        )
    for i, value in enumerate(tiers):
        _check_range(f"{where}.contexts.risk_tiers[{i}]", value, 0.0, 1.0)
    if abs(sum(tiers) - 1.0) > 1e-9:
        raise ConfigError(f"{where}.contexts.risk_tiers", f"must sum to 1, got {sum(tiers)!r}")
    _check_range(
        f"{where}.contexts.external_deps_probability",
        task.contexts.external_deps_probability,
        0.0,
        1.0,
    )
    defaults = task.contexts.default_models
    if not defaults:
        raise ConfigError(f"{where}.contexts.default_models", "needs at least one model")
    for name, value in defaults.items():
        if name not in models:
            raise ConfigError(
                f"{where}.contexts.default_models.{name}",
                f"is not a configured model; known: {', '.join(sorted(models))}",
            )
        _check_range(f"{where}.contexts.default_models.{name}", value, 0.0, math.inf)
    if sum(defaults.values()) <= 0.0:
        raise ConfigError(f"{where}.contexts.default_models", "weights must not all be 0")
    return _Compiled(
        task=task,
        difficulty=_align(f"{where}.difficulty_weights", task.difficulty_weights, SIGNALS),
        temperature_shift=_align(f"{where}.temperature.shift", task.temperature.shift, SIGNALS),
        top_p_shift=_align(f"{where}.top_p.shift", task.top_p.shift, SIGNALS),
        needed=_align(f"{where}.needed_tokens_per", task.needed_tokens_per, NUMERIC_FEATURES),
        risk_cdf=_cumulative(tiers),
        default_models=tuple(defaults),
        default_model_cdf=_cumulative(defaults.values()),
    )


def _cumulative(weights: Iterable[float]) -> tuple[float, ...]:
    return tuple(itertools.accumulate(float(weight) for weight in weights))


def _pick(cdf: tuple[float, ...], rng: np.random.Generator) -> int:
    """An index drawn with probabilities proportional to the steps of ``cdf``.

    ``bisect_right`` steps over zero-weight entries; ``min`` guards the rounding
    case where ``u·total`` lands exactly on the total.
    """
    return min(len(cdf) - 1, bisect.bisect_right(cdf, rng.random() * cdf[-1]))


def _align(where: str, weights: Mapping[str, float], names: tuple[str, ...]) -> tuple[float, ...]:
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", f"unknown name; allowed: {', '.join(names)}")
    for name, value in weights.items():
        _check_range(f"{where}.{name}", value, -math.inf, math.inf)
    return tuple(float(weights.get(name, 0.0)) for name in names)


def _check_range(where: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(where, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(where, f"must be finite, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(where, f"must be in [{low}, {high}], got {value!r}")


def _check_int(where: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(where, f"must be a whole number >= {low}, got {value!r}")


def _check_param(where: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:  # also refuses NaN
        raise ConfigError(where, f"must be in [{low}, {high}], got {value!r}")


def _flat(center: float, low: int = 0, high: int = 1_000_000) -> IntFeature:
    return IntFeature("poisson", center, low=low, high=high)


def _spread(center: float, spread: float, low: int, high: int) -> IntFeature:
    return IntFeature("lognormal", center, spread, low, high)


_NONE: Final = IntFeature("constant", 0.0)
_TITLE: Final = _spread(45, 0.35, 8, 150)

#: The built-in models: a capable expensive one, a cheap fast one and a reasoning model.
DEFAULT_MODELS: Final[Mapping[str, ModelProfile]] = MappingProxyType(
    {
        "gpt-large": ModelProfile(
            name="gpt-large",
            price_prompt_per_1k=0.0025,
            price_completion_per_1k=0.010,
            base_latency_ms=500.0,
            ms_per_token=15.0,
            failure_rate=0.01,
            capability=0.88,
            ms_per_1k_prompt_tokens=40.0,
        ),
        "gpt-small": ModelProfile(
            name="gpt-small",
            price_prompt_per_1k=0.00015,
            price_completion_per_1k=0.0006,
            base_latency_ms=250.0,
            ms_per_token=7.0,
            failure_rate=0.015,
            capability=0.55,
            ms_per_1k_prompt_tokens=20.0,
        ),
        "reasoner": ModelProfile(
            name="reasoner",
            price_prompt_per_1k=0.003,
            price_completion_per_1k=0.012,
            base_latency_ms=1200.0,
            ms_per_token=10.0,
            failure_rate=0.02,
            capability=0.80,
            hard_task_bonus=0.20,
            reasoning_tokens=300,
            accepts_sampling=False,
            ms_per_1k_prompt_tokens=50.0,
            max_output_tokens=32_768,
        ),
    }
)

#: The built-in task types and their hidden quality surfaces.
DEFAULT_TASKS: Final[Mapping[str, TaskProfile]] = MappingProxyType(
    {
        "code_review": TaskProfile(
            name="code_review",
            description="Review a diff and point out defects; wants near-deterministic sampling, "
            "more so for risky changes.",
            contexts=ContextSpec(
                risk_tiers=(0.5, 0.35, 0.15),
                title_length=_TITLE,
                description_length=_spread(600, 0.7, 0, 8_000),
                acceptance_criteria_count=_flat(2, high=12),
                scope_files_count=_spread(4, 0.8, 1, 60),
                max_files=_spread(6, 0.6, 1, 80),
                max_loc=_spread(300, 0.8, 20, 5_000),
                complexity_indicators=_flat(2, high=15),
                prompt_tokens=_spread(3_000, 0.6, 300, 30_000),
                prior_failures=_flat(0.3, high=8),
                external_deps_probability=0.3,
                default_models={"gpt-large": 0.8, "gpt-small": 0.2},
            ),
            difficulty=0.05,
            difficulty_weights={
                "risk": 0.35,
                "complexity": 0.2,
                "scope": 0.25,
                "deps": 0.1,
                "failures": 0.1,
            },
            capability_weight=1.3,
            temperature=Bump(0.3, 0.25, 0.3, 0.5, {"risk": -0.2, "complexity": -0.05}),
            top_p=Bump(0.9, 0.15, 0.15, 0.10),
            frequency_penalty=Bump(0.0, 0.3, 0.4, 0.20),
            presence_penalty=Bump(0.0, 0.5, 0.5, 0.08),
            needed_tokens=120.0,
            needed_tokens_per={
                "scope_files_count": 20.0,
                "max_loc": 0.25,
                "complexity_indicators": 15.0,
            },
            truncation_exponent=1.5,
            truncation_failure=0.1,
            length_elasticity=0.1,
            excess_penalty=0.1,
            concise_penalty=0.35,
            detailed_penalty=0.08,
            noise_concentration=25.0,
        ),
        "code_generation": TaskProfile(
            name="code_generation",
            description="Write code for a scoped change; truncated code is useless, and risk, "
            "complexity and external dependencies call for colder sampling.",
            contexts=ContextSpec(
                risk_tiers=(0.4, 0.4, 0.2),
                title_length=_TITLE,
                description_length=_spread(800, 0.6, 50, 10_000),
                acceptance_criteria_count=_flat(3, high=15),
                scope_files_count=_spread(3, 0.7, 1, 40),
                max_files=_spread(5, 0.5, 1, 60),
                max_loc=_spread(200, 0.8, 10, 3_000),
                complexity_indicators=_flat(2.5, high=15),
                prompt_tokens=_spread(1_500, 0.6, 200, 20_000),
                prior_failures=_flat(0.5, high=8),
                external_deps_probability=0.35,
                default_models={"gpt-large": 0.85, "gpt-small": 0.15},
            ),
            difficulty=0.1,
            difficulty_weights={
                "risk": 0.3,
                "complexity": 0.25,
                "scope": 0.2,
                "deps": 0.1,
                "criteria": 0.1,
                "failures": 0.1,
            },
            capability_weight=1.0,
            temperature=Bump(
                0.3, 0.2, 0.3, 0.55, {"risk": -0.15, "deps": -0.05, "complexity": -0.05}
            ),
            top_p=Bump(0.9, 0.15, 0.15, 0.10),
            frequency_penalty=Bump(0.0, 0.3, 0.4, 0.20),
            presence_penalty=Bump(0.0, 0.5, 0.5, 0.08),
            needed_tokens=80.0,
            needed_tokens_per={"max_loc": 2.0, "scope_files_count": 30.0},
            truncation_exponent=2.5,
            truncation_failure=0.3,
            length_elasticity=0.05,
            excess_penalty=0.0,
            concise_penalty=0.35,
            detailed_penalty=0.06,
            noise_concentration=20.0,
        ),
        "creative_writing": TaskProfile(
            name="creative_writing",
            description="Write marketing or story copy; wants a warm temperature (repetitive when "
            "cold, incoherent when hot) and a little presence penalty.",
            contexts=ContextSpec(
                risk_tiers=(0.7, 0.25, 0.05),
                title_length=_TITLE,
                description_length=_spread(400, 0.6, 20, 5_000),
                acceptance_criteria_count=_flat(1.5, high=10),
                scope_files_count=_NONE,
                max_files=_NONE,
                max_loc=_NONE,
                complexity_indicators=_flat(1, high=10),
                prompt_tokens=_spread(400, 0.5, 50, 4_000),
                prior_failures=_flat(0.2, high=5),
                external_deps_probability=0.0,
                default_models={"gpt-large": 0.7, "gpt-small": 0.3},
            ),
            difficulty=0.15,
            difficulty_weights={"description": 0.2, "criteria": 0.15, "complexity": 0.1},
            capability_weight=1.2,
            temperature=Bump(1.1, 0.35, 0.2, 0.6, {"risk": -0.25, "criteria": -0.2}),
            top_p=Bump(0.95, 0.15, 0.15, 0.15),
            frequency_penalty=Bump(0.3, 0.4, 0.5, 0.10),
            presence_penalty=Bump(0.5, 0.5, 0.5, 0.10),
            needed_tokens=250.0,
            needed_tokens_per={"description_length": 0.3, "acceptance_criteria_count": 20.0},
            truncation_exponent=1.2,
            truncation_failure=0.05,
            length_elasticity=0.15,
            excess_penalty=0.05,
            concise_penalty=0.15,
            detailed_penalty=0.04,
            noise_concentration=12.0,
        ),
        "summarization": TaskProfile(
            name="summarization",
            description="Summarize a long document; quality saturates once the summary fits, so "
            "extra room only adds length, latency and cost.",
            contexts=ContextSpec(
                risk_tiers=(0.6, 0.3, 0.1),
                title_length=_TITLE,
                description_length=_spread(200, 0.5, 0, 2_000),
                acceptance_criteria_count=_flat(1, high=8),
                scope_files_count=_NONE,
                max_files=_NONE,
                max_loc=_NONE,
                complexity_indicators=_flat(1, high=10),
                prompt_tokens=_spread(6_000, 0.7, 500, 60_000),
                prior_failures=_flat(0.2, high=5),
                external_deps_probability=0.0,
                default_models={"gpt-large": 0.6, "gpt-small": 0.4},
            ),
            difficulty=0.05,
            difficulty_weights={"prompt": 0.3, "complexity": 0.1, "risk": 0.1},
            capability_weight=0.35,
            temperature=Bump(0.35, 0.4, 0.4, 0.25, {"prompt": -0.15}),
            top_p=Bump(1.0, 0.3, 0.3, 0.05),
            frequency_penalty=Bump(0.1, 0.5, 0.5, 0.05),
            presence_penalty=Bump(0.0, 0.6, 0.6, 0.04),
            needed_tokens=50.0,
            needed_tokens_per={"prompt_tokens": 0.06},
            truncation_exponent=1.5,
            truncation_failure=0.05,
            length_elasticity=0.25,
            excess_penalty=0.3,
            concise_penalty=0.02,
            detailed_penalty=0.12,
            noise_concentration=30.0,
        ),
        "classification": TaskProfile(
            name="classification",
            description="Assign a label; a cold, cheap model with a tiny token budget does it, and "
            "a cut-off label is an error.",
            contexts=ContextSpec(
                risk_tiers=(0.6, 0.3, 0.1),
                title_length=_TITLE,
                description_length=_spread(150, 0.6, 0, 2_000),
                acceptance_criteria_count=_flat(1, high=8),
                scope_files_count=_NONE,
                max_files=_NONE,
                max_loc=_NONE,
                complexity_indicators=_flat(0.5, high=8),
                prompt_tokens=_spread(500, 0.5, 50, 4_000),
                prior_failures=_flat(0.1, high=5),
                external_deps_probability=0.0,
                default_models={"gpt-large": 0.5, "gpt-small": 0.5},
            ),
            difficulty=0.02,
            difficulty_weights={"complexity": 0.15, "criteria": 0.1},
            capability_weight=0.15,
            temperature=Bump(0.0, 0.3, 0.3, 0.3),
            top_p=Bump(1.0, 0.3, 0.3, 0.05),
            frequency_penalty=Bump(0.0, 0.5, 0.5, 0.05),
            presence_penalty=Bump(0.0, 0.6, 0.6, 0.04),
            needed_tokens=6.0,
            needed_tokens_per={"acceptance_criteria_count": 2.0},
            truncation_exponent=3.0,
            truncation_failure=0.8,
            length_elasticity=0.02,
            excess_penalty=0.0,
            concise_penalty=0.01,
            detailed_penalty=0.06,
            noise_concentration=10.0,
        ),
        "extraction": TaskProfile(
            name="extraction",
            description="Extract fields as JSON; deterministic sampling, no repetition penalty "
            "and enough tokens for every field or the JSON breaks.",
            contexts=ContextSpec(
                risk_tiers=(0.5, 0.35, 0.15),
                title_length=_TITLE,
                description_length=_spread(250, 0.6, 0, 3_000),
                acceptance_criteria_count=_flat(5, low=1, high=30),
                scope_files_count=_NONE,
                max_files=_NONE,
                max_loc=_NONE,
                complexity_indicators=_flat(1, high=10),
                prompt_tokens=_spread(1_500, 0.7, 100, 20_000),
                prior_failures=_flat(0.2, high=5),
                external_deps_probability=0.0,
                default_models={"gpt-large": 0.5, "gpt-small": 0.5},
            ),
            difficulty=0.05,
            difficulty_weights={"criteria": 0.2, "prompt": 0.15, "complexity": 0.1},
            capability_weight=0.35,
            temperature=Bump(0.0, 0.3, 0.3, 0.35),
            top_p=Bump(1.0, 0.3, 0.3, 0.05),
            frequency_penalty=Bump(0.0, 0.3, 0.3, 0.15),
            presence_penalty=Bump(0.0, 0.5, 0.5, 0.05),
            needed_tokens=30.0,
            needed_tokens_per={"acceptance_criteria_count": 18.0, "prompt_tokens": 0.01},
            truncation_exponent=3.0,
            truncation_failure=0.9,
            length_elasticity=0.05,
            excess_penalty=0.1,
            concise_penalty=0.02,
            detailed_penalty=0.05,
            noise_concentration=20.0,
        ),
        "qa": TaskProfile(
            name="qa",
            description="Answer a question; medium temperature, and complex or previously failed "
            "questions are worth a stronger model.",
            contexts=ContextSpec(
                risk_tiers=(0.5, 0.35, 0.15),
                title_length=_TITLE,
                description_length=_spread(300, 0.8, 0, 5_000),
                acceptance_criteria_count=_flat(1, high=8),
                scope_files_count=_NONE,
                max_files=_NONE,
                max_loc=_NONE,
                complexity_indicators=_flat(2, high=15),
                prompt_tokens=_spread(1_200, 0.8, 50, 30_000),
                prior_failures=_flat(0.6, high=8),
                external_deps_probability=0.1,
                default_models={"gpt-large": 0.6, "gpt-small": 0.4},
            ),
            difficulty=0.05,
            difficulty_weights={"complexity": 0.45, "failures": 0.4, "risk": 0.1, "prompt": 0.1},
            capability_weight=1.4,
            temperature=Bump(0.7, 0.3, 0.35, 0.35, {"failures": -0.3, "complexity": -0.15}),
            top_p=Bump(1.0, 0.3, 0.3, 0.05),
            frequency_penalty=Bump(0.1, 0.5, 0.5, 0.08),
            presence_penalty=Bump(0.0, 0.6, 0.6, 0.04),
            needed_tokens=120.0,
            needed_tokens_per={"complexity_indicators": 35.0, "description_length": 0.05},
            truncation_exponent=1.5,
            truncation_failure=0.1,
            length_elasticity=0.1,
            excess_penalty=0.1,
            concise_penalty=0.4,
            detailed_penalty=0.1,
            noise_concentration=15.0,
        ),
    }
)
