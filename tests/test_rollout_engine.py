"""The rollout controller wired to the optimizer and a store: routing, guardrails, audit, restarts."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from paramloop.core.assignment import Group
from paramloop.core.monitor import SLOConfig
from paramloop.core.rollout import Phase, RolloutPlan
from paramloop.engine import Optimizer
from paramloop.engine.rollout import (
    MONITOR_KIND,
    DriftSettings,
    PromotionRefusedError,
    RolloutController,
    RolloutSettings,
    group_of,
)
from paramloop.errors import InputError, StaleStateError, TransitionError, UnknownTaskTypeError
from paramloop.sim.tasks import default_tasks
from paramloop.sim.world import World
from paramloop.store import Store
from paramloop.store.base import LoggedRow
from paramloop.store.memory import MemoryDecisionLog
from paramloop.store.sqlite import SQLiteDecisionLog
from paramloop.types import Decision, GateReportRecord, Outcome, Params

TASK = "summarization"
T0 = 1_700_000_000.0
FAST = RolloutPlan(
    shadow_min_s=10.0,
    canary_min_s=10.0,
    guarded_min_s=10.0,
    guarded_percent=50.0,
    canary_confidence=0.0,
    guarded_confidence=0.0,
    general_confidence=0.0,
    require_approval=False,
    inconclusive_limit=10_000,
)


#: Rules loose enough that a healthy phase proves itself in a few hundred requests: the
#: tests walk the ladder with the real promotion check, SLOs included.
WALK_SLO = SLOConfig(
    latency_p99_increase=None, quality_drop=0.5, error_rate_max=0.2, min_samples=50
)


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


def build(
    store: Store,
    clock: Clock,
    *,
    plan: RolloutPlan = FAST,
    slo: SLOConfig | None = None,
    drift: DriftSettings | None = None,
    analysis_every: int = 50,
) -> tuple[Optimizer, RolloutController]:
    settings = RolloutSettings(
        plan=plan,
        slo=slo or WALK_SLO,
        drift=drift or DriftSettings(enabled=False),
        analysis_every=analysis_every,
    )
    config = replace(default_tasks(task_types=[TASK], exploration=0.2)[0], rollout=settings)
    controller = RolloutController(
        store,
        {TASK: settings},
        baseline_arm={TASK: config.space.baseline_arm},
        policy_version=lambda _: "linucb@2.0.0",
        clock=clock,
    )
    return Optimizer([config], store, clock=clock, rollout=controller), controller


def pass_gates(store: Store, clock: Clock) -> None:
    store.save_gate_report(
        GateReportRecord(TASK, "linucb@2.0.0", "baseline", "pass", {"gates": []}, clock.now)
    )


def serve(optimizer: Optimizer, n: int, seed: int = 99) -> None:
    """Requests without outcomes: the phase's confidence is measured on them."""
    world, rng = World(), np.random.default_rng(seed)
    for _ in range(n):
        optimizer.recommend(TASK, world.sample_context(TASK, rng))


def walk_to(
    optimizer: Optimizer, controller: RolloutController, store: Store, clock: Clock, phase: Phase
) -> None:
    """Advance phase by phase, serving healthy traffic until each promotion check is ready."""
    pass_gates(store, clock)
    world, rng = World(), np.random.default_rng(98)
    while controller.state(TASK).phase is not phase:
        for _ in range(20_000):
            clock.now += 0.01
            decision = optimizer.recommend(TASK, world.sample_context(TASK, rng))
            optimizer.record_outcome(
                decision.request_id, Outcome(quality=0.8, latency_ms=900.0, error=False)
            )
            if controller.promotion(TASK, approved_by="alice").ready:
                break
        clock.now += 11.0
        controller.advance(TASK, actor="alice", reason="walking the ladder")


def test_shadow_serves_the_baseline_and_logs_the_intended_arm() -> None:
    store, clock = MemoryDecisionLog(), Clock()
    optimizer, controller = build(store, clock)
    world, rng = World(), np.random.default_rng(0)
    baseline = optimizer.config(TASK).space.baseline_arm
    decisions = [optimizer.recommend(TASK, world.sample_context(TASK, rng)) for _ in range(200)]
    assert {d.arm for d in decisions} == {baseline}
    assert {d.propensity for d in decisions} == {1.0}
    assert {d.phase for d in decisions} == {"shadow"}
    assert all(d.intended_arm is not None for d in decisions)
    status = controller.status(TASK)
    agreement = np.mean([d.intended_arm == baseline for d in decisions])
    assert status["shadow_agreement"] == pytest.approx(agreement)
    assert status["shadow_decisions"] == 200
    assert "cannot evaluate the candidate" in status["note"]


def test_promotion_needs_every_requirement_and_leaves_an_audit_trail() -> None:
    store, clock = MemoryDecisionLog(), Clock()
    optimizer, controller = build(store, clock)
    before = controller.state(TASK)
    with pytest.raises(PromotionRefusedError, match=r"min_duration.*confidence unknown"):
        controller.advance(TASK, actor="alice", reason="too early")
    assert controller.state(TASK) == before
    pass_gates(store, clock)
    serve(optimizer, 5)
    clock.now += 11.0
    canary = controller.advance(TASK, actor="alice", reason="gates passed")
    assert (canary.phase, canary.traffic_percent) == (Phase.CANARY, 5.0)
    [record] = store.list_provenance(TASK, "promotion")
    assert (record.actor, record.reason) == ("alice", "gates passed")
    assert record.evidence["from"] == "shadow" and record.evidence["to"] == "canary"
    assert record.policy_versions == {"candidate": "linucb@2.0.0", "baseline": "baseline"}

    with pytest.raises(InputError, match=r"canary traffic must be in \(0, 5\]"):
        controller.set_traffic(TASK, 35.0, actor="alice", reason="too much")
    assert controller.state(TASK).traffic_percent == 5.0
    assert controller.set_traffic(TASK, 3.0, actor="alice", reason="gentler").traffic_percent == 3.0
    assert store.list_provenance(TASK, "traffic_change")[0].evidence == {
        "from": 5.0,
        "to": 3.0,
        "phase": "canary",
    }
    shadow = controller.rollback(TASK, actor="bob", reason="not convinced", to="previous")
    assert shadow.phase is Phase.SHADOW and shadow.frozen
    clock.now += 11.0
    with pytest.raises(PromotionRefusedError, match="not_frozen: frozen: not convinced"):
        controller.advance(TASK, actor="alice", reason="again")
    with pytest.raises(TransitionError, match="not allowed from phase 'shadow'"):
        controller.resume(TASK, actor="alice", reason="nothing is paused")
    with pytest.raises(UnknownTaskTypeError, match="summarization"):
        controller.status("nope")
    with pytest.raises(InputError, match="actor"):
        controller.pause(TASK, actor=" ", reason="who?")
    kinds = [p.kind for p in store.list_provenance(TASK)]
    assert kinds == ["rollback", "traffic_change", "promotion"]


def test_canary_routes_its_share_with_mixture_propensities() -> None:
    store, clock = MemoryDecisionLog(), Clock()
    optimizer, controller = build(store, clock)
    walk_to(optimizer, controller, store, clock, Phase.CANARY)
    world, rng = World(), np.random.default_rng(1)
    baseline = optimizer.config(TASK).space.baseline_arm
    n = 4_000
    decisions = [optimizer.recommend(TASK, world.sample_context(TASK, rng)) for _ in range(n)]
    treated = [d for d in decisions if group_of(d) is Group.TREATMENT]
    # 5 % of units, give or take 4 binomial standard deviations.
    assert abs(len(treated) / n - 0.05) <= 4 * math.sqrt(0.05 * 0.95 / n)
    for d in decisions:
        if group_of(d) is Group.CONTROL:
            assert d.arm == baseline and d.intended_arm is not None
            assert 0.95 <= d.propensity < 1.0  # t·π(b) + (1 − t), π(b) > 0 under the floor
        elif d.arm != baseline:
            assert d.propensity <= 0.05 and d.intended_arm is None
    # Bucketing is by unit: the same user lands in the same group every time.
    groups = {
        group_of(optimizer.recommend(TASK, world.sample_context(TASK, rng), unit_id="user-7"))
        for _ in range(20)
    }
    assert len(groups) == 1
    # probabilities() is the split's mixture: what every decision, either group, logs.
    for i in range(300):
        context = world.sample_context(TASK, rng)
        shown = optimizer.probabilities(TASK, context, request_id=f"p{i}")
        decision = optimizer.recommend(TASK, context, request_id=f"p{i}")
        assert sum(shown.probabilities) == pytest.approx(1.0, abs=1e-12)
        assert decision.propensity == pytest.approx(shown.of(decision.arm), rel=1e-12)


def run_guarded(
    seed: int,
    *,
    breach: bool,
    requests: int,
    store: Store | None = None,
) -> tuple[RolloutController, Store, int | None]:
    """Guarded phase (50 %) with simulated outcomes; returns when (if) it rolled back."""
    store = store or MemoryDecisionLog()
    clock = Clock()
    optimizer, controller = build(store, clock)
    walk_to(optimizer, controller, store, clock, Phase.GUARDED)
    rng = np.random.default_rng(seed)
    world = World()
    for i in range(requests):
        clock.now += 1.0
        decision = optimizer.recommend(TASK, world.sample_context(TASK, rng))
        treated = group_of(decision) is Group.TREATMENT
        slow = breach and treated
        latency = float(rng.gamma(4.0, 250.0)) * (1.6 if slow else 1.0)
        error = bool(rng.random() < (0.45 if slow else 0.02))
        optimizer.record_outcome(
            decision.request_id,
            Outcome(quality=float(rng.beta(8, 2)), latency_ms=latency, error=error, cost=0.002),
        )
        if controller.state(TASK).phase is Phase.ROLLED_BACK:
            return controller, store, i + 1
    return controller, store, None


def test_an_injected_breach_rolls_back_within_the_window() -> None:
    controller, store, after = run_guarded(3, breach=True, requests=3_000)
    assert after is not None, "the breach was never caught"
    # 50 % treatment, a 45 % error rate against a 20 % limit: the empirical-Bernstein lower
    # bound passes 0.2 within ~100 treatment outcomes; analyses run every 50 outcomes.
    assert after <= 600
    state = controller.state(TASK)
    assert state.phase is Phase.ROLLED_BACK and state.frozen and state.traffic_percent == 0.0
    [record] = store.list_provenance(TASK, "rollback")
    assert record.actor == "rule:slo" and "error_rate_max" in record.reason
    assert any(rule["verdict"] == "breach" for rule in record.evidence["slo"])
    [alert] = [a for a in store.list_alerts(TASK) if a.kind == "rollback"]
    assert alert.severity == "critical"


@pytest.mark.slow
def test_a_healthy_rollout_is_not_rolled_back() -> None:
    """Continuous monitoring of identical groups: false alarms stay within alpha.

    The monitor's guarantee is P(any breach ever) ≤ α = 0.05 per run; over 15 runs the
    binomial 99.9 % quantile of false alarms is 4, so more than that is a defect.  (The
    core suite checks the monitor alone over 200 runs.)
    """
    false_alarms = sum(
        run_guarded(seed, breach=False, requests=600)[2] is not None for seed in range(15)
    )
    assert false_alarms <= 4


def test_drift_freezes_recommendations_until_a_person_unfreezes() -> None:
    store, clock = MemoryDecisionLog(), Clock()
    optimizer, controller = build(
        store, clock, drift=DriftSettings(reference=1_000, window=250, min_samples=250)
    )
    walk_to(optimizer, controller, store, clock, Phase.CANARY)
    controller.set_traffic(TASK, 5.0, actor="alice", reason="keep")
    world, rng = World(), np.random.default_rng(2)
    for _ in range(1_000):
        optimizer.recommend(TASK, world.sample_context(TASK, rng))
    assert controller.status(TASK)["recommendations_frozen"] is None
    for _ in range(250):
        context = world.sample_context(TASK, rng)
        optimizer.recommend(TASK, {**context, "prompt_tokens": 50_000, "risk_tier": "high"})
    reason = controller.status(TASK)["recommendations_frozen"]
    assert reason is not None and "prompt_tokens" in reason
    frozen = [optimizer.recommend(TASK, world.sample_context(TASK, rng)) for _ in range(100)]
    assert {d.propensity for d in frozen} == {1.0}
    assert {d.arm for d in frozen} == {optimizer.config(TASK).space.baseline_arm}
    assert store.list_provenance(TASK, "freeze")[0].actor == "rule:drift"
    assert [a.kind for a in store.list_alerts(TASK) if a.kind == "drift_freeze"]
    clock.now += 11.0
    with pytest.raises(PromotionRefusedError, match="not_frozen: frozen: context drift"):
        controller.advance(TASK, actor="alice", reason="ignore the drift")
    controller.unfreeze(TASK, actor="bob", reason="new traffic mix is expected")
    assert store.list_provenance(TASK, "unfreeze")[0].actor == "bob"
    served = [optimizer.recommend(TASK, world.sample_context(TASK, rng)) for _ in range(400)]
    assert any(d.propensity < 1.0 for d in served)
    with pytest.raises(InputError, match="not frozen"):
        controller.unfreeze(TASK, actor="bob", reason="twice")


def test_low_confidence_raises_one_warning_per_run() -> None:
    store, clock = MemoryDecisionLog(), Clock()
    _, controller = build(store, clock)
    for i, confidence in enumerate([0.2] * 15 + [0.9] + [0.3] * 5):
        controller.observe_decision(
            replace(DECISION, request_id=f"r{i}", confidence=confidence, phase="shadow")
        )
    [alert] = store.list_alerts(TASK, dedup_key=f"low_confidence:{TASK}")
    assert alert.severity == "warning" and alert.evidence["consecutive"] == 11
    assert controller.confidence(TASK) == pytest.approx((15 * 0.2 + 0.9 + 5 * 0.3) / 21)


def test_state_and_guardrails_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "rollout.db"
    clock = Clock()
    store = SQLiteDecisionLog(path)
    optimizer, controller = build(store, clock)
    walk_to(optimizer, controller, store, clock, Phase.CANARY)
    world, rng = World(), np.random.default_rng(5)
    for _ in range(300):
        clock.now += 1.0
        d = optimizer.recommend(TASK, world.sample_context(TASK, rng))
        optimizer.record_outcome(d.request_id, Outcome(quality=0.8, latency_ms=900.0))
    before = controller.status(TASK)
    routes = [controller.route(TASK, f"user-{i}").group for i in range(200)]
    optimizer.close()

    store = SQLiteDecisionLog(path)
    optimizer, controller = build(store, clock)
    after = controller.status(TASK)
    assert after["state"] == before["state"]
    assert after["confidence"] == pytest.approx(before["confidence"])
    assert [r["n_treatment"] for r in after["slo"]["rules"]] == [
        r["n_treatment"] for r in before["slo"]["rules"]
    ]
    assert [controller.route(TASK, f"user-{i}").group for i in range(200)] == routes
    optimizer.close()


def test_a_change_based_on_a_stale_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    clock = Clock()
    one, two = SQLiteDecisionLog(path), SQLiteDecisionLog(path)
    first_optimizer, first = build(one, clock)
    _, second = build(two, clock)
    walk_to(first_optimizer, first, one, clock, Phase.CANARY)
    with pytest.raises(StaleStateError):
        second.pause(TASK, actor="carol", reason="based on shadow")
    assert second.state(TASK).phase is Phase.CANARY  # it adopted the other replica's state
    assert second.pause(TASK, actor="carol", reason="now for real").phase is Phase.PAUSED
    first.refresh()
    assert first.state(TASK).phase is Phase.PAUSED
    one.close()
    two.close()


DECISION = Decision(
    request_id="r",
    task_type=TASK,
    arm=1,
    params=Params("gpt-small"),
    propensity=0.5,
    confidence=0.5,
    policy="linucb@2.0.0",
    policy_revision=0,
    origin="bandit:linucb@2.0.0",
    context={},
    context_fingerprint=0,
    timestamp=T0,
)


def test_group_of_reads_the_origin() -> None:
    assert group_of(DECISION) is Group.TREATMENT
    assert group_of(replace(DECISION, origin="baseline")) is Group.CONTROL


def test_the_whole_loop_starts_where_the_configuration_says_and_audits_it() -> None:
    from paramloop.engine.loop import build_loop

    store = MemoryDecisionLog()
    configs = default_tasks(task_types=[TASK, "qa"])
    loop = build_loop(configs, store, initial={TASK: (Phase.GENERAL, 100.0)})
    assert loop.rollout.state(TASK).phase is Phase.GENERAL
    assert loop.rollout.state("qa").phase is Phase.SHADOW
    decision = loop.optimizer.recommend(TASK, {})
    assert decision.phase == "general" and decision.origin.startswith("bandit:")
    [record] = store.list_provenance(TASK, "phase_change")
    assert record.actor == "config" and record.evidence["to"] == "general"
    # The configuration only places a new rollout: the stored one wins on restart.
    again = build_loop(configs, store, initial={TASK: (Phase.CANARY, 5.0)})
    assert again.rollout.state(TASK).phase is Phase.GENERAL
    with pytest.raises(InputError, match="initial"):
        build_loop(configs, MemoryDecisionLog(), initial={TASK: (Phase.CANARY, 50.0)})


#: A monitor snapshot's JSON once the drift reference is full: the SLO sequences and the
#: detector's bins and counts, whatever the contexts hold (measured here: 25.6 KB, against
#: 380 KB with the 1,250 contexts of the windows).
SNAPSHOT_BYTES = 32_000


class CountingStore(SQLiteDecisionLog):
    """A SQLite store that counts the decisions read back by ``iter_logged``."""

    rows_read = 0

    def iter_logged(self, *args: Any, **kwargs: Any) -> Iterator[list[LoggedRow]]:
        for chunk in super().iter_logged(*args, **kwargs):
            CountingStore.rows_read += len(chunk)
            yield chunk


def healthy_traffic(optimizers: list[Optimizer], clock: Clock, n: int, seed: int) -> None:
    """``n`` requests spread over the replicas, each outcome posted to a random replica."""
    world, rng = World(), np.random.default_rng(seed)
    for i in range(n):
        clock.now += 0.5
        decision = optimizers[i % len(optimizers)].recommend(TASK, world.sample_context(TASK, rng))
        outcome = Outcome(quality=float(rng.uniform(0.6, 1.0)), latency_ms=float(rng.gamma(9, 100)))
        optimizers[int(rng.integers(len(optimizers)))].record_outcome(decision.request_id, outcome)


def slo_view(controller: RolloutController) -> tuple[object, ...]:
    status = controller.status(TASK)
    return status["slo"]["rules"], status["windows"], status["drift"]


def test_a_restart_reads_the_monitor_snapshot_and_the_log_after_it_not_the_phase(
    tmp_path: Path,
) -> None:
    path, clock = tmp_path / "rollout.db", Clock()
    drift = DriftSettings(reference=1_000, window=250, min_samples=250)
    store = CountingStore(path)
    optimizer, controller = build(store, clock, drift=drift)
    walk_to(optimizer, controller, store, clock, Phase.CANARY)
    healthy_traffic([optimizer], clock, 1_500, seed=5)
    optimizer.save_snapshots()  # what the service does at shutdown, or every 10 s
    snapshot = store.get_state(MONITOR_KIND, TASK)
    assert snapshot is not None and snapshot.data["drift"]["reference"] == []
    # The drift windows as bins and counts, not as the 1,250 contexts they hold (354 KB
    # here) written every 10 s, tens of ms during which decisions waited).
    assert len(json.dumps(snapshot.data)) < SNAPSHOT_BYTES
    healthy_traffic([optimizer], clock, 120, seed=6)  # after the snapshot: the tail
    expected = slo_view(controller)
    # kill -9: no close(); a new process opens the same file.
    CountingStore.rows_read = 0
    _, restarted = build(CountingStore(path), clock, drift=drift)
    # The tail and the snapshot's newest decision (the read starts at its timestamp),
    # not the phase's 1,620 decisions.
    assert CountingStore.rows_read <= 121
    assert slo_view(restarted) == expected
    assert restarted.status(TASK)["confidence"] == pytest.approx(
        controller.status(TASK)["confidence"]
    )
    optimizer.close()


def test_replicas_judge_the_same_outcomes(tmp_path: Path) -> None:
    path, clock = tmp_path / "shared.db", Clock()
    store = SQLiteDecisionLog(path)
    first, first_rollout = build(store, clock)
    walk_to(first, first_rollout, store, clock, Phase.CANARY)
    second, second_rollout = build(SQLiteDecisionLog(path), clock)
    healthy_traffic([first, second], clock, 600, seed=8)
    for replica in (first, second):
        replica.sync()
    rules = [
        controller.status(TASK)["slo"]["rules"] for controller in (first_rollout, second_rollout)
    ]
    counted = [(r["n_treatment"], r["n_control"]) for r in rules[0]]
    assert sum(counted[0]) >= 600  # each counts every replica's outcomes, not only its own
    assert [(r["n_treatment"], r["n_control"]) for r in rules[1]] == counted
    for ours, theirs in zip(rules[0], rules[1], strict=True):
        assert ours["verdict"] == theirs["verdict"]
        assert ours["treatment"]["estimate"] == pytest.approx(theirs["treatment"]["estimate"])
    first.close()
    second.close()


def test_an_analysis_is_recorded_once_however_many_replicas_judge_it(tmp_path: Path) -> None:
    """Two replicas count the same outcomes; each due analysis is recorded by one of them.

    Every analysis here is inconclusive (the sample needed is out of reach), so the stored
    count of inconclusive analyses in a row is the number recorded: 400 outcomes at one
    analysis per 50 is 8, not up to 16 (a replica that adopted the other's analysis
    recorded it again, and a freeze came twice as early).
    """
    path, clock = tmp_path / "shared.db", Clock()
    store = SQLiteDecisionLog(path)
    walker, walker_rollout = build(store, clock)
    walk_to(walker, walker_rollout, store, clock, Phase.CANARY)
    clock.now += 11.0  # past the canary's minimum: inconclusive analyses count
    unreachable = SLOConfig(latency_p99_increase=None, min_samples=10**9)
    replicas = [build(SQLiteDecisionLog(path), clock, slo=unreachable) for _ in range(2)]
    before = replicas[0][1].state(TASK).consecutive_inconclusives
    world, rng = World(), np.random.default_rng(4)
    for i in range(400):
        clock.now += 0.05
        decision = replicas[i % 2][0].recommend(TASK, world.sample_context(TASK, rng))
        replicas[(i + 1) % 2][0].record_outcome(decision.request_id, Outcome(quality=0.8))
        if i % 7 == 0:
            for optimizer, _ in replicas:
                optimizer.sync()
    for optimizer, _ in replicas:
        optimizer.sync()
    stored = replicas[0][1].state(TASK)
    assert stored.consecutive_inconclusives - before == 400 // 50
    assert replicas[1][1].state(TASK) == stored
    for optimizer, _ in (*replicas, (walker, walker_rollout)):
        optimizer.close()
