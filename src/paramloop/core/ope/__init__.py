"""Off-policy evaluation: estimators behind one protocol, support diagnostics, intervals.

Pure: numpy and the standard library; the bootstrap draws from the ``rng`` it
is given.  Fitting an outcome model for DM and the doubly robust family is not
done here: predicted rewards arrive as an (n, K) array.
"""

from paramloop.core.ope.base import ESTIMATORS, Estimator, Terms, make_estimator, register
from paramloop.core.ope.data import LoggedBandit
from paramloop.core.ope.diagnostics import Diagnostics, Support, check_support, diagnose
from paramloop.core.ope.estimators import DM, DR, IPS, SNDR, SNIPS, SwitchDR
from paramloop.core.ope.evaluate import (
    Comparison,
    Estimate,
    compare,
    compare_all,
    estimate,
    estimate_all,
)

__all__ = [
    "DM",
    "DR",
    "ESTIMATORS",
    "IPS",
    "SNDR",
    "SNIPS",
    "Comparison",
    "Diagnostics",
    "Estimate",
    "Estimator",
    "LoggedBandit",
    "Support",
    "SwitchDR",
    "Terms",
    "check_support",
    "compare",
    "compare_all",
    "diagnose",
    "estimate",
    "estimate_all",
    "make_estimator",
    "register",
]
