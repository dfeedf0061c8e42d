"""Does the log support the target policy?  Weights, effective sample size, unsupported actions.

With importance weights ``w_i = target[i, a_i] / propensities[i]``:

- the effective sample size is ``(Σ w)² / Σ w²`` (``n`` when ``w ≡ 1``, small
  when a few rounds carry all the weight);
- the unsupported share is the share of rounds where the target puts
  probability (more than :data:`UNSUPPORTED_MASS`) on actions the logging
  policy could never choose there.  No estimator can see those actions'
  rewards in the log, so any number about them is a guess.

Which actions "could never" be chosen is read from the logging distribution
when the log carries it (``support_basis = "logging"``).  Otherwise the basis
is ``"observed"``: the actions that never appear in the log, and, in a round
logged with propensity 1, every action but the logged one (that round's
logging policy was deterministic).  The second basis is a proxy, and the
verdict says which one was used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from paramloop.core.ope.data import LoggedBandit
from paramloop.errors import InputError

#: Target probability below which an unsupported action is ignored (floating-point dust).
UNSUPPORTED_MASS = 1e-12

SupportBasis = Literal["logging", "declared", "observed"]
SupportVerdict = Literal["ok", "insufficient"]


@dataclass(frozen=True, slots=True)
class Diagnostics:
    """The support diagnostics of a target policy on a log (see the module docstring)."""

    n: int
    ess: float
    max_weight: float
    unsupported_share: float
    support_basis: SupportBasis
    weight_sum: float


@dataclass(frozen=True, slots=True)
class Support:
    """The verdict on support: ``ok``, or ``insufficient`` with the reasons."""

    verdict: SupportVerdict
    reason: str | None

    @property
    def is_ok(self) -> bool:
        return self.verdict == "ok"


def diagnose(data: LoggedBandit) -> Diagnostics:
    """Weights, effective sample size and unsupported share of ``data``'s target on its log."""
    w = data.weights
    total = float(w.sum())
    squares = float(np.dot(w, w))
    ess = total * total / squares if squares > 0.0 else 0.0
    rows = np.arange(data.n)
    basis: SupportBasis
    if data.logging is not None:
        basis = "logging"
        unsupported = np.where(data.logging == 0.0, data.target, 0.0).sum(axis=1)
    elif data.support is not None:
        basis = "declared"
        unsupported = np.where(data.support, 0.0, data.target).sum(axis=1)
    else:
        basis = "observed"
        never_logged = np.bincount(data.actions, minlength=data.n_actions) == 0
        unsupported = data.target[:, never_logged].sum(axis=1)
        deterministic = data.propensities == 1.0
        off_logged = data.target.sum(axis=1) - data.target[rows, data.actions]
        unsupported = np.where(deterministic, off_logged, unsupported)
    share = float(np.mean(unsupported > UNSUPPORTED_MASS))
    return Diagnostics(
        n=data.n,
        ess=ess,
        max_weight=float(w.max()),
        unsupported_share=share,
        support_basis=basis,
        weight_sum=total,
    )


def check_support(
    diagnostics: Diagnostics, *, min_ess: float = 100.0, max_unsupported: float = 0.0
) -> Support:
    """Judge support: the effective sample size must reach ``min_ess`` and the unsupported
    share must not exceed ``max_unsupported``; a log where every weight is 0 never supports.

    The default ``max_unsupported = 0`` refuses any target that puts probability
    where the logging policy could not go: the bias there is unknowable.  Logs
    served by a deterministic baseline (propensity 1) therefore support only
    that baseline.

    Raises :class:`~paramloop.errors.InputError` for a negative ``min_ess`` or a
    ``max_unsupported`` outside [0, 1].
    """
    if not (math.isfinite(min_ess) and min_ess >= 0.0):
        raise InputError("min_ess", f"must be a number >= 0, got {min_ess!r}")
    if not 0.0 <= max_unsupported <= 1.0:
        raise InputError("max_unsupported", f"must be in [0, 1], got {max_unsupported!r}")
    d = diagnostics
    reasons = []
    if d.weight_sum == 0.0:
        reasons.append(
            "every importance weight is 0: the target never chooses an action the log holds"
        )
    elif d.ess < min_ess:
        reasons.append(f"effective sample size {d.ess:.1f} is below min_ess {min_ess:g}")
    if d.unsupported_share > max_unsupported:
        basis = {
            "logging": "judged from the logging distribution",
            "declared": "judged from the logging policy's declared support",
            "observed": "judged without the logging distribution, from the actions never logged and "
            "the rounds logged with propensity 1",
        }[d.support_basis]
        reasons.append(
            f"the target puts probability on actions the logging policy could never choose in "
            f"{d.unsupported_share:.1%} of rounds (allowed: {max_unsupported:.1%}; {basis})"
        )
    if reasons:
        return Support("insufficient", "; ".join(reasons))
    return Support("ok", None)
