"""Deterministic traffic split: which units see the candidate policy, and the propensity to log.

A unit (a user, a session, or a request id) is hashed with a per-rollout salt to
a bucket in [0, 1); the unit is in the *treatment* group when its bucket is below
the phase's traffic share.  The hash is BLAKE2b, not Python's ``hash()`` (which
is salted per process), so every replica and every later replay agrees.  As
traffic grows from canary to general with the same salt, a unit that was in
treatment stays in treatment: the split only ever adds units.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from paramloop.errors import InputError

#: 53 bits: the most a float holds exactly, so ``bucket`` is never rounded up to 1.0.
_BITS = 53


class Group(StrEnum):
    """Which side of the split a unit is on."""

    TREATMENT = "treatment"
    CONTROL = "control"


def _check_percent(traffic_percent: float) -> float:
    if (
        isinstance(traffic_percent, bool)
        or not isinstance(traffic_percent, float | int)
        or not 0.0 <= traffic_percent <= 100.0
    ):
        raise InputError(
            "traffic_percent", f"must be a number in [0, 100], got {traffic_percent!r}"
        )
    return float(traffic_percent) / 100.0


def bucket(unit_id: str, salt: str) -> float:
    """The unit's position in [0, 1), uniform over units and stable everywhere.

    The salt and the unit id are joined by a unit separator (U+001F) so that
    ``("ab", "c")`` and ``("a", "bc")`` hash differently.

    >>> bucket("user-1", "summarize:rollout-1")
    0.8571377584306611
    >>> bucket("user-1", "summarize:rollout-1") == bucket("user-1", "summarize:rollout-1")
    True
    """
    if not isinstance(unit_id, str) or not unit_id:
        raise InputError("unit_id", f"must be a non-empty string, got {unit_id!r}")
    if not isinstance(salt, str):
        raise InputError("salt", f"must be a string, got {salt!r}")
    digest = hashlib.blake2b(f"{salt}\x1f{unit_id}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> (64 - _BITS)) / float(1 << _BITS)


def assign(unit_id: str, salt: str, traffic_percent: float) -> Group:
    """Treatment when the unit's bucket is below the traffic share, else control.

    >>> assign("user-1", "summarize:rollout-1", 100.0)
    <Group.TREATMENT: 'treatment'>
    >>> assign("user-1", "summarize:rollout-1", 0.0)
    <Group.CONTROL: 'control'>
    """
    share = _check_percent(traffic_percent)
    return Group.TREATMENT if bucket(unit_id, salt) < share else Group.CONTROL


def logged_propensity(
    group: Group,
    policy_probability: float,
    served_is_baseline: bool,
    traffic_percent: float,
) -> float:
    """The probability with which the served arm was chosen, rollout split included.

    The serving process is a mixture: with probability t (the traffic share) the
    candidate policy π draws the arm, otherwise the baseline is served.  The
    served arm a therefore had probability

        t · π(a | x) + (1 − t) · 1[a = baseline]

    whichever group served it; ``policy_probability`` is π(a | x) of the served
    arm (for a control request, π(baseline | x), which the engine computes anyway
    because every request is scored).  This is the number we log because:

    * it is the exact marginal probability the architecture asks for, treating
      the salted hash as the uniform draw it is (the salt is fixed per rollout
      and unrelated to contexts, so P(treatment | x) = t);
    * off-policy estimators can then use every logged row: with the conditional
      alternative (π(a|x) for treatment rows, 1 for control rows) control rows
      support only the baseline and IPS over all rows is biased, so evaluation
      would have to drop them.  The mixture weight is the "balanced" propensity of
      evaluation from multiple loggers (Agarwal et al. 2017, KDD), whose variance
      is never higher than the per-logger one;
    * at t = 0 (shadow) it is 1 for the baseline, and at t = 1 it is π(a | x).

    The conditional propensity of a treatment row is simply ``policy_probability``,
    recoverable from the logged group.  Caveat: a unit with many requests always
    lands in the same group, so its rows are correlated (clustered), which widens
    honest intervals but does not bias the estimate.

    >>> logged_propensity(Group.TREATMENT, 0.5, False, 5.0)
    0.025
    >>> round(logged_propensity(Group.CONTROL, 0.5, True, 5.0), 6)
    0.975
    """
    share = _check_percent(traffic_percent)
    if not (isinstance(policy_probability, float | int) and 0.0 <= policy_probability <= 1.0):
        raise InputError(
            "policy_probability", f"must be a probability in [0, 1], got {policy_probability!r}"
        )
    if group is Group.CONTROL and not served_is_baseline:
        raise InputError("served_is_baseline", "a control request is always served the baseline")
    if group is Group.TREATMENT and share == 0.0:
        raise InputError("group", "no request is in treatment at 0 % traffic")
    if group is Group.CONTROL and share == 1.0:
        raise InputError("group", "no request is in control at 100 % traffic")
    if group is Group.TREATMENT and policy_probability == 0.0:
        raise InputError(
            "policy_probability", "the candidate policy cannot serve an arm it gives 0"
        )
    propensity = share * float(policy_probability) + (1.0 - share) * float(served_is_baseline)
    return min(1.0, propensity)  # t·π + (1 − t) can round a hair above 1


def split_distribution(
    policy_probabilities: npt.NDArray[np.float64],
    is_baseline: npt.NDArray[np.bool_],
    share: float,
) -> npt.NDArray[np.float64]:
    """Every arm's :func:`logged_propensity` at once: t·π(a | x) + (1 − t)·1[a = baseline].

    ``share`` is the treatment share t in [0, 1]; the result sums to 1 when π does.

    >>> split_distribution(np.array([0.5, 0.5]), np.array([True, False]), 0.05).tolist()
    [0.975, 0.025]
    """
    mixed: npt.NDArray[np.float64] = share * policy_probabilities + (1.0 - share) * is_baseline
    return np.minimum(mixed, 1.0)  # t·π + (1 − t) can round a hair above 1
