"""Property tests: constraints hold for every recommendation; reproducibility is exact."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paramloop.core.policies import POLICIES
from paramloop.core.space import HARD_BOUNDS, ModelRule, TrustRegion
from paramloop.engine import Optimizer, task
from paramloop.types import Outcome, Params

RULES = [
    ModelRule(
        "o3-mini",
        rejects=frozenset({"temperature", "top_p"}),
        max_tokens_field="max_completion_tokens",
    ),
    ModelRule("fixed-temp", fixed={"temperature": 1.0}),
]

contexts = st.fixed_dictionaries(
    {},
    optional={
        "risk_tier": st.sampled_from(["low", "medium", "high"]),
        "title_length": st.integers(0, 10_000),
        "prompt_tokens": st.integers(0, 10**7),
        "has_external_deps": st.booleans(),
        "complexity_indicators": st.one_of(
            st.integers(0, 100), st.lists(st.text(max_size=5), max_size=8)
        ),
        "model_name": st.text(max_size=12),
        "prior_failures": st.integers(0, 50),
        "max_loc": st.integers(0, 10**6),
    },
)


@st.composite
def task_configs(draw: st.DrawFn) -> tuple[str, float, float]:
    return (
        draw(st.sampled_from(sorted(POLICIES))),
        draw(st.sampled_from([0.1, 0.2, 0.3])),
        draw(st.sampled_from([0.0, 0.05, 0.3])),
    )


def make_optimizer(policy: str, radius: float, exploration: float) -> Optimizer:
    return Optimizer(
        [
            task(
                "t",
                preset="published",
                baseline=Params("gpt-small", temperature=0.7, max_tokens=512, top_p=0.9),
                grids={
                    "model": ["gpt-small", "o3-mini", "fixed-temp"],
                    "temperature": [0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.4],
                    "max_tokens": [128, 256, 384, 512, 640, 768, 1024],
                    "top_p": [0.5, 0.9, 1.0],
                },
                model_rules=RULES,
                trust_region=TrustRegion(
                    radius={"temperature": radius, "max_tokens": 200, "top_p": 0.1}
                ),
                policy=policy,
                exploration=exploration,
            )
        ]
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=task_configs(),
    context_list=st.lists(contexts, min_size=1, max_size=5),
    rewards=st.lists(st.floats(0, 1), min_size=5, max_size=5),
)
def test_every_recommendation_satisfies_trust_region_bounds_and_model_rules(
    config: tuple[str, float, float], context_list: list[dict[str, object]], rewards: list[float]
) -> None:
    policy, radius, exploration = config
    opt = make_optimizer(policy, radius, exploration)
    space = opt.config("t").space
    base = space.baseline
    for i, context in enumerate(context_list * 3):
        decision = opt.recommend("t", context)
        params = decision.params
        assert decision.error is None
        assert space.satisfies(params)
        for name, (low, high) in HARD_BOUNDS.items():
            value = getattr(params, name)
            if value is not None:
                assert low <= value <= high
        if params.temperature is not None and base.temperature is not None:
            assert abs(params.temperature - base.temperature) <= radius + 1e-9
        assert abs((params.max_tokens or 0) - (base.max_tokens or 0)) <= 200
        if params.model == "o3-mini":
            assert params.temperature is None and params.top_p is None
            assert "max_completion_tokens" in params.to_request()
        if params.model == "fixed-temp":
            assert params.temperature == 1.0
        k = len(space.feasible_arms)
        floor = opt.config("t").effective_exploration / k
        assert floor - 1e-15 <= decision.propensity <= 1.0
        assert 0.0 <= decision.confidence <= 1.0
        opt.record_outcome(decision.request_id, Outcome(reward=rewards[i % len(rewards)]))


@settings(max_examples=40, deadline=None)
@given(config=task_configs(), context=contexts, seed=st.integers(0, 2**63 - 1))
def test_probabilities_sum_to_one_and_respect_the_floor(
    config: tuple[str, float, float], context: dict[str, object], seed: int
) -> None:
    policy_name, radius, exploration = config
    opt = make_optimizer(policy_name, radius, exploration)
    cfg = opt.config("t")
    policy = opt.policy("t")
    _, x, _ = cfg.featurizer.featurize(context)
    arms = cfg.space.feasible_arms
    rng = np.random.Generator(np.random.SFC64(seed))
    probs = policy.probabilities(x, arms, rng)
    mixed = (1 - cfg.effective_exploration) * probs + cfg.effective_exploration / len(arms)
    assert math.isclose(float(probs.sum()), 1.0, abs_tol=1e-12)
    assert math.isclose(float(mixed.sum()), 1.0, abs_tol=1e-12)
    assert float(mixed.min()) >= cfg.effective_exploration / len(arms) - 1e-15


def test_same_seed_context_and_revision_give_the_same_arm_10000_of_10000() -> None:
    for policy in sorted(POLICIES):
        opt = make_optimizer(policy, 0.2, 0.1)
        # Learn a little first so the state is not trivial, then freeze the revision.
        for i in range(30):
            d = opt.recommend("t", {"risk_tier": "high", "prompt_tokens": i})
            opt.record_outcome(d.request_id, Outcome(reward=(i % 7) / 7))
        revision = opt.policy("t").revision
        context = {"risk_tier": "low", "prompt_tokens": 4096, "has_external_deps": True}
        trials = 10_000
        first = opt.recommend("t", context, request_id="probe-0", seed=2024)
        for i in range(1, trials):
            again = opt.recommend("t", context, request_id=f"probe-{i}", seed=2024)
            assert (again.arm, again.propensity) == (first.arm, first.propensity), policy
        assert opt.policy("t").revision == revision
