"""Parameter spaces: grids, model rules (table-driven), trust region, bounds."""

from __future__ import annotations

import pytest

from paramloop.core.space import ModelRule, ParameterSpace, TrustRegion
from paramloop.errors import ConfigError
from paramloop.types import Params

REASONER = ModelRule(
    "o3-mini",
    rejects=frozenset({"temperature", "top_p"}),
    max_tokens_field="max_completion_tokens",
)
TEMP_ONE = ModelRule("fixed-temp", fixed={"temperature": 1.0})

BASE = Params("gpt-small", temperature=0.7, max_tokens=512)


def space(**kwargs: object) -> ParameterSpace:
    grids = {
        "model": ["gpt-small", "o3-mini", "fixed-temp"],
        "temperature": [0.3, 0.5, 0.7, 0.9, 1.1],
        "max_tokens": [256, 512, 768],
    }
    return ParameterSpace(baseline=BASE, grids=grids, model_rules=[REASONER, TEMP_ONE], **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model", "expected_temperatures", "field"),
    [
        ("gpt-small", {0.3, 0.5, 0.7, 0.9, 1.1}, "max_tokens"),
        ("o3-mini", {None}, "max_completion_tokens"),
        ("fixed-temp", {1.0}, "max_tokens"),
    ],
)
def test_model_rules_shape_the_arms(
    model: str, expected_temperatures: set[float | None], field: str
) -> None:
    arms = [arm for arm in space(trust_region=TrustRegion(radius={})).arms if arm.model == model]
    assert {arm.temperature for arm in arms} == expected_temperatures
    assert {arm.max_tokens_field for arm in arms} == {field}
    assert (
        len(arms) == len(expected_temperatures) * 3
    )  # rejected/fixed values collapse, no duplicates


def test_reasoning_model_request_uses_max_completion_tokens() -> None:
    sp = space(trust_region=TrustRegion(radius={}))
    arm = next(a for a in sp.arms if a.model == "o3-mini" and a.max_tokens == 768)
    assert arm.to_request() == {"model": "o3-mini", "max_completion_tokens": 768}


def test_trust_region_defaults_and_custom_radius() -> None:
    sp = space()
    feasible = [sp.arms[i] for i in sp.feasible_arms]
    for arm in feasible:
        if arm.temperature is not None:
            assert abs(arm.temperature - 0.7) <= 0.2 + 1e-9
        assert abs((arm.max_tokens or 0) - 512) <= 200
    assert sp.baseline_arm in sp.feasible_arms
    wide = space(trust_region=TrustRegion(radius={"temperature": 0.4, "max_tokens": 256}))
    assert len(wide.feasible_arms) > len(sp.feasible_arms)


def test_trust_region_can_restrict_models() -> None:
    sp = space(trust_region=TrustRegion(radius={}, allowed={"model": ("gpt-small",)}))
    assert {sp.arms[i].model for i in sp.feasible_arms} == {"gpt-small"}


@pytest.mark.parametrize(
    ("grids", "message"),
    [
        (
            {"temperature": [0.5, 2.5]},
            r"space\.temperature\[1\]: temperature must be within \[0, 2\]",
        ),
        ({"top_p": [1.2]}, r"space\.top_p\[0\]: top_p must be within \[0, 1\]"),
        ({"frequency_penalty": [-3]}, r"frequency_penalty must be within \[-2, 2\]"),
        ({"max_tokens": [0]}, r"space\.max_tokens\[0\]: max_tokens must be within"),
        ({"max_tokens": [12.5]}, r"space\.max_tokens\[0\]: must be an integer"),
        ({"temperature": [float("nan")]}, r"temperature must be within"),
        ({"temperature": []}, r"space\.temperature: must be a non-empty list"),
        ({"temperature": [0.5, 0.5]}, r"values must be distinct"),
        ({"warmth": [1]}, r"space\.warmth: unknown dimension"),
        ({"model": [3]}, r"space\.model\[0\]: must be a string"),
    ],
)
def test_bad_grids_are_refused_with_the_field(grids: dict[str, list[object]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ParameterSpace(baseline=BASE, grids=grids)  # type: ignore[arg-type]


def test_baseline_must_be_in_bounds_and_an_arm() -> None:
    with pytest.raises(ConfigError, match=r"baseline\.temperature: must be within \[0, 2\]"):
        ParameterSpace(baseline=Params("m", temperature=3.0))
    with pytest.raises(
        ConfigError, match=r"baseline\.model: 'm' is not in the grid space\.model = \['other'\]"
    ):
        ParameterSpace(baseline=Params("m", temperature=0.7), grids={"model": ["other"]})
    with pytest.raises(ConfigError, match=r"baseline\.prompt_variant: None is not in the grid"):
        ParameterSpace(baseline=Params("m"), grids={"prompt_variant": ["concise", "detailed"]})


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (lambda: ModelRule("x", rejects=frozenset({"colour"})), r"models\.x\.rejects"),
        (lambda: ModelRule("x", fixed={"temperature": 5.0}), r"models\.x\.fixed\.temperature"),
        (lambda: ModelRule("x", fixed={"max_tokens": 5.0}), "cannot be fixed"),
        (lambda: ModelRule("x", max_tokens_field="tokens"), "max_tokens_field"),
        (
            lambda: ModelRule("x", rejects=frozenset({"temperature"}), fixed={"temperature": 1.0}),
            "both",
        ),
    ],
)
def test_bad_model_rules(rule: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        rule()  # type: ignore[operator]


def test_trust_region_validation() -> None:
    with pytest.raises(ConfigError, match=r"trust_region\.temperature: radius must be"):
        TrustRegion(radius={"temperature": -0.1})
    with pytest.raises(ConfigError, match=r"trust_region\.heat: unknown dimension"):
        TrustRegion(radius={"heat": 0.1})


def test_spaces_up_to_a_thousand_arms_and_no_more() -> None:
    grids: dict[str, list[float | int | str | None]] = {
        "temperature": [round(0.1 * i, 1) for i in range(10)],
        "max_tokens": [100 * (i + 1) for i in range(10)],
        "top_p": [round(0.1 * (i + 1), 1) for i in range(10)],
    }
    base = Params("m", temperature=0.5, max_tokens=500, top_p=0.5, presence_penalty=0.0)
    sp = ParameterSpace(baseline=base, grids=grids)
    assert sp.n_arms == 1_000
    with pytest.raises(ConfigError, match="more than 1000 arms"):
        ParameterSpace(baseline=base, grids={**grids, "presence_penalty": [0.0, 0.5]})


def test_arm_features_generalize_across_neighbours() -> None:
    sp = space(trust_region=TrustRegion(radius={}))
    assert sp.features.shape[0] == sp.n_arms
    assert sp.feature_names[0] == "bias"
    assert sp.features[:, 0].tolist() == [1.0] * sp.n_arms
    assert sp.n_interacting == 1 + 2 + 2  # bias, temperature, max_tokens, two model one-hots
    # Measured from the baseline in half-ranges, so within [-2, 2]; the baseline arm is [1, 0, …, 0].
    assert abs(sp.features[:, 1:3]).max() <= 2.0 + 1e-12
    assert sp.features[sp.baseline_arm].tolist() == [1.0] + [0.0] * (sp.features.shape[1] - 1)


def test_satisfies_checks_rules_bounds_and_trust_region() -> None:
    sp = space()
    assert sp.satisfies(sp.baseline)
    assert not sp.satisfies(
        Params("o3-mini", temperature=0.7, max_tokens=512, max_tokens_field="max_completion_tokens")
    )
    assert not sp.satisfies(
        Params("gpt-small", temperature=1.1, max_tokens=512)
    )  # outside trust region
