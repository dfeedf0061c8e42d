"""The service's settings: one frozen, validated object, from a TOML file and the environment.

:meth:`Settings.load` reads the TOML file (``--config`` or ``PARAMLOOP_CONFIG``):
its ``[tasks.*]``, ``[models.*]`` and ``[defaults]`` tables are the task
configuration (:func:`paramloop.engine.parse_config`), its ``[service]`` table
the service's own settings.  Environment variables override the file: the deployment
contract's (:mod:`paramloop.server.environment`) and the service's own ``PARAMLOOP_*``.  Every
problem is a :class:`~paramloop.errors.ConfigError` naming the TOML key or the
environment variable, raised at start-up, never at the first request.

API keys are configured as SHA-256 hex digests (``printf '%s' "$KEY" | sha256sum``),
never in clear; upstream API keys are read from the environment variable each
upstream names, and never printed (``repr`` hides them).

``LLM_OPTIMIZATION_MODE`` (+ ``LLM_OPTIMIZATION_TRAFFIC_PERCENTAGE``, a fraction) only says
where a task type's rollout *starts* when the store has none yet (default
``shadow``: the baseline serves everyone and the policy's choice is only logged)
(:meth:`Settings.initial_rollouts`); once a rollout is stored, its stored phase
and traffic win, and changing the variable and restarting changes nothing: move
a rollout with the operations endpoints (advance, rollback, traffic, …), which
leave an audit record.  ``LLM_OPTIMIZATION_ENABLED=false`` turns paramloop into a
pass-through whatever the rollout says.  The ``[service.slo]`` and
``[service.budget]`` values apply to every task type (:attr:`Settings.task_configs`).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from paramloop.core.budget import BudgetLimits
from paramloop.core.rollout import Phase, traffic_problem
from paramloop.engine.config import TaskConfig, parse_config
from paramloop.engine.service import (
    FEEDBACK_MODES,
    PINNED_MODES,
    Price,
    PriceTable,
    ProxyOptions,
)
from paramloop.errors import ConfigError
from paramloop.server.environment import Environment, read_environment

Role = Literal["read", "write", "admin"]
#: Roles from least to most privileged; each includes those before it.
ROLES: tuple[Role, ...] = ("read", "write", "admin")
#: The values of ``LLM_OPTIMIZATION_MODE``: the rollout phases.
MODES = ("shadow", "canary", "guarded", "general")
#: The key of the upstream that serves every model without one of its own.
ANY_MODEL = "*"

#: The store when nothing names one: SQLite in the working directory.
DEFAULT_DATABASE_URL = "sqlite:///paramloop.db"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_URL = re.compile(r"https?://[^/\s]+")
_REDIS_URL = re.compile(r"rediss?://[^/\s]+(/\d+)?/?$")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A caller's key: its name (who, in logs and audit records), role and SHA-256 digest."""

    name: str
    role: Role
    sha256: str = field(repr=False)
    #: This key's requests and tokens per minute (``None``: the service's ``rate_limit_*``).
    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where the proxy sends a model's requests: an OpenAI-compatible ``/v1`` base URL."""

    base_url: str
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service needs, validated (see the module documentation)."""

    tasks: Mapping[str, TaskConfig]
    database_url: str = DEFAULT_DATABASE_URL
    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: tuple[ApiKey, ...] = ()
    auth_disabled: bool = False
    enabled: bool = True
    #: The phase a task type's rollout starts in when the store has none (``LLM_OPTIMIZATION_MODE``):
    #: shadow unless the deployment says otherwise; reaching general takes the gates.
    mode: str = "shadow"
    #: Its treatment traffic (``None``: the task type's plan's share for that phase).
    traffic_percentage: float | None = None
    upstreams: Mapping[str, Upstream] = field(default_factory=dict)
    proxy: Mapping[str, ProxyOptions] = field(default_factory=dict)
    default_task_type: str | None = None
    prices: PriceTable = field(default_factory=PriceTable)
    max_body_bytes: int = 1_000_000
    expire_interval_s: float = 10.0
    public_metrics: bool = False
    log_level: str = "info"
    slo: Mapping[str, float] = field(default_factory=dict)
    budget: Mapping[str, float] = field(default_factory=dict)
    #: Where alerts are POSTed as JSON besides the log (``PARAMLOOP_ALERT_WEBHOOK_URL``).
    alert_webhook_url: str | None = field(default=None, repr=False)
    #: The replica's spool file: writes the store could not take wait there, durably
    #: (``PARAMLOOP_SPOOL_PATH``; ``"off"`` for none; default :meth:`spool_location`).
    spool_path: str | None = None
    #: How long a per-request store call may take before its write is spooled
    #: (``PARAMLOOP_STORE_TIMEOUT_S``).
    store_timeout_s: float = 1.0
    #: How often a replica learns the outcomes other replicas logged (``PARAMLOOP_SYNC_INTERVAL_S``).
    sync_interval_s: float = 1.0
    #: POST requests in progress at once; the next wait ``queue_timeout_s``, then get 503
    #: (``PARAMLOOP_MAX_CONCURRENCY``, ``PARAMLOOP_QUEUE_TIMEOUT_S``).
    max_concurrency: int = 512
    queue_timeout_s: float = 1.0
    #: The proxy's upstream connection pool (``PARAMLOOP_UPSTREAM_MAX_CONNECTIONS``; default
    #: ``max_concurrency``, and never fewer: an admitted call never queues for a connection).
    upstream_max_connections: int | None = None
    #: Requests and tokens per minute per API key (``PARAMLOOP_RATE_LIMIT_RPM``,
    #: ``PARAMLOOP_RATE_LIMIT_TPM``; ``None``: unlimited; a key's own ``rpm``/``tpm`` wins).
    rate_limit_rpm: int | None = None
    rate_limit_tpm: int | None = None
    #: Where replicas share their rate-limit counters (``REDIS_URL``; ``None``: in process).
    redis_url: str | None = field(default=None, repr=False)
    #: Daily budgets on or off for every task type (``CAWS_ENABLED``; ``None``: as configured).
    budgets_enabled: bool | None = None
    #: The largest waiver, percent of the daily limits, of every budget (``CAWS_WAIVER_THRESHOLD``).
    max_waiver_percent: float | None = None
    #: Every task type's rollout values from the environment: ``shadow_min_s``,
    #: ``canary_min_s``, ``guarded_min_s`` (``ROLLOUT_*_DURATION_HOURS``) and
    #: ``low_confidence_threshold`` (``CONFIDENCE_THRESHOLD``).
    rollout_overrides: Mapping[str, float] = field(default_factory=dict)
    #: Where the configuration came from: its file, or :data:`EMBEDDED` (see :meth:`load`).
    source: str = "settings"

    @property
    def embedded(self) -> bool:
        """Whether this is the embedded default (no ``--config``, no ``PARAMLOOP_CONFIG``)."""
        return self.source == EMBEDDED

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError("tasks", "declare at least one task type, e.g. [tasks.summarize]")
        if self.embedded and self.auth_disabled and not is_loopback(self.host):
            raise ConfigError(
                "--host",
                f"the embedded default (no --config, no PARAMLOOP_CONFIG) runs without "
                f"authentication, so only on a loopback host (127.0.0.1, ::1, localhost); host is "
                f"{self.host!r}: give a configuration with API keys ([[service.api_keys]] or "
                "PARAMLOOP_API_KEYS) to serve on another interface",
            )
        if self.auth_disabled and not is_loopback(self.host):
            raise ConfigError(
                "service.auth",
                f"auth can be disabled only on a loopback host (127.0.0.1, ::1, localhost); "
                f"host is {self.host!r}",
            )
        if not self.auth_disabled and not self.api_keys:
            raise ConfigError(
                "service.api_keys",
                "no API keys: configure keys (PARAMLOOP_API_KEYS or [[service.api_keys]]) or "
                'disable auth on 127.0.0.1 (PARAMLOOP_AUTH_DISABLED=1 or service.auth = "disabled")',
            )
        if self.mode not in MODES:
            raise ConfigError("LLM_OPTIMIZATION_MODE", f"must be one of {MODES}, got {self.mode!r}")
        if self.traffic_percentage is not None:
            if not 0.0 <= self.traffic_percentage <= 100.0:
                raise ConfigError(
                    "LLM_OPTIMIZATION_TRAFFIC_PERCENTAGE",
                    f"must be in [0, 100], got {self.traffic_percentage!r}",
                )
            if problem := traffic_problem(Phase(self.mode), self.traffic_percentage):
                raise ConfigError(
                    "LLM_OPTIMIZATION_TRAFFIC_PERCENTAGE", f"{problem} (LLM_OPTIMIZATION_MODE)"
                )
        if self.alert_webhook_url is not None and not _URL.match(self.alert_webhook_url):
            raise ConfigError(
                "PARAMLOOP_ALERT_WEBHOOK_URL",
                "must be an http(s) URL such as https://hooks.example.com/paramloop",
            )
        if self.default_task_type is not None and self.default_task_type not in self.tasks:
            raise ConfigError(
                "service.default_task_type",
                f"no such task type {self.default_task_type!r}; configured: {', '.join(self.tasks)}",
            )
        for name in self.proxy:
            if name not in self.tasks:
                raise ConfigError(
                    f"service.tasks.{name}",
                    f"no such task type; configured: {', '.join(self.tasks)}",
                )
        if self.upstreams and ANY_MODEL not in self.upstreams:
            for name, config in self.tasks.items():
                for arm in config.space.arms:
                    if arm.model not in self.upstreams:
                        raise ConfigError(
                            "service.upstreams",
                            f"no upstream serves model {arm.model!r} (task type {name!r}); add "
                            f'[service.upstreams."{arm.model}"] or one for every model, "*"',
                        )
        if (
            self.upstream_max_connections is not None
            and self.upstream_max_connections < self.max_concurrency
        ):
            raise ConfigError(
                "PARAMLOOP_UPSTREAM_MAX_CONNECTIONS",
                f"must be at least max_concurrency ({self.max_concurrency}), got "
                f"{self.upstream_max_connections}: a call admitted would queue for a connection",
            )
        if self.redis_url is not None and not _REDIS_URL.match(self.redis_url):
            raise ConfigError(
                "REDIS_URL", "must be a redis:// or rediss:// URL such as redis://127.0.0.1:6379/0"
            )
        self.task_configs  # noqa: B018 - the service-wide values must fit every task type now
        names = [key.name for key in self.api_keys]
        if len(set(names)) != len(names):
            raise ConfigError("service.api_keys", f"key names must be unique, got {names}")
        if len({key.sha256 for key in self.api_keys}) != len(self.api_keys):
            raise ConfigError("service.api_keys", "two keys have the same digest")

    def spool_location(self) -> Path | None:
        """The spool file: ``spool_path``, else beside a SQLite database, else in the working directory.

        ``None`` (no spool) for ``"off"`` and for an in-memory database.
        """
        if self.spool_path is not None:
            return None if self.spool_path == "off" else Path(self.spool_path)
        url = self.database_url
        if url.startswith("postgresql"):
            return Path("paramloop-spool.db")
        path = url.partition("://")[2][1:] if "://" in url else url
        path = path.partition("?")[0]
        if not path or path == ":memory:":
            return None
        return Path(f"{path}.spool")

    def initial_rollouts(self) -> dict[str, tuple[Phase, float]]:
        """Where each task type's rollout starts when the store has none yet: mode and traffic.

        Only a *new* rollout is placed there; a stored rollout keeps its own phase.
        """
        phase = Phase(self.mode)
        return {
            name: (
                phase,
                self.traffic_percentage
                if self.traffic_percentage is not None
                else config.rollout.plan.traffic_percent(phase),
            )
            for name, config in self.tasks.items()
        }

    @property
    def task_configs(self) -> dict[str, TaskConfig]:
        """The task types with the service-wide SLO and budget values applied to every one.

        ``slo.latency_p99_ms`` is the treatment's absolute p99 cap, ``slo.quality_min``
        the treatment's absolute quality floor, ``slo.error_rate_max`` the highest
        treatment error rate; ``budget.daily_tokens`` and ``budget.daily_cost`` are each
        task type's daily limits; :attr:`budgets_enabled`, :attr:`max_waiver_percent` and
        :attr:`rollout_overrides` as documented there.  A value given here replaces the
        task type's own; the others keep theirs.
        """
        return _with_service_limits(
            self.tasks,
            self.slo,
            self.budget,
            budgets_enabled=self.budgets_enabled,
            max_waiver_percent=self.max_waiver_percent,
            rollout=self.rollout_overrides,
        )

    def upstream_for(self, model: str) -> Upstream | None:
        """The upstream of ``model``, else the one for every model (``"*"``), else ``None``."""
        return self.upstreams.get(model) or self.upstreams.get(ANY_MODEL)

    @classmethod
    def load(
        cls,
        config: str | Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Settings from ``config`` (or ``PARAMLOOP_CONFIG``) and the environment.

        ``overrides`` (``host=…``, ``port=…`` from the command line) win over both.
        Without either, the embedded default (:func:`embedded_document`: the example
        task types, SQLite in the working directory, auth disabled, so a loopback host
        only, unless ``PARAMLOOP_API_KEYS`` names keys); ``source`` says which.
        """
        env = os.environ if env is None else env
        data, source = read_document(config, env)
        if source == EMBEDDED and env.get("PARAMLOOP_API_KEYS", ""):
            data["service"] = {**data["service"], "auth": "keys"}
        return cls.from_mapping(data, env=env, **{"source": source, **overrides})

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Settings from an already parsed TOML document and the environment."""
        env = os.environ if env is None else env
        document = dict(data)
        service = _table(document.pop("service", {}), "service")
        tasks = _tasks(document, read_environment(env))
        return cls(tasks=tasks, **{**_service(service, env), **overrides})


#: :attr:`Settings.source` and :attr:`Deployment.source` of the embedded default.
EMBEDDED = "embedded default"
#: The embedded default's file, inside the package.
EMBEDDED_FILE = Path(__file__).with_name("embedded.toml")


def embedded_document() -> dict[str, Any]:
    """The embedded default (``embedded.toml``) as a TOML document: the example task types
    on the local model, SQLite in the working directory, auth disabled (loopback only)."""
    return tomllib.loads(EMBEDDED_FILE.read_text(encoding="utf-8"))


def read_document(config: str | Path | None, env: Mapping[str, str]) -> tuple[dict[str, Any], str]:
    """The TOML document of ``config``, else of ``PARAMLOOP_CONFIG``, else the embedded
    default; and where it came from (the file, or :data:`EMBEDDED`)."""
    path = config if config is not None else env.get("PARAMLOOP_CONFIG")
    if not path:
        return embedded_document(), EMBEDDED
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8")), str(path)
    except FileNotFoundError:
        where = "--config" if config is not None else "PARAMLOOP_CONFIG"
        raise ConfigError(where, f"file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None


@dataclass(frozen=True, slots=True)
class Deployment:
    """What an operator command needs of a deployment, read as ``paramloop serve`` reads it:
    the task types (``BANDIT_POLICY`` and the service-wide SLO and budget values applied,
    as :attr:`Settings.task_configs`) and the store."""

    tasks: Mapping[str, TaskConfig]
    database_url: str
    #: The configuration file, or :data:`EMBEDDED`.
    source: str

    @property
    def embedded(self) -> bool:
        return self.source == EMBEDDED


def load_deployment(
    config: str | Path | None = None,
    *,
    database_url: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Deployment:
    """The deployment of ``config`` (else ``PARAMLOOP_CONFIG``, else the embedded default).

    The store is ``database_url`` (``--db``), else ``DATABASE_URL``, else the file's
    ``service.database_url``, else ``sqlite:///paramloop.db``: the one ``paramloop
    serve`` would open.  Every key of the file is checked as ``serve`` checks it, except
    what only serving needs and a command must not: API keys and the upstreams'
    secrets are not required.
    """
    env = os.environ if env is None else env
    document, source = read_document(config, env)
    service = _table(document.pop("service", {}), "service")
    _only(service, SERVICE_KEYS, "service")
    environment = read_environment(env)
    tasks = _tasks(document, environment)
    slo, budget = _service_limits(service, environment)
    if database_url is None:
        database_url = environment.database_url or (
            _text("service.database_url", service["database_url"])
            if "database_url" in service
            else DEFAULT_DATABASE_URL
        )
    configs = _with_service_limits(
        tasks,
        slo,
        budget,
        budgets_enabled=environment.caws_enabled,
        max_waiver_percent=_waiver_percent(environment),
        rollout=_rollout_overrides(environment),
    )
    return Deployment(configs, str(database_url), source)


def _tasks(document: dict[str, Any], environment: Environment) -> dict[str, TaskConfig]:
    """The task types of a document without its ``[service]`` table (``BANDIT_POLICY`` and
    ``EXPLORATION_FACTOR`` applied as defaults: task types that set their own keep them)."""
    defaults = dict(_table(document.get("defaults", {}), "defaults"))
    if environment.bandit_policy is not None:
        defaults["policy"] = environment.bandit_policy
    if environment.exploration_factor is not None:
        defaults["exploration"] = environment.exploration_factor
    return parse_config({**document, "defaults": defaults} if defaults else document)


def _waiver_percent(environment: Environment) -> float | None:
    fraction = environment.caws_waiver_threshold
    return None if fraction is None else 100.0 * fraction


def _rollout_overrides(environment: Environment) -> dict[str, float]:
    """The rollout values of ``ROLLOUT_*_DURATION_HOURS`` (as seconds) and ``CONFIDENCE_THRESHOLD``."""
    values = {
        "shadow_min_s": environment.shadow_hours,
        "canary_min_s": environment.canary_hours,
        "guarded_min_s": environment.guarded_hours,
    }
    out = {key: 3600.0 * hours for key, hours in values.items() if hours is not None}
    if environment.confidence_threshold is not None:
        out["low_confidence_threshold"] = environment.confidence_threshold
    return out


def _with_service_limits(
    tasks: Mapping[str, TaskConfig],
    slo_values: Mapping[str, float],
    budget_values: Mapping[str, float],
    *,
    budgets_enabled: bool | None = None,
    max_waiver_percent: float | None = None,
    rollout: Mapping[str, float] | None = None,
) -> dict[str, TaskConfig]:
    """``tasks`` with the service-wide SLO, budget and rollout values applied (see
    :attr:`Settings.task_configs`); a budget variable with no budget to act on is refused."""
    slo: dict[str, Any] = {}
    if "latency_p99_ms" in slo_values:
        slo["latency_p99_max_ms"] = slo_values["latency_p99_ms"]
    if "quality_min" in slo_values:
        slo["quality_min"] = slo_values["quality_min"]
    if "error_rate_max" in slo_values:
        slo["error_rate_max"] = slo_values["error_rate_max"]
    budget: dict[str, Any] = {
        limit: budget_values[key]
        for key, limit in (("daily_tokens", "tokens_per_day"), ("daily_cost", "cost_per_day"))
        if key in budget_values
    }
    plan: dict[str, Any] = {
        k: v for k, v in (rollout or {}).items() if k != "low_confidence_threshold"
    }
    out = {}
    for name, config in tasks.items():
        settings = config.rollout
        if slo:
            settings = replace(settings, slo=replace(settings.slo, **slo))
        if plan:
            settings = replace(settings, plan=replace(settings.plan, **plan))
        if rollout and "low_confidence_threshold" in rollout:
            settings = replace(
                settings, low_confidence_threshold=rollout["low_confidence_threshold"]
            )
        limits = replace(config.budget or BudgetLimits(), **budget) if budget else config.budget
        if budgets_enabled is False:
            limits = None
        if limits is not None and max_waiver_percent is not None:
            limits = replace(limits, max_waiver_percent=max_waiver_percent)
        out[name] = replace(config, rollout=settings, budget=limits)
    if all(config.budget is None for config in out.values()):
        for variable, value in (
            ("CAWS_ENABLED", budgets_enabled),
            ("CAWS_WAIVER_THRESHOLD", max_waiver_percent),
        ):
            if value is not None and value is not False:
                raise ConfigError(
                    variable,
                    "is set but there is no budget to act on (no task type has one): set CAWS_BUDGET_LIMIT "
                    "(a daily cost), [service.budget] or [tasks.<name>.budget]",
                )
    return out


def _pick(
    body: Mapping[str, Any], env: Mapping[str, str], key: str, variable: str | None
) -> tuple[str, Any] | None:
    """A value and where it came from: the environment variable first, then ``service.<key>``."""
    if variable is not None and env.get(variable, "") != "":
        return variable, env[variable]
    if key in body:
        return f"service.{key}", body[key]
    return None


SERVICE_KEYS = frozenset(
    {
        "database_url",
        "host",
        "port",
        "auth",
        "api_keys",
        "enabled",
        "mode",
        "traffic_percentage",
        "upstreams",
        "tasks",
        "default_task_type",
        "prices",
        "max_body_bytes",
        "expire_interval_s",
        "public_metrics",
        "log_level",
        "slo",
        "budget",
        "alert_webhook_url",
        "spool_path",
        "store_timeout_s",
        "sync_interval_s",
        "max_concurrency",
        "queue_timeout_s",
        "upstream_max_connections",
        "rate_limit_rpm",
        "rate_limit_tpm",
        "redis_url",
    }
)


def _service(body: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    _only(body, SERVICE_KEYS, "service")
    environment = read_environment(env)
    out: dict[str, Any] = {}
    for key, value in (
        ("database_url", environment.database_url),
        ("enabled", environment.enabled),
        ("mode", environment.mode),
        ("redis_url", environment.redis_url),
    ):
        if value is not None:
            out[key] = value
    for key, parse in (
        ("database_url", _text),
        ("enabled", _bool),
        ("mode", _text),
        ("traffic_percentage", _number),  # percent in the file; the variable is a fraction
        ("redis_url", _text),
    ):
        if key not in out and key in body:
            out[key] = parse(f"service.{key}", body[key])
    if (fraction := environment.traffic_fraction) is not None:
        out["traffic_percentage"] = percent = 100.0 * fraction
        mode = out.get("mode", "shadow")
        if mode in MODES and (problem := traffic_problem(Phase(mode), percent)):
            raise ConfigError(
                "LLM_OPTIMIZATION_TRAFFIC_PERCENTAGE",
                f"is a fraction (0.05 = 5 %): {fraction:g} is {percent:g} %, and {problem} "
                f"(mode {mode})",
            )

    for key, variable, parse in (
        ("host", "PARAMLOOP_HOST", _text),
        ("port", "PARAMLOOP_PORT", _port),
        ("default_task_type", "PARAMLOOP_DEFAULT_TASK_TYPE", _text),
        ("max_body_bytes", "PARAMLOOP_MAX_BODY_BYTES", _positive_int),
        ("expire_interval_s", "PARAMLOOP_EXPIRE_INTERVAL_S", _positive),
        ("public_metrics", "PARAMLOOP_PUBLIC_METRICS", _bool),
        ("log_level", "PARAMLOOP_LOG_LEVEL", _log_level),
        ("alert_webhook_url", "PARAMLOOP_ALERT_WEBHOOK_URL", _url),
        ("spool_path", "PARAMLOOP_SPOOL_PATH", _text),
        ("store_timeout_s", "PARAMLOOP_STORE_TIMEOUT_S", _positive),
        ("sync_interval_s", "PARAMLOOP_SYNC_INTERVAL_S", _positive),
        ("max_concurrency", "PARAMLOOP_MAX_CONCURRENCY", _positive_int),
        ("queue_timeout_s", "PARAMLOOP_QUEUE_TIMEOUT_S", _positive),
        ("upstream_max_connections", "PARAMLOOP_UPSTREAM_MAX_CONNECTIONS", _positive_int),
        ("rate_limit_rpm", "PARAMLOOP_RATE_LIMIT_RPM", _positive_int),
        ("rate_limit_tpm", "PARAMLOOP_RATE_LIMIT_TPM", _positive_int),
    ):
        found = _pick(body, env, key, variable)
        if found is not None:
            out[key] = parse(*found)
    auth = _pick(body, env, "auth", None)
    if auth is not None and auth[1] not in ("keys", "disabled"):
        raise ConfigError("service.auth", f"must be 'keys' or 'disabled', got {auth[1]!r}")
    disabled = env.get("PARAMLOOP_AUTH_DISABLED", "")
    out["auth_disabled"] = (
        _bool("PARAMLOOP_AUTH_DISABLED", disabled)
        if disabled
        else auth == ("service.auth", "disabled")
    )
    out["api_keys"] = _api_keys(body.get("api_keys", []), env.get("PARAMLOOP_API_KEYS", ""))
    out["upstreams"] = _upstreams(_table(body.get("upstreams", {}), "service.upstreams"), env)
    out["proxy"] = {
        name: _proxy_options(name, options)
        for name, options in _table(body.get("tasks", {}), "service.tasks").items()
    }
    out["prices"] = PriceTable(
        {
            model: _price(model, price)
            for model, price in _table(body.get("prices", {}), "service.prices").items()
        }
    )
    out["slo"], out["budget"] = _service_limits(body, environment)
    out["budgets_enabled"] = environment.caws_enabled
    out["max_waiver_percent"] = _waiver_percent(environment)
    out["rollout_overrides"] = _rollout_overrides(environment)
    return out


def _service_limits(
    body: Mapping[str, Any], environment: Environment
) -> tuple[dict[str, float], dict[str, float]]:
    """The service-wide SLO and budget values (``[service.slo]``, ``[service.budget]`` and
    their variables, which win)."""
    slo = _limits(
        _table(body.get("slo", {}), "service.slo"),
        {
            "latency_p99_ms": (environment.slo_latency_p99_ms, "(0, inf)"),
            "quality_min": (environment.slo_quality_min, "(0, 1]"),
            "error_rate_max": (environment.slo_error_rate_max, "[0, 1)"),
        },
        "service.slo",
    )
    budget = _limits(
        _table(body.get("budget", {}), "service.budget"),
        {
            "daily_tokens": (environment.budget_daily_tokens, "(0, inf)"),
            "daily_cost": (environment.daily_cost, "(0, inf)"),
        },
        "service.budget",
    )
    return slo, budget


def _api_keys(entries: Any, from_env: str) -> tuple[ApiKey, ...]:
    keys: list[ApiKey] = []
    if not isinstance(entries, list):
        raise ConfigError("service.api_keys", "must be an array of tables ([[service.api_keys]])")
    for i, entry in enumerate(entries):
        where = f"service.api_keys[{i}]"
        _only(entry, {"name", "role", "sha256", "rpm", "tpm"}, where)
        key = _api_key(where, entry.get("name"), entry.get("role"), entry.get("sha256"))
        rpm, tpm = (
            _positive_int(f"{where}.{name}", entry[name]) if name in entry else None
            for name in ("rpm", "tpm")
        )
        keys.append(replace(key, rpm=rpm, tpm=tpm))
    for i, item in enumerate(part.strip() for part in from_env.split(",") if part.strip()):
        pieces = item.split(":")
        if len(pieces) != 3:
            raise ConfigError(
                "PARAMLOOP_API_KEYS",
                f"entry {i} must be name:role:sha256 (entries separated by commas)",
            )
        keys.append(_api_key(f"PARAMLOOP_API_KEYS[{i}]", *pieces))
    return tuple(keys)


def _api_key(where: str, name: object, role: object, digest: object) -> ApiKey:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}.name", "must be a non-empty string")
    if role not in ROLES:
        raise ConfigError(f"{where}.role", f"must be one of {', '.join(ROLES)}, got {role!r}")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest.lower()):
        raise ConfigError(
            f"{where}.sha256",
            "must be the SHA-256 hex digest of the key (64 hex characters): "
            "printf '%s' \"$KEY\" | sha256sum",
        )
    return ApiKey(name.strip(), role, digest.lower())


def _upstreams(body: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Upstream]:
    out = {
        model: _upstream(f"service.upstreams.{model}", spec, env) for model, spec in body.items()
    }
    base = env.get("PARAMLOOP_UPSTREAM_BASE_URL", "")
    if base:
        spec = {"base_url": base}
        if env.get("PARAMLOOP_UPSTREAM_API_KEY_ENV"):
            spec["api_key_env"] = env["PARAMLOOP_UPSTREAM_API_KEY_ENV"]
        out[ANY_MODEL] = _upstream("PARAMLOOP_UPSTREAM_BASE_URL", spec, env)
    return out


def _upstream(where: str, spec: Any, env: Mapping[str, str]) -> Upstream:
    _only(spec, {"base_url", "api_key_env", "timeout_s"}, where)
    base_url = spec.get("base_url")
    if not isinstance(base_url, str) or not _URL.match(base_url):
        raise ConfigError(
            f"{where}.base_url",
            f"must be an http(s) URL such as http://host:8081/v1, got {base_url!r}",
        )
    key_env = spec.get("api_key_env")
    key = None
    if key_env is not None:
        if not isinstance(key_env, str) or not key_env:
            raise ConfigError(f"{where}.api_key_env", "must name an environment variable")
        key = env.get(key_env)
        if not key:
            raise ConfigError(
                f"{where}.api_key_env", f"the environment variable {key_env} is not set"
            )
    timeout = _positive(f"{where}.timeout_s", spec.get("timeout_s", 60.0))
    return Upstream(base_url.rstrip("/"), key_env, key, timeout)


def _proxy_options(name: str, body: Any) -> ProxyOptions:
    where = f"service.tasks.{name}"
    _only(body, {"feedback", "pinned"}, where)
    for key, allowed in (("feedback", FEEDBACK_MODES), ("pinned", PINNED_MODES)):
        if key in body and body[key] not in allowed:
            raise ConfigError(f"{where}.{key}", f"must be one of {allowed}, got {body[key]!r}")
    return ProxyOptions(**body)


def _price(model: str, body: Any) -> Price:
    where = f"service.prices.{model}"
    _only(body, {"input_per_mtok", "output_per_mtok"}, where)
    try:
        return Price(body.get("input_per_mtok", 0.0), body.get("output_per_mtok", 0.0))
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc.field}", exc.problem) from None


def _limits(
    body: Mapping[str, Any],
    spec: Mapping[str, tuple[float | None, str]],
    where: str,
) -> dict[str, float]:
    """Each key's number from the environment (already checked) or the table, checked against
    its interval (written as the error message shows it: ``"(0, 1]"`` excludes 0, includes 1)."""
    _only(body, set(spec), where)
    out: dict[str, float] = {}
    for key, (from_env, interval) in spec.items():
        if from_env is not None:
            out[key] = from_env
            continue
        if key in body:
            origin, value = f"{where}.{key}", body[key]
        else:
            continue
        number = _number(origin, value)
        low, high = (float(x) for x in interval[1:-1].split(", "))
        above = number > low if interval[0] == "(" else number >= low
        below = number < high if interval[-1] == ")" else number <= high
        if not (above and below):
            raise ConfigError(origin, f"must be in {interval}, got {value!r}")
        out[key] = number
    return out


# -- values ---------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _text(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(where, f"must be a non-empty string, got {value!r}")
    return value.strip()


def _url(where: str, value: Any) -> str:
    url = _text(where, value)
    if not _URL.match(url):
        raise ConfigError(where, f"must be an http(s) URL, got {url!r}")
    return url


def _bool(where: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(where, f"must be true or false, got {value!r}")


def _number(where: str, value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(where, f"must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(where, f"must be a finite number, got {value!r}")
    return float(value)


def _positive(where: str, value: Any) -> float:
    number = _number(where, value)
    if number <= 0:
        raise ConfigError(where, f"must be > 0, got {value!r}")
    return number


def _positive_int(where: str, value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(where, f"must be a whole number >= 1, got {value!r}")
    return value


def _port(where: str, value: Any) -> int:
    port = _positive_int(where, value)
    if port > 65535:
        raise ConfigError(where, f"must be a TCP port (1-65535), got {value!r}")
    return port


def _log_level(where: str, value: Any) -> str:
    level = _text(where, value).lower()
    if level not in _LOG_LEVELS:
        raise ConfigError(where, f"must be one of {', '.join(_LOG_LEVELS)}, got {value!r}")
    return level


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(where, "must be a table")
    return value


def _only(body: Any, allowed: AbstractSet[str], where: str) -> None:
    if not isinstance(body, Mapping):
        raise ConfigError(where, "must be a table")
    for key in body:
        if key not in allowed:
            raise ConfigError(
                f"{where}.{key}", f"unknown key; allowed: {', '.join(sorted(allowed))}"
            )


__all__ = [
    "ANY_MODEL",
    "DEFAULT_DATABASE_URL",
    "EMBEDDED",
    "EMBEDDED_FILE",
    "MODES",
    "ROLES",
    "ApiKey",
    "Deployment",
    "Role",
    "Settings",
    "Upstream",
    "embedded_document",
    "is_loopback",
    "load_deployment",
    "read_document",
]
