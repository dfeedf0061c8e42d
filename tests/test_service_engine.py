"""The service's logic without HTTP: proxied decisions, pins, model rules, cost, feedback, expiry."""

from __future__ import annotations

from typing import Any

import pytest

from paramloop.core.rollout import Phase
from paramloop.core.space import ModelRule, TrustRegion
from paramloop.engine import Optimizer, task
from paramloop.engine.config import TaskConfig
from paramloop.engine.loop import build_loop
from paramloop.engine.service import (
    Price,
    PriceTable,
    ProxyOptions,
    Service,
    prompt_hash,
    upstream_body,
)
from paramloop.errors import (
    ConfigError,
    ConflictingOutcomeError,
    FeatureError,
    InputError,
    LateOutcomeError,
    UnknownRequestError,
    UnknownTaskTypeError,
)
from paramloop.store.memory import MemoryDecisionLog
from paramloop.types import Outcome, Params

WAIT_S = 60.0
MESSAGES = [{"role": "user", "content": "What is 2 + 2? Answer with the number."}]


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def make_tasks() -> list[TaskConfig]:
    return [
        task(
            "qa",
            preset="published",
            baseline=Params("small", temperature=0.4, max_tokens=32),
            grids={
                "model": ["small", "reasoner"],
                "temperature": [0.0, 0.4, 0.8],
                "max_tokens": [16, 32],
            },
            model_rules=[
                ModelRule(
                    "reasoner",
                    rejects=frozenset({"temperature"}),
                    max_tokens_field="max_completion_tokens",
                )
            ],
            trust_region=TrustRegion(radius={}),
            reward_wait_s=WAIT_S,
        ),
        task(
            "chat",
            preset="published",
            baseline=Params("small", temperature=0.7, max_tokens=64),
            grids={"temperature": [0.5, 0.7]},
            reward_wait_s=WAIT_S,
        ),
    ]


def make_service(
    initial: dict[str, tuple[Phase, float]] | None = None, **options: Any
) -> tuple[Service, Clock]:
    """A service on an optimizer alone, or with ``initial``, on a whole loop placed there."""
    clock = Clock()
    if initial is None:
        optimizer = Optimizer(make_tasks(), MemoryDecisionLog(), clock=clock)
    else:
        optimizer = build_loop(
            make_tasks(), MemoryDecisionLog(), clock=clock, initial=initial
        ).optimizer
    prices = PriceTable({"small": Price(input_per_mtok=1.0, output_per_mtok=2.0)})
    return Service(optimizer, prices=prices, clock=clock, **options), clock


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "asked-for", "messages": MESSAGES, **fields}


def test_an_optimized_body_takes_the_decision_s_parameters_under_the_model_s_rules() -> None:
    service, _ = make_service()
    seen = set()
    for i in range(60):
        plan = service.plan("qa", {}, body(top_p=0.5, stop=["\n"]), request_id=f"r{i}")
        assert plan.mode == "optimized"
        assert plan.decision is not None
        params = plan.decision.params
        sent = plan.body
        assert sent["model"] == params.model
        assert sent["messages"] == MESSAGES
        assert sent["top_p"] == 0.5  # not managed for this task type: the caller's
        assert sent["stop"] == ["\n"]
        if params.model == "reasoner":  # rejects temperature, counts max_completion_tokens
            assert "temperature" not in sent
            assert sent["max_completion_tokens"] == params.max_tokens
            assert "max_tokens" not in sent
        else:
            assert sent["temperature"] == params.temperature
            assert sent["max_tokens"] == params.max_tokens
        seen.add(params.model)
    assert seen == {"small", "reasoner"}


def test_the_context_gets_the_asked_model_and_a_prompt_token_estimate() -> None:
    service, _ = make_service()
    plan = service.plan("qa", {"risk_tier": "high"}, body(), request_id="ctx")
    assert plan.decision is not None
    context = plan.decision.context
    assert context["risk_tier"] == "high"
    assert context["prompt_tokens"] == len(MESSAGES[0]["content"]) // 4
    given = service.plan("qa", {"prompt_tokens": 900}, body(), request_id="ctx2")
    assert given.decision is not None and given.decision.context["prompt_tokens"] == 900


@pytest.mark.parametrize("field", ["temperature", "max_tokens", "max_completion_tokens"])
def test_a_pinned_parameter_is_respected_by_default(field: str) -> None:
    service, _ = make_service()
    caller = body(**{field: 1})
    plan = service.plan("qa", {}, caller, request_id="pin")
    assert (plan.mode, plan.decision, plan.body, plan.pinned) == ("pinned", None, caller, (field,))
    assert service.optimizer.store.get_decision("pin") is None  # nothing logged


def test_a_pinned_parameter_is_overridden_when_configured() -> None:
    service, _ = make_service(proxy={"qa": ProxyOptions(pinned="override")})
    plan = service.plan("qa", {}, body(temperature=1.9), request_id="over")
    assert plan.mode == "optimized" and plan.pinned == ("temperature",)
    assert plan.decision is not None
    assert plan.body.get("temperature") == plan.decision.params.temperature != 1.9


def test_disabled_forwards_as_sent_and_logs_nothing() -> None:
    off, _ = make_service(enabled=False)
    assert off.plan("qa", {}, body(), request_id="a").mode == "disabled"
    assert off.optimizer.store.count_decisions() == 0


def test_shadow_serves_the_baseline_and_logs_the_policys_choice() -> None:
    service, _ = make_service({"qa": (Phase.SHADOW, 0.0)})
    baseline = service.optimizer.config("qa").space.baseline
    for i in range(20):
        plan = service.plan("qa", {}, body(), request_id=f"s{i}")
        assert plan.mode == "control" and plan.decision is not None
        decision = plan.decision
        assert (decision.phase, decision.params, decision.propensity) == ("shadow", baseline, 1.0)
        assert decision.intended_arm is not None
        assert (plan.body["model"], plan.body["temperature"]) == ("small", 0.4)
        assert service.optimizer.store.get_decision(f"s{i}") == decision


def test_the_rollout_splits_by_unit_and_every_propensity_is_the_mixture() -> None:
    service, _ = make_service({"qa": (Phase.GUARDED, 50.0)})
    baseline_arm = service.optimizer.config("qa").space.baseline_arm
    modes: dict[str, set[str]] = {}
    for i in range(200):
        unit = f"user-{i % 20}"
        plan = service.plan("qa", {}, body(), request_id=f"g{i}", unit_id=unit)
        decision = plan.decision
        assert decision is not None and decision.phase == "guarded"
        modes.setdefault(unit, set()).add(plan.mode)
        if plan.mode == "control":  # t·π(b|x) + (1 − t): at least the control share
            assert decision.arm == baseline_arm and decision.intended_arm is not None
            assert decision.propensity >= 0.5
        elif decision.arm != baseline_arm:  # t·π(a|x): at most the treatment share
            assert decision.propensity <= 0.5 and decision.intended_arm is None
    assert all(len(seen) == 1 for seen in modes.values())  # a unit stays in its group
    assert {mode for seen in modes.values() for mode in seen} == {"optimized", "control"}


def test_bad_input_raises_before_anything_is_logged() -> None:
    service, _ = make_service()
    with pytest.raises(UnknownTaskTypeError):
        service.plan("poetry", {}, body(), request_id="x")
    with pytest.raises(FeatureError):
        service.plan("qa", {"risk_tier": "extreme"}, body(), request_id="x")
    assert service.optimizer.store.count_decisions() == 0
    with pytest.raises(ConfigError, match=r"service\.tasks\.poetry"):
        Service(service.optimizer, proxy={"poetry": ProxyOptions()})
    with pytest.raises(ConfigError, match="feedback"):
        ProxyOptions(feedback="later")  # type: ignore[arg-type]


def test_cost_comes_from_the_price_table() -> None:
    service, _ = make_service()
    usage = {"prompt_tokens": 1_000, "completion_tokens": 500}
    measured = service.measure("small", latency_ms=12.5, usage=usage, error=False)
    assert measured == Outcome(
        latency_ms=12.5, prompt_tokens=1_000, completion_tokens=500, cost=0.002, error=False
    )
    assert service.measure("unpriced", latency_ms=1.0, usage=usage, error=False).cost is None
    assert service.measure("small", latency_ms=1.0, usage=None, error=True).cost is None
    with pytest.raises(ConfigError, match="input_per_mtok"):
        Price(-1.0, 0.0)


def test_without_awaited_feedback_the_measurement_is_the_outcome() -> None:
    service, _ = make_service()
    plan = service.plan("qa", {}, body(), request_id="now")
    measured = service.measure(plan.model, latency_ms=40.0, usage={"prompt_tokens": 9}, error=False)
    recorded = service.finish(plan, measured)
    assert recorded is not None and recorded.outcome == measured
    with pytest.raises(ConflictingOutcomeError):  # the outcome is written already
        service.feedback("now", quality=1.0)


def test_feedback_joins_the_measurement_of_its_own_request() -> None:
    service, clock = make_service(proxy={"qa": ProxyOptions(feedback="await")})
    plans = [service.plan("qa", {}, body(), request_id=f"q{i}") for i in range(3)]
    for i, plan in enumerate(plans):
        usage = {"prompt_tokens": 10 + i, "completion_tokens": i + 1}
        measured = service.measure(plan.model, latency_ms=100.0 * (i + 1), usage=usage, error=False)
        assert service.finish(plan, measured) is None  # waits for the feedback
    store = service.optimizer.store
    assert [store.get_outcome(p.request_id) for p in plans] == [None, None, None]

    recorded = service.feedback("q1", quality=0.75, feedback=1.0)
    assert recorded.outcome.latency_ms == 200.0
    assert (recorded.outcome.prompt_tokens, recorded.outcome.completion_tokens) == (11, 2)
    assert (recorded.outcome.quality, recorded.outcome.feedback) == (0.75, 1.0)
    assert service.feedback("q1", quality=0.75, feedback=1.0) == recorded  # idempotent
    with pytest.raises(ConflictingOutcomeError):
        service.feedback("q1", quality=0.1)
    assert store.get_outcome("q0") is None and store.get_outcome("q2") is None

    clock.now += WAIT_S + 1
    with pytest.raises(LateOutcomeError):
        service.feedback("q2", quality=1.0)
    assert service.expire() == 2  # q0 and q2: their measurements, without quality
    for rid, latency in (("q0", 100.0), ("q2", 300.0)):
        stored = store.get_outcome(rid)
        assert stored is not None and stored.source == "observed"
        assert (stored.outcome.latency_ms, stored.outcome.quality) == (latency, None)
    assert service.optimizer.stats.measured_outcomes == 2
    assert service.expire() == 0


def test_feedback_needs_a_score_and_a_known_request() -> None:
    service, _ = make_service()
    with pytest.raises(InputError):
        service.feedback("x")
    with pytest.raises(UnknownRequestError):
        service.feedback("nobody", quality=1.0)
    decision = service.recommend("chat", {}, request_id="api")  # no measurement: feedback alone
    assert service.feedback(decision.request_id, feedback=0.0).outcome == Outcome(feedback=0.0)


def test_a_batch_of_outcomes_is_recorded_all_or_none() -> None:
    service, clock = make_service()
    a, b = (service.recommend("chat", {}, request_id=rid) for rid in ("a", "b"))
    good = Outcome(quality=0.9)
    with pytest.raises(UnknownRequestError) as caught:
        service.record_outcomes([(a.request_id, good), ("missing", good)])
    assert caught.value.__notes__ == ["outcomes[1]"]
    with pytest.raises(ConflictingOutcomeError):
        service.record_outcomes([(a.request_id, good), (a.request_id, Outcome(quality=0.1))])
    assert service.optimizer.store.get_outcome("a") is None
    recorded = service.record_outcomes([(a.request_id, good), (b.request_id, good), ("a", good)])
    assert [r.request_id for r in recorded] == ["a", "b", "a"]
    assert service.optimizer.stats.outcomes == 2
    clock.now += WAIT_S + 1
    late = service.recommend("chat", {}, request_id="late")
    clock.now += WAIT_S + 1
    with pytest.raises(LateOutcomeError):
        service.record_outcomes([(late.request_id, good)])


def test_the_baseline_decision_is_not_logged() -> None:
    service, _ = make_service(enabled=False)
    decision = service.baseline("qa", {"risk_tier": "low"}, request_id="b")
    assert decision.params == service.optimizer.config("qa").space.baseline
    assert (decision.propensity, decision.origin) == (1.0, "disabled:baseline")
    assert service.optimizer.store.get_decision("b") is None


def test_upstream_body_and_prompt_hash() -> None:
    sent = upstream_body(
        {"model": "a", "temperature": 2.0, "max_completion_tokens": 5, "seed": 3, "messages": []},
        Params("b", temperature=0.1, max_tokens=9, seed=1),
    )
    assert sent == {"model": "b", "seed": 3, "messages": [], "temperature": 0.1, "max_tokens": 9}
    assert prompt_hash(MESSAGES) == prompt_hash([dict(m) for m in MESSAGES])
    assert MESSAGES[0]["content"] not in prompt_hash(MESSAGES)
