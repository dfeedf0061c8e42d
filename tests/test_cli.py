"""End to end through the real ``paramloop`` executable."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

EXE = shutil.which("paramloop", path=str(Path(sys.executable).parent)) or "paramloop"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run(
        [EXE, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env, check=False
    )


def test_simulate_json_reports_every_task_type() -> None:
    result = run("simulate", "--rounds", "120", "--seed", "3", "--holdout", "30", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["policy"] == "linucb@2.0.0"
    names = [t["task_type"] for t in report["tasks"]]
    assert len(names) >= 5 and len(set(names)) == len(names)
    for t in report["tasks"]:
        assert t["rounds"] == 120
        assert t["lift_low"] <= t["lift"] <= t["lift_high"]
        assert t["learned_reward"] <= t["oracle_reward"] + 1e-12
        assert t["baseline_reward"] <= t["oracle_reward"] + 1e-12
        assert t["regret"] >= 0
        assert t["chosen"]["model"] in ("gpt-small", "gpt-large", "reasoner")


def test_simulate_table_and_durable_log(tmp_path: Path) -> None:
    db = tmp_path / "loop.db"
    result = run(
        "simulate",
        "--rounds",
        "40",
        "-t",
        "summarization",
        "-t",
        "qa",
        "--holdout",
        "10",
        "--db",
        f"sqlite:///{db}",
    )
    assert result.returncode == 0, result.stderr
    for text in (
        "summarization",
        "qa",
        "baseline",
        "learned",
        "95% CI",
        "regret",
        "chosen parameters",
    ):
        assert text in result.stdout
    assert "80 decisions" in result.stdout
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from logged_decisions").fetchone() == (80,)
        assert conn.execute("select count(*) from outcomes").fetchone() == (80,)
        (propensity_ok,) = conn.execute(
            "select min(log_propensity > 0 and log_propensity <= 1) from logged_decisions"
        ).fetchone()
        assert propensity_ok == 1


def test_simulate_with_a_toml_config(tmp_path: Path) -> None:
    config = tmp_path / "tasks.toml"
    config.write_text(
        """
[tasks.classification]
preset = "published"
policy = "thompson_gaussian"
baseline = { model = "gpt-small", temperature = 0.3, max_tokens = 64 }
space = { temperature = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5], max_tokens = [16, 32, 64] }
"""
    )
    result = run("simulate", "--rounds", "30", "--holdout", "5", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["policy"] == "thompson_gaussian@1.0.0"
    assert [t["task_type"] for t in report["tasks"]] == ["classification"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--policy", "nope"), "unknown policy 'nope'; available: baseline"),
        (("-t", "poetry"), "unknown task type 'poetry'; available: code_review"),
        (("--rounds", "0"), "Invalid value for '--rounds'"),
        (("--db", "mysql://x"), "database_url"),
    ],
)
def test_simulate_bad_input(args: tuple[str, ...], message: str) -> None:
    result = run("simulate", *args)
    assert result.returncode == 2
    assert message in " ".join(result.stderr.split())


def test_every_command_is_documented() -> None:
    result = run("--help")
    assert result.returncode == 0
    from paramloop.cli import app

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    commands = [
        c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands
    ]
    commands += [g.name or "" for g in app.registered_groups]
    assert {"simulate", "evaluate", "gates"} <= set(commands)
    for command in commands:
        assert command in result.stdout
        assert f"paramloop {command}" in readme


def test_import_paramloop_stays_light() -> None:
    code = (
        "import sys, paramloop; "
        "heavy = [m for m in ('sqlalchemy', 'alembic', 'psycopg', 'fastapi', 'typer', 'rich') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_import_a_dsjson_log_then_evaluate_the_learned_snapshot_on_it(tmp_path: Path) -> None:
    """A uniform-random router's DSJSON log → `paramloop import` → `paramloop evaluate`:
    the snapshot learned from the log beats the baseline (true gap 0.4) by OPE on it."""
    import numpy as np

    config = tmp_path / "route.toml"
    config.write_text(
        """
[tasks.route]
baseline = { model = "gateway", choices = { tier = "small" } }
choices = { tier = ["small", "medium", "large"] }
features = [{ name = "length", kind = "numeric" }, { name = "vip", kind = "bool" }]
reward = { low = -1.0, high = 1.0 }
"""
    )
    rng = np.random.default_rng(3)
    lines = []
    for i in range(1_500):
        length = float(rng.normal(100, 30))
        action = int(rng.integers(3))
        best = 2 if length > 100 else 1
        reward = 0.7 if action == best else 0.3 if action != 0 else 0.1
        event = {
            "EventId": f"e{i}",
            "_labelIndex": action,
            "_label_probability": 1 / 3,
            "_label_cost": -reward,
            "c": {"length": length, "vip": i % 2, "_multi": [{}, {}, {}]},
        }
        lines.append(json.dumps(event))
    log = tmp_path / "log.dsjson"
    log.write_text("\n".join(lines))
    db = f"sqlite:///{tmp_path / 'route.db'}"
    imported = run("import", "--db", db, "-t", "route", "--config", str(config), str(log))
    assert imported.returncode == 0, imported.stderr
    assert "imported 1500 decisions (1500 with an outcome)" in imported.stdout
    again = run("import", "--db", db, "-t", "route", "--config", str(config), str(log))
    assert again.returncode == 2 and "e0" in again.stderr  # nothing imported twice

    bad = tmp_path / "bad.dsjson"
    bad.write_text(lines[0].replace('"e0"', '"x0"') + "\n" + lines[1].replace("0.333", "1.5"))
    refused = run("import", "--db", db, "-t", "route", "--config", str(config), str(bad))
    assert refused.returncode == 2 and "row 1" in refused.stderr and "propensity" in refused.stderr
    with sqlite3.connect(tmp_path / "route.db") as connection:
        stored = connection.execute("select count(*) from logged_decisions").fetchone()[0]
    assert stored == 1_500  # the bad file stored nothing, not even its good first row

    evaluated = run(
        "evaluate",
        "--db",
        db,
        "-t",
        "route",
        "--config",
        str(config),
        "--resamples",
        "300",
        "--json",
    )
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    dr = next(c for c in report["comparisons"] if c["estimator"] == "dr")
    assert dr["lower_bound"] > 0.1, dr
