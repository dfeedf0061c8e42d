"""Context drift: JS divergence and PSI against hand-computed values, binning, the streaming detector."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats  # type: ignore[import-untyped, unused-ignore]

from paramloop.core.drift import OTHER, Binning, DriftDetector, js_divergence, psi
from paramloop.errors import ConfigError, FeatureError, InputError


@pytest.mark.parametrize(
    ("p", "q", "expected"),
    [
        ([1, 1], [1, 1], 0.0),
        ([3, 1], [30, 10], 0.0),  # counts and frequencies alike
        ([1, 0], [0, 1], 1.0),  # disjoint supports
        ([1, 0, 0, 0], [0, 0, 1, 1], 1.0),
        # M = (¾, ¼): ½·KL(p‖M) + ½·KL(q‖M) = ½·log2(4/3) + ½·(½·log2(2/3) + ½·log2 2)
        ([1, 0], [1, 1], 0.5 * math.log2(4 / 3) + 0.25 * math.log2(2 / 3) + 0.25),
    ],
)
def test_js_divergence_known_values(p: list[float], q: list[float], expected: float) -> None:
    assert js_divergence(p, q) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("e", "a", "smoothing", "expected"),
    [
        ([50, 50], [50, 50], 0.0, 0.0),
        # (0.25 − 0.5)·ln(0.25/0.5) + (0.75 − 0.5)·ln(0.75/0.5)
        ([50, 50], [25, 75], 0.0, 0.25 * math.log(2) + 0.25 * math.log(1.5)),
        # ten bins of 10 % against 5 % / 15 % alternating: 5·(−0.05·ln ½) + 5·(0.05·ln 1.5)
        ([10] * 10, [5, 15] * 5, 0.0, 5 * 0.05 * math.log(2) + 5 * 0.05 * math.log(1.5)),
        # an empty bin, smoothed by ½: e = (10.5, 0.5)/11, a = (5.5, 5.5)/11
        (
            [10, 0],
            [5, 5],
            0.5,
            (5.5 - 10.5) / 11 * math.log(5.5 / 10.5) + (5.5 - 0.5) / 11 * math.log(5.5 / 0.5),
        ),
        ([10, 0], [5, 5], 0.0, math.inf),
    ],
)
def test_psi_known_values(
    e: list[float], a: list[float], smoothing: float, expected: float
) -> None:
    assert psi(e, a, smoothing) == pytest.approx(expected, abs=1e-12)


counts = st.lists(st.integers(0, 1_000), min_size=2, max_size=12).filter(lambda c: sum(c) > 0)


@given(st.data())
def test_scores_are_bounded_and_symmetric(data: st.DataObject) -> None:
    e = data.draw(counts)
    a = data.draw(
        st.lists(st.integers(0, 1_000), min_size=len(e), max_size=len(e)).filter(
            lambda c: sum(c) > 0
        )
    )
    js = js_divergence(e, a)
    assert 0.0 <= js <= 1.0
    assert js == pytest.approx(js_divergence(a, e), abs=1e-12)
    assert psi(e, a) >= 0.0
    assert psi(e, a) == pytest.approx(psi(a, e), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    ("e", "a", "field"),
    [
        ([1, 2], [1, 2, 3], "actual"),
        ([0, 0], [1, 1], "expected"),
        ([1, -1], [1, 1], "expected"),
        ([], [], "expected"),
        ([1, math.nan], [1, 1], "expected"),
    ],
)
def test_bad_distributions(e: list[float], a: list[float], field: str) -> None:
    for score in (js_divergence, psi):
        with pytest.raises(InputError) as info:
            score(e, a)
        assert info.value.field == field
    with pytest.raises(InputError):
        psi([1, 1], [1, 1], smoothing=-1.0)


def test_numeric_binning_uses_reference_quantiles() -> None:
    binning = Binning.from_reference("prompt_tokens", [float(i) for i in range(1_000)], bins=10)
    assert binning.is_numeric and binning.size == 10
    assert binning.edges == pytest.approx([99.9 * k + 0.0 for k in range(1, 10)], abs=1e-9)
    assert binning.counts(float(i) for i in range(1_000)).tolist() == [100] * 10
    assert (binning.index(-1e9), binning.index(1e9)) == (0, 9)
    ties = Binning.from_reference("risk", [1.0] * 90 + [2.0] * 10, bins=10)
    assert ties.size < 10  # repeated cut points collapse


def test_categorical_binning_has_an_other_bin() -> None:
    binning = Binning.from_reference("model", ["gpt-4o", "o3-mini", "gpt-4o"])
    assert binning.levels == ("gpt-4o", "o3-mini") and binning.size == 3
    assert [binning.index(v) for v in ("gpt-4o", "o3-mini", "llama")] == [0, 1, 2]
    flags = Binning.from_reference("retry", [True, False])
    assert flags.levels == ("false", "true")
    tags = Binning.from_reference("tags", [("b", "a"), ("a",)])
    assert tags.index(("a", "b")) == tags.index(("b", "a")) != tags.index(("c",))
    assert OTHER == "__other__"


def test_bad_binning_input() -> None:
    numeric = Binning.from_reference("tokens", [1.0, 2.0, 3.0])
    for bad in ("many", math.nan, True):
        with pytest.raises(FeatureError):
            numeric.index(bad)
    with pytest.raises(FeatureError):
        Binning.from_reference("tokens", [])
    with pytest.raises(FeatureError):
        Binning.from_reference("tokens", [1.0, math.inf])
    with pytest.raises(ConfigError):
        Binning.from_reference("tokens", [1.0], bins=1)
    with pytest.raises(FeatureError):
        Binning.from_reference("weird", [None])  # type: ignore[list-item]


def contexts(
    rng: np.random.Generator, n: int, shift: float = 0.0, new_model: bool = False
) -> list[dict[str, float | str]]:
    models = ["gpt-4o", "o3-mini"] + (["llama"] if new_model else [])
    return [
        {"prompt_tokens": float(t), "model": str(m)}
        for t, m in zip(rng.lognormal(6.0 + shift, 0.5, n), rng.choice(models, n), strict=True)
    ]


def test_no_drift_on_the_same_distribution() -> None:
    # Under no drift PSI ≈ χ²(bins − 1)·(1/n + 1/N): with 10 bins, n = 1,000 and
    # N = 5,000 the 99.9 % quantile is 27.9 · 0.0012 ≈ 0.033, far below 0.2.
    rng = np.random.default_rng(1)
    detector = DriftDetector(contexts(rng, 5_000), window=1_000, min_samples=200)
    assert stats.chi2.ppf(0.999, 9) * (1 / 1_000 + 1 / 5_000) < 0.2 / 5
    for x in contexts(rng, 3_000):
        detector.update(x)
        assert not detector.drifted or detector.n < 200
    assert detector.n == 1_000
    assert all(f.psi < 0.2 and f.js < 0.05 for f in detector.report())


@pytest.mark.parametrize(
    ("shift", "new_model", "feature"),
    [(0.5, False, "prompt_tokens"), (0.0, True, "model")],
)
def test_drift_is_detected(shift: float, new_model: bool, feature: str) -> None:
    rng = np.random.default_rng(2)
    detector = DriftDetector(contexts(rng, 5_000), window=500, min_samples=200)
    for i, x in enumerate(contexts(rng, 500, shift=shift, new_model=new_model)):
        detector.update(x)
        assert detector.drifted is False or i + 1 >= 200
    assert detector.drifted
    drifted = {f.feature for f in detector.report() if f.drifted}
    assert drifted == {feature}


def test_the_window_slides_back_to_normal() -> None:
    rng = np.random.default_rng(3)
    detector = DriftDetector(
        contexts(rng, 5_000), window=300, min_samples=300, metric="js", threshold=0.05
    )
    for x in contexts(rng, 300, shift=1.0):
        detector.update(x)
    assert detector.drifted
    for x in contexts(rng, 300):
        detector.update(x)
    assert not detector.drifted


def test_detector_validation() -> None:
    reference = [{"a": 1.0}, {"a": 2.0}]
    with pytest.raises(ConfigError):
        DriftDetector(reference, metric="kl")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        DriftDetector(reference, threshold=0.0)
    with pytest.raises(ConfigError):
        DriftDetector(reference, window=10, min_samples=20)
    with pytest.raises(ConfigError):
        DriftDetector([])
    with pytest.raises(FeatureError):
        DriftDetector([{"a": 1.0}, {"b": 1.0}])
    detector = DriftDetector(reference, window=10, min_samples=1)
    with pytest.raises(FeatureError):
        detector.update({"b": 1.0})
    assert detector.report() == () and not detector.drifted


@given(
    st.lists(st.floats(-1e6, 1e6), min_size=5, max_size=60),
    st.lists(st.sampled_from(["a", "b", "c", "new"]), min_size=5, max_size=60),
    st.lists(st.tuples(st.floats(-2e6, 2e6), st.sampled_from(["a", "c", "z"])), max_size=80),
)
def test_a_saved_detector_restores_to_the_same_scores(
    numbers: list[float], levels: list[str], later: list[tuple[float, str]]
) -> None:
    """to_dict → JSON → from_dict keeps the bins, the reference and the window: the restored
    detector scores alike now and after the same further contexts (the window keeps sliding)."""
    import json

    rows = min(len(numbers), len(levels))
    reference = [{"x": numbers[i], "kind": levels[i]} for i in range(rows)]
    settings = {"window": 20, "min_samples": 5}
    detector = DriftDetector(reference, **settings)  # type: ignore[arg-type]
    half = len(later) // 2
    for x, kind in later[:half]:
        detector.update({"x": x, "kind": kind})
    restored = DriftDetector.from_dict(json.loads(json.dumps(detector.to_dict())), **settings)  # type: ignore[arg-type]
    assert restored.report() == detector.report()
    assert restored.n == detector.n and restored.reference_size == rows
    for x, kind in later[half:]:
        detector.update({"x": x, "kind": kind})
        restored.update({"x": x, "kind": kind})
        assert restored.report() == detector.report()


def test_a_detector_state_that_does_not_fit_its_bins_is_refused() -> None:
    detector = DriftDetector([{"x": float(i)} for i in range(50)], window=10, min_samples=5)
    detector.update({"x": 3.0})
    state = detector.to_dict()
    with pytest.raises(ValueError, match="does not match its bins"):
        DriftDetector.from_dict({**state, "window": {"x": [99]}}, window=10, min_samples=5)
    with pytest.raises(ValueError, match="does not match its bins"):
        DriftDetector.from_dict({**state, "reference": {"x": [1, 2]}}, window=10, min_samples=5)
