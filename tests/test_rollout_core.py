"""Rollout lifecycle: the transition table row by row, plan and state validation, promotion."""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paramloop.core.monitor import SLOStatus, SLOVerdict
from paramloop.core.rollout import (
    TRANSITIONS,
    Event,
    Phase,
    RolloutPlan,
    RolloutState,
    allowed_events,
    freeze,
    next_phase,
    parse_event,
    parse_phase,
    promotion_check,
    record_analysis,
    rollback_event,
    traffic_problem,
    unfreeze,
)
from paramloop.errors import ConfigError, InputError, TransitionError

Target = Literal["previous", "baseline"]
PLAN = RolloutPlan(canary_percent=5.0, guarded_percent=30.0)
NOW = 1_000_000.0

#: Every allowed (from, event, to), written out independently of the module's table.
ALLOWED: list[tuple[Phase, Event, Phase]] = [
    (Phase.SHADOW, Event.ADVANCE, Phase.CANARY),
    (Phase.CANARY, Event.ADVANCE, Phase.GUARDED),
    (Phase.GUARDED, Event.ADVANCE, Phase.GENERAL),
    (Phase.CANARY, Event.STEP_BACK, Phase.SHADOW),
    (Phase.GUARDED, Event.STEP_BACK, Phase.CANARY),
    (Phase.GENERAL, Event.STEP_BACK, Phase.GUARDED),
    (Phase.SHADOW, Event.PAUSE, Phase.PAUSED),
    (Phase.CANARY, Event.PAUSE, Phase.PAUSED),
    (Phase.GUARDED, Event.PAUSE, Phase.PAUSED),
    (Phase.GENERAL, Event.PAUSE, Phase.PAUSED),
    (Phase.PAUSED, Event.RESUME, Phase.GUARDED),  # resumes the paused phase (guarded here)
    (Phase.SHADOW, Event.ROLLBACK, Phase.ROLLED_BACK),
    (Phase.CANARY, Event.ROLLBACK, Phase.ROLLED_BACK),
    (Phase.GUARDED, Event.ROLLBACK, Phase.ROLLED_BACK),
    (Phase.GENERAL, Event.ROLLBACK, Phase.ROLLED_BACK),
    (Phase.PAUSED, Event.ROLLBACK, Phase.ROLLED_BACK),
    (Phase.ROLLED_BACK, Event.RESTART, Phase.SHADOW),
]
EXPECTED_TRAFFIC = {
    Phase.SHADOW: 0.0,
    Phase.CANARY: 5.0,
    Phase.GUARDED: 30.0,
    Phase.GENERAL: 100.0,
    Phase.ROLLED_BACK: 0.0,
}


def state_in(phase: Phase, **changes: object) -> RolloutState:
    """A valid state in ``phase``; a paused one paused guarded."""
    if phase is Phase.PAUSED:
        base = RolloutState("summarize", Phase.PAUSED, Phase.GUARDED, 30.0, NOW - 10)
    elif phase is Phase.ROLLED_BACK:
        base = RolloutState("summarize", phase, Phase.CANARY, 0.0, NOW - 10, True, "breach")
    else:
        base = RolloutState("summarize", phase, None, PLAN.traffic_percent(phase), NOW - 10)
    return replace(base, **changes)  # type: ignore[arg-type]


def test_the_table_is_exactly_the_allowed_list() -> None:
    rows = {(source, event) for source, event, _ in ALLOWED}
    assert set(TRANSITIONS) == rows


@pytest.mark.parametrize(("source", "event", "target"), ALLOWED)
def test_allowed_transition(source: Phase, event: Event, target: Phase) -> None:
    state = state_in(source, version=7)
    new = next_phase(state, event, PLAN, NOW, reason="test")
    assert new.phase is target
    assert new.previous is source
    held = state.traffic_percent if target is Phase.PAUSED else EXPECTED_TRAFFIC[target]
    assert new.traffic_percent == held
    assert new.entered_at == NOW
    assert new.version == 8
    assert (new.consecutive_breaches, new.consecutive_inconclusives) == (0, 0)
    assert new.frozen is (event in (Event.STEP_BACK, Event.ROLLBACK))
    if new.frozen:
        assert new.frozen_reason == "test"


DISALLOWED = [
    (phase, event)
    for phase in Phase
    for event in Event
    if (phase, event) not in {(s, e) for s, e, _ in ALLOWED}
]


@pytest.mark.parametrize(("source", "event"), DISALLOWED)
def test_disallowed_transition(source: Phase, event: Event) -> None:
    with pytest.raises(TransitionError) as info:
        next_phase(state_in(source), event, PLAN, NOW)
    assert info.value.phase == source and info.value.event == event
    assert set(info.value.allowed) == set(allowed_events(source))


def test_there_are_disallowed_pairs_for_every_phase() -> None:
    assert len(DISALLOWED) == len(Phase) * len(Event) - len(ALLOWED)
    assert {phase for phase, _ in DISALLOWED} == set(Phase)


@pytest.mark.parametrize(
    ("target", "phase", "event"),
    [
        ("previous", Phase.GENERAL, Event.STEP_BACK),
        ("previous", Phase.GUARDED, Event.STEP_BACK),
        ("previous", Phase.CANARY, Event.STEP_BACK),
        ("previous", Phase.SHADOW, Event.ROLLBACK),  # nothing below shadow
        ("previous", Phase.PAUSED, Event.ROLLBACK),
        ("baseline", Phase.GENERAL, Event.ROLLBACK),
        ("baseline", Phase.CANARY, Event.ROLLBACK),
    ],
)
def test_rollback_event_follows_the_plan(target: Target, phase: Phase, event: Event) -> None:
    plan = replace(PLAN, rollback_target=target)
    assert rollback_event(plan, phase) is event
    assert (phase, event) in TRANSITIONS


def test_a_frozen_rollout_cannot_advance_until_unfrozen() -> None:
    state = freeze(state_in(Phase.CANARY), "context drift")
    with pytest.raises(TransitionError, match="context drift"):
        next_phase(state, Event.ADVANCE, PLAN, NOW)
    thawed = unfreeze(state)
    assert next_phase(thawed, Event.ADVANCE, PLAN, NOW).phase is Phase.GUARDED
    assert thawed.version == state.version + 1
    with pytest.raises(InputError):
        freeze(state, "")


def test_rolled_back_thaws_only_by_restart() -> None:
    rolled = next_phase(state_in(Phase.GENERAL), Event.ROLLBACK, PLAN, NOW, "p99 breach")
    assert (rolled.traffic_percent, rolled.frozen, rolled.frozen_reason) == (
        0.0,
        True,
        "p99 breach",
    )
    with pytest.raises(InputError):
        unfreeze(rolled)
    restarted = next_phase(rolled, Event.RESTART, PLAN, NOW + 1)
    assert (restarted.phase, restarted.frozen, restarted.frozen_reason) == (
        Phase.SHADOW,
        False,
        None,
    )


def test_pause_holds_traffic_and_resume_restarts_the_clock() -> None:
    canary = state_in(Phase.CANARY, traffic_percent=2.0)
    paused = next_phase(canary, Event.PAUSE, PLAN, NOW)
    assert (paused.phase, paused.previous, paused.traffic_percent) == (
        Phase.PAUSED,
        Phase.CANARY,
        2.0,
    )
    resumed = next_phase(paused, Event.RESUME, PLAN, NOW + 50)
    assert (resumed.phase, resumed.traffic_percent, resumed.entered_at) == (
        Phase.CANARY,
        5.0,
        NOW + 50,
    )
    frozen_pause = next_phase(freeze(canary, "budget"), Event.PAUSE, PLAN, NOW)
    assert next_phase(frozen_pause, Event.RESUME, PLAN, NOW).frozen_reason == "budget"


def test_plan_defaults() -> None:
    plan = RolloutPlan()
    assert (plan.shadow_min_s, plan.canary_min_s, plan.guarded_min_s) == (86_400, 172_800, 259_200)
    assert [plan.confidence_threshold(p) for p in (Phase.CANARY, Phase.GUARDED, Phase.GENERAL)] == [
        0.8,
        0.7,
        0.5,
    ]
    assert [plan.traffic_percent(p) for p in Phase if p is not Phase.PAUSED] == [0, 5, 25, 100, 0]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"canary_percent": 0.0}, "rollout.canary_percent"),
        ({"canary_percent": 5.01}, "rollout.canary_percent"),
        ({"canary_percent": float("nan")}, "rollout.canary_percent"),
        ({"guarded_percent": 24.9}, "rollout.guarded_percent"),
        ({"guarded_percent": 50.1}, "rollout.guarded_percent"),
        ({"canary_min_s": -1.0}, "rollout.canary_min_s"),
        ({"shadow_min_s": float("inf")}, "rollout.shadow_min_s"),
        ({"general_confidence": 1.2}, "rollout.general_confidence"),
        ({"rollback_target": "yesterday"}, "rollout.rollback_target"),
        ({"failure_limit": -1}, "rollout.failure_limit"),
        ({"inconclusive_limit": 1.5}, "rollout.inconclusive_limit"),
        ({"require_approval": "yes"}, "rollout.require_approval"),
    ],
)
def test_bad_plan(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RolloutPlan(**changes)  # type: ignore[arg-type]
    assert info.value.field == field


@pytest.mark.parametrize(
    "changes",
    [
        {"canary_percent": 0.01},
        {"canary_percent": 5},
        {"guarded_percent": 25.0},
        {"guarded_percent": 50.0},
        {"shadow_min_s": 1.0, "canary_min_s": 0.0},
    ],
)
def test_plan_bounds_are_inclusive_where_documented(changes: dict[str, object]) -> None:
    RolloutPlan(**changes)  # type: ignore[arg-type]


def test_plan_from_mapping_refuses_unknown_keys() -> None:
    assert RolloutPlan.from_mapping({"canary_percent": 2.0}).canary_percent == 2.0
    with pytest.raises(ConfigError) as info:
        RolloutPlan.from_mapping({"canary_precent": 2.0}, field="tasks.summarize.rollout")
    assert info.value.field == "tasks.summarize.rollout.canary_precent"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"phase": Phase.CANARY, "traffic_percent": 10.0}, "traffic_percent"),
        ({"phase": Phase.GENERAL, "traffic_percent": 50.0}, "traffic_percent"),
        ({"phase": Phase.SHADOW, "traffic_percent": 1.0}, "traffic_percent"),
        ({"phase": Phase.PAUSED, "previous": None}, "previous"),
        ({"phase": "canary"}, "phase"),
        ({"frozen": True}, "frozen_reason"),
        ({"frozen_reason": "why"}, "frozen_reason"),
        ({"version": -1}, "version"),
        ({"task_type": ""}, "task_type"),
        ({"entered_at": float("nan")}, "entered_at"),
    ],
)
def test_bad_state(changes: dict[str, object], field: str) -> None:
    with pytest.raises(InputError) as info:
        replace(state_in(Phase.SHADOW), **changes)  # type: ignore[arg-type]
    assert info.value.field == field


def test_rolled_back_must_be_frozen() -> None:
    with pytest.raises(InputError):
        RolloutState("summarize", Phase.ROLLED_BACK, frozen=False)


def test_unknown_names() -> None:
    assert parse_phase("guarded") is Phase.GUARDED
    assert parse_event("step_back") is Event.STEP_BACK
    with pytest.raises(InputError, match="phases: shadow, canary"):
        parse_phase("canry")
    with pytest.raises(InputError, match="events: advance"):
        parse_event("promote")
    data = state_in(Phase.CANARY).to_dict()
    with pytest.raises(InputError):
        RolloutState.from_dict({**data, "phase": "canry"})


@pytest.mark.parametrize("phase", list(Phase))
def test_state_round_trips(phase: Phase) -> None:
    state = state_in(phase, consecutive_breaches=2, version=9)
    assert RolloutState.from_dict(state.to_dict()) == state


def ok(metric: str = "latency_p99_increase") -> SLOStatus:
    return SLOStatus(metric, SLOVerdict.OK, "fine", 0.1, 500, 9_500)


def check(state: RolloutState, **overrides: object) -> list[str]:
    """Names of the failed requirements of a promotion check with passing defaults."""
    arguments: dict[str, object] = {
        "plan": PLAN,
        "now": state.entered_at + PLAN.min_duration_s(state.phase),
        "gates_passed": True,
        "slo_status": [ok(), ok("error_rate_max")],
        "confidence": 0.9,
        "approved": True,
    }
    arguments.update(overrides)
    verdict = promotion_check(state, **arguments)  # type: ignore[arg-type]
    assert verdict.ready is (not verdict.failed)
    assert len(verdict.to_dict()["requirements"]) == 7
    return [requirement.name for requirement in verdict.failed]


def test_promotion_ready_when_everything_holds() -> None:
    assert check(state_in(Phase.CANARY)) == []
    assert check(state_in(Phase.SHADOW), slo_status=[]) == []  # shadow has nothing to monitor
    verdict = promotion_check(state_in(Phase.GUARDED), PLAN, NOW + 1e9, True, [ok()], 0.5, True)
    assert verdict.target is Phase.GENERAL and verdict.ready


@pytest.mark.parametrize(
    ("state_changes", "overrides", "failed"),
    [
        ({"frozen": True, "frozen_reason": "drift"}, {}, ["not_frozen"]),
        ({}, {"gates_passed": False}, ["gates"]),
        ({}, {"now": NOW - 10 + PLAN.canary_min_s - 1}, ["min_duration"]),
        (
            {},
            {"slo_status": [ok(), SLOStatus("q", SLOVerdict.BREACH, "", 0.05, 500, 500)]},
            ["slo"],
        ),
        ({}, {"slo_status": [SLOStatus("q", SLOVerdict.INCONCLUSIVE, "", 0.05, 5, 5)]}, ["slo"]),
        ({}, {"slo_status": []}, ["slo"]),
        ({}, {"confidence": 0.69}, ["confidence"]),  # guarded needs 0.7
        ({}, {"confidence": None}, ["confidence"]),
        ({}, {"approved": False}, ["approval"]),
    ],
)
def test_each_requirement_can_block(
    state_changes: dict[str, object], overrides: dict[str, object], failed: list[str]
) -> None:
    assert check(state_in(Phase.CANARY, **state_changes), **overrides) == failed


def test_promotion_requirements_that_depend_on_the_phase() -> None:
    assert check(state_in(Phase.GENERAL)) == ["transition", "confidence"]
    assert "transition" in check(state_in(Phase.PAUSED))
    assert (
        check(state_in(Phase.CANARY), approved=False, plan=replace(PLAN, require_approval=False))
        == []
    )
    with pytest.raises(InputError):
        check(state_in(Phase.CANARY), confidence=1.5)


def test_breaches_roll_back_after_the_failure_limit() -> None:
    plan = replace(PLAN, failure_limit=1, rollback_target="previous")
    state = state_in(Phase.GUARDED)
    state, event = record_analysis(state, plan, SLOVerdict.BREACH, NOW)
    assert (state.consecutive_breaches, event) == (1, None)
    state, event = record_analysis(state, plan, SLOVerdict.BREACH, NOW)
    assert (state.consecutive_breaches, event) == (2, Event.STEP_BACK)
    assert event is not None
    stepped = next_phase(state, event, plan, NOW, "p99 breach")
    assert (stepped.phase, stepped.frozen) == (Phase.CANARY, True)
    ok_state, event = record_analysis(
        state_in(Phase.GUARDED, consecutive_breaches=1), plan, SLOVerdict.OK, NOW
    )
    assert (ok_state.consecutive_breaches, event) == (0, None)


def test_default_plan_rolls_back_to_baseline_on_the_first_breach() -> None:
    _, event = record_analysis(state_in(Phase.CANARY), RolloutPlan(), SLOVerdict.BREACH, NOW)
    assert event is Event.ROLLBACK


def test_inconclusive_counts_only_after_the_minimum_duration_then_freezes() -> None:
    plan = replace(PLAN, inconclusive_limit=1)
    early = state_in(Phase.CANARY, entered_at=NOW)
    state, _ = record_analysis(early, plan, SLOVerdict.INCONCLUSIVE, NOW + 1)
    assert state.consecutive_inconclusives == 0
    late = NOW + plan.canary_min_s
    state, _ = record_analysis(state, plan, SLOVerdict.INCONCLUSIVE, late)
    assert (state.consecutive_inconclusives, state.frozen) == (1, False)
    state, event = record_analysis(state, plan, SLOVerdict.INCONCLUSIVE, late)
    assert (state.consecutive_inconclusives, state.frozen, event) == (2, True, None)
    assert state.frozen_reason and "inconclusive" in state.frozen_reason
    state, _ = record_analysis(state, plan, SLOVerdict.OK, late)
    assert (state.consecutive_inconclusives, state.frozen) == (0, True)  # a freeze needs a human


def test_analysis_without_treatment_traffic_changes_nothing() -> None:
    shadow = state_in(Phase.SHADOW)
    assert record_analysis(shadow, PLAN, SLOVerdict.BREACH, NOW) == (shadow, None)


@given(
    st.lists(st.sampled_from(list(Event)), max_size=40), st.sampled_from(["previous", "baseline"])
)
def test_any_event_sequence_keeps_the_invariants(events: list[Event], target: Target) -> None:
    plan = replace(PLAN, rollback_target=target)
    state = RolloutState.start("summarize", NOW)
    for step, event in enumerate(events):
        try:
            new = next_phase(state, event, plan, NOW + step, "because")
        except TransitionError:
            assert (state.phase, event) not in TRANSITIONS or state.frozen
            continue
        assert new.version == state.version + 1
        assert new.entered_at == NOW + step
        if event is Event.ADVANCE:  # one rung at a time, never past a frozen state
            ladder = [Phase.SHADOW, Phase.CANARY, Phase.GUARDED, Phase.GENERAL]
            assert ladder.index(new.phase) == ladder.index(state.phase) + 1
        if new.phase is Phase.ROLLED_BACK:
            assert new.frozen and new.traffic_percent == 0.0
        if new.phase is Phase.GENERAL:
            assert state.phase in (Phase.GUARDED, Phase.PAUSED)
        if state.frozen and event is not Event.RESTART:
            assert new.frozen
        state = new


def test_without_a_control_group_inconclusive_analyses_never_freeze() -> None:
    """At 100 % treatment the relative rules cannot decide; that must not freeze general."""
    plan = RolloutPlan(inconclusive_limit=1, guarded_min_s=0.0)
    state = RolloutState(task_type="t", phase=Phase.GENERAL, traffic_percent=100.0)
    for i in range(5):
        state, event = record_analysis(state, plan, SLOVerdict.INCONCLUSIVE, float(i))
        assert event is None
    assert not state.frozen and state.consecutive_inconclusives == 0
    _, event = record_analysis(state, plan, SLOVerdict.BREACH, 10.0)
    assert event is not None  # an absolute rule can still breach and roll back


def test_a_paused_rollout_has_no_traffic_share_of_its_own() -> None:
    assert (
        traffic_problem(Phase.PAUSED, 3.0)
        == "paused has no traffic share of its own: resume it first"
    )
