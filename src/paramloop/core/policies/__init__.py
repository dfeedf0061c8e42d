"""Policies behind one protocol; importing this package registers every algorithm."""

from paramloop.core.policies import (
    baseline,
    epsilon_greedy,
    lints,
    linucb,
    squarecb,
    thompson_beta,
    thompson_gaussian,
)
from paramloop.core.policies.base import (
    POLICIES,
    ArmDesign,
    Choice,
    Policy,
    decide,
    derive_seed,
    make_policy,
    restore_policy,
)
from paramloop.core.policies.baseline import Baseline
from paramloop.core.policies.epsilon_greedy import EpsilonGreedy
from paramloop.core.policies.lints import LinTS
from paramloop.core.policies.linucb import LinUCB
from paramloop.core.policies.squarecb import SquareCB
from paramloop.core.policies.thompson_beta import ThompsonBeta
from paramloop.core.policies.thompson_gaussian import ThompsonGaussian

__all__ = [
    "POLICIES",
    "ArmDesign",
    "Baseline",
    "Choice",
    "EpsilonGreedy",
    "LinTS",
    "LinUCB",
    "Policy",
    "SquareCB",
    "ThompsonBeta",
    "ThompsonGaussian",
    "baseline",
    "decide",
    "derive_seed",
    "epsilon_greedy",
    "lints",
    "linucb",
    "make_policy",
    "restore_policy",
    "squarecb",
    "thompson_beta",
    "thompson_gaussian",
]
