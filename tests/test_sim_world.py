"""The simulator's hidden world: exact expectations, qualitative shape, determinism, refusals."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paramloop.core.reward import RewardFunction
from paramloop.errors import ConfigError, FeatureError, UnknownTaskTypeError
from paramloop.sim import DEFAULT_MODELS, DEFAULT_TASKS, World
from paramloop.types import FeatureValue, Params

WORLD = World()
RISK = ("low", "medium", "high")
REWARD = RewardFunction()
# Five standard errors: a false alarm on a correct world has probability ~6e-7 per check.
Z = 5.0

PUBLISHED = {
    "risk_tier": str,
    "title_length": int,
    "description_length": int,
    "acceptance_criteria_count": int,
    "scope_files_count": int,
    "max_files": int,
    "max_loc": int,
    "has_external_deps": bool,
    "complexity_indicators": int,
    "model_name": str,
    "prompt_tokens": int,
    "prior_failures": int,
}


def context(**changes: FeatureValue) -> dict[str, FeatureValue]:
    """A typical request; tests change only the features they are about."""
    base: dict[str, FeatureValue] = {
        "risk_tier": "medium",
        "title_length": 40,
        "description_length": 500,
        "acceptance_criteria_count": 2,
        "scope_files_count": 4,
        "max_files": 6,
        "max_loc": 300,
        "has_external_deps": False,
        "complexity_indicators": 2,
        "model_name": "gpt-large",
        "prompt_tokens": 2_000,
        "prior_failures": 0,
    }
    base.update(changes)
    return base


def grid_arms(models: tuple[str, ...]) -> list[Params]:
    arms = []
    for model in models:
        temperatures: list[float | None] = (
            [None] if model == "reasoner" else [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
        )
        for temperature in temperatures:
            for max_tokens in (16, 64, 128, 256, 512, 1024, 2048, 4096):
                for variant in (None, "concise", "detailed"):
                    arms.append(
                        Params(
                            model,
                            temperature=temperature,
                            max_tokens=max_tokens,
                            prompt_variant=variant,
                        )
                    )
    return arms


def best_reward(task: str, ctx: dict[str, FeatureValue], models: tuple[str, ...]) -> float:
    return max(WORLD.expected_reward(task, ctx, arm, REWARD) for arm in grid_arms(models))


def best_temperature(task: str, ctx: dict[str, FeatureValue]) -> float:
    grid = [round(0.05 * i, 2) for i in range(41)]
    values = [
        WORLD.expected_reward(
            task, ctx, Params("gpt-large", temperature=t, top_p=1.0, max_tokens=4096), REWARD
        )
        for t in grid
    ]
    return grid[int(np.argmax(values))]


# --- exact expectations -------------------------------------------------------------

# A reward whose latency constraint is always broken with a penalty below 1: the
# clip at 0 binds for low quality draws only, the one case where E[r] is not linear.
CLIPPING = RewardFunction(max_latency_ms=100.0, penalty=0.6, version="clipping@test")

EXPECTATION_CASES = [
    ("code_review", context(risk_tier="high"), Params("gpt-large", 0.2, 0.9, 1024), REWARD),
    ("creative_writing", context(), Params("gpt-small", 1.0, 0.95, 512, 0.3, 0.5), REWARD),
    ("summarization", context(prompt_tokens=9_000), Params("gpt-small", None, None, 300), REWARD),
    (
        "extraction",
        context(acceptance_criteria_count=9),
        Params("gpt-small", 0.0, None, 90),
        REWARD,
    ),
    (
        "qa",
        context(complexity_indicators=9, prior_failures=3),
        Params("reasoner", None, None, 1500, prompt_variant="detailed"),
        REWARD,
    ),
    # A budget far below the needed length: failures are frequent, the error branch matters.
    (
        "extraction",
        context(acceptance_criteria_count=12),
        Params("gpt-small", 0.0, None, 40),
        REWARD,
    ),
    ("qa", context(), Params("gpt-large", 0.7, 1.0, 512), CLIPPING),
]


@pytest.mark.parametrize(("task", "ctx", "params", "reward"), EXPECTATION_CASES)
def test_mean_reward_matches_expected_reward(
    task: str, ctx: dict[str, FeatureValue], params: Params, reward: RewardFunction
) -> None:
    rng = np.random.default_rng(20_240_601)
    n = 20_000
    outcomes = [WORLD.outcome(task, ctx, params, rng) for _ in range(n)]
    rewards = np.array([reward(outcome) for outcome in outcomes])
    expected = WORLD.expected_reward(task, ctx, params, reward)
    tolerance = Z * rewards.std(ddof=1) / math.sqrt(n) + 1e-12
    assert abs(rewards.mean() - expected) <= tolerance

    errors = np.array([outcome.error for outcome in outcomes])
    p = WORLD.failure_probability(task, ctx, params)
    assert abs(errors.mean() - p) <= Z * math.sqrt(p * (1 - p) / n) + 1e-12
    qualities = np.array([o.quality for o in outcomes if not o.error], dtype=float)
    assert abs(qualities.mean() - WORLD.expected_quality(task, ctx, params)) <= (
        Z * qualities.std(ddof=1) / math.sqrt(qualities.size)
    )


def test_clipping_case_really_clips() -> None:
    # Guards the test above: the clipping case must put mass on both sides of the clip.
    task, ctx, params, reward = EXPECTATION_CASES[-1]
    rng = np.random.default_rng(3)
    outcomes = [WORLD.outcome(task, ctx, params, rng) for _ in range(2_000)]
    rewards = [reward(o) for o in outcomes if not o.error]
    assert min(rewards) == 0.0
    assert max(rewards) > 0.0


def test_truncation_case_really_fails_often() -> None:
    task, ctx, params, _ = EXPECTATION_CASES[-2]
    assert WORLD.failure_probability(task, ctx, params) > 0.3


# --- qualitative shape --------------------------------------------------------------


def test_code_wants_colder_sampling_than_creative_writing() -> None:
    ctx = context()
    code = [best_temperature(task, ctx) for task in ("code_review", "code_generation")]
    creative = best_temperature("creative_writing", context(risk_tier="low"))
    assert all(0.1 <= t <= 0.3 for t in code)
    assert 0.9 <= creative <= 1.1
    assert max(code) < creative


def test_creative_writing_is_hurt_by_cold_and_by_hot_sampling() -> None:
    ctx = context(risk_tier="low")

    def quality(t: float) -> float:
        return WORLD.expected_quality("creative_writing", ctx, Params("gpt-large", t, 1.0, 2048))

    assert quality(1.0) > quality(0.2) + 0.1
    assert quality(1.0) > quality(1.8) + 0.1


@pytest.mark.parametrize("task", ["code_review", "code_generation"])
def test_higher_risk_lowers_the_best_code_temperature(task: str) -> None:
    low, medium, high = (best_temperature(task, context(risk_tier=t)) for t in RISK)
    assert low >= medium >= high
    assert low > high


@pytest.mark.parametrize("task", ["code_review", "code_generation"])
def test_higher_risk_penalizes_the_small_model_more(task: str) -> None:
    def gap(tier: str) -> float:
        ctx = context(risk_tier=tier)
        large = WORLD.expected_quality(task, ctx, Params("gpt-large", 0.2, 1.0, 4096))
        small = WORLD.expected_quality(task, ctx, Params("gpt-small", 0.2, 1.0, 4096))
        return large - small

    assert gap("low") < gap("medium") < gap("high")


def test_code_generation_is_truncated_below_the_needed_tokens() -> None:
    def quality(loc: int, max_tokens: int) -> float:
        ctx = context(max_loc=loc)
        return WORLD.expected_quality(
            "code_generation", ctx, Params("gpt-large", 0.2, 1.0, max_tokens)
        )

    assert quality(100, 512) > quality(100, 256)
    # A larger change needs more tokens: the same budget truncates it harder.
    assert quality(100, 512) > quality(600, 512)


@pytest.mark.parametrize("prompt_tokens", [1_500, 6_000, 20_000])
def test_summarization_prefers_the_fewest_tokens_that_fit(prompt_tokens: int) -> None:
    ctx = context(prompt_tokens=prompt_tokens)
    rng = np.random.default_rng(0)
    # Without a budget the model writes exactly what the answer needs.
    needed = WORLD.outcome("summarization", ctx, Params("gpt-small", 0.3), rng).completion_tokens
    assert needed is not None
    rewards = [
        WORLD.expected_reward(
            "summarization", ctx, Params("gpt-small", 0.3, max_tokens=round(needed * f)), REWARD
        )
        for f in (0.5, 1.0, 1.5, 2.0, 4.0)
    ]
    assert rewards[0] < rewards[1]
    assert all(a > b for a, b in itertools.pairwise(rewards[1:]))
    # The summary of a longer document needs more tokens.
    longer = context(prompt_tokens=2 * prompt_tokens)
    longer_needed = WORLD.outcome(
        "summarization", longer, Params("gpt-small", 0.3), rng
    ).completion_tokens
    assert longer_needed is not None
    assert longer_needed > needed


SMALL = ("gpt-small",)
ALL = tuple(DEFAULT_MODELS)


@pytest.mark.parametrize("task", ["classification", "summarization", "extraction"])
def test_small_model_is_good_enough_for_easy_tasks(task: str) -> None:
    rng = np.random.default_rng(11)
    for _ in range(3):
        ctx = WORLD.sample_context(task, rng)
        assert best_reward(task, ctx, SMALL) >= 0.98 * best_reward(task, ctx, ALL)


def test_hard_questions_are_worth_a_stronger_model() -> None:
    hard = context(risk_tier="high", complexity_indicators=10, prior_failures=4)
    strong = best_reward("qa", hard, ("gpt-large", "reasoner"))
    assert best_reward("qa", hard, SMALL) < strong - 0.05
    easy = context(risk_tier="low", complexity_indicators=0, prior_failures=0)
    assert best_reward("qa", easy, SMALL) >= 0.98 * best_reward("qa", easy, ALL)


def test_latency_grows_with_tokens_and_with_the_large_model() -> None:
    rng = np.random.default_rng(5)
    ctx = context(max_loc=800)

    def latency(model: str, max_tokens: int) -> float:
        outcome = WORLD.outcome("code_generation", ctx, Params(model, 0.2, 1.0, max_tokens), rng)
        assert outcome.latency_ms is not None
        return outcome.latency_ms

    for model in ("gpt-small", "gpt-large"):
        values = [latency(model, m) for m in (64, 256, 1024, 4096)]
        assert all(a < b for a, b in itertools.pairwise(values))
    for max_tokens in (64, 256, 1024, 4096):
        assert latency("gpt-large", max_tokens) > latency("gpt-small", max_tokens)


def test_reasoning_model_ignores_sampling_and_spends_hidden_tokens() -> None:
    ctx = context(complexity_indicators=6)
    unset = Params("reasoner", max_tokens=4096, max_tokens_field="max_completion_tokens")
    hot = dataclasses.replace(unset, temperature=1.7, top_p=0.5, frequency_penalty=1.5)
    assert WORLD.expected_quality("qa", ctx, unset) == WORLD.expected_quality("qa", ctx, hot)
    rng = np.random.default_rng(1)
    reasoner = WORLD.outcome("qa", ctx, unset, rng).completion_tokens
    large = WORLD.outcome("qa", ctx, Params("gpt-large", 0.5, max_tokens=4096), rng)
    assert reasoner is not None
    assert large.completion_tokens is not None
    assert reasoner > large.completion_tokens


def test_unset_temperature_uses_the_model_default() -> None:
    ctx = context()
    default = DEFAULT_MODELS["gpt-large"].default_temperature
    unset = WORLD.expected_quality("qa", ctx, Params("gpt-large", None, 1.0, 512))
    explicit = WORLD.expected_quality("qa", ctx, Params("gpt-large", default, 1.0, 512))
    assert unset == explicit


# --- contexts and outcomes ----------------------------------------------------------


@pytest.mark.parametrize("task", WORLD.task_types)
def test_sampled_contexts_carry_every_published_feature(task: str) -> None:
    rng = np.random.default_rng(2)
    for _ in range(200):
        ctx = WORLD.sample_context(task, rng)
        assert set(ctx) == set(PUBLISHED)
        for name, kind in PUBLISHED.items():
            assert type(ctx[name]) is kind, name
        assert ctx["risk_tier"] in RISK
        assert ctx["model_name"] in WORLD.models
        counts = [value for value in ctx.values() if isinstance(value, int)]
        assert min(counts) >= 0
        files, scope = ctx["max_files"], ctx["scope_files_count"]
        assert isinstance(files, int)
        assert isinstance(scope, int)
        assert files >= scope


def test_context_distributions_differ_by_task_type() -> None:
    rng = np.random.default_rng(4)

    def median(task: str, feature: str) -> float:
        return float(np.median([WORLD.sample_context(task, rng)[feature] for _ in range(500)]))

    assert median("summarization", "prompt_tokens") > 3 * median("classification", "prompt_tokens")
    assert median("code_generation", "max_loc") > 0 == median("creative_writing", "max_loc")


@settings(max_examples=300, deadline=None, database=None)
@given(
    task=st.sampled_from(WORLD.task_types),
    model=st.sampled_from(WORLD.models),
    temperature=st.one_of(st.none(), st.floats(0.0, 2.0)),
    top_p=st.one_of(st.none(), st.floats(0.01, 1.0)),
    max_tokens=st.one_of(st.none(), st.integers(1, 16_384)),
    penalties=st.tuples(st.floats(-2.0, 2.0), st.floats(-2.0, 2.0)),
    variant=st.sampled_from([None, "concise", "detailed"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_outcomes_are_valid(
    task: str,
    model: str,
    temperature: float | None,
    top_p: float | None,
    max_tokens: int | None,
    penalties: tuple[float, float],
    variant: str | None,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    ctx = WORLD.sample_context(task, rng)
    params = Params(model, temperature, top_p, max_tokens, *penalties, prompt_variant=variant)
    outcome = WORLD.outcome(task, ctx, params, rng)
    assert outcome.error == (outcome.quality is None)
    assert outcome.quality is None or 0.0 <= outcome.quality <= 1.0
    assert outcome.latency_ms is not None
    assert outcome.latency_ms > 0.0
    assert outcome.prompt_tokens is not None
    assert outcome.prompt_tokens >= 0
    assert outcome.completion_tokens is not None
    assert outcome.completion_tokens >= 0
    assert max_tokens is None or outcome.completion_tokens <= max_tokens
    assert outcome.cost is not None
    assert outcome.cost >= 0.0
    assert 0.0 < WORLD.expected_quality(task, ctx, params) < 1.0
    assert 0.0 <= WORLD.failure_probability(task, ctx, params) < 1.0
    assert 0.0 <= WORLD.expected_reward(task, ctx, params, REWARD) <= 1.0


def test_same_seed_same_outcome() -> None:
    for task in WORLD.task_types:
        first, second = np.random.default_rng(99), np.random.default_rng(99)
        ctx = WORLD.sample_context(task, first)
        assert WORLD.sample_context(task, second) == ctx
        params = Params("gpt-large", 0.5, 0.9, 512)
        assert [WORLD.outcome(task, ctx, params, first) for _ in range(20)] == [
            WORLD.outcome(task, ctx, params, second) for _ in range(20)
        ]


def test_describe_gives_one_line_per_task_type() -> None:
    assert len(WORLD.task_types) >= 5
    for task in WORLD.task_types:
        text = WORLD.describe(task)
        assert text
        assert "\n" not in text


# --- refusals -----------------------------------------------------------------------


def test_unknown_task_type_names_the_known_ones() -> None:
    with pytest.raises(UnknownTaskTypeError, match="code_review"):
        WORLD.outcome("poetry", context(), Params("gpt-large"), np.random.default_rng(0))
    with pytest.raises(UnknownTaskTypeError):
        WORLD.sample_context("poetry", np.random.default_rng(0))
    with pytest.raises(UnknownTaskTypeError):
        WORLD.describe("poetry")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (Params("gpt-huge"), "params.model"),
        (Params("gpt-large", temperature=2.5), "params.temperature"),
        (Params("gpt-large", temperature=math.nan), "params.temperature"),
        (Params("gpt-large", top_p=0.0), "params.top_p"),
        (Params("gpt-large", frequency_penalty=-3.0), "params.frequency_penalty"),
        (Params("gpt-large", max_tokens=0), "params.max_tokens"),
        (Params("gpt-large", max_tokens=100_000), "params.max_tokens"),
        (Params("gpt-large", prompt_variant="verbose"), "params.prompt_variant"),
    ],
)
def test_invalid_params_are_refused(params: Params, field: str) -> None:
    with pytest.raises(ConfigError) as raised:
        WORLD.expected_quality("qa", context(), params)
    assert raised.value.field == field


@pytest.mark.parametrize(
    ("change", "feature"),
    [
        ({"risk_tier": "extreme"}, "risk_tier"),
        ({"prompt_tokens": -1}, "prompt_tokens"),
        ({"max_loc": "many"}, "max_loc"),
        ({"has_external_deps": 1}, "has_external_deps"),
    ],
)
def test_malformed_contexts_are_refused(change: dict[str, FeatureValue], feature: str) -> None:
    with pytest.raises(FeatureError) as raised:
        WORLD.expected_quality("qa", context(**change), Params("gpt-large"))
    assert raised.value.feature == feature


def test_missing_feature_is_refused() -> None:
    ctx = context()
    del ctx["prior_failures"]
    with pytest.raises(FeatureError, match="prior_failures"):
        WORLD.outcome("qa", ctx, Params("gpt-large"), np.random.default_rng(0))


def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(ConfigError):
        World(models={})
    with pytest.raises(ConfigError, match="keyed differently"):
        World(models={"big": DEFAULT_MODELS["gpt-large"]})
    only_small = {"gpt-small": DEFAULT_MODELS["gpt-small"]}
    # The built-in tasks draw callers who default to gpt-large.
    with pytest.raises(ConfigError, match=r"default_models\.gpt-large"):
        World(models=only_small)
    with pytest.raises(ConfigError, match="failure_rate"):
        dataclasses.replace(DEFAULT_MODELS["gpt-small"], failure_rate=1.5)
    qa = DEFAULT_TASKS["qa"]
    with pytest.raises(ConfigError, match=r"difficulty_weights\.mood"):
        World(tasks={"qa": dataclasses.replace(qa, difficulty_weights={"mood": 1.0})})


def test_a_custom_world_uses_only_its_own_profiles() -> None:
    small = DEFAULT_MODELS["gpt-small"]
    qa = DEFAULT_TASKS["qa"]
    contexts = dataclasses.replace(qa.contexts, default_models={"gpt-small": 1.0})
    world = World(
        models={"gpt-small": small}, tasks={"qa": dataclasses.replace(qa, contexts=contexts)}
    )
    assert world.task_types == ("qa",)
    assert world.models == ("gpt-small",)
    rng = np.random.default_rng(8)
    ctx = world.sample_context("qa", rng)
    assert ctx["model_name"] == "gpt-small"
    assert world.outcome("qa", ctx, Params("gpt-small", 0.5), rng).latency_ms is not None
    with pytest.raises(ConfigError, match="gpt-large"):
        world.outcome("qa", ctx, Params("gpt-large", 0.5), rng)
