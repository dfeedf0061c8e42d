"""One deployment configuration for ``paramloop serve`` and every operator command.

Through the real executable: ``serve`` without a configuration starts the embedded
default (and says so first); the operator commands read the service's own file,
``PARAMLOOP_CONFIG`` and ``DATABASE_URL``; the simulator's task types appear only in
``simulate``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from paramloop.engine.loop import build_loop
from paramloop.errors import ConfigError
from paramloop.server.settings import EMBEDDED, Settings, load_deployment
from paramloop.store import open_store

EXE = shutil.which("paramloop", path=str(Path(sys.executable).parent)) or "paramloop"
EMBEDDED_TASKS = ["arithmetic", "json_profile", "short_answer"]
#: What a deployment's environment may hold that these tests must control.
DEPLOYMENT_ENV = (
    "PARAMLOOP_CONFIG",
    "DATABASE_URL",
    "PARAMLOOP_API_KEYS",
    "PARAMLOOP_HOST",
    "PARAMLOOP_UPSTREAM_BASE_URL",
    "PARAMLOOP_AUTH_DISABLED",
    "LLM_OPTIMIZATION_MODE",
    "BANDIT_POLICY",
)
#: A service's file, as an operator writes it: task types, and a [service] table with keys
#: and an upstream whose secret the operator's shell does not have.
SERVICE_TOML = """
[tasks.summarize]
preset = "published"
baseline = {{ model = "small", temperature = 0.4, max_tokens = 64 }}
space = {{ temperature = [0.2, 0.4, 0.6] }}
budget = {{ tokens_per_day = 50000 }}

[service]
database_url = "{database_url}"
mode = "shadow"
api_keys = [{{ name = "ops", role = "admin", sha256 = "{digest}" }}]
upstreams = {{ "*" = {{ base_url = "https://llm.example/v1", api_key_env = "NOT_IN_THIS_SHELL" }} }}

[service.budget]
daily_cost = 7.5
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DEPLOYMENT_ENV}
    return {**env, "COLUMNS": "200", **extra}


def run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(**env),
        cwd=cwd,
        check=False,
    )


def said(result: subprocess.CompletedProcess[str]) -> str:
    return " ".join(result.stderr.split())


@pytest.fixture
def service_file(tmp_path: Path) -> tuple[Path, str]:
    """A service's configuration file and its store, where summarize's rollout has begun."""
    url = f"sqlite:///{tmp_path / 'service.db'}"
    path = tmp_path / "paramloop.toml"
    path.write_text(
        SERVICE_TOML.format(database_url=url, digest=hashlib.sha256(b"ops-key").hexdigest())
    )
    loop = build_loop(load_deployment(path, env={}).tasks, open_store(url), sinks=())
    loop.close()
    return path, url


# -- serve --------------------------------------------------------------------------------


def test_serve_without_a_configuration_starts_the_embedded_default_and_says_so(
    paramloop_process: Callable[..., Any], tmp_path: Path, local_model: Path
) -> None:
    log = tmp_path / "serve.log"
    server = paramloop_process(None, cwd=tmp_path, env=clean_env(), stderr=log)
    lines = [json.loads(line)["message"] for line in log.read_text().splitlines()[:6]]
    first = "\n".join(lines)
    assert "embedded default" in lines[0] and "PARAMLOOP_CONFIG" in lines[0]
    assert f"sqlite:///paramloop.db ({tmp_path / 'paramloop.db'})" in lines[1]
    assert ", ".join(EMBEDDED_TASKS) in first and "starts in shadow" in first
    assert "auth: disabled" in first and "127.0.0.1" in first
    assert "local model" in first and "/v1" in first

    decided = httpx.post(f"{server.url}/v1/recommend", json={"task_type": "arithmetic"})
    assert decided.status_code == 200, decided.text  # no key needed on loopback
    assert (decided.json()["phase"], decided.json()["origin"]) == ("shadow", "baseline")
    assert (tmp_path / "paramloop.db").is_file()
    completion = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={
            "model": "smollm2",
            "messages": [{"role": "user", "content": "What is 2 + 3? Reply with the number."}],
            "metadata": {"paramloop_task_type": "arithmetic"},
            "seed": 1,
        },
        timeout=120,
    )
    assert completion.status_code == 200, completion.text
    assert completion.headers["x-paramloop-mode"] == "control"  # shadow: the baseline served
    assert completion.json()["choices"][0]["message"]["content"]


def test_the_embedded_default_refuses_to_serve_beyond_loopback(tmp_path: Path) -> None:
    result = run("serve", "--host", "0.0.0.0", cwd=tmp_path)
    assert result.returncode == 2
    message = said(result)
    assert "--host" in message and "embedded default" in message and "loopback" in message
    assert "API keys" in message
    assert not (tmp_path / "paramloop.db").exists()  # refused before anything was opened


def test_the_embedded_default_settings() -> None:
    settings = Settings.load(None, env={})
    assert settings.embedded and settings.source == EMBEDDED
    assert list(settings.tasks) == EMBEDDED_TASKS
    assert (settings.database_url, settings.auth_disabled, settings.mode) == (
        "sqlite:///paramloop.db",
        True,
        "shadow",
    )
    assert settings.upstreams == {}  # serve adds the local model when it is installed
    digest = hashlib.sha256(b"k").hexdigest()
    keyed = Settings.load(None, env={"PARAMLOOP_API_KEYS": f"ops:admin:{digest}"}, host="0.0.0.0")
    assert not keyed.auth_disabled and keyed.host == "0.0.0.0"  # keys: any host
    with pytest.raises(ConfigError, match="--host"):
        Settings.load(None, env={}, host="10.0.0.1")
    with pytest.raises(ConfigError, match="PARAMLOOP_CONFIG: file not found"):
        Settings.load(None, env={"PARAMLOOP_CONFIG": "/nowhere.toml"})


# -- the operator commands ----------------------------------------------------------------


def test_the_commands_read_the_services_own_file(
    service_file: tuple[Path, str], tmp_path: Path
) -> None:
    path, _ = service_file
    status = run(
        "rollout", "status", "-t", "summarize", "--config", str(path), "--json", cwd=tmp_path
    )
    assert status.returncode == 0, status.stderr  # no "service: unknown key", no secret needed
    assert json.loads(status.stdout)["state"]["phase"] == "shadow"
    budget = run(
        "budget", "status", "-t", "summarize", "--config", str(path), "--json", cwd=tmp_path
    )
    assert budget.returncode == 0, budget.stderr
    limits = json.loads(budget.stdout)["limits"]
    assert limits == {"tokens": 50_000.0, "cost": 7.5}  # [service.budget] applies, as in serve
    assert not (tmp_path / "paramloop.db").exists()  # the file's database, not a default one


def test_every_command_reads_paramloop_config_and_database_url(
    service_file: tuple[Path, str], tmp_path: Path
) -> None:
    path, url = service_file
    from_env = {"PARAMLOOP_CONFIG": str(path)}
    for args in (
        ("rollout", "status", "-t", "summarize"),
        ("budget", "status", "-t", "summarize"),
        ("audit",),
        ("alerts",),
    ):
        result = run(*args, cwd=tmp_path, **from_env)
        assert result.returncode == 0, (args, result.stderr)
    assert (
        "summarize: shadow"
        in run("rollout", "status", "-t", "summarize", cwd=tmp_path, **from_env).stdout
    )
    # DATABASE_URL wins over the file's service.database_url, as it does for serve.
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    result = run(
        "rollout", "status", "-t", "summarize", cwd=tmp_path, DATABASE_URL=elsewhere, **from_env
    )
    assert result.returncode == 2 and "holds no rollout of 'summarize'" in said(result)
    # --db wins over both.
    result = run(
        "rollout",
        "status",
        "-t",
        "summarize",
        "--db",
        url,
        cwd=tmp_path,
        DATABASE_URL=elsewhere,
        **from_env,
    )
    assert result.returncode == 0, result.stderr


def test_without_a_configuration_the_commands_use_the_embedded_default_not_the_simulator(
    tmp_path: Path,
) -> None:
    result = run("rollout", "status", "-t", "summarization", cwd=tmp_path)
    assert result.returncode == 2
    message = said(result)
    assert "embedded default" in message and "sqlite:///paramloop.db" in message
    assert (
        "unknown task type 'summarization'; configured task types: " + ", ".join(EMBEDDED_TASKS)
        in message
    )
    result = run("gates", "run", "-t", "qa", cwd=tmp_path)
    assert result.returncode == 2 and "unknown task type 'qa'" in said(result)


@pytest.mark.parametrize(
    ("document", "where", "allowed"),
    [
        ("[service]\ncolour = 'red'\n", "service.colour", "database_url"),
        ("[service.budget]\ndaily_euros = 3\n", "service.budget.daily_euros", "daily_cost"),
        ("[service]\ndatabase_url = 7\n", "service.database_url", "non-empty string"),
        ("[servce]\nmode = 'shadow'\n", "servce", "tasks"),
    ],
)
def test_a_bad_key_is_named_with_what_is_allowed(
    tmp_path: Path, document: str, where: str, allowed: str
) -> None:
    path = tmp_path / "bad.toml"
    tasks = SERVICE_TOML.format(database_url="sqlite://", digest="0" * 64).split("[service]")[0]
    path.write_text(tasks + document)
    result = run("audit", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert where in said(result) and allowed in said(result)


# -- one constructor for the whole loop ---------------------------------------------------


def test_build_loop_is_the_public_constructor_and_starts_in_shadow() -> None:
    import paramloop
    from paramloop import Outcome, Params, build_loop, task
    from paramloop.store.memory import MemoryDecisionLog

    summarize = task(
        "summarize",
        baseline=Params("gpt-small", temperature=0.3, max_tokens=256),
        grids={"temperature": [0.1, 0.3, 0.5], "max_tokens": [128, 256]},
        undeclared="hash",
    )
    loop = build_loop([summarize], MemoryDecisionLog())
    assert "build_loop" in paramloop.__all__
    decision = loop.recommend("summarize", {"risk_tier": "low"})
    assert (decision.phase, decision.origin) == ("shadow", "baseline")
    assert (decision.params.temperature, decision.params.max_tokens) == (0.3, 256)
    assert decision.intended_arm is not None  # the policy's choice, logged
    recorded = loop.record_outcome(decision.request_id, Outcome(quality=0.9))
    assert recorded.reward is not None
    assert loop.rollout.state("summarize").phase == "shadow"
    loop.close()
