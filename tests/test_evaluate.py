"""Offline evaluation from the decision log: engine and CLI, on simulated traffic."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from paramloop.engine import Optimizer
from paramloop.engine.evaluate import evaluate, read_log
from paramloop.errors import EvaluationError, InputError
from paramloop.sim.run import simulate
from paramloop.sim.tasks import default_tasks
from paramloop.sim.world import World
from paramloop.store.memory import MemoryDecisionLog

TASK = "summarization"
#: The simulated task type as a configuration file: the operator commands read their task
#: types from one (the simulator's built-in ones exist only in ``simulate``).
SIM_CONFIG = """
[tasks.summarization]
preset = "published"
exploration = 0.5
baseline = { model = "gpt-large", temperature = 0.5, max_tokens = 512, top_p = 0.9 }
space = { model = ["gpt-small", "gpt-large"], temperature = [0.3, 0.4, 0.5, 0.6, 0.7], max_tokens = [256, 384, 512, 640] }
"""


def sim_config(tmp_path: Path) -> str:
    path = tmp_path / "sim.toml"
    path.write_text(SIM_CONFIG)
    return str(path)


def logged(policy: str, exploration: float, rounds: int = 1_500) -> MemoryDecisionLog:
    store = MemoryDecisionLog()
    optimizer = Optimizer(
        default_tasks(policy=policy, exploration=exploration, task_types=[TASK]), store
    )
    simulate(optimizer, World(), rounds=rounds, seed=5, holdout=2)
    optimizer.save_snapshots()
    return store


@pytest.fixture(scope="module")
def exploring() -> MemoryDecisionLog:
    """Logs of a LinUCB policy with a generous exploration floor: support for every feasible arm."""
    return logged("linucb", exploration=0.5)


def config(exploration: float = 0.5):  # type: ignore[no-untyped-def]
    return default_tasks(exploration=exploration, task_types=[TASK])[0]


def test_learned_candidate_against_the_baseline(exploring: MemoryDecisionLog) -> None:
    # 50% exploration over 55 feasible arms logs the baseline arm in ~1% of rounds:
    # an effective sample size near 8, so the test lowers min_ess to see the comparison.
    result = evaluate(exploring, config(), target="learned", resamples=1_000, min_ess=5.0)
    assert result.train_rows == 750 and result.n == 750
    for est in result.estimates:
        assert est.support == "ok", est.reason
        assert est.low is not None and est.high is not None and est.value is not None
        assert est.low <= est.value <= est.high
    for base in result.baseline:
        assert base.support == "ok", base.reason
    sndr = result.comparison("sndr")
    assert sndr is not None and sndr.lower_bound is not None and sndr.difference is not None
    assert sndr.lower_bound <= sndr.difference
    assert result.reproducible == (100, 100) and result.candidate_violations == 0


def test_estimates_track_the_truth_on_the_simulator(exploring: MemoryDecisionLog) -> None:
    """SNIPS and SNDR of the snapshot policy land within their interval of its true value (exact oracle)."""
    cfg = config()
    result = evaluate(exploring, cfg, target="snapshot", resamples=1_000)
    from paramloop.core.policies import restore_policy

    snapshot = exploring.latest_snapshot(TASK)
    assert snapshot is not None
    policy = restore_policy(snapshot.state, cfg.design)
    world = World()
    log = read_log(exploring, cfg)
    from paramloop.engine.evaluate import target_distribution

    target = target_distribution(policy, cfg, log.contexts)
    contexts = [
        d.context for chunk in exploring.iter_logged(TASK) for d, o in chunk if o is not None
    ]
    truth = float(
        np.mean(
            [
                sum(
                    p * world.expected_reward(TASK, ctx, cfg.space.arms[a], cfg.reward)
                    for a, p in enumerate(row)
                    if p > 0
                )
                for ctx, row in zip(contexts, target, strict=True)
            ]
        )
    )
    for name in ("snips", "sndr"):
        est = next(e for e in result.estimates if e.estimator == name)
        assert est.low is not None and est.high is not None
        width = est.high - est.low
        assert est.low - width <= truth <= est.high + width, (name, truth, est)


@pytest.mark.parametrize("exploration", [0.5, 0.0])
def test_collapsed_log_gives_the_full_width_estimates(
    exploring: MemoryDecisionLog, exploration: float
) -> None:
    """Three columns per round give what the full (n, K) arrays give: values, intervals, support."""
    from paramloop.core.ope import compare_all, make_estimator
    from paramloop.core.ope.data import LoggedBandit
    from paramloop.core.policies import restore_policy
    from paramloop.engine.evaluate import (
        baseline_distribution,
        collapse,
        logging_support,
        target_distribution,
    )
    from paramloop.engine.outcome_model import fit_outcome_model

    cfg = config(exploration)
    snapshot = exploring.latest_snapshot(TASK)
    assert snapshot is not None
    policy = restore_policy(snapshot.state, cfg.design)
    log = read_log(exploring, cfg)
    model = fit_outcome_model(log.contexts, log.actions, log.rewards, cfg.space.n_arms, rng=3)
    full_target = target_distribution(policy, cfg, log.contexts)
    full = LoggedBandit(
        log.rewards,
        log.actions,
        log.propensities,
        full_target,
        support=logging_support(cfg, log),
    )
    full_q = model.predict(log.contexts, np.arange(log.n))
    data, candidate, baseline, predicted = collapse(policy, cfg, log, model)
    estimators = [make_estimator(name) for name in ("ips", "snips", "dm", "dr", "sndr")]
    estimators.append(make_estimator("switch-dr", tau=10.0))
    for interval in ("clt", "bootstrap"):
        wide = compare_all(
            full,
            full_target,
            baseline_distribution(cfg, log.n),
            estimators,
            full_q,
            rng=np.random.default_rng(0),
            resamples=300,
            interval=interval,
            min_ess=5.0,
        )
        narrow = compare_all(
            data,
            candidate,
            baseline,
            estimators,
            predicted,
            rng=np.random.default_rng(0),
            resamples=300,
            interval=interval,
            min_ess=5.0,
        )
        for w, c in zip(wide, narrow, strict=True):
            for side_w, side_c in ((w.candidate, c.candidate), (w.baseline, c.baseline)):
                assert side_c.support == side_w.support
                assert side_c.unsupported_share == side_w.unsupported_share
                for name in ("value", "low", "high", "ess", "max_weight"):
                    a, b = getattr(side_w, name), getattr(side_c, name)
                    assert (a is None and b is None) or a == pytest.approx(b, rel=1e-9, abs=1e-12)
            for name in ("difference", "lower_bound"):
                a, b = getattr(w, name), getattr(c, name)
                assert (a is None and b is None) or a == pytest.approx(b, rel=1e-9, abs=1e-12)


def test_logs_of_a_deterministic_baseline_support_nothing_else() -> None:
    store = logged("baseline", exploration=0.05, rounds=300)
    result = evaluate(store, config(0.05), target="learned", resamples=200)
    for est in result.estimates:
        assert est.support == "insufficient" and est.value is None and est.low is None
        assert est.reason
    assert all(c.verdict == "insufficient" and c.difference is None for c in result.comparisons)


def test_bad_requests(exploring: MemoryDecisionLog) -> None:
    with pytest.raises(
        EvaluationError, match="no logged decision of task type 'summarization' with an outcome"
    ):
        evaluate(exploring, config(), start=0.0, end=1.0)
    with pytest.raises(InputError, match="target: must be snapshot, baseline or learned"):
        evaluate(exploring, config(), target="oracle")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"train_share: must be in \(0, 1\)"):
        evaluate(exploring, config(), target="learned", train_share=1.0)
    with pytest.raises(EvaluationError, match="no policy snapshot"):
        evaluate(MemoryDecisionLog_with_one_round(), config(), target="snapshot")


def MemoryDecisionLog_with_one_round() -> MemoryDecisionLog:  # noqa: N802
    store = MemoryDecisionLog()
    optimizer = Optimizer(default_tasks(task_types=[TASK]), store)
    simulate(optimizer, World(), rounds=3, seed=1, holdout=2)
    return store


def test_cli_evaluate(tmp_path: Path) -> None:
    exe = shutil.which("paramloop", path=str(Path(sys.executable).parent)) or "paramloop"
    db = f"sqlite:///{tmp_path / 'log.db'}"
    config = sim_config(tmp_path)
    sim = subprocess.run(
        [
            exe,
            "simulate",
            "--rounds",
            "400",
            "--config",
            config,
            "--holdout",
            "5",
            "--db",
            db,
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert sim.returncode == 0, sim.stderr
    out = subprocess.run(
        [
            exe,
            "evaluate",
            "--db",
            db,
            "--config",
            config,
            "-t",
            TASK,
            "--candidate",
            "learned",
            "--resamples",
            "500",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["task_type"] == TASK and report["n"] == 200
    assert {e["estimator"] for e in report["estimates"]} >= {"ips", "snips", "dr"}
    table = subprocess.run(
        [exe, "evaluate", "--db", db, "--config", config, "-t", TASK, "--resamples", "500"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={"COLUMNS": "160", "PATH": str(Path(sys.executable).parent)},
    )
    assert table.returncode == 0, table.stderr
    assert "snips" in table.stdout and "lower bound" in table.stdout
    bad = subprocess.run(
        [exe, "evaluate", "--db", db, "--config", config, "-t", "poetry"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "unknown task type 'poetry'" in " ".join(bad.stderr.split())


@pytest.fixture(scope="module")
def uniform() -> MemoryDecisionLog:
    """Logs of a uniform-random logging policy: every arm, the baseline included, is supported."""
    return logged("linucb", exploration=1.0, rounds=3_000)


def test_gates_pass_persist_and_approve(uniform: MemoryDecisionLog) -> None:
    from paramloop.core.gates import GateThresholds
    from paramloop.engine.gates import approve, run_gates

    # Logged uniformly; the candidate deploys with the default 5% exploration.
    result = evaluate(uniform, config(0.05), target="learned", resamples=1_000, min_ess=20.0)
    report = run_gates(
        uniform, result, thresholds=GateThresholds(min_decisions=1_000, min_ess=20.0)
    )
    verdicts = {g["name"]: g["verdict"] for g in report.report["gates"]}
    assert verdicts == {
        "min_decisions": "pass",
        "min_ess": "pass",
        "improvement": "pass",
        "zero_violations": "pass",
        "reproducible": "pass",
    }, report.report["gates"]
    assert report.verdict == "pass" and uniform.latest_gate_report(TASK) == report
    record = approve(uniform, report.id, actor="alice", reason="lift holds on all estimators")
    assert record.kind == "gate_approval" and record.evidence["gate_report_id"] == report.id
    assert record.policy_versions == {"candidate": "linucb@2.0.0", "baseline": "baseline"}
    assert uniform.list_provenance(TASK) == [record]


def test_gates_fail_on_violations_and_refuse_approval(uniform: MemoryDecisionLog) -> None:
    import dataclasses

    from paramloop.core.reward import RewardFunction
    from paramloop.engine.gates import approve, run_gates

    strict = dataclasses.replace(config(0.05), reward=RewardFunction(max_latency_ms=1.0))
    result = evaluate(uniform, strict, target="learned", resamples=200, min_ess=20.0)
    report = run_gates(uniform, result)
    gates = {g["name"]: g for g in report.report["gates"]}
    assert gates["zero_violations"]["verdict"] == "fail"
    assert gates["zero_violations"]["evidence"]["logged_violations"] > 0
    assert report.verdict == "fail"
    before = uniform.list_provenance()
    with pytest.raises(
        InputError, match=r"gate report \d+ is 'fail'; only a passed report can be approved"
    ):
        approve(uniform, report.id, actor="bob", reason="ship it")
    with pytest.raises(InputError, match="no gate report with id 999"):
        approve(uniform, 999, actor="bob", reason="ship it")
    assert uniform.list_provenance() == before


def test_gates_inconclusive_without_support_for_the_baseline(exploring: MemoryDecisionLog) -> None:
    from paramloop.engine.gates import run_gates

    report = run_gates(exploring, evaluate(exploring, config(), target="snapshot", resamples=200))
    gates = {g["name"]: g["verdict"] for g in report.report["gates"]}
    assert gates["improvement"] == "inconclusive" and report.verdict == "inconclusive"


def test_shadow_logs_are_flagged_by_the_gates() -> None:
    from paramloop.engine.gates import check

    store = logged("baseline", exploration=0.05, rounds=300)
    results = {
        r.name: r for r in check(evaluate(store, config(0.05), target="learned", resamples=200))
    }
    assert results["log_support"].verdict == "inconclusive"
    assert "cannot evaluate another policy" in results["log_support"].reason


def test_cli_gates(tmp_path: Path) -> None:
    exe = shutil.which("paramloop", path=str(Path(sys.executable).parent)) or "paramloop"
    db = f"sqlite:///{tmp_path / 'log.db'}"

    config = sim_config(tmp_path)
    env = {**os.environ, "PARAMLOOP_CONFIG": config}  # read by every operator command

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [exe, *args], capture_output=True, text=True, check=False, timeout=300, env=env
        )

    simulated = run("simulate", "--rounds", "300", "--config", config, "--holdout", "5", "--db", db)
    assert simulated.returncode == 0, simulated.stderr
    result = run("gates", "run", "--db", db, "-t", TASK, "--resamples", "200", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"] in ("pass", "fail", "inconclusive") and len(report["gates"]) >= 5
    shown = run("gates", "show", "--db", db, "--id", str(report["id"]))
    assert shown.returncode == 0 and "min_decisions" in shown.stdout
    if report["verdict"] != "pass":
        refused = run(
            "gates",
            "approve",
            "--db",
            db,
            "--id",
            str(report["id"]),
            "--actor",
            "a",
            "--reason",
            "r",
        )
        assert refused.returncode == 2 and "only a passed report can be approved" in " ".join(
            refused.stderr.split()
        )


def test_a_log_from_another_parameter_space_is_refused(exploring: MemoryDecisionLog) -> None:
    """Logged arm indices outside the configured space (the space shrank) name the rows at fault."""
    from paramloop.engine import task
    from paramloop.types import Params

    small = task(
        TASK,
        preset="published",
        baseline=Params("gpt-large", temperature=0.5, max_tokens=512, top_p=0.9),
        grids={"temperature": [0.4, 0.5]},
        exploration=0.5,
    )
    with pytest.raises(
        EvaluationError, match=r"arms: \d+ logged decisions name an arm the configured space"
    ):
        evaluate(exploring, small, target="baseline", resamples=100)
