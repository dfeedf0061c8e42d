"""Gate verdicts: table-driven pass, fail and inconclusive cases."""

from __future__ import annotations

import pytest

from paramloop.core import gates
from paramloop.core.gates import GateResult, Verdict


@pytest.mark.parametrize(
    ("result", "verdict"),
    [
        (gates.min_decisions(1_000, 1_000), Verdict.PASS),
        (gates.min_decisions(999, 1_000), Verdict.INCONCLUSIVE),
        (gates.min_ess(250.0, 100.0), Verdict.PASS),
        (gates.min_ess(99.0, 100.0), Verdict.INCONCLUSIVE),
        (gates.min_ess(None, 100.0), Verdict.INCONCLUSIVE),
        (gates.improvement(0.01, 0.05, 0.03, "snips"), Verdict.PASS),
        (gates.improvement(0.0, 0.05, 0.03, "snips"), Verdict.PASS),
        (gates.improvement(-0.01, 0.05, 0.02, "snips"), Verdict.INCONCLUSIVE),
        (gates.improvement(-0.05, -0.01, -0.03, "snips"), Verdict.FAIL),
        (gates.improvement(None, None, None, "snips"), Verdict.INCONCLUSIVE),
        (gates.improvement(0.01, 0.05, 0.03, "dr", margin=0.02), Verdict.INCONCLUSIVE),
        (gates.zero_violations(0, 0), Verdict.PASS),
        (gates.zero_violations(1, 0), Verdict.FAIL),
        (gates.zero_violations(0, 3), Verdict.FAIL),
        (gates.reproducible(100, 100), Verdict.PASS),
        (gates.reproducible(99, 100), Verdict.FAIL),
        (gates.reproducible(0, 0), Verdict.INCONCLUSIVE),
    ],
)
def test_gate_verdicts(result: GateResult, verdict: Verdict) -> None:
    assert result.verdict is verdict
    assert result.reason
    assert result.to_dict()["verdict"] == verdict.value


@pytest.mark.parametrize(
    ("verdicts", "combined"),
    [
        ([Verdict.PASS, Verdict.PASS], Verdict.PASS),
        ([Verdict.PASS, Verdict.INCONCLUSIVE], Verdict.INCONCLUSIVE),
        ([Verdict.INCONCLUSIVE, Verdict.FAIL], Verdict.FAIL),
        ([], Verdict.INCONCLUSIVE),
    ],
)
def test_combined_verdict(verdicts: list[Verdict], combined: Verdict) -> None:
    assert gates.combine([GateResult(str(i), v, "r") for i, v in enumerate(verdicts)]) is combined
