"""The deployment guide's environment contract, honoured as written.

Every variable of the contract reaches the engine through :meth:`Settings.load` (and
``paramloop serve``); a wrong unit or value is refused at start with the variable's
name and what is allowed; none is silently ignored.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from paramloop.core.rollout import Phase
from paramloop.errors import ConfigError
from paramloop.server.settings import Settings, load_deployment

EXE = shutil.which("paramloop", path=str(Path(sys.executable).parent)) or "paramloop"

TOML = """
[tasks.qa]
preset = "published"
baseline = { model = "small", temperature = 0.4, max_tokens = 32 }
space = { temperature = [0.0, 0.4, 0.8], max_tokens = [16, 32] }

[tasks.qa.budget]
tokens_per_day = 100000

[tasks.chat]
preset = "published"
baseline = { model = "small", temperature = 0.7 }
space = { temperature = [0.5, 0.7] }

[service]
auth = "disabled"
"""

#: Every variable of the contract, so a test's environment holds only what it sets.
CONTRACT = (
    "LLM_OPTIMIZATION_ENABLED",
    "LLM_OPTIMIZATION_MODE",
    "LLM_OPTIMIZATION_TRAFFIC_PERCENTAGE",
    "DATABASE_URL",
    "REDIS_URL",
    "CAWS_ENABLED",
    "CAWS_BUDGET_LIMIT",
    "CAWS_WAIVER_THRESHOLD",
    "BANDIT_POLICY",
    "EXPLORATION_FACTOR",
    "CONFIDENCE_THRESHOLD",
    "SLO_LATENCY_P99_MS",
    "SLO_QUALITY_MIN",
    "SLO_ERROR_RATE_MAX",
    "ROLLOUT_SHADOW_DURATION_HOURS",
    "ROLLOUT_CANARY_DURATION_HOURS",
    "ROLLOUT_GUARDED_DURATION_HOURS",
)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "paramloop.toml"
    path.write_text(TOML)
    return path


def load(config: Path, **env: str) -> Settings:
    return Settings.load(config, env=env)


def refused(config: Path, **env: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(config, **env)
    return str(caught.value)


# -- the rollout's start ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "fraction", "percent"),
    [("canary", "0.05", 5.0), ("canary", "0.01", 1.0), ("guarded", "0.25", 25.0),
     ("guarded", "0.5", 50.0), ("general", "1.0", 100.0), ("general", "1", 100.0)],
)  # fmt: skip
def test_the_traffic_percentage_is_a_fraction(
    config: Path, mode: str, fraction: str, percent: float
) -> None:
    settings = load(
        config, LLM_OPTIMIZATION_MODE=mode, LLM_OPTIMIZATION_TRAFFIC_PERCENTAGE=fraction
    )
    assert settings.initial_rollouts()["qa"] == (Phase(mode), percent)


@pytest.mark.parametrize(
    ("mode", "value", "words"),
    [
        ("canary", "5", "a fraction in [0, 1]"),
        ("guarded", "25", "a fraction in [0, 1]"),
        ("canary", "0.3", "canary traffic must be in (0, 5] percent"),
        ("guarded", "0.1", "guarded traffic must be in [25, 50] percent"),
        ("canary", "half", "a fraction in [0, 1]"),
    ],
)
def test_a_traffic_percentage_in_percent_or_beyond_the_phase_is_refused(
    config: Path, mode: str, value: str, words: str
) -> None:
    message = refused(config, LLM_OPTIMIZATION_MODE=mode, LLM_OPTIMIZATION_TRAFFIC_PERCENTAGE=value)
    assert "LLM_OPTIMIZATION_TRAFFIC_PERCENTAGE" in message and words in message


def test_enabled_mode_database_and_redis(config: Path) -> None:
    settings = load(
        config,
        LLM_OPTIMIZATION_ENABLED="false",
        LLM_OPTIMIZATION_MODE="guarded",
        DATABASE_URL="sqlite:///:memory:",
        REDIS_URL="redis://127.0.0.1:6379/0",
    )
    assert (settings.enabled, settings.mode) == (False, "guarded")
    assert (settings.database_url, settings.redis_url) == (
        "sqlite:///:memory:",
        "redis://127.0.0.1:6379/0",
    )


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"LLM_OPTIMIZATION_ENABLED": "maybe"}, "true or false"),
        ({"LLM_OPTIMIZATION_MODE": "yolo"}, "shadow, canary, guarded or general"),
        ({"REDIS_URL": "localhost:6379"}, "redis://"),
        ({"CAWS_ENABLED": "perhaps"}, "true or false"),
        ({"CAWS_BUDGET_LIMIT": "0"}, "(0, inf)"),
        ({"CAWS_WAIVER_THRESHOLD": "20"}, "a fraction in [0, 1]"),
        ({"BANDIT_POLICY": "nope"}, "linucb"),
        ({"EXPLORATION_FACTOR": "5"}, "a fraction in [0, 1]"),
        ({"CONFIDENCE_THRESHOLD": "80"}, "[0, 1]"),
        ({"SLO_LATENCY_P99_MS": "-5"}, "(0, inf)"),
        ({"SLO_QUALITY_MIN": "0"}, "(0, 1]"),
        ({"SLO_ERROR_RATE_MAX": "1"}, "[0, 1)"),
        ({"ROLLOUT_SHADOW_DURATION_HOURS": "-1"}, ">= 0"),
        ({"ROLLOUT_CANARY_DURATION_HOURS": "two days"}, ">= 0"),
        ({"ROLLOUT_GUARDED_DURATION_HOURS": "inf"}, ">= 0"),
    ],
)
def test_a_wrong_value_is_refused_naming_the_variable_and_what_is_allowed(
    config: Path, env: dict[str, str], words: str
) -> None:
    message = refused(config, **env)
    (variable,) = env
    assert variable in message and words in message


# -- budgets (the guide's CAWS) -------------------------------------------------------------


def test_caws_budget_limit_is_each_task_types_daily_cost_and_the_waiver_a_fraction(
    config: Path,
) -> None:
    settings = load(
        config, CAWS_ENABLED="true", CAWS_BUDGET_LIMIT="12.5", CAWS_WAIVER_THRESHOLD="0.3"
    )
    for name in ("qa", "chat"):
        budget = settings.task_configs[name].budget
        assert budget is not None
        assert (budget.cost_per_day, budget.max_waiver_percent) == (12.5, 30.0)
    qa = settings.task_configs["qa"].budget
    assert qa is not None and qa.tokens_per_day == 100_000  # the task type's own, kept


def test_caws_disabled_turns_every_budget_off(config: Path) -> None:
    settings = load(config, CAWS_ENABLED="false")
    assert all(c.budget is None for c in settings.task_configs.values())
    assert load(config).task_configs["qa"].budget is not None


@pytest.mark.parametrize(
    ("env", "variable", "words"),
    [
        ({"CAWS_ENABLED": "false", "CAWS_BUDGET_LIMIT": "5"}, "CAWS_BUDGET_LIMIT", "CAWS_ENABLED"),
        (
            {"CAWS_ENABLED": "false", "CAWS_WAIVER_THRESHOLD": "0.1"},
            "CAWS_WAIVER_THRESHOLD",
            "CAWS_ENABLED",
        ),
        ({"CAWS_BUDGET_LIMIT": "5", "BUDGET_DAILY_COST": "6"}, "CAWS_BUDGET_LIMIT", "BUDGET_DAILY_COST"),
    ],
)  # fmt: skip
def test_contradicting_budget_variables_are_refused(
    config: Path, env: dict[str, str], variable: str, words: str
) -> None:
    message = refused(config, **env)
    assert variable in message and words in message


def test_budget_variables_with_no_budget_to_act_on_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bare.toml"
    path.write_text(TOML.replace("[tasks.qa.budget]\ntokens_per_day = 100000\n", ""))
    for variable, value in (("CAWS_ENABLED", "true"), ("CAWS_WAIVER_THRESHOLD", "0.1")):
        message = refused(path, **{variable: value})
        assert variable in message and "no budget" in message


# -- the policy ------------------------------------------------------------------------------


def test_bandit_policy_and_exploration_factor_reach_every_task_type(config: Path) -> None:
    settings = load(config, BANDIT_POLICY="epsilon_greedy", EXPLORATION_FACTOR="0.2")
    for name in ("qa", "chat"):
        task = settings.task_configs[name]
        assert (task.policy, task.exploration, task.effective_exploration) == (
            "epsilon_greedy",
            0.2,
            0.2,
        )
    assert load(config).task_configs["qa"].exploration is None


def test_confidence_threshold_is_the_low_confidence_alert_threshold(config: Path) -> None:
    settings = load(config, CONFIDENCE_THRESHOLD="0.7")
    assert {c.rollout.low_confidence_threshold for c in settings.task_configs.values()} == {0.7}


# -- SLOs and the rollout plan ---------------------------------------------------------------


def test_slo_variables_reach_every_task_type_and_quality_min_is_an_absolute_floor(
    config: Path,
) -> None:
    settings = load(
        config, SLO_LATENCY_P99_MS="1500", SLO_QUALITY_MIN="0.6", SLO_ERROR_RATE_MAX="0.02"
    )
    for task in settings.task_configs.values():
        slo = task.rollout.slo
        assert (slo.latency_p99_max_ms, slo.quality_min, slo.error_rate_max) == (1500, 0.6, 0.02)
        assert slo.quality_drop == 0.05  # the relative rule is the task type's own, untouched


def test_rollout_durations_are_hours(config: Path) -> None:
    settings = load(
        config,
        ROLLOUT_SHADOW_DURATION_HOURS="1",
        ROLLOUT_CANARY_DURATION_HOURS="0.5",
        ROLLOUT_GUARDED_DURATION_HOURS="0",
    )
    plan = settings.task_configs["qa"].rollout.plan
    assert (plan.shadow_min_s, plan.canary_min_s, plan.guarded_min_s) == (3600, 1800, 0)
    assert plan.min_duration_s(Phase.SHADOW) == 3600


def test_the_operator_commands_read_the_same_contract(config: Path) -> None:
    env = {"CAWS_BUDGET_LIMIT": "3", "ROLLOUT_SHADOW_DURATION_HOURS": "2", "SLO_QUALITY_MIN": "0.5"}
    deployment = load_deployment(config, env=env)
    qa = deployment.tasks["qa"]
    assert qa.budget is not None and qa.budget.cost_per_day == 3
    assert qa.rollout.plan.shadow_min_s == 7200 and qa.rollout.slo.quality_min == 0.5
    with pytest.raises(ConfigError, match="CAWS_WAIVER_THRESHOLD"):
        load_deployment(config, env={"CAWS_WAIVER_THRESHOLD": "15"})


# -- through the real executable ------------------------------------------------------------


def serve(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in CONTRACT and k != "PARAMLOOP_CONFIG"}
    return subprocess.run(
        [EXE, "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, "COLUMNS": "200", **env},
        cwd=config.parent,
        check=False,
    )


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("LLM_OPTIMIZATION_TRAFFIC_PERCENTAGE", "5", "a fraction in [0, 1]"),
        ("CAWS_WAIVER_THRESHOLD", "20", "a fraction in [0, 1]"),
        ("ROLLOUT_CANARY_DURATION_HOURS", "-2", ">= 0"),
    ],
)
def test_serve_refuses_a_wrong_unit_before_opening_anything(
    config: Path, variable: str, value: str, words: str
) -> None:
    env = {variable: value, "DATABASE_URL": f"sqlite:///{config.parent / 'serve.db'}"}
    if variable.startswith("LLM_"):
        env["LLM_OPTIMIZATION_MODE"] = "canary"
    result = serve(config, **env)
    message = " ".join(result.stderr.split())
    assert result.returncode == 2, message
    assert variable in message and words in message
    assert not (config.parent / "serve.db").exists()
