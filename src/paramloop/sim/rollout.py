"""Walk one task type through a whole safe rollout on simulated traffic, then break it.

:func:`simulate_rollout` drives a real :class:`~paramloop.engine.Optimizer` with
a real :class:`~paramloop.engine.rollout.RolloutController` on a simulated
clock (one request per simulated second), so phases that last days in
production last minutes here:

1. **shadow** serves the baseline to everyone.  The quality gates are run on
   its log and say what shadow logs can say: nothing about the candidate.
2. **canary** serves the policy to its share of units; the logged mixture
   propensities (exploration included) support an off-policy evaluation, so
   the gates are run on the canary's log until they pass, and approved.
3. **guarded** widens the split once the canary's SLOs are decided and ok.
4. **general** serves the policy to everyone.  From ``breach_after`` requests
   into it, the world degrades every treatment call (+60 % latency, +5 %
   errors); the SLO monitor sees it and the controller rolls back by itself
   (actor ``rule:slo``).

Every transition is made through the controller (actor ``simulate`` for the
operator's steps), so the timeline and the audit trail are the ones production
would leave.  The world's oracle is never consulted.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from paramloop.core.assignment import Group
from paramloop.core.rollout import Phase, RolloutPlan
from paramloop.engine import Optimizer, TaskConfig
from paramloop.engine.evaluate import evaluate
from paramloop.engine.gates import approve, run_gates
from paramloop.engine.loop import build_loop
from paramloop.engine.rollout import STATE_KIND, RolloutController, RolloutSettings, group_of
from paramloop.errors import ParamloopError
from paramloop.sim.world import World
from paramloop.store.base import Store
from paramloop.types import Outcome, ProvenanceRecord

#: The operator of the simulated rollout (approvals and manual steps).
ACTOR = "simulate"
#: Simulated time starts here (epoch seconds) so that runs are reproducible.
EPOCH = 1_700_000_000.0

#: Short phases (simulated seconds = requests).  Confidence thresholds are 0: a
#: linear bandit over hundreds of arms is rarely sure its arm beats the next best one
#: (its confidence hovers near 0.5), and shadow, which serves only the baseline,
#: cannot raise it at all.
PLAN = RolloutPlan(
    canary_percent=5.0,
    guarded_percent=25.0,
    shadow_min_s=600.0,
    canary_min_s=6_000.0,
    guarded_min_s=1_500.0,
    canary_confidence=0.0,
    guarded_confidence=0.0,
    general_confidence=0.0,
    require_approval=True,
    rollback_target="baseline",
)


@dataclass(frozen=True)
class Breach:
    """The degradation injected into treatment calls: latency × ``latency_factor``, extra errors."""

    after: int = 200
    latency_factor: float = 1.6
    error_rate: float = 0.05


@dataclass
class Span:
    """One phase as it happened: requests served, treatment share, and how it ended."""

    phase: str
    started_s: float
    requests: int = 0
    treatment: int = 0
    ended_s: float | None = None
    slo: str | None = None
    event: str | None = None
    actor: str | None = None
    reason: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def treatment_share(self) -> float:
        return self.treatment / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "treatment_share": self.treatment_share}


@dataclass(frozen=True)
class RolloutSimulation:
    """The timeline, the gate reports and the audit trail of one simulated rollout."""

    task_type: str
    seed: int
    requests: int
    seconds: float
    breach_injected_at: int | None
    breach_caught_at: int | None
    final: dict[str, Any]
    timeline: tuple[Span, ...]
    gates: tuple[dict[str, Any], ...]
    audit: tuple[ProvenanceRecord, ...]
    #: How many alerts of each kind were raised (they are stored, not sent).
    alerts: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_type": self.task_type,
            "seed": self.seed,
            "requests": self.requests,
            "seconds": self.seconds,
            "breach_injected_at": self.breach_injected_at,
            "breach_caught_at": self.breach_caught_at,
            "final": self.final,
            "timeline": [span.to_dict() for span in self.timeline],
            "gates": list(self.gates),
            "audit": [provenance_to_dict(record) for record in self.audit],
            "alerts": dict(self.alerts),
        }


def provenance_to_dict(record: ProvenanceRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "timestamp": record.timestamp,
        "kind": record.kind,
        "task_type": record.task_type,
        "actor": record.actor,
        "reason": record.reason,
        "evidence": dict(record.evidence),
        "policy_versions": dict(record.policy_versions),
    }


def rollout_settings(task: TaskConfig) -> RolloutSettings:
    """The task type's rollout settings with the simulation's short plan (:data:`PLAN`).

    Simulated calls fail about 2 % of the time on every arm, so the default
    absolute error cap of 1 % would stop any candidate: the simulation caps the
    treatment's error rate at 4 %, and at the control's + 2 points.  General has no
    control group, so there only the absolute rules can see a breach.
    """
    slo = replace(task.rollout.slo, error_rate_max=0.04, error_rate_increase=0.02)
    return replace(task.rollout, plan=PLAN, slo=slo)


def simulate_rollout(
    task: TaskConfig,
    world: World,
    store: Store,
    *,
    seed: int = 0,
    breach: Breach | None = None,
    max_phase_requests: int = 30_000,
    gate_every: int = 2_000,
    resamples: int = 1_000,
    progress: Callable[[int], None] | None = None,
) -> RolloutSimulation:
    """Walk ``task`` through shadow, canary, guarded and general, then inject ``breach``.

    ``store`` must hold no rollout of the task type yet.  A phase that has not
    advanced after ``max_phase_requests`` requests ends the walk (the timeline
    says where it stopped).  Gates run every ``gate_every`` requests once the
    rest of a promotion holds.
    """
    if store.get_state(STATE_KIND, task.name) is not None:
        raise ParamloopError(
            f"the store already holds a rollout of {task.name!r}: simulate --rollout needs a fresh store"
        )
    breach = breach or Breach()
    settings = rollout_settings(task)
    task = replace(task, rollout=settings)
    clock = _Clock(EPOCH)
    # Alerts are stored (the report counts them), not sent anywhere.
    loop = build_loop([task], store, clock=clock, sinks=())
    optimizer, controller = loop.optimizer, loop.rollout
    walk = _Walk(task, world, optimizer, controller, store, clock, seed, resamples, progress)
    started = time.perf_counter()
    walk.run(breach, max_phase_requests, gate_every)
    optimizer.save_snapshots()
    audit = tuple(reversed(store.list_provenance(task.name, limit=1_000)))
    alerts = Counter(alert.kind for alert in store.list_alerts(task.name, limit=100_000))
    return RolloutSimulation(
        task_type=task.name,
        seed=seed,
        requests=walk.served,
        seconds=time.perf_counter() - started,
        breach_injected_at=walk.injected_at,
        breach_caught_at=walk.caught_at,
        final=controller.state(task.name).to_dict(),
        timeline=tuple(walk.spans),
        gates=tuple(walk.gates),
        audit=audit,
        alerts=dict(sorted(alerts.items())),
    )


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class _Walk:
    """The state of one simulated rollout while it runs."""

    def __init__(
        self,
        task: TaskConfig,
        world: World,
        optimizer: Optimizer,
        controller: RolloutController,
        store: Store,
        clock: _Clock,
        seed: int,
        resamples: int,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.task, self.world, self.optimizer = task, world, optimizer
        self.controller, self.store, self.clock = controller, store, clock
        self.seed, self.resamples, self.progress = seed, resamples, progress
        self.rng = np.random.default_rng(seed)
        self.faults = np.random.default_rng([seed, 1])
        self.served = 0
        self.spans: list[Span] = [Span(str(Phase.SHADOW), 0.0)]
        self.gates: list[dict[str, Any]] = []
        self.injected_at: int | None = None
        self.caught_at: int | None = None
        self._breach: Breach | None = None

    @property
    def phase(self) -> Phase:
        return self.controller.state(self.task.name).phase

    def run(self, breach: Breach, max_phase_requests: int, gate_every: int) -> None:
        name = self.task.name
        for phase in (Phase.SHADOW, Phase.CANARY, Phase.GUARDED):
            if not self._promote(phase, max_phase_requests, gate_every):
                return
        # General: healthy for a while, then every treatment call degrades until the
        # SLO monitor rolls the rollout back.
        self._serve(breach.after)
        if self.phase is not Phase.GENERAL:
            return
        self._breach = breach
        self.injected_at = self.served
        self.spans[-1].notes.append(
            f"request {self.served}: breach injected (treatment latency x{breach.latency_factor:g}, "
            f"+{breach.error_rate:.0%} errors)"
        )
        for _ in range(max_phase_requests):
            self._serve(1)
            if self.phase is not Phase.GENERAL:
                break
        if self.controller.state(name).phase is Phase.ROLLED_BACK:
            self.caught_at = self.served

    def _promote(self, phase: Phase, max_phase_requests: int, gate_every: int) -> bool:
        """Serve ``phase`` until its promotion holds, running the gates when due; then advance.

        Shadow's gates are run once, to show what its log supports (leaving shadow
        does not need them); from canary on, every ``gate_every`` requests until
        they pass, and a passed report is approved.
        """
        name = self.task.name
        served = 0
        while served < max_phase_requests:
            step = min(gate_every // 4, max_phase_requests - served)
            self._serve(step)
            served += step
            if self.phase is not phase:
                return False  # a rule rolled it back
            verdict = self.controller.promotion(name, approved_by=ACTOR)
            pending = {r.name for r in verdict.failed}
            if pending - {"gates"}:
                continue
            if phase is Phase.SHADOW and not self.gates:
                self._run_gates(phase)
            elif "gates" in pending:
                if served % gate_every:
                    continue
                self._run_gates(phase)
                if not self.gates[-1]["passed"]:
                    continue
            self._advance(phase)
            return True
        self.spans[-1].notes.append(f"did not advance within {max_phase_requests} requests")
        return False

    def _run_gates(self, phase: Phase) -> None:
        name = self.task.name
        self.optimizer.save_snapshots()
        state = self.controller.state(name)
        try:
            evaluation = evaluate(
                self.store,
                self.task,
                target="snapshot",
                start=state.entered_at,
                resamples=self.resamples,
                seed=self.seed,
            )
        except ParamloopError as exc:
            self.gates.append(
                {"phase": str(phase), "request": self.served, "id": None, "verdict": "error"}
                | {"passed": False, "reasons": [str(exc)], "approval": None}
            )
            return
        report = run_gates(self.store, evaluation, clock=self.clock)
        reasons = [
            f"{g['name']}: {g['reason']}" for g in report.report["gates"] if g["verdict"] != "pass"
        ]
        approval = None
        if report.verdict == "pass":
            record = approve(
                self.store,
                report.id,
                actor=ACTOR,
                reason=f"gates passed on the {phase} log ({evaluation.n} decisions)",
                clock=self.clock,
            )
            approval = record.id
        self.gates.append(
            {
                "phase": str(phase),
                "request": self.served,
                "id": report.id,
                "verdict": report.verdict,
                "passed": report.verdict == "pass",
                "reasons": reasons,
                "approval": approval,
            }
        )

    def _advance(self, phase: Phase) -> None:
        name = self.task.name
        slo = str(self.controller.status(name)["slo"]["verdict"])
        # Half a tick: the new phase's log (and its evaluation window) starts after the old one's.
        self.clock.now += 0.5
        self.controller.advance(name, actor=ACTOR, reason="every promotion requirement holds")
        self._close(slo)

    def _close(self, slo: str) -> None:
        """End the current span with the latest audit record, and open the next phase's."""
        [record] = self.store.list_provenance(self.task.name, limit=1)
        span = self.spans[-1]
        span.ended_s = self.clock.now - EPOCH
        span.slo = slo
        span.event = str(record.evidence.get("event", record.kind))
        span.actor, span.reason = record.actor, record.reason
        self.spans.append(Span(str(self.phase), span.ended_s))

    def _serve(self, n: int) -> None:
        name = self.task.name
        for _ in range(n):
            self.clock.now += 1.0
            before = self.controller.state(name)
            context = self.world.sample_context(name, self.rng)
            # Request ids (the units bucketed into treatment or control) and seeds are derived
            # from the run's seed, so a run is reproducible.
            decision = self.optimizer.recommend(
                name, context, request_id=f"{self.seed}-{self.served}", seed=self.served
            )
            outcome = self.world.outcome(name, decision.context, decision.params, self.rng)
            treated = group_of(decision) is Group.TREATMENT
            if treated and self._breach is not None:
                outcome = self._degrade(outcome, self._breach)
            self.optimizer.record_outcome(decision.request_id, outcome)
            self.served += 1
            span = self.spans[-1]
            span.requests += 1
            span.treatment += treated
            after = self.controller.state(name)
            if after.phase is not before.phase:
                records = self.store.list_provenance(name, limit=1)
                verdict = records[0].evidence.get("verdict") if records else None
                self._close(str(verdict) if verdict is not None else "-")
            elif after.frozen and not before.frozen:
                span.notes.append(f"request {self.served}: frozen: {after.frozen_reason}")
            if self.progress is not None:
                self.progress(1)

    def _degrade(self, outcome: Outcome, breach: Breach) -> Outcome:
        latency = None if outcome.latency_ms is None else outcome.latency_ms * breach.latency_factor
        if self.faults.random() < breach.error_rate:
            return replace(outcome, latency_ms=latency, quality=None, error=True)
        return replace(outcome, latency_ms=latency)


__all__: Sequence[str] = (
    "ACTOR",
    "PLAN",
    "Breach",
    "RolloutSimulation",
    "Span",
    "provenance_to_dict",
    "rollout_settings",
    "simulate_rollout",
)
