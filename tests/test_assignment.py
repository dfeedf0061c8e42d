"""Traffic split: a shared table of bucket cases, uniformity, stability, and the logged propensity."""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats  # type: ignore[import-untyped, unused-ignore]

from paramloop.core.assignment import Group, assign, bucket, logged_propensity
from paramloop.errors import InputError

#: The shared table (GrowthBook style): any implementation, in any process or language,
#: must give exactly these buckets.  Changing the hash is a breaking change for every
#: running rollout, so this table changes only on purpose.
BUCKET_CASES: list[tuple[str, str, float]] = [
    ("user-1", "summarize:rollout-1", 0.8571377584306611),
    ("user-2", "summarize:rollout-1", 0.01871054582887144),
    ("user-1", "summarize:rollout-2", 0.24389631106143173),
    ("user-1", "", 0.9615151379785261),
    ("req-7f3a9c", "code_review:r42", 0.1067648415224679),
    ("ünïcödé-user", "summarize:rollout-1", 0.94569683155968),
    ("a" * 200, "s", 0.8795037751931627),
    ("bc", "a", 0.6583602594879056),
    ("c", "ab", 0.26674487313439643),
    ("0", "0", 0.3145524106371871),
]


@pytest.mark.parametrize(("unit_id", "salt", "expected"), BUCKET_CASES)
def test_bucket_table(unit_id: str, salt: str, expected: float) -> None:
    assert bucket(unit_id, salt) == expected


@pytest.mark.parametrize(("unit_id", "salt", "expected"), BUCKET_CASES)
def test_bucket_matches_its_specification(unit_id: str, salt: str, expected: float) -> None:
    # The definition, written out: BLAKE2b-64 of "salt␟unit", top 53 bits over 2^53.
    digest = hashlib.blake2b(f"{salt}\x1f{unit_id}".encode(), digest_size=8).digest()
    assert (int.from_bytes(digest, "big") >> 11) / 2**53 == expected


def test_separator_keeps_salt_and_unit_apart() -> None:
    assert bucket("bc", "a") != bucket("c", "ab")


def test_bucket_is_the_same_in_another_process_with_another_hash_seed() -> None:
    code = (
        "from paramloop.core.assignment import bucket\n"
        "print(repr([bucket(u, s) for u, s in " + repr([c[:2] for c in BUCKET_CASES]) + "]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert ast.literal_eval(out.stdout) == [c[2] for c in BUCKET_CASES]


def test_buckets_are_uniform() -> None:
    # 100,000 ids in 100 equal bins: under uniformity the Pearson statistic is χ² with
    # 99 degrees of freedom, whose 99.9 % quantile is ≈ 148.2.  The ids are fixed, so
    # the test is deterministic; the threshold says how surprising a failure would be.
    n, bins = 100_000, 100
    values = np.array([bucket(f"user-{i}", "uniformity") for i in range(n)])
    assert values.min() >= 0.0 and values.max() < 1.0
    counts = np.bincount((values * bins).astype(int), minlength=bins)
    chi2 = float(((counts - n / bins) ** 2 / (n / bins)).sum())
    assert chi2 < stats.chi2.ppf(0.999, bins - 1)
    # The canary share: |share − 5 %| within the two-sided 99.9 % binomial bound, 3.29 sd.
    share = float(np.mean(values < 0.05))
    assert abs(share - 0.05) < 3.29 * np.sqrt(0.05 * 0.95 / n)


@given(st.text(min_size=1), st.text(), st.floats(0, 100), st.floats(0, 100))
def test_assignment_is_deterministic_and_only_adds_units_as_traffic_grows(
    unit_id: str, salt: str, a: float, b: float
) -> None:
    low, high = sorted((a, b))
    first = assign(unit_id, salt, low)
    assert assign(unit_id, salt, low) is first
    assert 0.0 <= bucket(unit_id, salt) < 1.0
    if first is Group.TREATMENT:
        assert assign(unit_id, salt, high) is Group.TREATMENT


def test_edge_traffic_shares() -> None:
    ids = [f"u{i}" for i in range(1_000)]
    assert all(assign(u, "s", 0.0) is Group.CONTROL for u in ids)
    assert all(assign(u, "s", 100.0) is Group.TREATMENT for u in ids)


@pytest.mark.parametrize(
    ("unit_id", "salt", "traffic", "field"),
    [
        ("", "s", 5.0, "unit_id"),
        ("u", "s", 100.5, "traffic_percent"),
        ("u", "s", -1.0, "traffic_percent"),
        ("u", "s", True, "traffic_percent"),
        ("u", "s", float("nan"), "traffic_percent"),
    ],
)
def test_bad_assignment_input(unit_id: str, salt: str, traffic: float, field: str) -> None:
    with pytest.raises(InputError) as info:
        assign(unit_id, salt, traffic)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("group", "probability", "is_baseline", "traffic", "expected"),
    [
        (Group.CONTROL, 0.3, True, 0.0, 1.0),  # shadow: only the baseline is served
        (Group.TREATMENT, 0.3, False, 100.0, 0.3),  # general: the policy alone
        (Group.TREATMENT, 0.5, False, 5.0, 0.025),  # canary, a non-baseline arm
        (Group.TREATMENT, 0.2, True, 5.0, 0.05 * 0.2 + 0.95),  # the policy drew the baseline
        (Group.CONTROL, 0.2, True, 5.0, 0.05 * 0.2 + 0.95),  # same arm, same probability
        (Group.TREATMENT, 1.0, True, 25.0, 1.0),
    ],
)
def test_logged_propensity_table(
    group: Group, probability: float, is_baseline: bool, traffic: float, expected: float
) -> None:
    assert logged_propensity(group, probability, is_baseline, traffic) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("group", "probability", "is_baseline", "traffic", "field"),
    [
        (Group.CONTROL, 0.2, False, 5.0, "served_is_baseline"),
        (Group.TREATMENT, 0.2, False, 0.0, "group"),
        (Group.CONTROL, 0.2, True, 100.0, "group"),
        (Group.TREATMENT, 0.0, False, 5.0, "policy_probability"),
        (Group.TREATMENT, 1.5, False, 5.0, "policy_probability"),
        (Group.TREATMENT, 0.5, False, 101.0, "traffic_percent"),
    ],
)
def test_logged_propensity_refuses_impossible_decisions(
    group: Group, probability: float, is_baseline: bool, traffic: float, field: str
) -> None:
    with pytest.raises(InputError) as info:
        logged_propensity(group, probability, is_baseline, traffic)
    assert info.value.field == field


def test_logged_propensity_is_the_serving_frequency_and_makes_ips_unbiased() -> None:
    # Ground truth: serve 60,000 units through the split (25 % treatment) with a
    # policy over 3 arms (arm 0 = baseline), then (1) each arm's serving frequency
    # matches its logged propensity, and (2) IPS over *all* rows with the logged
    # propensities recovers a target policy's true value.  Tolerances: 4 standard
    # errors (two-sided p ≈ 6e-5), computed from the same draws.
    rng = np.random.default_rng(7)
    n, traffic, pi = 60_000, 25.0, np.array([0.2, 0.5, 0.3])
    mean_reward = np.array([0.5, 0.7, 0.4])
    groups = [assign(f"unit-{i}", "ground-truth", traffic) for i in range(n)]
    drawn = rng.choice(3, size=n, p=pi)
    arms = np.array([d if g is Group.TREATMENT else 0 for g, d in zip(groups, drawn, strict=True)])
    propensities = np.array(
        [
            logged_propensity(g, float(pi[a]), a == 0, traffic)
            for g, a in zip(groups, arms, strict=True)
        ]
    )
    for arm in range(3):
        frequency = float(np.mean(arms == arm))
        logged = float(propensities[arms == arm][0])
        assert abs(frequency - logged) < 4 * np.sqrt(logged * (1 - logged) / n)
    rewards = rng.binomial(1, mean_reward[arms]).astype(float)
    target = np.array([0.0, 1.0, 0.0])  # always arm 1: true value 0.7
    terms = target[arms] / propensities * rewards
    assert abs(terms.mean() - 0.7) < 4 * terms.std() / np.sqrt(n)
