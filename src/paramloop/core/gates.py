"""Quality gates: named checks with a verdict (pass / fail / inconclusive) and their evidence.

Each gate is a pure function of measured evidence; a :class:`GateReport` is the
conjunction: it fails if any gate fails, is inconclusive if any gate cannot
decide, and passes only when every gate passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class GateResult:
    """One gate's verdict, why, and the figures it was decided on."""

    name: str
    verdict: Verdict
    reason: str
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "verdict": str(self.verdict),
            "reason": self.reason,
            "evidence": dict(self.evidence),
        }


@dataclass(frozen=True, slots=True)
class GateThresholds:
    """The bars a candidate must clear (defaults from the published plan)."""

    min_decisions: int = 1_000
    min_ess: float = 100.0
    min_improvement: float = 0.0
    reproducibility_trials: int = 100


def combine(results: Sequence[GateResult]) -> Verdict:
    """Fail if any gate fails, inconclusive if any cannot decide, else pass.

    >>> combine([GateResult("a", Verdict.PASS, ""), GateResult("b", Verdict.INCONCLUSIVE, "")])
    <Verdict.INCONCLUSIVE: 'inconclusive'>
    """
    verdicts = {result.verdict for result in results}
    if not results:
        return Verdict.INCONCLUSIVE
    if Verdict.FAIL in verdicts:
        return Verdict.FAIL
    if Verdict.INCONCLUSIVE in verdicts:
        return Verdict.INCONCLUSIVE
    return Verdict.PASS


def min_decisions(n: int, threshold: int) -> GateResult:
    """Enough logged decisions (with outcomes) for the task type.

    Too few is *inconclusive*, not a failure: more traffic can settle it.
    """
    evidence = {"decisions": n, "threshold": threshold}
    if n >= threshold:
        return GateResult(
            "min_decisions", Verdict.PASS, f"{n} logged decisions ≥ {threshold}", evidence
        )
    return GateResult(
        "min_decisions",
        Verdict.INCONCLUSIVE,
        f"only {n} logged decisions; {threshold} needed",
        evidence,
    )


def min_ess(ess: float | None, threshold: float) -> GateResult:
    """Enough effective sample size for the candidate under the logging policy."""
    evidence = {"ess": ess, "threshold": threshold}
    if ess is None:
        return GateResult(
            "min_ess",
            Verdict.INCONCLUSIVE,
            "no effective sample size: the log does not support the candidate",
            evidence,
        )
    if ess >= threshold:
        return GateResult(
            "min_ess", Verdict.PASS, f"effective sample size {ess:.0f} ≥ {threshold:.0f}", evidence
        )
    return GateResult(
        "min_ess",
        Verdict.INCONCLUSIVE,
        f"effective sample size {ess:.0f} < {threshold:.0f}",
        evidence,
    )


def improvement(
    lower: float | None,
    upper: float | None,
    difference: float | None,
    estimator: str,
    margin: float = 0.0,
) -> GateResult:
    """The one-sided lower confidence bound of (candidate − baseline) clears ``margin``.

    Pass: lower bound ≥ margin.  Fail: the whole interval lies below the margin
    (the candidate is worse).  Otherwise, or without support: inconclusive.
    """
    evidence = {
        "estimator": estimator,
        "difference": difference,
        "lower": lower,
        "upper": upper,
        "margin": margin,
    }
    if lower is None or upper is None:
        return GateResult(
            "improvement", Verdict.INCONCLUSIVE, "no supported estimate of the difference", evidence
        )
    if lower >= margin:
        return GateResult(
            "improvement",
            Verdict.PASS,
            f"lower bound {lower:+.4f} ≥ {margin:+.4f} ({estimator})",
            evidence,
        )
    if upper < margin:
        return GateResult(
            "improvement",
            Verdict.FAIL,
            f"upper bound {upper:+.4f} < {margin:+.4f}: the candidate is worse ({estimator})",
            evidence,
        )
    return GateResult(
        "improvement",
        Verdict.INCONCLUSIVE,
        f"interval [{lower:+.4f}, {upper:+.4f}] straddles {margin:+.4f} ({estimator})",
        evidence,
    )


def zero_violations(logged: int, candidate: int) -> GateResult:
    """No hard-constraint violation in the logged corpus nor in the candidate's recommendations."""
    evidence = {"logged_violations": logged, "candidate_violations": candidate}
    if logged == 0 and candidate == 0:
        return GateResult(
            "zero_violations", Verdict.PASS, "no hard-constraint violations", evidence
        )
    return GateResult(
        "zero_violations",
        Verdict.FAIL,
        f"{logged} violations in the logged corpus, {candidate} in the candidate's recommendations",
        evidence,
    )


def reproducible(matches: int, trials: int) -> GateResult:
    """Replaying decisions with the same seed, context and revision gives the same arm every time."""
    evidence = {"matches": matches, "trials": trials}
    if trials == 0:
        return GateResult("reproducible", Verdict.INCONCLUSIVE, "no decisions to replay", evidence)
    if matches == trials:
        return GateResult(
            "reproducible",
            Verdict.PASS,
            f"{matches} of {trials} replays gave the same arm",
            evidence,
        )
    return GateResult(
        "reproducible",
        Verdict.FAIL,
        f"only {matches} of {trials} replays gave the same arm",
        evidence,
    )
