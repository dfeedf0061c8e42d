"""The rollout controller: traffic split, SLO guardrails with automatic rollback, drift freeze.

It wires the pure lifecycle (:mod:`paramloop.core.rollout`), assignment, SLO
monitor, drift detector and alert rules to the store, the clock and the alert
sinks.  Per task type it keeps:

* the :class:`~paramloop.core.rollout.RolloutState`, persisted as engine state
  (kind ``rollout``) by compare and swap, with the assignment salt and the
  drift freeze — so every replica and every restart routes alike;
* an :class:`~paramloop.core.monitor.SLOMonitor` for the current phase, fed
  with every outcome of the phase's decisions by group: this process's
  outcomes as they are recorded, every other replica's through
  :meth:`RolloutController.sync` (a watermark on the outcome ``seq``, as the
  optimizer learns), so every replica judges the same outcomes (each in its
  own order; an analysis one replica recorded is not recorded again by the
  others: the stored state says how many outcomes it covered);
* a snapshot of all that (engine state kind ``rollout_monitor``: the monitor's
  sketches and sequences, the watermark, the phase's counters and the drift
  windows, all of bounded size), saved by :meth:`RolloutController.sync` (the
  service's background loop) at most every ``snapshot_interval_s``, at each
  phase change and at shutdown, so a start reads the snapshot and the log
  after it: O(1) in the length of the history, not a replay of the phase;
* the phase's mean recommendation confidence and, in shadow, the agreement
  between the policy's intended arm and the baseline it served;
* a :class:`~paramloop.core.drift.DriftDetector` against a reference window of
  contexts taken when the rollout (or the last unfreeze) began.

Every change of production — phase change, promotion, rollback, pause, traffic
change, freeze and unfreeze — appends a provenance record (actor: a person or
``rule:<name>``, reason, evidence, policy versions).  A transition the table
does not allow, or a promotion whose requirements fail, raises and leaves the
state as it was.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from paramloop.core.alerts import Alert, LowConfidenceRule, Severity
from paramloop.core.assignment import Group, assign
from paramloop.core.drift import DriftDetector
from paramloop.core.monitor import SLOConfig, SLOMonitor, SLOVerdict, overall
from paramloop.core.rollout import (
    Event,
    Phase,
    PromotionVerdict,
    RolloutPlan,
    RolloutState,
    freeze,
    next_phase,
    promotion_check,
    record_analysis,
    rollback_event,
    traffic_problem,
    unfreeze,
)
from paramloop.engine.alerts import AlertManager
from paramloop.errors import ConfigError, InputError, StaleStateError, UnknownTaskTypeError
from paramloop.store.base import Store
from paramloop.types import Decision, Outcome, ProvenanceRecord, RecordedOutcome, StateRecord

log = logging.getLogger(__name__)

#: Engine-state kind of a rollout.
STATE_KIND = "rollout"
#: Engine-state kind of a rollout's monitor snapshot.
MONITOR_KIND = "rollout_monitor"
#: Outcomes read from the log per query when catching up.
_CATCH_UP_CHUNK = 5_000


@dataclass(frozen=True)
class DriftSettings:
    """Context drift detection: ``reference`` contexts form the reference window."""

    enabled: bool = True
    metric: Literal["psi", "js"] = "psi"
    threshold: float = 0.2
    window: int = 1_000
    min_samples: int = 200
    reference: int = 1_000

    def __post_init__(self) -> None:
        if self.reference < 1:
            raise ConfigError("drift.reference", f"must be ≥ 1, got {self.reference!r}")


@dataclass(frozen=True)
class RolloutSettings:
    """Everything the controller needs to know about one task type's rollout."""

    plan: RolloutPlan = field(default_factory=RolloutPlan)
    slo: SLOConfig = field(default_factory=SLOConfig)
    drift: DriftSettings = field(default_factory=DriftSettings)
    #: Run the SLO analysis every this many outcomes of the phase.
    analysis_every: int = 50
    snapshot_interval_s: float = 10.0
    low_confidence_threshold: float = 0.5
    low_confidence_limit: int = 10

    def __post_init__(self) -> None:
        if self.analysis_every < 1:
            raise ConfigError("rollout.analysis_every", f"must be ≥ 1, got {self.analysis_every!r}")
        if not (math.isfinite(self.snapshot_interval_s) and self.snapshot_interval_s >= 0):
            raise ConfigError(
                "rollout.snapshot_interval_s",
                f"must be ≥ 0 seconds, got {self.snapshot_interval_s!r}",
            )


@dataclass(frozen=True)
class Route:
    """How one request is served: by the policy (treatment) or the baseline (control)."""

    phase: Phase
    group: Group
    #: The treatment share t in [0, 1] the propensity mixes with.
    share: float
    #: Why recommendations are frozen (baseline for everyone), or ``None``.
    frozen: str | None = None


class PromotionRefusedError(InputError):
    """``advance`` was asked for while a promotion requirement fails; nothing changed."""

    def __init__(self, task_type: str, verdict: PromotionVerdict) -> None:
        self.verdict = verdict
        failed = "; ".join(f"{r.name}: {r.reason}" for r in verdict.failed)
        super().__init__("advance", f"{task_type!r} cannot leave {verdict.phase}: {failed}")


@dataclass
class _Live:
    """One task type's in-memory rollout machinery (rebuilt from the store on start)."""

    settings: RolloutSettings
    state: RolloutState
    salt: str
    store_version: int
    drift_frozen: str | None
    drift_since: float
    monitor: SLOMonitor
    low_confidence: LowConfidenceRule
    lock: threading.RLock = field(default_factory=threading.RLock)
    confidence_sum: float = 0.0
    confidence_n: int = 0
    agree: int = 0
    shadowed: int = 0
    outcomes: int = 0
    # The drift reference while it fills (emptied once the detector is built from it).
    reference: list[Mapping[str, Any]] = field(default_factory=list)
    drift: DriftDetector | None = None
    drift_seen: int = 0
    # Outcome watermark: every outcome with seq ≤ last_seq is counted, and those in own_seqs.
    last_seq: int = 0
    own_seqs: set[int] = field(default_factory=set)
    # The newest decision timestamp counted (confidence, agreement, drift).
    decisions_until: float = -math.inf
    saved_at: float = -math.inf  # monotonic time of the last monitor snapshot
    # The phase outcomes the stored state's last analysis covered (by any replica): an
    # analysis falling due at or below it was recorded already and is not recorded again.
    analysed: int = 0


class RolloutController:
    """Routes requests by phase and traffic share, and guards the rollout (see the module docs).

    ``baseline_arm`` maps each task type to its baseline arm (for shadow
    agreement); ``policy_version`` names the candidate policy for audit records.
    """

    def __init__(
        self,
        store: Store,
        settings: Mapping[str, RolloutSettings],
        *,
        baseline_arm: Mapping[str, int],
        policy_version: Callable[[str], str] = lambda task_type: "unknown",
        alerts: AlertManager | None = None,
        clock: Callable[[], float] = time.time,
        initial: Mapping[str, tuple[Phase, float]] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        # Where a task type's rollout starts when the store has none yet (default: shadow).
        self._initial = dict(initial or {})
        self.alerts = alerts if alerts is not None else AlertManager(store, clock=clock)
        self._baseline = dict(baseline_arm)
        self._policy_version = policy_version
        self._live: dict[str, _Live] = {}
        for task_type, task_settings in settings.items():
            self._live[task_type] = self._load(task_type, task_settings)

    # -- the request path -----------------------------------------------------------------

    def route(self, task_type: str, unit_id: str) -> Route:
        """The group of ``unit_id`` (a deterministic salted hash) in the task type's current phase."""
        live = self._get(task_type)
        state = live.state
        if live.drift_frozen is not None:
            return Route(state.phase, Group.CONTROL, 0.0, live.drift_frozen)
        percent = state.traffic_percent
        return Route(state.phase, assign(unit_id, live.salt, percent), percent / 100.0)

    def observe_decision(self, decision: Decision) -> None:
        """Count a logged decision: confidence, shadow agreement, drift, low-confidence alert."""
        live = self._get(decision.task_type)
        with live.lock:
            _tally(live, decision)
            alert = live.low_confidence.update(min(1.0, max(0.0, decision.confidence)))
            drifted = self._observe_context(live, decision)
            live.decisions_until = max(live.decisions_until, decision.timestamp)
        if alert is not None:
            self.alerts.raise_alert(alert)
        if drifted:
            self._freeze_for_drift(decision.task_type)

    def observe_outcome(self, decision: Decision, recorded: RecordedOutcome) -> None:
        """Feed the SLO monitor an outcome this process logged; every ``analysis_every``, analyse.

        An outcome without a ``seq`` (it waits in a spool) is counted by
        :meth:`sync` once it reaches the log, as another replica's would be.
        """
        live = self._get(decision.task_type)
        with live.lock:
            if not recorded.seq or recorded.seq <= live.last_seq or recorded.seq in live.own_seqs:
                return  # not in the log yet, or sync() counted it already
            live.own_seqs.add(recorded.seq)
            due = self._count(live, decision, recorded) and _unrecorded(live)
        if due:
            self.analyze(decision.task_type)

    def sync(self) -> int:
        """Count every outcome other replicas (or a replayed spool) logged since the last sync.

        Each outcome is counted once, in log order after this process's own;
        an analysis falls due as it would have had the outcomes arrived here.
        Returns how many outcomes were counted.
        """
        counted = 0
        for task_type in list(self._live):
            live = self._get(task_type)
            due, new = self._catch_up(live)
            counted += new
            if due and _unrecorded(live):
                self.analyze(task_type)
            # Here, on the sync thread, not on a request's: the snapshot costs milliseconds.
            if time.monotonic() - live.saved_at >= live.settings.snapshot_interval_s:
                self._save_monitor(live)
        return counted

    def save_snapshots(self) -> None:
        """Save every task type's monitor snapshot now (the service does at shutdown)."""
        for live in list(self._live.values()):
            self._catch_up(live)
            self._save_monitor(live)

    # -- analysis and automatic actions ---------------------------------------------------

    def analyze(self, task_type: str) -> SLOVerdict:
        """Judge the SLOs now; roll back on a breach past the failure limit, freeze when stuck."""
        live = self._get(task_type)
        with live.lock:
            statuses = live.monitor.statuses()
            verdict = overall(statuses)
            before = live.state
            analysed, event = record_analysis(before, live.settings.plan, verdict, self.clock())
            if analysed == replace(before, version=analysed.version):
                return verdict  # nothing to record (no treatment traffic)
            live.analysed = live.outcomes
            try:
                self._save(live, analysed)
            except StaleStateError:
                # Another replica judged the same log first and recorded it; its state (and
                # how many outcomes its analysis covered) is adopted.
                return verdict
            evidence = {"slo": [s.to_dict() for s in statuses], "verdict": str(verdict)}
            if analysed.frozen and not before.frozen and event is None:
                self._audit(task_type, "freeze", "rule:slo", analysed.frozen_reason or "", evidence)
                self.alerts.raise_alert(
                    Alert(
                        Severity.WARNING,
                        "slo_inconclusive",
                        task_type,
                        analysed.frozen_reason or "",
                        evidence,
                    )
                )
        if event is not None:
            breached = [s.metric for s in statuses if s.verdict is SLOVerdict.BREACH]
            self._transition(
                task_type,
                event,
                actor="rule:slo",
                reason=f"SLO breach ({', '.join(breached)}) in {before.phase}",
                evidence=evidence,
                kind="rollback",
            )
        elif live.settings.plan.auto_advance and self.promotion(task_type).ready:
            self.advance(
                task_type, actor="rule:auto_advance", reason="every promotion requirement holds"
            )
        return verdict

    # -- operator actions -----------------------------------------------------------------

    def promotion(self, task_type: str, *, approved_by: str | None = None) -> PromotionVerdict:
        """Every requirement of the next ``advance``, with its verdict."""
        live = self._get(task_type)
        report = self.store.latest_gate_report(task_type)
        gates_passed = report is not None and report.verdict == "pass"
        approved = approved_by is not None or (
            report is not None
            and any(
                p.evidence.get("gate_report_id") == report.id
                for p in self.store.list_provenance(task_type, "gate_approval", limit=20)
            )
        )
        return promotion_check(
            live.state,
            live.settings.plan,
            self.clock(),
            gates_passed,
            live.monitor.statuses(),
            self.confidence(task_type),
            approved,
        )

    def advance(self, task_type: str, *, actor: str, reason: str) -> RolloutState:
        """Promote to the next phase if every requirement holds (a person advancing approves)."""
        person = None if actor.startswith("rule:") else actor
        verdict = self.promotion(task_type, approved_by=person)
        if not verdict.ready:
            raise PromotionRefusedError(task_type, verdict)
        report = self.store.latest_gate_report(task_type)
        evidence = {
            "promotion": verdict.to_dict(),
            "gate_report_id": None if report is None else report.id,
            "confidence": self.confidence(task_type),
        }
        return self._transition(
            task_type,
            Event.ADVANCE,
            actor=actor,
            reason=reason,
            evidence=evidence,
            kind="promotion",
        )

    def rollback(
        self,
        task_type: str,
        *,
        actor: str,
        reason: str,
        to: Literal["previous", "baseline"] | None = None,
    ) -> RolloutState:
        """Roll back now: one phase down or to baseline-only (default: the plan's choice)."""
        live = self._get(task_type)
        if to is None:
            event = rollback_event(live.settings.plan, live.state.phase)
        else:
            event = Event.STEP_BACK if to == "previous" else Event.ROLLBACK
        evidence = {"slo": [s.to_dict() for s in live.monitor.statuses()]}
        return self._transition(
            task_type, event, actor=actor, reason=reason, evidence=evidence, kind="rollback"
        )

    def pause(self, task_type: str, *, actor: str, reason: str) -> RolloutState:
        return self._transition(
            task_type, Event.PAUSE, actor=actor, reason=reason, evidence={}, kind="phase_change"
        )

    def resume(self, task_type: str, *, actor: str, reason: str) -> RolloutState:
        return self._transition(
            task_type, Event.RESUME, actor=actor, reason=reason, evidence={}, kind="phase_change"
        )

    def restart(self, task_type: str, *, actor: str, reason: str) -> RolloutState:
        """Start again in shadow after a rollback (a person must decide to)."""
        return self._transition(
            task_type, Event.RESTART, actor=actor, reason=reason, evidence={}, kind="phase_change"
        )

    def set_traffic(
        self, task_type: str, percent: float, *, actor: str, reason: str
    ) -> RolloutState:
        """Change the treatment share within the current phase's bounds."""
        _check_actor(actor, reason)
        live = self._get(task_type)
        with live.lock:
            state = live.state
            if problem := traffic_problem(state.phase, percent):
                raise InputError("traffic_percent", problem)
            new = replace(state, traffic_percent=float(percent), version=state.version + 1)
            self._save(live, new)
            self._audit(
                task_type,
                "traffic_change",
                actor,
                reason,
                {"from": state.traffic_percent, "to": float(percent), "phase": str(state.phase)},
            )
        return new

    def unfreeze(self, task_type: str, *, actor: str, reason: str) -> RolloutState:
        """A person has reviewed a freeze (drift or inconclusive SLOs): serve and advance again.

        The drift reference window restarts from the contexts that follow.
        """
        _check_actor(actor, reason)
        live = self._get(task_type)
        with live.lock:
            was = {"frozen": live.state.frozen_reason, "drift": live.drift_frozen}
            if live.state.frozen and live.state.phase is not Phase.ROLLED_BACK:
                new = unfreeze(live.state)
            elif live.drift_frozen is not None:
                new = replace(live.state, version=live.state.version + 1)
            else:
                raise InputError(
                    "unfreeze", f"{task_type!r} is not frozen (or only a restart thaws it)"
                )
            live.drift_frozen = None
            live.drift_since = self.clock()
            live.reference, live.drift, live.drift_seen = [], None, 0
            self._save(live, new)
            self._catch_up(live)
            self._save_monitor(live)
            self._audit(task_type, "unfreeze", actor, reason, was)
        return new

    # -- status ---------------------------------------------------------------------------

    def state(self, task_type: str) -> RolloutState:
        return self._get(task_type).state

    def confidence(self, task_type: str) -> float | None:
        """Mean recommendation confidence of the phase so far (``None`` before any decision)."""
        live = self._get(task_type)
        return live.confidence_sum / live.confidence_n if live.confidence_n else None

    def status(self, task_type: str) -> dict[str, Any]:
        """Everything an operator looks at: phase, traffic, freezes, SLOs, promotion, drift."""
        live = self._get(task_type)
        now = self.clock()
        with live.lock:
            statuses = live.monitor.statuses()
            windows = {str(g): _window(live.monitor, g, now) for g in Group}
            drift = [] if live.drift is None else [asdict(d) for d in live.drift.report()]
            return {
                "task_type": task_type,
                "state": live.state.to_dict(),
                "in_phase_s": now - live.state.entered_at,
                "recommendations_frozen": live.drift_frozen,
                "slo": {
                    "verdict": str(overall(statuses)),
                    "rules": [s.to_dict() for s in statuses],
                },
                "windows": windows,
                "promotion": self.promotion(task_type).to_dict(),
                "confidence": self.confidence(task_type),
                "shadow_agreement": live.agree / live.shadowed if live.shadowed else None,
                "shadow_decisions": live.shadowed,
                "drift": {"reference": _reference_size(live), "features": drift},
                "note": _note(live.state),
            }

    @property
    def task_types(self) -> tuple[str, ...]:
        return tuple(self._live)

    # -- internals ------------------------------------------------------------------------

    def _get(self, task_type: str) -> _Live:
        try:
            return self._live[task_type]
        except KeyError:
            raise UnknownTaskTypeError(str(task_type), sorted(self._live)) from None

    def _transition(
        self,
        task_type: str,
        event: Event,
        *,
        actor: str,
        reason: str,
        evidence: Mapping[str, Any],
        kind: str,
    ) -> RolloutState:
        _check_actor(actor, reason)
        live = self._get(task_type)
        with live.lock:
            before = live.state
            after = next_phase(before, event, live.settings.plan, self.clock(), reason=reason)
            analysed, live.analysed = live.analysed, 0
            try:
                self._save(live, after)
            except StaleStateError:
                live.analysed = analysed
                raise
            self._enter_phase(live)
            self._catch_up(live)  # the new phase's outcomes so far: a consistent cut to save
            self._save_monitor(live)
            self._audit(
                task_type,
                kind,
                actor,
                reason,
                {
                    **evidence,
                    "event": str(event),
                    "from": str(before.phase),
                    "to": str(after.phase),
                    "traffic_percent": after.traffic_percent,
                },
            )
        severity = Severity.CRITICAL if kind == "rollback" else Severity.INFO
        self.alerts.raise_alert(
            Alert(
                severity,
                kind,
                task_type,
                f"{before.phase} → {after.phase} by {actor}: {reason}",
                {"from": str(before.phase), "to": str(after.phase), "actor": actor},
                dedup_key=f"{kind}:{task_type}:{after.version}",
            )
        )
        return after

    def _freeze_for_drift(self, task_type: str) -> None:
        live = self._get(task_type)
        with live.lock:
            if live.drift_frozen is not None or live.drift is None:
                return
            report = [asdict(d) for d in live.drift.report() if d.drifted]
            reason = "context drift: " + ", ".join(
                f"{d['feature']} psi {d['psi']:.3f}" for d in report
            )
            live.drift_frozen = reason
            state = live.state if live.state.frozen else freeze(live.state, reason)
            self._save(
                live,
                state if state is not live.state else replace(state, version=state.version + 1),
            )
            self._audit(task_type, "freeze", "rule:drift", reason, {"features": report})
        self.alerts.raise_alert(
            Alert(Severity.CRITICAL, "drift_freeze", task_type, reason, {"features": report})
        )

    def _observe_context(self, live: _Live, decision: Decision) -> bool:
        """Add the decision's context to the drift reference or detector; whether drift is new."""
        settings = live.settings.drift
        if not settings.enabled or decision.timestamp < live.drift_since or live.drift_frozen:
            return False
        if live.drift is None:
            live.reference.append(dict(decision.context))
            if len(live.reference) >= settings.reference:
                live.drift, live.reference = _detector(settings, live.reference), []
            return False
        live.drift.update(_plain(decision.context))
        live.drift_seen += 1
        # Judge tumbling windows, not every request: a sliding window tested at each
        # request would test the same data hundreds of times and multiply false alarms.
        return live.drift_seen % settings.window == 0 and live.drift.drifted

    def _enter_phase(self, live: _Live) -> None:
        live.monitor = SLOMonitor(live.settings.slo)
        live.confidence_sum, live.confidence_n, live.agree, live.shadowed, live.outcomes = (
            0.0,
            0,
            0,
            0,
            0,
        )

    def _save(self, live: _Live, state: RolloutState) -> None:
        record = StateRecord(
            kind=STATE_KIND,
            key=state.task_type,
            data={
                "state": state.to_dict(),
                "salt": live.salt,
                "drift_frozen": live.drift_frozen,
                "drift_since": live.drift_since,
                "analysed": live.analysed,
            },
            updated_at=self.clock(),
        )
        try:
            stored = self.store.put_state(record, live.store_version)
        except StaleStateError:
            # Another replica changed the rollout: adopt its state; the caller's change is void.
            self._reload(live)
            raise
        live.store_version = stored.version
        live.state = state

    def _reload(self, live: _Live, stored: StateRecord | None = None) -> None:
        """Adopt the stored rollout; the monitor is kept while the phase is the same one."""
        task_type = live.state.task_type
        stored = stored or self.store.get_state(STATE_KIND, task_type)
        if stored is not None:
            state = RolloutState.from_dict(stored.data["state"])
            drift_since = float(stored.data.get("drift_since", live.drift_since))
            if _epoch(state, drift_since) == _epoch(live.state, live.drift_since):
                with live.lock:  # another replica recorded an analysis: same phase, same evidence
                    live.state, live.store_version = state, stored.version
                    live.drift_frozen = stored.data.get("drift_frozen")
                    live.analysed = int(stored.data.get("analysed", 0))
                return
        self._live[task_type] = self._load(task_type, live.settings, previous=live)

    def refresh(self) -> None:
        """Re-read every rollout from the store (other replicas' changes)."""
        for task_type, live in list(self._live.items()):
            stored = self.store.get_state(STATE_KIND, task_type)
            if stored is not None and stored.version != live.store_version:
                self._reload(live, stored)

    def _load(
        self, task_type: str, settings: RolloutSettings, previous: _Live | None = None
    ) -> _Live:
        now = self.clock()
        stored = self.store.get_state(STATE_KIND, task_type)
        if stored is None:
            state = RolloutState.start(task_type, now)
            phase, percent = self._initial.get(task_type, (Phase.SHADOW, 0.0))
            if phase is not Phase.SHADOW:
                if not phase.is_active:
                    raise InputError("initial", f"a rollout starts in an active phase, not {phase}")
                if problem := traffic_problem(phase, percent):
                    raise InputError("initial", problem)
                state = replace(state, phase=phase, traffic_percent=float(percent))
            live = _Live(
                settings=settings,
                state=state,
                salt=f"{task_type}:{now!r}",
                store_version=0,
                drift_frozen=None,
                drift_since=now,
                monitor=SLOMonitor(settings.slo),
                low_confidence=LowConfidenceRule(
                    task_type, settings.low_confidence_threshold, settings.low_confidence_limit
                ),
                # Outcomes already logged belong to decisions before this phase.
                last_seq=self.store.last_outcome_seq(task_type),
            )
            try:
                self._save(live, state)
            except StaleStateError:
                return self._load(task_type, settings)  # another replica created it first
            if state.phase is not Phase.SHADOW:
                self._audit(
                    task_type,
                    "phase_change",
                    "config",
                    f"rollout created in {state.phase} at {state.traffic_percent:g} % by configuration",
                    {"to": str(state.phase), "traffic_percent": state.traffic_percent},
                )
            return live
        data = stored.data
        live = _Live(
            settings=settings,
            state=RolloutState.from_dict(data["state"]),
            salt=str(data["salt"]),
            store_version=stored.version,
            drift_frozen=data.get("drift_frozen"),
            drift_since=float(data.get("drift_since", now)),
            monitor=SLOMonitor(settings.slo),
            low_confidence=LowConfidenceRule(
                task_type, settings.low_confidence_threshold, settings.low_confidence_limit
            ),
            analysed=int(data.get("analysed", 0)),
        )
        if self._restore_monitor(live):
            return live
        if previous is not None and previous.drift_since == live.drift_since:
            # Another replica changed the phase: the drift windows go on; only the new
            # phase (just begun) is read back.
            live.reference, live.drift, live.drift_seen = (
                previous.reference,
                previous.drift,
                previous.drift_seen,
            )
            self._replay(live, drift=False)
        else:
            self._replay(live)
        return live

    def _replay(self, live: _Live, *, drift: bool = True) -> None:
        """Rebuild the phase's monitor, confidence, agreement and (``drift``) drift windows
        from the log.

        O(phase): the fallback when no snapshot of this phase exists (the first
        start after an upgrade, a phase another replica has just entered, or a
        snapshot that could not be read).
        """
        state = live.state
        # Outcomes up to this watermark are counted here, later ones by sync().
        live.last_seq = self.store.last_outcome_seq(state.task_type)
        since = min(state.entered_at, live.drift_since) if drift else state.entered_at
        rows = [row for chunk in self.store.iter_logged(state.task_type, since) for row in chunk]
        for decision, _ in rows:
            if drift:
                self._count_decision(live, decision)
            else:
                _tally(live, decision)
                live.decisions_until = max(live.decisions_until, decision.timestamp)
        measured = sorted(
            (
                (d, o)
                for d, o in rows
                if o is not None and 0 < o.seq <= live.last_seq and _in_phase(state, d)
            ),
            key=lambda r: r[1].seq,
        )
        for decision, recorded in measured:
            _observe(live.monitor, decision, recorded.outcome, recorded.timestamp)
        live.outcomes = len(measured)

    def _count_decision(self, live: _Live, decision: Decision) -> None:
        """Count a decision read back from the log: confidence, agreement, drift (no alerts)."""
        _tally(live, decision)
        self._observe_context(live, decision)
        live.decisions_until = max(live.decisions_until, decision.timestamp)

    def _count(self, live: _Live, decision: Decision, recorded: RecordedOutcome) -> bool:
        """Feed one outcome of the phase to the monitor; whether an analysis falls due."""
        if not _in_phase(live.state, decision):
            return False
        _observe(live.monitor, decision, recorded.outcome, recorded.timestamp)
        live.outcomes += 1
        return live.outcomes % live.settings.analysis_every == 0

    def _catch_up(self, live: _Live) -> tuple[bool, int]:
        """Count the log's outcomes after the watermark (skipping this process's own).

        Takes the lock per chunk, so the request path is never held for a long
        catch-up.  Returns whether an analysis fell due and how many were counted.
        """
        due, counted = False, 0
        while True:
            with live.lock:
                task_type = live.state.task_type
                rows = self.store.outcomes_since(task_type, live.last_seq, _CATCH_UP_CHUNK)
                for decision, recorded in rows:
                    if recorded.seq in live.own_seqs:
                        live.own_seqs.discard(recorded.seq)
                    else:
                        due |= self._count(live, decision, recorded)
                        counted += 1
                    live.last_seq = max(live.last_seq, recorded.seq)
            if len(rows) < _CATCH_UP_CHUNK:
                return due, counted

    def _save_monitor(self, live: _Live) -> None:
        """Save the phase's snapshot (a cache: failing to save costs a longer start, nothing else)."""
        with live.lock:
            if live.own_seqs:
                return  # own outcomes past the watermark: not a consistent cut; the next one is
            state = live.state
            data = {
                "phase": str(state.phase),
                "entered_at": state.entered_at,
                "drift_since": live.drift_since,
                "last_seq": live.last_seq,
                "outcomes": live.outcomes,
                "monitor": live.monitor.to_dict(),
                "decisions_until": _finite_or_none(live.decisions_until),
                "confidence": [live.confidence_sum, live.confidence_n],
                "shadow": [live.agree, live.shadowed],
                # The detector as its bins and counts (a few KB); raw contexts only while
                # the reference fills (before, 2,000 contexts: ~200 KB every 10 s).
                "drift": {
                    "reference": json_safe([_plain(c) for c in live.reference]),
                    "detector": None if live.drift is None else live.drift.to_dict(),
                    "seen": live.drift_seen,
                },
            }
            live.saved_at = time.monotonic()
        try:
            current = self.store.get_state(MONITOR_KIND, state.task_type)
            if current is not None and float(current.data.get("entered_at", 0)) > state.entered_at:
                return  # a later phase's snapshot (this replica has not seen the change yet)
            self.store.put_state(
                StateRecord(MONITOR_KIND, state.task_type, data, self.clock()),
                0 if current is None else current.version,
            )
        except StaleStateError:
            pass  # another replica saved the same log's snapshot a moment ago
        except Exception:
            log.warning("rollout of %r: monitor snapshot not saved", state.task_type, exc_info=True)

    def _restore_monitor(self, live: _Live) -> bool:
        """Load the phase's snapshot and count the log after it; ``False`` when there is none."""
        state = live.state
        record = self.store.get_state(MONITOR_KIND, state.task_type)
        if record is None:
            return False
        data = record.data
        try:
            saved = (str(data["phase"]), float(data["entered_at"]), float(data["drift_since"]))
            if saved != _epoch(state, live.drift_since):
                return False  # a snapshot of an earlier phase
            live.monitor = SLOMonitor.from_dict(live.settings.slo, data["monitor"])
            live.last_seq, live.outcomes = int(data["last_seq"]), int(data["outcomes"])
            live.confidence_sum, live.confidence_n = (
                float(data["confidence"][0]),
                int(data["confidence"][1]),
            )
            live.agree, live.shadowed = int(data["shadow"][0]), int(data["shadow"][1])
            until = data["decisions_until"]
            live.decisions_until = -math.inf if until is None else float(until)
            drift = data["drift"]
            live.reference = list(drift["reference"])
            if live.settings.drift.enabled and drift.get("detector") is not None:
                live.drift = _restored_detector(live.settings.drift, drift["detector"])
            elif (
                live.settings.drift.enabled and len(live.reference) >= live.settings.drift.reference
            ):
                live.drift = _detector(live.settings.drift, live.reference)  # an older snapshot
                for context in drift.get("recent", []):
                    live.drift.update(context)
            if live.drift is not None:
                live.reference = []
            live.drift_seen = int(drift["seen"])
        except Exception as exc:  # a snapshot is only a cache: whatever is wrong, replay
            log.warning(
                "rollout of %r: monitor snapshot unreadable (%r); replaying the phase",
                state.task_type,
                exc,
            )
            live.monitor = SLOMonitor(live.settings.slo)
            live.reference, live.drift, live.drift_seen = [], None, 0
            live.confidence_sum, live.confidence_n, live.agree, live.shadowed = 0.0, 0, 0, 0
            live.decisions_until = -math.inf
            return False
        start = None if live.decisions_until == -math.inf else live.decisions_until
        for chunk in self.store.iter_logged(state.task_type, start):
            for decision, _ in chunk:
                if decision.timestamp > live.decisions_until:
                    self._count_decision(live, decision)
        self._catch_up(live)
        return True

    def _audit(
        self, task_type: str, kind: str, actor: str, reason: str, evidence: Mapping[str, Any]
    ) -> None:
        self.store.append_provenance(
            ProvenanceRecord(
                kind=kind,
                task_type=task_type,
                actor=actor,
                reason=reason,
                evidence=json_safe(evidence),
                policy_versions={
                    "candidate": self._policy_version(task_type),
                    "baseline": "baseline",
                },
                timestamp=self.clock(),
            )
        )


def _unrecorded(live: _Live) -> bool:
    """Whether the analysis now due is not recorded yet (by this replica or another).

    Analyses fall due every ``analysis_every`` outcomes of the phase; replicas count the
    same outcomes in their own order, so each compares the boundary it has reached with
    the one the stored state's last analysis reached.
    """
    every = live.settings.analysis_every
    return live.outcomes // every > live.analysed // every


def _tally(live: _Live, decision: Decision) -> None:
    """Add a decision of the phase to its mean confidence and, in shadow, to the agreement."""
    if _in_phase(live.state, decision):
        live.confidence_sum += decision.confidence
        live.confidence_n += 1
        if decision.phase == Phase.SHADOW and decision.intended_arm is not None:
            live.shadowed += 1
            live.agree += decision.intended_arm == decision.arm


def _epoch(state: RolloutState, drift_since: float) -> tuple[str, float, float]:
    """What a monitor snapshot belongs to: the phase entered at a time, the drift reference's start."""
    return str(state.phase), state.entered_at, drift_since


def _detector(settings: DriftSettings, reference: Sequence[Mapping[str, Any]]) -> DriftDetector:
    return DriftDetector(
        [_plain(c) for c in reference],
        metric=settings.metric,
        threshold=settings.threshold,
        window=settings.window,
        min_samples=settings.min_samples,
    )


def _restored_detector(settings: DriftSettings, data: Mapping[str, Any]) -> DriftDetector:
    return DriftDetector.from_dict(
        data,
        metric=settings.metric,
        threshold=settings.threshold,
        window=settings.window,
        min_samples=settings.min_samples,
    )


def _reference_size(live: _Live) -> int:
    return len(live.reference) if live.drift is None else live.drift.reference_size


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def group_of(decision: Decision) -> Group:
    """Treatment when the policy's choice was served, control when the baseline was."""
    return Group.TREATMENT if decision.origin.startswith("bandit:") else Group.CONTROL


def _in_phase(state: RolloutState, decision: Decision) -> bool:
    phase = state.previous if state.phase is Phase.PAUSED and state.previous else state.phase
    return decision.timestamp >= state.entered_at and decision.phase in (phase, state.phase)


def _observe(monitor: SLOMonitor, decision: Decision, outcome: Outcome, now: float) -> None:
    monitor.observe(
        group_of(decision),
        now,
        latency_ms=outcome.latency_ms,
        quality=outcome.quality if outcome.quality is not None else outcome.feedback,
        error=bool(outcome.error),
        cost=outcome.cost,
    )


def _window(monitor: SLOMonitor, group: Group, now: float) -> dict[str, Any]:
    summary = asdict(monitor.window(group, now))
    summary.pop("group")
    return summary


def _plain(context: Mapping[str, Any]) -> dict[str, Any]:
    """Drift bins numbers and strings: a list-valued feature counts as its length."""
    return {k: len(v) if isinstance(v, list | tuple) else v for k, v in context.items()}


def _note(state: RolloutState) -> str | None:
    if state.phase is Phase.SHADOW:
        return (
            "shadow serves the baseline to every request: its logs cannot evaluate the candidate "
            "(only the baseline's arm is supported); canary traffic with exploration provides the support"
        )
    return None


def _check_actor(actor: str, reason: str) -> None:
    if not isinstance(actor, str) or not actor.strip():
        raise InputError(
            "actor", "every production change names who (a person or rule:<name>) made it"
        )
    if not isinstance(reason, str) or not reason.strip():
        raise InputError("reason", "every production change says why")


def json_safe(value: Any) -> Any:
    """Plain JSON data: NaN and infinities (open confidence bounds, unlimited amounts) become None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


__all__: Sequence[str] = (
    "DriftSettings",
    "PromotionRefusedError",
    "RolloutController",
    "RolloutSettings",
    "Route",
    "group_of",
    "json_safe",
)
