"""Featurizer, reward function and TOML configuration: values, ranges and errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from paramloop.core.features import (
    CategoricalFeature,
    Featurizer,
    NumericFeature,
    fingerprint,
    published_features,
)
from paramloop.core.reward import RewardFunction
from paramloop.engine import load_config, parse_config
from paramloop.errors import ConfigError, FeatureError
from paramloop.types import Outcome

FEATURIZER = Featurizer(published_features(("gpt-small", "gpt-large")))

PUBLISHED = [
    "risk_tier",
    "title_length",
    "description_length",
    "acceptance_criteria_count",
    "scope_files_count",
    "max_files",
    "max_loc",
    "has_external_deps",
    "complexity_indicators",
    "model_name",
    "prompt_tokens",
    "prior_failures",
]


def test_published_fields_are_all_declared() -> None:
    assert [f.name for f in FEATURIZER.features] == PUBLISHED
    assert FEATURIZER.dim == 16 == len(FEATURIZER.columns)


def test_encoding_is_deterministic_and_keeps_the_natural_scale() -> None:
    context, x, fp = FEATURIZER.featurize(
        {
            "risk_tier": "low",
            "prompt_tokens": 10**9,
            "complexity_indicators": ["a", "b"],
            "model_name": "other",
        }
    )
    assert x[0] == 1.0 and x.min() >= 0.0
    # log1p, no cap and no squeeze: the policies standardize scaled columns themselves.
    assert x[FEATURIZER.columns.index("prompt_tokens")] == pytest.approx(math.log1p(10**9))
    assert FEATURIZER.columns.index("prompt_tokens") in FEATURIZER.scaled
    assert context["complexity_indicators"] == ("a", "b")
    assert (
        x[FEATURIZER.columns.index("model_name=gpt-small")] == 0.0
    )  # unknown model encodes as zeros
    assert fp == fingerprint(context)


_RAW_CONTEXTS = st.fixed_dictionaries(
    {},
    optional={
        "risk_tier": st.sampled_from(["low", "medium", "high"]),
        "title_length": st.integers(0, 10**6),
        "prompt_tokens": st.integers(0, 10**9),
        "description_length": st.integers(0, 10**5),
        "complexity_indicators": st.lists(st.text(max_size=3), max_size=4) | st.integers(0, 10**4),
        "has_external_deps": st.booleans(),
        "model_name": st.sampled_from(["gpt-small", "gpt-large", "other"]),
        "prior_failures": st.integers(0, 50),
    },
)


@given(st.lists(_RAW_CONTEXTS, min_size=1, max_size=20))
def test_batch_transform_matches_row_by_row(raws: list[dict[str, object]]) -> None:
    contexts = [FEATURIZER.featurize(raw)[0] for raw in raws]
    rows = np.array([FEATURIZER.transform(c) for c in contexts])
    # JSON gives lists where the log holds tuples: both encode alike.
    as_read = [{k: list(v) if isinstance(v, tuple) else v for k, v in c.items()} for c in contexts]
    # numpy's log1p may differ from the C library's in the last bit.
    np.testing.assert_allclose(FEATURIZER.transform_many(as_read), rows, rtol=1e-14, atol=0)
    np.testing.assert_allclose(FEATURIZER.transform_many(contexts), rows, rtol=1e-14, atol=0)


def test_batch_transform_names_a_feature_the_log_lacks() -> None:
    context = FEATURIZER.featurize({})[0]
    del context["prior_failures"]
    with pytest.raises(FeatureError, match=r"'prior_failures'.*1 of 2 contexts"):
        FEATURIZER.transform_many([FEATURIZER.featurize({})[0], context])


@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_fingerprint_is_stable_and_distinguishes(a: int, b: int) -> None:
    fa = FEATURIZER.featurize({"prompt_tokens": a})[2]
    assert fa == FEATURIZER.featurize({"prompt_tokens": a})[2]
    assert 0 <= fa < 2**64
    if a != b:
        assert fa != FEATURIZER.featurize({"prompt_tokens": b})[2]


def test_feature_errors_name_the_feature() -> None:
    with pytest.raises(FeatureError, match=r"'max_loc': must lie in \[0, inf\], got -1"):
        FEATURIZER.validate({"max_loc": -1})
    with pytest.raises(FeatureError, match="'max_loc': must be a whole number"):
        FEATURIZER.validate({"max_loc": 1.5})
    with pytest.raises(
        FeatureError, match="'complexity_indicators': a list must contain only strings"
    ):
        FEATURIZER.validate({"complexity_indicators": [1]})
    with pytest.raises(FeatureError, match="must be a mapping"):
        FEATURIZER.validate(["risk_tier"])  # type: ignore[arg-type]


def test_user_declared_features_and_config_errors() -> None:
    f = Featurizer(
        [
            NumericFeature("budget", lower=0, upper=100),
            CategoricalFeature("lang", ("en", "de")),
        ]
    )
    assert f.dim == 4
    np.testing.assert_allclose(f.featurize({"budget": 50, "lang": "de"})[1], [1.0, 50.0, 0.0, 1.0])
    with pytest.raises(ConfigError, match="duplicate feature names: x"):
        Featurizer([NumericFeature("x"), NumericFeature("x", upper=2)])
    with pytest.raises(ConfigError, match=r"features\.x\.upper"):
        NumericFeature("x", lower=1, upper=0)
    with pytest.raises(ConfigError, match=r"features\.x\.default"):
        NumericFeature("x", lower=1)
    with pytest.raises(ConfigError, match=r"features\.c\.levels"):
        CategoricalFeature("c")


def test_reward_weights_scales_and_penalties() -> None:
    rf = RewardFunction()
    perfect = Outcome(quality=1.0, latency_ms=0, prompt_tokens=0, completion_tokens=0, cost=0)
    assert rf(perfect) == pytest.approx(1.0)
    worst = Outcome(quality=0.0, latency_ms=1e9, completion_tokens=10**9, cost=1e9, error=True)
    assert rf(worst) == 0.0
    # An outcome that says nothing earns only the "no error" term (error defaults to False).
    assert rf(Outcome()) == pytest.approx(0.1)
    assert rf(Outcome(feedback=1.0)) == pytest.approx(
        0.7
    )  # feedback stands in for a missing quality
    mid = Outcome(quality=0.5, latency_ms=5_000, completion_tokens=2_000, cost=0.005)
    expected = (0.6 * 0.5 + 0.15 * 0.5 + 0.05 * 0.5 + 0.1 * 0.5 + 0.1) / 1.0
    assert rf(mid) == pytest.approx(expected)
    constrained = RewardFunction(max_tokens=1_000, penalty=0.5)
    assert constrained(mid) == pytest.approx(max(expected - 0.5, 0.0))
    assert constrained.violations(mid) == 1


@given(
    st.floats(0, 1),
    st.floats(0, 1e6),
    st.integers(0, 10**6),
    st.floats(0, 100),
    st.booleans(),
)
def test_reward_always_in_documented_range(
    q: float, latency: float, tokens: int, cost: float, error: bool
) -> None:
    r = RewardFunction(max_latency_ms=1000)(
        Outcome(quality=q, latency_ms=latency, completion_tokens=tokens, cost=cost, error=error)
    )
    assert 0.0 <= r <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quality": -1.0}, r"reward\.quality: weight must be >= 0"),
        ({"quality": 0, "latency": 0, "tokens": 0, "cost": 0, "error": 0}, "at least one weight"),
        ({"latency_scale_ms": 0}, r"reward\.latency_scale_ms: must be > 0"),
        ({"max_cost": float("nan")}, r"reward\.max_cost: must be a finite number"),
        ({"penalty": 2.0}, r"reward\.penalty: must be in \[0, 1\]"),
    ],
)
def test_reward_config_errors(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RewardFunction(**kwargs)  # type: ignore[arg-type]


TOML = """
[models."o3-mini"]
rejects = ["temperature", "top_p"]
max_tokens_field = "max_completion_tokens"

[defaults]
exploration = 0.1

[tasks.summarize]
preset = "published"
policy = "lints"
default_reward = 0.0
reward_wait_s = 600
baseline = { model = "gpt-small", temperature = 0.3, max_tokens = 256 }
space = { model = ["gpt-small", "o3-mini"], temperature = [0.1, 0.3, 0.5], max_tokens = [128, 256] }
trust_region = { temperature = 0.2, max_tokens = 200 }
reward = { quality = 0.7, latency = 0.1, cost = 0.2, max_latency_ms = 20000 }
policy_params = { draws = 128 }
features = [{ name = "lang", kind = "categorical", levels = ["en", "de"] }]
"""


def test_toml_config_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "paramloop.toml"
    path.write_text(TOML)
    tasks = load_config(path)
    cfg = tasks["summarize"]
    assert cfg.policy == "lints" and cfg.exploration == 0.1 and cfg.default_reward == 0.0
    assert cfg.reward.max_latency_ms == 20000 and cfg.new_policy().hyperparameters()["draws"] == 128
    reasoner = [a for a in cfg.space.arms if a.model == "o3-mini"]
    assert reasoner and all(a.temperature is None for a in reasoner)
    assert cfg.featurizer.dim == 16 + 2 - 0  # published (with 2 model levels) + lang one-hot


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (("exploration = 0.1", "exploraton = 0.1"), r"defaults\.exploraton: unknown key"),
        (
            ('policy = "lints"', 'policy = "magic"'),
            r"tasks\.summarize\.policy: unknown policy 'magic'",
        ),
        (
            ("temperature = [0.1, 0.3, 0.5]", "temperature = [0.1, 3.0]"),
            r"tasks\.summarize\.space\.temperature\[1\]",
        ),
        (
            ("default_reward = 0.0", "default_reward = 2.0"),
            r"tasks\.summarize\.default_reward: must be in \[0, 1\]",
        ),
        (("quality = 0.7", "quality = -0.7"), r"tasks\.summarize\.reward\.quality"),
        (("draws = 128", "drawz = 128"), r"invalid hyperparameters"),
        (('kind = "categorical"', 'kind = "colour"'), r"features\.lang\.kind"),
        (("temperature = 0.2,", "temperature = -0.2,"), r"trust_region\.temperature"),
    ],
)
def test_toml_errors_name_the_path(patch: tuple[str, str], message: str) -> None:
    import tomllib

    text = TOML.replace(*patch)
    assert text != TOML
    with pytest.raises(ConfigError, match=message):
        parse_config(tomllib.loads(text))


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[tasks\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)


def test_the_shipped_example_configuration_loads() -> None:
    tasks = load_config(Path(__file__).parents[1] / "examples" / "paramloop.toml")
    assert set(tasks) == {"summarization", "code_review"}
    review = tasks["code_review"]
    columns = review.featurizer.columns
    assert review.policy == "lints" and columns[-20:-16] == (
        "repository_tier=internal",
        "repository_tier=public",
        "repository_tier=(other)",
        "diff_lines",
    )
    assert columns[-16:] == tuple(f"language#{i}" for i in range(16))
    assert columns.index("diff_lines") in review.featurizer.scaled
    reasoner = [a for a in review.space.arms if a.model == "reasoner"]
    assert reasoner and all(
        a.temperature is None and a.max_tokens_field == "max_completion_tokens" for a in reasoner
    )
    assert tasks["summarization"].default_reward == 0.0
