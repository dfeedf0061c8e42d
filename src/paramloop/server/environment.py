"""The deployment guide's environment contract: every variable, its type, unit and range.

One :class:`Environment` (pydantic-settings) declares the variables a deployment sets;
:meth:`Settings.load <paramloop.server.settings.Settings.load>` maps them onto the
engine's frozen dataclasses.  A variable that is set is either honoured or refused
at start with its name and what is allowed; none is ignored.  Shares are fractions
(``0.05`` = 5 %), durations hours, latencies milliseconds, costs the price table's
currency.  An empty variable counts as unset.  The ``PARAMLOOP_*`` variables are the
service's own and are read by :mod:`paramloop.server.settings` itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from paramloop.core.policies import POLICIES
from paramloop.errors import ConfigError

#: The values of ``LLM_OPTIMIZATION_MODE``: the phases a rollout may start in.
Mode = Literal["shadow", "canary", "guarded", "general"]

_FRACTION = "a fraction in [0, 1] (0.05 = 5 %)"
_HOURS = "a number of hours >= 0"


def _var(name: str, allowed: str, description: str, **constraints: Any) -> Any:
    """A field read from the variable ``name``; ``allowed`` is what its error message says."""
    if constraints.keys() & {"ge", "gt", "le", "lt"}:
        constraints["allow_inf_nan"] = False  # a bound on a number: inf and NaN are no number
    return Field(
        None,
        alias=name,
        description=f"{description} Allowed: {allowed}.",
        json_schema_extra={"allowed": allowed},
        **constraints,
    )


class Environment(BaseSettings):
    """The variables of the deployment contract (``None``: not set)."""

    model_config = SettingsConfigDict(
        case_sensitive=True, env_ignore_empty=True, extra="ignore", frozen=True
    )

    enabled: bool | None = _var(
        "LLM_OPTIMIZATION_ENABLED",
        "true or false",
        "false makes paramloop a pass-through (the baseline for every request).",
    )
    mode: Mode | None = _var(
        "LLM_OPTIMIZATION_MODE",
        "shadow, canary, guarded or general",
        "The phase a task type's rollout starts in when the store has none yet.",
    )
    traffic_fraction: float | None = _var(
        "LLM_OPTIMIZATION_TRAFFIC_PERCENTAGE",
        f"{_FRACTION}, inside the mode's bounds",
        "The treatment share a new rollout starts with.",
        ge=0.0,
        le=1.0,
    )
    database_url: str | None = _var(
        "DATABASE_URL", "a sqlite:/// or postgresql:// URL", "The store.", min_length=1
    )
    redis_url: str | None = _var(
        "REDIS_URL",
        "a redis:// or rediss:// URL",
        "Where replicas share their rate-limit counters.",
        pattern=r"^rediss?://[^/\s]+(/\d+)?/?$",
    )
    caws_enabled: bool | None = _var(
        "CAWS_ENABLED", "true or false", "Daily budgets on or off, for every task type."
    )
    caws_budget_limit: float | None = _var(
        "CAWS_BUDGET_LIMIT",
        "a cost in (0, inf)",
        "Each task type's daily cost limit, in the price table's currency "
        "(as [service.budget] daily_cost).",
        gt=0.0,
    )
    caws_waiver_threshold: float | None = _var(
        "CAWS_WAIVER_THRESHOLD",
        _FRACTION,
        "The largest waiver an operator may grant, as a share of the daily limits.",
        ge=0.0,
        le=1.0,
    )
    budget_daily_tokens: float | None = _var(
        "BUDGET_DAILY_TOKENS",
        "a number of tokens in (0, inf)",
        "Each task type's daily token limit.",
        gt=0,
    )
    budget_daily_cost: float | None = _var(
        "BUDGET_DAILY_COST", "a cost in (0, inf)", "Each task type's daily cost limit.", gt=0
    )
    bandit_policy: str | None = _var(
        "BANDIT_POLICY",
        ", ".join(sorted(POLICIES)),
        "The policy of every task type that names none.",
    )
    exploration_factor: float | None = _var(
        "EXPLORATION_FACTOR",
        _FRACTION,
        "The share of uniform exploration mixed into the policy's distribution "
        "(tasks.*.exploration) of every task type that sets none.",
        ge=0.0,
        le=1.0,
    )
    confidence_threshold: float | None = _var(
        "CONFIDENCE_THRESHOLD",
        "a confidence in [0, 1]",
        "Recommendation confidence below which a run of requests raises a low-confidence alert.",
        ge=0.0,
        le=1.0,
    )
    slo_latency_p99_ms: float | None = _var(
        "SLO_LATENCY_P99_MS",
        "milliseconds in (0, inf)",
        "The treatment's absolute p99 latency cap.",
        gt=0.0,
    )
    slo_quality_min: float | None = _var(
        "SLO_QUALITY_MIN",
        "a quality in (0, 1]",
        "The treatment's absolute quality floor.",
        gt=0.0,
        le=1.0,
    )
    slo_error_rate_max: float | None = _var(
        "SLO_ERROR_RATE_MAX",
        "a rate in [0, 1)",
        "The treatment's highest error rate.",
        ge=0.0,
        lt=1.0,
    )
    shadow_hours: float | None = _var(
        "ROLLOUT_SHADOW_DURATION_HOURS", _HOURS, "Shadow's minimum duration.", ge=0.0
    )
    canary_hours: float | None = _var(
        "ROLLOUT_CANARY_DURATION_HOURS", _HOURS, "Canary's minimum duration.", ge=0.0
    )
    guarded_hours: float | None = _var(
        "ROLLOUT_GUARDED_DURATION_HOURS", _HOURS, "Guarded's minimum duration.", ge=0.0
    )

    @field_validator("bandit_policy")
    @classmethod
    def _known_policy(cls, value: str | None) -> str | None:
        if value is not None and value not in POLICIES:
            raise ValueError("unknown policy")
        return value

    @property
    def daily_cost(self) -> float | None:
        """The daily cost limit, from either of its variables."""
        return (
            self.caws_budget_limit if self.caws_budget_limit is not None else self.budget_daily_cost
        )


class _MappingSource(EnvSettingsSource):
    """The environment source, reading ``environ`` instead of the process's environment."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = dict(environ)
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


def _refuse_contradictions(environment: Environment) -> None:
    """Variables that contradict each other: refused, since one of them would be ignored."""
    if environment.caws_enabled is False:
        for name, value in (
            ("CAWS_BUDGET_LIMIT", environment.caws_budget_limit),
            ("CAWS_WAIVER_THRESHOLD", environment.caws_waiver_threshold),
            ("BUDGET_DAILY_TOKENS", environment.budget_daily_tokens),
            ("BUDGET_DAILY_COST", environment.budget_daily_cost),
        ):
            if value is not None:
                raise ConfigError(name, "is set but CAWS_ENABLED=false turns budgets off")
    if environment.caws_budget_limit is not None and environment.budget_daily_cost is not None:
        raise ConfigError(
            "CAWS_BUDGET_LIMIT", "and BUDGET_DAILY_COST both set the daily cost limit: set one"
        )


def read_environment(environ: Mapping[str, str]) -> Environment:
    """The contract's variables in ``environ``, validated; :class:`ConfigError` names the first
    wrong one and what it allows."""
    try:
        environment = Environment(
            _build_sources=((_MappingSource(Environment, environ),), {})  # type: ignore[call-arg]
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else "environment"
        field = next((f for f in Environment.model_fields.values() if f.alias == name), None)
        extra = field.json_schema_extra if field is not None else None
        allowed = extra.get("allowed") if isinstance(extra, dict) else None
        value = error.get("input")
        raise ConfigError(name, f"must be {allowed}, got {value!r}") from None
    _refuse_contradictions(environment)
    return environment


__all__ = ["Environment", "Mode", "read_environment"]
