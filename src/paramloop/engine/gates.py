"""Run the quality gates on an evaluation, persist the report, and approve it with provenance."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from paramloop.core import gates
from paramloop.core.gates import GateResult, GateThresholds, Verdict
from paramloop.engine.evaluate import PRIMARY_ESTIMATOR, Evaluation
from paramloop.errors import InputError
from paramloop.store.base import AuditLog
from paramloop.types import GateReportRecord, ProvenanceRecord


def check(evaluation: Evaluation, thresholds: GateThresholds | None = None) -> list[GateResult]:
    """Every gate's verdict on ``evaluation`` (see :mod:`paramloop.core.gates`)."""
    t = thresholds if thresholds is not None else GateThresholds()
    primary = evaluation.comparison(PRIMARY_ESTIMATOR) or (
        evaluation.comparisons[0] if evaluation.comparisons else None
    )
    candidate = primary.candidate if primary is not None else None
    results = [
        gates.min_decisions(evaluation.n, t.min_decisions),
        # A refused estimate still has an ESS; show it when it is what fell short.
        gates.min_ess(
            None
            if candidate is None or (candidate.support != "ok" and candidate.ess >= t.min_ess)
            else candidate.ess,
            t.min_ess,
        ),
        gates.improvement(
            None if primary is None else primary.lower_bound,
            None if primary is None else primary.upper_bound,
            None if primary is None else primary.difference,
            "none" if primary is None else primary.candidate.estimator,
            t.min_improvement,
        ),
        gates.zero_violations(evaluation.logged_violations, evaluation.candidate_violations),
        gates.reproducible(*evaluation.reproducible),
    ]
    if evaluation.logging_policies and all(
        p.startswith("baseline") for p in evaluation.logging_policies
    ):
        results.append(
            GateResult(
                "log_support",
                Verdict.INCONCLUSIVE,
                "every logged decision was served by the baseline (shadow mode): such logs cannot evaluate "
                "another policy; canary traffic with exploration provides the support",
                {"logging_policies": list(evaluation.logging_policies)},
            )
        )
    return results


def run_gates(
    store: AuditLog,
    evaluation: Evaluation,
    *,
    thresholds: GateThresholds | None = None,
    clock: Callable[[], float] = time.time,
) -> GateReportRecord:
    """Check every gate and persist the report; returns it with its id."""
    results = check(evaluation, thresholds)
    report: dict[str, Any] = {
        "gates": [r.to_dict() for r in results],
        "evaluation": evaluation.to_dict(),
    }
    return store.save_gate_report(
        GateReportRecord(
            task_type=evaluation.task_type,
            candidate=evaluation.candidate,
            baseline="baseline",
            verdict=str(gates.combine(results)),
            report=report,
            created_at=clock(),
        )
    )


def approve(
    store: AuditLog,
    report_id: int,
    *,
    actor: str,
    reason: str,
    clock: Callable[[], float] = time.time,
) -> ProvenanceRecord:
    """Approve a passed gate report: writes the provenance record (who, when, evidence, versions).

    Raises :class:`~paramloop.errors.InputError` for an unknown report, a report
    that did not pass, or an empty actor/reason; nothing is written then.
    """
    if not actor.strip():
        raise InputError("actor", "approving needs the name of the person approving")
    if not reason.strip():
        raise InputError("reason", "approving needs a reason")
    report = store.get_gate_report(report_id)
    if report is None:
        raise InputError("report_id", f"no gate report with id {report_id}")
    if report.verdict != Verdict.PASS:
        raise InputError(
            "report_id",
            f"gate report {report_id} is {report.verdict!r}; only a passed report can be approved",
        )
    return store.append_provenance(
        ProvenanceRecord(
            kind="gate_approval",
            task_type=report.task_type,
            actor=actor,
            reason=reason,
            evidence={"gate_report_id": report.id, "verdict": report.verdict},
            policy_versions={"candidate": report.candidate, "baseline": report.baseline},
            timestamp=clock(),
        )
    )
