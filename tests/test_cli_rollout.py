"""Safe rollout, budgets, audit trail and alerts through the real ``paramloop`` executable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from paramloop.engine import load_config
from paramloop.engine.loop import build_loop
from paramloop.sim.world import World
from paramloop.store import open_store

EXE = shutil.which("paramloop", path=str(Path(sys.executable).parent)) or "paramloop"
TASK = "summarization"
PHASES = ["shadow", "canary", "guarded", "general", "rolled_back"]

#: Leaving shadow at once (no minimum, no confidence bar, no approval); canary keeps the
#: default two days, so a second advance is refused.  A daily budget allows 20 % waivers.
CONFIG = """
[tasks.summarization]
preset = "published"
baseline = { model = "gpt-large", temperature = 0.5, max_tokens = 512 }
space = { temperature = [0.3, 0.5, 0.7], max_tokens = [256, 512] }
rollout = { shadow_min_s = 0, canary_confidence = 0.0, require_approval = false }
budget = { tokens_per_day = 100000, cost_per_day = 5.0, max_waiver_percent = 20 }
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run(
        [EXE, *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def ok(*args: str) -> str:
    result = run(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def refused(*args: str) -> str:
    """The message of a command that must exit with status 2."""
    result = run(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    return " ".join(result.stderr.split())


def as_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json"))


# -- simulate --rollout ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """One simulated rollout logged to SQLite: the store's URL and the JSON report."""
    url = f"sqlite:///{tmp_path_factory.mktemp('simulated') / 'rollout.db'}"
    return url, as_json("simulate", "--rollout", "--seed", "0", "--db", url)


def test_simulate_rollout_reaches_every_phase_then_rolls_back_by_itself(
    simulated: tuple[str, dict[str, Any]],
) -> None:
    _, report = simulated
    timeline = report["timeline"]
    assert [span["phase"] for span in timeline] == PHASES
    shares = {span["phase"]: span["treatment_share"] for span in timeline}
    assert shares["shadow"] == 0.0
    assert 0.02 < shares["canary"] <= 0.08
    assert 0.15 < shares["guarded"] < 0.35
    assert shares["general"] == 1.0
    assert [span["actor"] for span in timeline[:3]] == ["simulate"] * 3
    general = timeline[3]
    assert (general["event"], general["actor"], general["slo"]) == (
        "rollback",
        "rule:slo",
        "breach",
    )
    assert report["final"]["phase"] == "rolled_back" and report["final"]["frozen"]
    assert report["breach_injected_at"] < report["breach_caught_at"] == report["requests"]
    # Shadow's log cannot support the candidate; canary's passes the gates, approved as simulate.
    first, last = report["gates"][0], report["gates"][-1]
    assert first["phase"] == "shadow" and not first["passed"]
    assert any("does not support the candidate" in reason for reason in first["reasons"])
    assert last["phase"] == "canary" and last["passed"] and last["approval"] is not None
    audit = report["audit"]  # oldest first
    assert [r["kind"] for r in audit if r["kind"] != "freeze"] == [
        "promotion",
        "gate_approval",
        "promotion",
        "promotion",
        "rollback",
    ]
    rollback = audit[-1]
    assert rollback["actor"] == "rule:slo" and "SLO breach" in rollback["reason"]
    assert (rollback["evidence"]["from"], rollback["evidence"]["to"]) == ("general", "rolled_back")
    assert rollback["evidence"]["verdict"] == "breach"
    assert rollback["policy_versions"]["baseline"] == "baseline"


def test_audit_and_alerts_of_the_simulated_store(simulated: tuple[str, dict[str, Any]]) -> None:
    url, report = simulated
    records = as_json("audit", "--db", url, "-t", TASK)
    ids = [r["id"] for r in records]
    assert ids == sorted(ids, reverse=True)
    assert ids == [r["id"] for r in reversed(report["audit"])]
    assert (records[0]["kind"], records[0]["actor"]) == ("rollback", "rule:slo")
    table = ok("audit", "--db", url, "--kind", "promotion", "--limit", "2")
    assert "newest first" in table and "simulate" in table
    assert "guarded →" in table and "shadow →" not in table  # the two newest promotions

    alerts = as_json("alerts", "--db", url, "-t", TASK)
    assert (alerts[0]["kind"], alerts[0]["severity"]) == ("rollback", "critical")

    message = refused("simulate", "--rollout", "--db", url)
    assert "already holds a rollout of 'summarization'" in message


def test_simulate_rollout_prints_the_timeline_and_the_audit_trail() -> None:
    out = ok("simulate", "--rollout", "--seed", "0")
    for text in (
        "safe rollout of summarization",
        "guarded",
        "rolled_back",
        "rule:slo",
        "breach injected at request",
        "gates on the shadow log",
        "audit trail, oldest first",
    ):
        assert text in out, text


def test_simulate_rollout_walks_one_task_type() -> None:
    assert "walks one task type" in refused("simulate", "--rollout", "-t", "qa", "-t", TASK)


# -- rollout commands on a SQLite store -------------------------------------------------------


@pytest.fixture
def deployment(tmp_path: Path) -> tuple[str, ...]:
    """A store where summarization has served 30 requests in shadow: ``--db URL --config F``."""
    config = tmp_path / "tasks.toml"
    config.write_text(CONFIG)
    url = f"sqlite:///{tmp_path / 'loop.db'}"
    store = open_store(url)
    loop = build_loop(load_config(config), store, sinks=())
    world, rng = World(), np.random.default_rng(0)
    for _ in range(30):
        decision = loop.optimizer.recommend(TASK, world.sample_context(TASK, rng))
        loop.optimizer.record_outcome(
            decision.request_id, world.outcome(TASK, decision.context, decision.params, rng)
        )
    loop.close()
    return ("-t", TASK, "--db", url, "--config", str(config))


def test_rollout_commands_change_state_or_refuse_and_change_nothing(
    deployment: tuple[str, ...],
) -> None:
    who = ("--actor", "alice", "--reason", "checked")
    out = ok("rollout", "advance", *deployment, *who)
    assert "shadow → canary, treatment traffic 5%" in out and "actor alice" in out

    message = refused("rollout", "traffic", *deployment, "--percent", "35", *who)
    assert "canary traffic must be in (0, 5] percent, got 35.0" in message
    message = refused("rollout", "advance", *deployment, *who)
    assert "cannot leave canary" in message
    assert "gates: gates did not pass" in message and "min_duration" in message
    status = as_json("rollout", "status", *deployment)
    assert (status["state"]["phase"], status["state"]["traffic_percent"]) == ("canary", 5.0)
    assert status["state"]["version"] == 1 and not status["promotion"]["ready"]
    metrics = {rule["metric"] for rule in status["slo"]["rules"]}
    assert metrics == {"latency_p99_increase", "quality_drop", "error_rate_max"}

    out = ok("rollout", "traffic", *deployment, "--percent", "2.5", *who)
    assert "treatment traffic 2.5%" in out
    out = ok(
        "rollout", "rollback", *deployment, "--to", "previous", "--actor", "bob", "--reason", "p99"
    )
    assert "canary → shadow" in out and "frozen: p99" in out
    message = refused("rollout", "resume", *deployment, *who)
    assert "rollout event 'resume' is not allowed from phase 'shadow'" in message

    table = ok("rollout", "status", *deployment)
    for text in (
        "summarization: shadow",
        "frozen: p99",
        "SLOs since the phase began",
        "promotion shadow → canary: not ready",
        "not_frozen",
    ):
        assert text in table, text


def test_rollout_bad_input(deployment: tuple[str, ...], tmp_path: Path) -> None:
    message = refused("rollout", "status", "-t", "poetry", *deployment[2:])
    assert "unknown task type 'poetry'; configured task types: summarization" in message
    new_db = f"sqlite:///{tmp_path / 'new.db'}"
    message = refused("rollout", "status", "-t", TASK, "--db", new_db, *deployment[4:])
    assert "holds no rollout of 'summarization' yet" in message  # the service starts rollouts
    message = refused(
        "rollout", "rollback", *deployment, "--to", "sideways", "--actor", "bob", "--reason", "r"
    )
    assert "--to: must be previous or baseline, got 'sideways'" in message


# -- budgets --------------------------------------------------------------------------------


def test_budget_status_and_waivers(deployment: tuple[str, ...]) -> None:
    status = as_json("budget", "status", *deployment)
    assert status["budget"] and status["limits"] == {"tokens": 100_000.0, "cost": 5.0}
    assert status["spent"]["tokens"] > 0  # the 30 requests were charged

    who = ("--actor", "carol", "--reason", "launch day")
    message = refused("budget", "waive", *deployment, "--percent", "35", *who)
    assert "waiver_percent: must be in [0, 20], got 35.0" in message
    out = ok("budget", "waive", *deployment, "--percent", "15", *who)
    assert "raised by 15% to 115,000 tokens" in out and "approved by carol (audit record 1)" in out

    table = ok("budget", "status", *deployment)
    assert "115,000" in table and "waiver 15% (at most 20%)" in table
