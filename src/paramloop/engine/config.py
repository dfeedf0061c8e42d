"""Task configuration: one :class:`TaskConfig` per task type, from code or from a TOML file.

A TOML file looks like::

    [models."o3-mini"]
    rejects = ["temperature", "top_p"]
    max_tokens_field = "max_completion_tokens"

    [tasks.summarize]
    policy = "linucb"                  # any registered policy (BANDIT_POLICY)
    exploration = 0.0                  # optional uniform floor (default: the policy's own)
    preset = "published"               # opt into the published task features
    undeclared = "hash"                # optional: hash context keys no feature declares
    reward_wait_s = 3600               # outcomes later than this are refused
    default_reward = 0.0               # optional: given when no outcome arrived in time
    baseline = { model = "gpt-small", temperature = 0.3, max_tokens = 256 }
    space = { temperature = [0.1, 0.2, 0.3, 0.4, 0.5], max_tokens = [128, 256, 384] }
    choices = { route = ["direct", "rag"] }   # generic categorical dimensions (baseline.choices)
    trust_region = { temperature = 0.2, max_tokens = 200 }
    reward = { quality = 0.7, latency = 0.1, cost = 0.2, max_latency_ms = 20000 }
    policy_params = { alpha = 0.5 }

Every key is checked: a typo is an error naming its dotted path, never ignored.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from paramloop.core.budget import BudgetLimits
from paramloop.core.features import (
    BoolFeature,
    CategoricalFeature,
    CountFeature,
    Feature,
    Featurizer,
    NumericFeature,
    published_features,
)
from paramloop.core.monitor import SLOConfig
from paramloop.core.policies import POLICIES, ArmDesign, Policy, make_policy
from paramloop.core.reward import RewardFunction
from paramloop.core.rollout import RolloutPlan
from paramloop.core.space import ModelRule, ParameterSpace, TrustRegion
from paramloop.engine.rollout import DriftSettings, RolloutSettings
from paramloop.engine.variants import PromptVariant, parse_variants
from paramloop.errors import ConfigError
from paramloop.types import Params

DEFAULT_POLICY = "linucb"
T = TypeVar("T")


@dataclass(frozen=True)
class TaskConfig:
    """Everything paramloop knows about one task type.

    ``exploration`` is a share of uniform exploration mixed into the policy's
    distribution (every feasible arm gets at least ``exploration / arms``);
    ``None`` takes the policy's own default (0 for LinUCB and SquareCB, whose
    distributions keep every arm supported by themselves; 0.05 for the others);
    the baseline policy never explores.  ``reward_wait_s`` is the reward wait
    window; ``default_reward`` (in the reward range) is recorded for decisions
    whose outcome did not arrive within it, or nothing when ``None``.
    ``snapshot_every`` is how many updates pass between policy snapshots.
    """

    name: str
    space: ParameterSpace
    featurizer: Featurizer
    reward: RewardFunction = field(default_factory=RewardFunction)
    policy: str = DEFAULT_POLICY
    policy_params: Mapping[str, Any] = field(default_factory=dict)
    exploration: float | None = None
    reward_wait_s: float = 3600.0
    default_reward: float | None = None
    snapshot_every: int = 1_000
    #: The rollout plan, SLO rules and drift detection of this task type (see engine.rollout).
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    #: Daily token and cost budgets (``None``: no budget).
    budget: BudgetLimits | None = None
    #: The prompt variants the arms' ``prompt_variant`` names (see engine.variants).
    variants: Mapping[str, PromptVariant] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"tasks.{self.name}"
        if not self.name or not isinstance(self.name, str):
            raise ConfigError("tasks", "a task type needs a non-empty name")
        if self.policy not in POLICIES:
            raise ConfigError(
                f"{where}.policy",
                f"unknown policy {self.policy!r}; available: {', '.join(sorted(POLICIES))}",
            )
        if self.exploration is not None:
            _check_range(f"{where}.exploration", self.exploration, 0.0, 1.0)
        _check_range(f"{where}.reward_wait_s", self.reward_wait_s, 0.0, math.inf, open_high=True)
        if self.default_reward is not None:
            low, high = self.reward.range
            _check_range(f"{where}.default_reward", self.default_reward, low, high)
        if (
            isinstance(self.snapshot_every, bool)
            or not isinstance(self.snapshot_every, int)
            or self.snapshot_every < 1
        ):
            raise ConfigError(
                f"{where}.snapshot_every", f"must be an integer >= 1, got {self.snapshot_every!r}"
            )
        if self.variants:
            undeclared = sorted(
                {a.prompt_variant for a in self.space.arms if a.prompt_variant is not None}
                - set(self.variants)
            )
            if undeclared:
                raise ConfigError(
                    f"{where}.variants",
                    f"prompt variant {undeclared[0]!r} is in the space but not declared here",
                )
        self.new_policy()  # validates policy_params now, not at the first request

    def variant(self, name: str | None) -> PromptVariant | None:
        """The declared variant ``name`` (``None`` for no variant or an undeclared one)."""
        return None if name is None else self.variants.get(name)

    @property
    def design(self) -> ArmDesign:
        return ArmDesign(
            features=self.space.features,
            n_interacting=self.space.n_interacting,
            context_dim=self.featurizer.dim,
            baseline=self.space.baseline_arm,
            scaled=self.featurizer.scaled,
            featurizer=self.featurizer.digest,
        )

    @property
    def effective_exploration(self) -> float:
        if self.policy == "baseline":
            return 0.0
        if self.exploration is None:
            return POLICIES[self.policy].default_exploration
        return self.exploration

    @property
    def keeps_support(self) -> bool:
        """Whether a decision that explored (propensity < 1) had every feasible arm in its support."""
        return self.effective_exploration > 0.0 or self.new_policy().keeps_support

    def new_policy(self) -> Policy:
        return make_policy(self.policy, self.design, **dict(self.policy_params))


#: Feature presets a task type may opt into.
PRESETS = ("published",)


def task(
    name: str,
    *,
    baseline: Params,
    grids: Mapping[str, Sequence[float | int | str | None]] | None = None,
    choices: Mapping[str, Sequence[str] | Mapping[str, Mapping[str, float]]] | None = None,
    model_rules: Sequence[ModelRule] = (),
    trust_region: TrustRegion | None = None,
    features: Sequence[Feature] = (),
    preset: str | None = None,
    undeclared: str = "error",
    hash_buckets: int = 32,
    stop: Sequence[str] = (),
    **options: Any,
) -> TaskConfig:
    """Build a :class:`TaskConfig` from a baseline, a space and the context's features.

    ``features`` declares the context; ``preset="published"`` adds the published
    task features first (model levels from the space); ``undeclared="hash"``
    accepts context keys no feature declares (see :class:`Featurizer`).
    ``choices`` adds generic categorical dimensions (see :class:`ParameterSpace`).
    """
    space = ParameterSpace(
        baseline=baseline,
        grids=grids,
        choices=choices,
        model_rules=model_rules,
        trust_region=trust_region,
        stop=stop,
    )
    declared: tuple[Feature, ...] = tuple(features)
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError("preset", f"must be one of {', '.join(PRESETS)}, got {preset!r}")
        models = tuple(sorted({arm.model for arm in space.arms}))
        declared = (*published_features(models), *declared)
    featurizer = Featurizer(declared, undeclared=undeclared, hash_buckets=hash_buckets)
    return TaskConfig(name=name, space=space, featurizer=featurizer, **options)


# -- TOML ---------------------------------------------------------------------------------

_TASK_KEYS = {
    "variants",
    "policy",
    "policy_params",
    "exploration",
    "reward_wait_s",
    "default_reward",
    "snapshot_every",
    "baseline",
    "space",
    "trust_region",
    "reward",
    "features",
    "preset",
    "undeclared",
    "hash_buckets",
    "choices",
    "stop",
    "rollout",
    "slo",
    "drift",
    "budget",
}
_REWARD_KEYS = {f.name for f in fields(RewardFunction)}
_RULE_KEYS = {"rejects", "fixed", "max_tokens_field", "max_tokens_limit"}


def load_config(path: str | Path) -> dict[str, TaskConfig]:
    """Read task configurations from a TOML file (see the module docstring)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("config", f"file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
    return parse_config(data)


def parse_config(data: Mapping[str, Any]) -> dict[str, TaskConfig]:
    """Task configurations from an already parsed TOML document."""
    _only(data, {"models", "tasks", "defaults"}, "")
    rules = [_model_rule(name, body) for name, body in _table(data, "models").items()]
    defaults = _table(data, "defaults")
    _only(defaults, _TASK_KEYS - {"baseline", "space"}, "defaults")
    tasks = _table(data, "tasks")
    if not tasks:
        raise ConfigError("tasks", "declare at least one task type, e.g. [tasks.summarize]")
    return {name: _task(name, {**defaults, **_table(tasks, name)}, rules) for name in tasks}


def _task(name: str, body: Mapping[str, Any], rules: Sequence[ModelRule]) -> TaskConfig:
    where = f"tasks.{name}"
    _only(body, _TASK_KEYS, where)
    baseline_table = body.get("baseline")
    if not isinstance(baseline_table, Mapping):
        raise ConfigError(f"{where}.baseline", "is required: a table with at least `model`")
    known = {f.name for f in fields(Params)} - {"max_tokens_field", "seed", "stop"}
    _only(baseline_table, known, f"{where}.baseline")
    if not isinstance(baseline_table.get("model"), str):
        raise ConfigError(f"{where}.baseline.model", "is required and must be a string")
    baseline = Params(**baseline_table)
    reward_table = body.get("reward", {})
    _only(reward_table, _REWARD_KEYS, f"{where}.reward")
    radius = dict(body.get("trust_region", {}))
    allowed = {k: tuple(radius.pop(k)) for k in ("model", "prompt_variant") if k in radius}
    options: dict[str, Any] = {
        k: body[k]
        for k in (
            "policy",
            "policy_params",
            "exploration",
            "reward_wait_s",
            "default_reward",
            "snapshot_every",
        )
        if k in body
    }
    try:
        options["rollout"] = RolloutSettings(
            plan=RolloutPlan.from_mapping(_table(body, "rollout"), f"{where}.rollout"),
            slo=_dataclass(SLOConfig, _table(body, "slo"), f"{where}.slo"),
            drift=_dataclass(DriftSettings, _table(body, "drift"), f"{where}.drift"),
        )
        if "budget" in body:
            options["budget"] = _dataclass(BudgetLimits, _table(body, "budget"), f"{where}.budget")
    except ConfigError as exc:
        field_name = exc.field.split(".", 1)[-1]
        if exc.field.startswith("tasks."):
            raise
        raise ConfigError(f"{where}.{exc.field.split('.')[0]}.{field_name}", exc.problem) from None
    if "variants" in body:
        options["variants"] = parse_variants(f"{where}.variants", body["variants"])
    named = [*(_table(body, "space").get("prompt_variant") or []), baseline.prompt_variant]
    used = {v for v in named if v is not None}
    if used - set(options.get("variants", {})):
        missing = sorted(str(v) for v in used - set(options.get("variants", {})))[0]
        raise ConfigError(
            f"{where}.variants.{missing}",
            "the space names this prompt variant but does not declare it: give it a system "
            "instruction, a prefix or a suffix of the last user message (or the proxy could "
            "not apply it)",
        )
    try:
        return task(
            name,
            baseline=baseline,
            grids=body.get("space"),
            choices=body.get("choices"),
            model_rules=rules,
            trust_region=TrustRegion(radius=radius, allowed=allowed)
            if "trust_region" in body
            else None,
            features=[_feature(where, spec) for spec in body.get("features", [])],
            preset=body.get("preset"),
            undeclared=body.get("undeclared", "error"),
            hash_buckets=body.get("hash_buckets", 32),
            stop=tuple(body.get("stop", ())),
            reward=RewardFunction(**reward_table),
            **options,
        )
    except ConfigError as exc:
        if exc.field.startswith("tasks."):
            raise
        raise ConfigError(f"{where}.{exc.field}", exc.problem) from None


def _dataclass(cls: Callable[..., T], body: Mapping[str, Any], where: str) -> T:
    """``cls(**body)`` with unknown keys and wrong types named by their dotted path."""
    _only(body, {f.name for f in fields(cls)}, where)  # type: ignore[arg-type]
    try:
        return cls(**dict(body))
    except TypeError as exc:
        raise ConfigError(where, f"invalid value: {exc}") from None


def _feature(where: str, spec: Any) -> Feature:
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ConfigError(
            f"{where}.features", "each feature is a table with a string `name` and a `kind`"
        )
    kinds: dict[str, tuple[type[Any], set[str]]] = {
        "numeric": (NumericFeature, {"lower", "upper", "log", "default", "integer"}),
        "bool": (BoolFeature, {"default"}),
        "count": (CountFeature, set()),
        "categorical": (CategoricalFeature, {"levels", "default", "unknown", "buckets"}),
    }
    kind = spec.get("kind")
    if kind not in kinds:
        raise ConfigError(
            f"{where}.features.{spec['name']}.kind",
            f"must be one of {', '.join(kinds)}; got {kind!r}",
        )
    cls, allowed = kinds[kind]
    body = {k: v for k, v in spec.items() if k not in ("name", "kind")}
    _only(body, allowed, f"{where}.features.{spec['name']}")
    if "levels" in body:
        body["levels"] = tuple(body["levels"])
    try:
        feature: Feature = cls(name=spec["name"], **body)
    except TypeError as exc:
        raise ConfigError(f"{where}.features.{spec['name']}", str(exc)) from None
    return feature


def _model_rule(name: str, body: Any) -> ModelRule:
    if not isinstance(body, Mapping):
        raise ConfigError(f"models.{name}", "must be a table")
    _only(body, _RULE_KEYS, f"models.{name}")
    return ModelRule(
        model=name,
        rejects=frozenset(body.get("rejects", ())),
        fixed=dict(body.get("fixed", {})),
        max_tokens_field=body.get("max_tokens_field", "max_tokens"),
        max_tokens_limit=body.get("max_tokens_limit"),
    )


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(key, "must be a table")
    return value


def _only(body: Any, allowed: set[str], where: str) -> None:
    if not isinstance(body, Mapping):
        raise ConfigError(where or "config", "must be a table")
    for key in body:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise ConfigError(
                f"{prefix}{key}", f"unknown key; allowed: {', '.join(sorted(allowed))}"
            )


def _check_range(
    where: str, value: object, low: float, high: float, *, open_high: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError(where, f"must be a number, got {value!r}")
    if value < low or value > high or (open_high and math.isinf(value)):
        raise ConfigError(where, f"must be in [{low:g}, {high:g}], got {value!r}")
