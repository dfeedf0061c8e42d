"""Safe rollout lifecycle: one table of allowed transitions and one pure ``next_phase``.

A candidate policy moves shadow → canary → guarded → general, each phase with
its own traffic share and minimum duration.  Any active phase may be *paused*
(an operator hold: traffic stays where it was, nothing advances) and resumed to
the phase it paused.  Rollback is an ordinary transition with two flavours,
chosen by :attr:`RolloutPlan.rollback_target`:

* ``step_back`` ("previous"): one rung down the ladder (general → guarded →
  canary → shadow), at that rung's traffic;
* ``rollback`` ("baseline"): to ``rolled_back``, where the baseline serves every
  request (0 % treatment).  It is not shadow: shadow means "still a candidate,
  heading for promotion", rolled back means "stopped, a human must look".  Only
  ``restart`` leaves it, to shadow.

Both flavours *freeze* the rollout (no advance until someone unfreezes it or
restarts), because the evidence that forced a rollback does not expire on its
own.  The lifecycle, in the table below, is the whole story; ``next_phase``
only applies it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, Literal

from paramloop.core.monitor import SLOStatus, SLOVerdict, overall
from paramloop.errors import ConfigError, InputError, TransitionError


class Phase(StrEnum):
    SHADOW = "shadow"
    CANARY = "canary"
    GUARDED = "guarded"
    GENERAL = "general"
    PAUSED = "paused"
    ROLLED_BACK = "rolled_back"

    @property
    def is_active(self) -> bool:
        """On the promotion ladder (not paused, not rolled back)."""
        return self in ACTIVE_PHASES


class Event(StrEnum):
    ADVANCE = "advance"
    PAUSE = "pause"
    RESUME = "resume"
    STEP_BACK = "step_back"
    ROLLBACK = "rollback"
    RESTART = "restart"


ACTIVE_PHASES: Final = (Phase.SHADOW, Phase.CANARY, Phase.GUARDED, Phase.GENERAL)
#: Target of ``resume``: the phase that was paused (kept in :attr:`RolloutState.previous`).
PREVIOUS: Final = "previous"

#: The one table of allowed transitions: (phase, event) → next phase.
TRANSITIONS: Final[Mapping[tuple[Phase, Event], Phase | Literal["previous"]]] = MappingProxyType(
    {
        (Phase.SHADOW, Event.ADVANCE): Phase.CANARY,
        (Phase.CANARY, Event.ADVANCE): Phase.GUARDED,
        (Phase.GUARDED, Event.ADVANCE): Phase.GENERAL,
        (Phase.CANARY, Event.STEP_BACK): Phase.SHADOW,
        (Phase.GUARDED, Event.STEP_BACK): Phase.CANARY,
        (Phase.GENERAL, Event.STEP_BACK): Phase.GUARDED,
        **{(phase, Event.PAUSE): Phase.PAUSED for phase in ACTIVE_PHASES},
        (Phase.PAUSED, Event.RESUME): PREVIOUS,
        **{(phase, Event.ROLLBACK): Phase.ROLLED_BACK for phase in (*ACTIVE_PHASES, Phase.PAUSED)},
        (Phase.ROLLED_BACK, Event.RESTART): Phase.SHADOW,
    }
)

#: Allowed treatment traffic (percent) per phase: (low, high, low inclusive).
TRAFFIC_BOUNDS: Final[Mapping[Phase, tuple[float, float, bool]]] = MappingProxyType(
    {
        Phase.SHADOW: (0.0, 0.0, True),
        Phase.CANARY: (0.0, 5.0, False),
        Phase.GUARDED: (25.0, 50.0, True),
        Phase.GENERAL: (100.0, 100.0, True),
        Phase.ROLLED_BACK: (0.0, 0.0, True),
    }
)


def parse_phase(name: str) -> Phase:
    """The phase called ``name``; :class:`InputError` listing the phases otherwise."""
    try:
        return Phase(name)
    except ValueError:
        raise InputError("phase", f"unknown phase {name!r}; phases: {', '.join(Phase)}") from None


def parse_event(name: str) -> Event:
    """The event called ``name``; :class:`InputError` listing the events otherwise."""
    try:
        return Event(name)
    except ValueError:
        raise InputError("event", f"unknown event {name!r}; events: {', '.join(Event)}") from None


def allowed_events(phase: Phase) -> tuple[Event, ...]:
    """The events the table accepts from ``phase``, in table order."""
    return tuple(event for (source, event) in TRANSITIONS if source is phase)


def traffic_problem(phase: Phase, percent: float) -> str | None:
    """Why ``percent`` is not an allowed traffic share for ``phase`` (``None`` if it is)."""
    if phase not in TRAFFIC_BOUNDS:  # paused holds the share of the phase it paused
        return f"{phase} has no traffic share of its own: resume it first"
    low, high, low_inclusive = TRAFFIC_BOUNDS[phase]
    if isinstance(percent, bool) or not isinstance(percent, float | int):
        return f"must be a number, got {percent!r}"
    above_low = percent >= low if low_inclusive else percent > low
    if math.isfinite(percent) and above_low and percent <= high:
        return None
    interval = f"{'[' if low_inclusive else '('}{low:g}, {high:g}]"
    return f"{phase} traffic must be in {interval} percent, got {percent!r}"


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    """How a task type's rollout proceeds (validated; durations in seconds).

    Confidence thresholds apply to *entering* a phase: the recommendation
    confidence the engine measures must reach ``canary_confidence`` to leave
    shadow, and so on.  With ``require_approval`` every advance needs an
    approval; with ``auto_advance`` the controller advances by itself as soon as
    :func:`promotion_check` is ready.  ``failure_limit`` and ``inconclusive_limit``
    count consecutive SLO analyses (like Argo Rollouts' ``failureLimit`` and
    ``inconclusiveLimit``): one more breach than ``failure_limit`` rolls back, one
    more inconclusive analysis than ``inconclusive_limit`` freezes.
    """

    canary_percent: float = 5.0
    guarded_percent: float = 25.0
    shadow_min_s: float = 86_400.0
    canary_min_s: float = 172_800.0
    guarded_min_s: float = 259_200.0
    canary_confidence: float = 0.8
    guarded_confidence: float = 0.7
    general_confidence: float = 0.5
    require_approval: bool = True
    auto_advance: bool = False
    rollback_target: Literal["previous", "baseline"] = "baseline"
    failure_limit: int = 0
    inconclusive_limit: int = 3

    def __post_init__(self) -> None:
        for name, phase in (("canary_percent", Phase.CANARY), ("guarded_percent", Phase.GUARDED)):
            if problem := traffic_problem(phase, getattr(self, name)):
                raise ConfigError(f"rollout.{name}", problem)
        for name in ("shadow_min_s", "canary_min_s", "guarded_min_s"):
            value = getattr(self, name)
            if not (isinstance(value, float | int) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"rollout.{name}", f"must be ≥ 0 seconds, got {value!r}")
        for name in ("canary_confidence", "guarded_confidence", "general_confidence"):
            value = getattr(self, name)
            if not (isinstance(value, float | int) and 0.0 <= value <= 1.0):
                raise ConfigError(f"rollout.{name}", f"must be in [0, 1], got {value!r}")
        for name in ("require_approval", "auto_advance"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"rollout.{name}", "must be true or false")
        if self.rollback_target not in ("previous", "baseline"):
            raise ConfigError(
                "rollout.rollback_target",
                f"must be 'previous' or 'baseline', got {self.rollback_target!r}",
            )
        for name in ("failure_limit", "inconclusive_limit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"rollout.{name}", f"must be an integer ≥ 0, got {value!r}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], field: str = "rollout") -> RolloutPlan:
        """Build from a configuration table; an unknown key is an error, not ignored."""
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(data) - known):
            raise ConfigError(
                f"{field}.{unknown[0]}", f"unknown key; known: {', '.join(sorted(known))}"
            )
        return cls(**dict(data))

    def traffic_percent(self, phase: Phase) -> float:
        """Treatment traffic of an active phase or ``rolled_back`` (paused holds its own)."""
        shares = {Phase.CANARY: self.canary_percent, Phase.GUARDED: self.guarded_percent}
        return float(shares.get(phase, TRAFFIC_BOUNDS[phase][1]))

    def min_duration_s(self, phase: Phase) -> float:
        """Time a phase must last before it may advance (0 for phases that do not advance)."""
        durations = {
            Phase.SHADOW: self.shadow_min_s,
            Phase.CANARY: self.canary_min_s,
            Phase.GUARDED: self.guarded_min_s,
        }
        return float(durations.get(phase, 0.0))

    def confidence_threshold(self, phase: Phase) -> float:
        """Confidence needed to *enter* ``phase``."""
        thresholds = {
            Phase.CANARY: self.canary_confidence,
            Phase.GUARDED: self.guarded_confidence,
            Phase.GENERAL: self.general_confidence,
        }
        return float(thresholds.get(phase, 0.0))


@dataclass(frozen=True, slots=True)
class RolloutState:
    """Where one task type's rollout stands.  Every change makes a new state, ``version + 1``.

    ``previous`` is the phase of the last transition's origin (for ``paused``: the
    phase to resume).  ``frozen`` blocks ``advance`` until :func:`unfreeze` or
    ``restart``; a rolled-back rollout is always frozen.  ``version`` lets the
    store refuse a write based on a stale read (compare and swap).
    """

    task_type: str
    phase: Phase = Phase.SHADOW
    previous: Phase | None = None
    traffic_percent: float = 0.0
    entered_at: float = 0.0
    frozen: bool = False
    frozen_reason: str | None = None
    consecutive_breaches: int = 0
    consecutive_inconclusives: int = 0
    version: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.task_type, str) or not self.task_type:
            raise InputError("task_type", "must be a non-empty string")
        if not isinstance(self.phase, Phase):
            raise InputError("phase", f"must be a Phase, got {self.phase!r} (see parse_phase)")
        if self.phase is Phase.PAUSED and (self.previous is None or not self.previous.is_active):
            raise InputError("previous", "a paused rollout must name the active phase it paused")
        held = self.previous if self.phase is Phase.PAUSED and self.previous else self.phase
        if problem := traffic_problem(held, self.traffic_percent):
            raise InputError("traffic_percent", problem)
        if not math.isfinite(self.entered_at):
            raise InputError("entered_at", "must be finite seconds")
        if self.frozen != (self.frozen_reason is not None):
            raise InputError("frozen_reason", "is required when frozen and only then")
        if self.phase is Phase.ROLLED_BACK and not self.frozen:
            raise InputError("frozen", "a rolled-back rollout stays frozen until restart")
        for name in ("consecutive_breaches", "consecutive_inconclusives", "version"):
            if getattr(self, name) < 0:
                raise InputError(name, "must be ≥ 0")

    @classmethod
    def start(cls, task_type: str, now: float) -> RolloutState:
        """A new rollout: shadow, no treatment traffic."""
        return cls(task_type=task_type, entered_at=now)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_type": self.task_type,
            "phase": str(self.phase),
            "previous": None if self.previous is None else str(self.previous),
            "traffic_percent": self.traffic_percent,
            "entered_at": self.entered_at,
            "frozen": self.frozen,
            "frozen_reason": self.frozen_reason,
            "consecutive_breaches": self.consecutive_breaches,
            "consecutive_inconclusives": self.consecutive_inconclusives,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutState:
        previous = data.get("previous")
        return cls(
            task_type=str(data["task_type"]),
            phase=parse_phase(str(data["phase"])),
            previous=None if previous is None else parse_phase(str(previous)),
            traffic_percent=float(data["traffic_percent"]),
            entered_at=float(data["entered_at"]),
            frozen=bool(data.get("frozen", False)),
            frozen_reason=data.get("frozen_reason"),
            consecutive_breaches=int(data.get("consecutive_breaches", 0)),
            consecutive_inconclusives=int(data.get("consecutive_inconclusives", 0)),
            version=int(data.get("version", 0)),
        )


def next_phase(
    state: RolloutState, event: Event, plan: RolloutPlan, now: float, reason: str = ""
) -> RolloutState:
    """Apply ``event`` by the table, or raise :class:`TransitionError` if the table has no such row.

    The new phase starts its clock at ``now`` (a resumed phase too: time spent
    paused does not count towards its minimum duration) with fresh analysis
    counters.  ``step_back`` and ``rollback`` freeze with ``reason``; ``restart``
    thaws.

    >>> plan = RolloutPlan(canary_percent=2.0)
    >>> state = next_phase(RolloutState.start("summarize", 0.0), Event.ADVANCE, plan, 90_000.0)
    >>> state.phase, state.traffic_percent, state.version
    (<Phase.CANARY: 'canary'>, 2.0, 1)
    >>> event = rollback_event(plan, state.phase)
    >>> next_phase(state, event, plan, 90_600.0, reason="p99 breach").frozen_reason
    'p99 breach'
    """
    target = TRANSITIONS.get((state.phase, event))
    allowed = tuple(str(e) for e in allowed_events(state.phase))
    if target is None:
        raise TransitionError(str(state.phase), str(event), allowed)
    if event is Event.ADVANCE and state.frozen:
        thawed_only = tuple(e for e in allowed if e != Event.ADVANCE)
        why = f"frozen: {state.frozen_reason}"
        raise TransitionError(str(state.phase), str(event), thawed_only, why)
    phase = state.previous if target == PREVIOUS else target
    assert isinstance(phase, Phase)  # the state invariant: paused always names its phase
    freezes = event in (Event.STEP_BACK, Event.ROLLBACK)
    frozen = freezes or (state.frozen and event is not Event.RESTART)
    frozen_reason = (reason or f"{event} from {state.phase}") if freezes else state.frozen_reason
    return RolloutState(
        task_type=state.task_type,
        phase=phase,
        previous=state.phase,
        traffic_percent=state.traffic_percent
        if phase is Phase.PAUSED
        else plan.traffic_percent(phase),
        entered_at=now,
        frozen=frozen,
        frozen_reason=frozen_reason if frozen else None,
        version=state.version + 1,
    )


def rollback_event(plan: RolloutPlan, phase: Phase) -> Event:
    """The rollback the plan asks for from ``phase``: a step back where the ladder has one."""
    if plan.rollback_target == "previous" and (phase, Event.STEP_BACK) in TRANSITIONS:
        return Event.STEP_BACK
    return Event.ROLLBACK


def freeze(state: RolloutState, reason: str) -> RolloutState:
    """Block advancing (drift, exhausted budget, an operator) without changing traffic."""
    if not reason:
        raise InputError("reason", "a freeze must say why")
    return replace(state, frozen=True, frozen_reason=reason, version=state.version + 1)


def unfreeze(state: RolloutState) -> RolloutState:
    """Allow advancing again (a rolled-back rollout thaws only by ``restart``)."""
    if state.phase is Phase.ROLLED_BACK:
        raise InputError("frozen", "a rolled-back rollout thaws only by restart")
    return replace(state, frozen=False, frozen_reason=None, version=state.version + 1)


def record_analysis(
    state: RolloutState, plan: RolloutPlan, verdict: SLOVerdict, now: float
) -> tuple[RolloutState, Event | None]:
    """Count one SLO analysis; return the new state and the rollback event to apply, if any.

    Breaches count consecutively; one more than ``failure_limit`` asks for
    :func:`rollback_event`.  Inconclusive analyses count only once the phase has
    lasted its minimum duration (before that, too little data is expected) and
    while a control group exists (below 100 % treatment); one more than
    ``inconclusive_limit`` freezes.  An ok analysis resets both.
    Without treatment traffic there is nothing to analyse and nothing changes.
    """
    if state.traffic_percent == 0.0:
        return state, None
    breaches, inconclusives, frozen_reason = 0, 0, state.frozen_reason
    if verdict is SLOVerdict.BREACH:
        breaches = state.consecutive_breaches + 1
    elif verdict is SLOVerdict.INCONCLUSIVE:
        phase = state.previous if state.phase is Phase.PAUSED and state.previous else state.phase
        matured = now - state.entered_at >= plan.min_duration_s(phase)
        # At 100 % there is no control group: rules relative to it can never decide, and
        # only the absolute ones (error-rate cap, latency cap) can breach.
        counted = matured and state.traffic_percent < 100.0
        inconclusives = state.consecutive_inconclusives + int(counted)
        if inconclusives > plan.inconclusive_limit and not state.frozen:
            frozen_reason = f"SLO analysis inconclusive {inconclusives} times in a row"
    new = replace(
        state,
        consecutive_breaches=breaches,
        consecutive_inconclusives=inconclusives,
        frozen=frozen_reason is not None,
        frozen_reason=frozen_reason,
        version=state.version + 1,
    )
    event = rollback_event(plan, state.phase) if breaches > plan.failure_limit else None
    return new, event


@dataclass(frozen=True, slots=True)
class Requirement:
    """One promotion requirement, whether it holds, and why."""

    name: str
    passed: bool
    reason: str


@dataclass(frozen=True, slots=True)
class PromotionVerdict:
    """Every requirement for advancing from ``phase`` to ``target``; ready when all pass."""

    phase: Phase
    target: Phase | None
    requirements: tuple[Requirement, ...]

    @property
    def ready(self) -> bool:
        return all(requirement.passed for requirement in self.requirements)

    @property
    def failed(self) -> tuple[Requirement, ...]:
        return tuple(requirement for requirement in self.requirements if not requirement.passed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": str(self.phase),
            "target": None if self.target is None else str(self.target),
            "ready": self.ready,
            "requirements": [
                {"name": r.name, "passed": r.passed, "reason": r.reason} for r in self.requirements
            ],
        }


def promotion_check(
    state: RolloutState,
    plan: RolloutPlan,
    now: float,
    gates_passed: bool,
    slo_status: Sequence[SLOStatus],
    confidence: float | None,
    approved: bool,
) -> PromotionVerdict:
    """List every requirement for the next ``advance`` with its verdict and reason.

    Requirements: the table allows advancing, not frozen, quality gates passed
    (not required to leave shadow: its log, served by the baseline alone, cannot
    evaluate the candidate; canary's can), minimum time in phase, SLOs ok over the phase (every rule decided and none
    breached; not required in shadow, which serves no treatment), confidence at
    the target's threshold, and an approval when the plan requires one.
    """
    if confidence is not None and not (
        isinstance(confidence, float | int) and 0.0 <= confidence <= 1.0
    ):
        raise InputError("confidence", f"must be in [0, 1] or None, got {confidence!r}")
    target = TRANSITIONS.get((state.phase, Event.ADVANCE))
    target_phase = target if isinstance(target, Phase) else None
    elapsed = now - state.entered_at
    needed = plan.min_duration_s(state.phase)
    slo = overall(slo_status)
    if state.traffic_percent == 0.0:
        slo_reason = "no treatment traffic to monitor"
    elif not slo_status:
        slo_reason = "no SLO status given"
    else:
        slo_reason = f"SLOs {slo}: " + "; ".join(f"{s.metric} {s.verdict}" for s in slo_status)
    threshold = plan.confidence_threshold(target_phase) if target_phase else math.nan
    confidence_reason = (
        f"confidence {'unknown' if confidence is None else f'{confidence:g}'}, "
        f"{threshold:g} needed to enter {target_phase}"
        if target_phase
        else f"no phase to enter from {state.phase}"
    )
    allowed = ", ".join(allowed_events(state.phase))
    approval = ("given" if approved else "missing") if plan.require_approval else "not required"
    rows = [
        ("transition", target_phase is not None, f"{state.phase} → {target_phase or allowed}"),
        (
            "not_frozen",
            not state.frozen,
            f"frozen: {state.frozen_reason}" if state.frozen else "thawed",
        ),
        (
            "gates",
            gates_passed or state.phase is Phase.SHADOW,
            "gates passed"
            if gates_passed
            else "gates did not pass"
            if state.phase is not Phase.SHADOW
            else "not required to leave shadow (its log cannot evaluate the candidate)",
        ),
        (
            "min_duration",
            elapsed >= needed,
            f"{elapsed:.0f} s in {state.phase}, {needed:.0f} s needed",
        ),
        ("slo", state.traffic_percent == 0.0 or slo is SLOVerdict.OK, slo_reason),
        (
            "confidence",
            target_phase is not None and confidence is not None and confidence >= threshold,
            confidence_reason,
        ),
        ("approval", approved or not plan.require_approval, f"approval {approval}"),
    ]
    return PromotionVerdict(state.phase, target_phase, tuple(Requirement(*row) for row in rows))
