"""Features as users have them, arms that are any choice, rewards in their own units,
the distribution a decision is drawn from, and decisions logged by another system."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paramloop import (
    BoolFeature,
    CategoricalFeature,
    CountFeature,
    ExternalRow,
    Feature,
    Featurizer,
    NumericFeature,
    Optimizer,
    Outcome,
    Params,
    RewardFunction,
    dsjson_rows,
    import_rows,
    obp_rows,
    task,
)
from paramloop.core.policies import POLICIES, ArmDesign, make_policy
from paramloop.engine.evaluate import evaluate
from paramloop.errors import ConfigError, FeatureError, InputError, OutcomeError
from paramloop.store.memory import MemoryDecisionLog

LABELS = ["small", "medium", "large"]


def routing(**options: object) -> Optimizer:
    config = task(
        "route",
        baseline=Params("m", choices={"route": "small"}),
        choices={"route": LABELS},
        features=[
            NumericFeature("length"),
            BoolFeature("vip"),
            CategoricalFeature("lang", unknown="hash"),
        ],
        **options,  # type: ignore[arg-type]
    )
    return Optimizer([config])


# -- features -------------------------------------------------------------------------------


def test_numbers_keep_their_scale_and_a_range_is_a_check_not_a_squeeze() -> None:
    f = Featurizer([NumericFeature("z"), NumericFeature("tokens", lower=0, upper=1e6, log=True)])
    _, x, _ = f.featurize({"z": -3.5, "tokens": 999})
    np.testing.assert_allclose(x, [1.0, -3.5, math.log1p(999)])
    assert f.scaled == (1, 2)
    with pytest.raises(FeatureError, match=r"'tokens': must lie in \[0, 1e\+06\], got 2000000"):
        f.featurize({"tokens": 2_000_000})
    with pytest.raises(FeatureError, match="'z': must be finite, got nan"):
        f.featurize({"z": float("nan")})
    with pytest.raises(FeatureError, match="'z': must be finite, got inf"):
        f.featurize({"z": float("inf")})
    with pytest.raises(FeatureError, match="'z': must be a number, got str '3'"):
        f.featurize({"z": "3"})
    with pytest.raises(ConfigError, match=r"features\.n\.lower"):
        NumericFeature("n", lower=-1, log=True)


def test_booleans_take_true_false_or_zero_one() -> None:
    f = Featurizer([BoolFeature("vip"), CountFeature("tags")])
    assert f.featurize({"vip": 1})[0]["vip"] is True
    assert f.featurize({"vip": 0.0})[0]["vip"] is False
    for bad in (2, "yes", 0.5):
        with pytest.raises(FeatureError, match="'vip': must be true/false or 0/1"):
            f.featurize({"vip": bad})


@given(st.text(max_size=30))
def test_unseen_categories_never_raise_in_an_open_vocabulary(value: str) -> None:
    for feature in (
        CategoricalFeature("c", unknown="hash", buckets=8),
        CategoricalFeature("c", ("a", "b"), unknown="other"),
        CategoricalFeature("c", ("a", "b"), unknown="ignore"),
    ):
        f = Featurizer([feature])
        _, x, _ = f.featurize({"c": value})
        assert x.shape == (f.dim,)
        assert x[1:].sum() <= 1.0
    other = Featurizer([CategoricalFeature("c", ("a", "b"), unknown="other")])
    assert other.featurize({"c": value})[1].tolist() == (
        [1.0, 1.0, 0.0, 0.0]
        if value == "a"
        else [1.0, 0.0, 1.0, 0.0]
        if value == "b"
        else [1.0, 0.0, 0.0, 1.0]
    )
    with pytest.raises(FeatureError, match="must be one of a, b"):
        Featurizer([CategoricalFeature("c", ("a", "b"))]).featurize({"c": value + "!"})


scalars = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.integers(-(10**6), 10**6),
    st.booleans(),
    st.text(max_size=10),
    st.lists(st.text(max_size=5), max_size=3),
)


@given(st.dictionaries(st.text(min_size=1, max_size=12), scalars, max_size=8))
def test_undeclared_keys_are_hashed_into_a_fixed_width_deterministically(
    context: dict[str, object],
) -> None:
    f = Featurizer([NumericFeature("declared")], undeclared="hash", hash_buckets=16)
    context.pop("declared", None)
    valid, x, fp = f.featurize(context)
    assert x.shape == (2 + 16,)
    again = f.featurize(dict(reversed(list(context.items()))))
    assert again[2] == fp
    np.testing.assert_array_equal(again[1], x)
    np.testing.assert_array_equal(f.transform_many([valid])[0], x)


def test_undeclared_keys_are_refused_by_default_and_bad_values_named() -> None:
    f = Featurizer([NumericFeature("declared")])
    with pytest.raises(FeatureError, match=r"'other': is not declared.*undeclared = \"hash\""):
        f.featurize({"other": 1})
    open_ = Featurizer([], undeclared="hash")
    with pytest.raises(FeatureError, match="'x': must be finite"):
        open_.featurize({"x": float("nan")})
    with pytest.raises(FeatureError, match="'x': an undeclared feature must be"):
        open_.featurize({"x": {"nested": 1}})


def test_the_featurizer_digest_names_the_encoding() -> None:
    a = Featurizer([NumericFeature("x")])
    assert a.digest == Featurizer([NumericFeature("x")]).digest
    assert a.digest != Featurizer([NumericFeature("x", log=True)]).digest
    assert a.digest != Featurizer([NumericFeature("x")], undeclared="hash").digest


def label_design(context_dim: int) -> ArmDesign:
    k = 4
    features = np.column_stack([np.ones(k), np.eye(k)[:, 1:]])
    return ArmDesign(
        features=features,
        n_interacting=k,
        context_dim=context_dim,
        baseline=0,
        scaled=tuple(range(1, context_dim)),
    )


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(1e-3, 1e3) | st.floats(-1e3, -1e-3), st.floats(-1e3, 1e3)),
        min_size=3,
        max_size=3,
    ),
    st.sampled_from(["linucb", "squarecb", "lints"]),
)
def test_standardization_is_invariant_to_affine_rescaling(
    maps: list[tuple[float, float]], name: str
) -> None:
    """A policy fed a·x + b (per column) decides as one fed x: the ridge acts in standardized units.

    Tolerance: the two runs differ only by rounding in the standardized values
    (relative 1e-12 per operation, a few hundred operations), far below 1e-6.
    """
    rng = np.random.default_rng(0)
    X = np.column_stack([np.ones(300), rng.normal(size=(300, 3)) * [1.0, 10.0, 0.1]])
    a = np.array([1.0] + [m[0] for m in maps])
    b = np.array([0.0] + [m[1] for m in maps])
    plain = make_policy(name, label_design(4))
    moved = make_policy(name, label_design(4))
    arms = np.arange(4)
    for i, x in enumerate(X[:256]):  # 256: a refresh point, the statistics are adopted
        arm = i % 4
        reward = float(x[1] > 0) if arm == 1 else 0.3
        plain.update(x, arm, reward)
        moved.update(a * x + b, arm, reward)
    for x in X[256:]:
        m1, w1 = plain.estimate(x, arms)
        m2, w2 = moved.estimate(a * x + b, arms)
        np.testing.assert_allclose(m1, m2, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(w1, w2, rtol=1e-6, atol=1e-9)


# -- arms and rewards -------------------------------------------------------------------------


def test_a_generic_choice_is_an_arm_dimension_with_its_own_arm_features() -> None:
    opt = routing()
    space = opt.config("route").space
    assert [arm.choice("route") for arm in space.arms] == LABELS
    decision = opt.recommend("route", {"length": 12.5, "vip": True, "lang": "pt-BR"})
    assert decision.params.choice("route") in LABELS
    assert Params.from_dict(decision.params.to_dict()) == decision.params
    assert (
        "model" not in decision.params.to_request() or decision.params.to_request()["model"] == "m"
    )
    priced = task(
        "priced",
        baseline=Params("m", choices={"route": "cheap"}),
        choices={"route": {"cheap": {"cost": 1.0}, "dear": {"cost": 39.0}}},
    )
    assert priced.space.feature_names == ("bias", "route=dear", "route.cost")
    with pytest.raises(ConfigError, match=r"baseline\.choices\.route"):
        task("x", baseline=Params("m"), choices={"route": ["a", "b"]})
    with pytest.raises(ConfigError, match=r"baseline\.choices\.route.*'c' is not one of a, b"):
        task("x", baseline=Params("m", choices={"route": "c"}), choices={"route": ["a", "b"]})


def test_a_declared_reward_range_takes_negative_rewards_and_refuses_outside_it() -> None:
    opt = routing(reward=RewardFunction(low=-1.0, high=1.0))
    d = opt.recommend("route", {"length": 1.0}, request_id="r1")
    recorded = opt.record_outcome("r1", Outcome(reward=-0.4))
    assert recorded.reward == -0.4
    assert opt.policy("route").revision == 1
    d2 = opt.recommend("route", {"length": 1.0}, request_id="r2")
    with pytest.raises(OutcomeError, match=r"reward range \[-1.0, 1.0\], got 1.5"):
        opt.record_outcome("r2", Outcome(reward=1.5))
    assert opt.store.get_outcome("r2") is None
    assert d.task_type == d2.task_type == "route"
    assert RewardFunction(low=-1.0, high=1.0).unit(-0.4) == pytest.approx(0.3)


# -- probabilities ------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_probabilities_equal_the_logged_propensity_of_the_next_decision(policy: str) -> None:
    opt = routing(policy=policy)
    rng = np.random.default_rng(5)
    for i in range(60):
        context = {"length": float(rng.normal()), "vip": bool(i % 2)}
        distribution = opt.probabilities("route", context, request_id=f"q{i}")
        revision = opt.policy("route").revision
        decision = opt.recommend("route", context, request_id=f"q{i}")
        assert opt.policy("route").revision == revision  # probabilities() changed nothing
        assert sum(distribution.probabilities) == pytest.approx(1.0)
        assert decision.propensity == pytest.approx(distribution.of(decision.arm), rel=1e-12)
        reward = 1.0 if decision.params.choice("route") == "large" else 0.2
        opt.record_outcome(decision.request_id, Outcome(reward=reward))


def test_with_no_evidence_the_baseline_is_the_favourite() -> None:
    for policy in ("linucb", "squarecb"):
        opt = routing(policy=policy)
        distribution = opt.probabilities("route", {"length": 3.0})
        best = max(range(3), key=lambda i: distribution.probabilities[i])
        assert distribution.params[best].choice("route") == "small", policy
        assert min(distribution.probabilities) > 0.0  # every arm supported


# -- decisions logged elsewhere ---------------------------------------------------------------


def test_an_external_decision_is_validated_before_anything_is_stored() -> None:
    opt = routing()
    for bad, match in ((0.0, "propensity"), (1.5, "propensity"), (float("nan"), "propensity")):
        with pytest.raises(InputError, match=match):
            opt.log_decision("route", {"length": 1.0}, 0, bad, request_id="x")
    with pytest.raises(InputError, match=r"arm: must be an arm index in \[0, 3\)"):
        opt.log_decision("route", {"length": 1.0}, 7, 0.5, request_id="x")
    with pytest.raises(InputError, match="is not an arm of route"):
        opt.log_decision("route", {}, Params("m", choices={"route": "huge"}), 0.5, request_id="x")
    assert opt.store.get_decision("x") is None
    rows = [
        ExternalRow("ok", {"length": 1.0}, 0, 0.5, 1.0),
        ExternalRow("bad", {"length": 1.0}, 1, -0.1, 1.0),
    ]
    with pytest.raises(InputError, match=r"row 1 \(bad\).*propensity"):
        import_rows(opt, "route", rows, policy="legacy")
    assert opt.store.get_decision("ok") is None
    with pytest.raises(InputError, match=r"row 0 \(r\).*'length': must be finite"):
        import_rows(opt, "route", [ExternalRow("r", {"length": math.inf}, 0, 0.5, 1.0)], policy="p")


def test_dsjson_events_become_decisions_with_outcomes() -> None:
    opt = routing(reward=RewardFunction(low=-1.0, high=1.0))
    lines = [
        '{"_label_cost": -1.0, "_label_probability": 0.5, "_labelIndex": 2, "EventId": "e1",'
        ' "Timestamp": "2026-11-01T10:00:00Z", "c": {"length": 3.5, "vip": true,'
        ' "_multi": [{"a": 1}, {"a": 2}, {"a": 3}]}, "a": [3, 1, 2], "p": [0.5, 0.25, 0.25]}',
        '{"_label_cost": 0.5, "_label_probability": 0.25, "_labelIndex": 0, "EventId": "e2",'
        ' "c": {"length": 1.0, "_multi": [{"a": 1}, {"a": 2}, {"a": 3}]}}',
    ]
    report = import_rows(opt, "route", dsjson_rows(lines), policy="vw")
    assert (report.decisions, report.outcomes) == (2, 2)
    first = opt.store.get_decision("e1")
    assert first is not None and first.arm == 2 and first.propensity == 0.5
    assert first.origin == "external:vw" and first.timestamp == pytest.approx(1793527200.0)
    outcome = opt.store.get_outcome("e2")
    assert outcome is not None and outcome.reward == -0.5
    with pytest.raises(InputError, match=r"line 1\._labelIndex"):
        dsjson_rows(['{"c": {}, "_labelIndex": "x"}'])


def test_an_imported_uniform_log_warm_starts_the_policy_and_evaluates_a_candidate() -> None:
    """OBP-shaped uniform-random log → import → the policy learned the best arm → OPE of the
    candidate beats the baseline with a lower bound above 0 (the true gap is 0.5)."""
    rng = np.random.default_rng(11)
    n = 3_000
    context = rng.normal(size=(n, 2))
    action = rng.integers(0, 3, size=n)
    best = np.where(context[:, 0] > 0, 2, 1)
    reward = (rng.random(n) < np.where(action == best, 0.8, 0.3)).astype(float)
    feedback = {"context": context, "action": action, "reward": reward, "pscore": np.full(n, 1 / 3)}
    config = task(
        "route",
        baseline=Params("m", choices={"route": "small"}),
        choices={"route": LABELS},
        features=[NumericFeature("x0"), NumericFeature("x1")],
    )
    store = MemoryDecisionLog()
    opt = Optimizer([config], store)
    report = import_rows(opt, "route", obp_rows(feedback), policy="uniform")
    assert report.decisions == n and opt.policy("route").revision == n
    pick = opt.probabilities("route", {"x0": 1.0, "x1": 0.0})
    assert max(range(3), key=lambda i: pick.probabilities[i]) == 2
    opt.save_snapshots()
    result = evaluate(store, config, target="snapshot", resamples=200)
    dr = result.comparison("dr")
    assert dr is not None and dr.lower_bound is not None and dr.lower_bound > 0.2, dr


FEATURE_KINDS: dict[str, tuple[Feature, list[object]]] = {
    "numeric": (NumericFeature("v"), [3.5, -2, 1e9]),
    "numeric-log-range": (NumericFeature("v", lower=0, upper=1e6, log=True), [0, 12.5, 999_999]),
    "bool": (BoolFeature("v"), [True, 0, 1.0]),
    "count": (CountFeature("v"), [0, 7, ["a", "b"]]),
    "categorical-closed": (CategoricalFeature("v", ("a", "b")), ["a", "b", "a"]),
    "categorical-other": (CategoricalFeature("v", ("a", "b"), unknown="other"), ["a", "zz", "b"]),
    "categorical-ignore": (CategoricalFeature("v", ("a",), unknown="ignore"), ["a", "zz", "a"]),
    "categorical-hash": (CategoricalFeature("v", unknown="hash", buckets=4), ["x", "y", "é"]),
}


@pytest.mark.parametrize("kind", sorted(FEATURE_KINDS))
def test_every_feature_kind_encodes_alike_one_by_one_and_in_batches(kind: str) -> None:
    """The featurizer contract, for every feature kind: featurize = transform of the validated
    context = the batch transform of logged contexts (lists as JSON gives them), fixed width,
    deterministic fingerprints."""
    feature, values = FEATURE_KINDS[kind]
    f = Featurizer([feature])
    contexts, rows, prints = [], [], []
    for value in values:
        valid, x, fp = f.featurize({"v": value})
        assert x.shape == (f.dim,) and np.all(np.isfinite(x))
        np.testing.assert_array_equal(f.transform(valid), x)
        assert f.featurize({"v": value})[2] == fp
        contexts.append({k: list(v) if isinstance(v, tuple) else v for k, v in valid.items()})
        rows.append(x)
        prints.append(fp)
    np.testing.assert_allclose(f.transform_many(contexts), np.array(rows), rtol=1e-14, atol=0)
    assert len(f.columns) == f.dim
