"""Alerts: values, deduplication by key and cooldown, and the low-confidence rule."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paramloop.core.alerts import Alert, AlertDeduplicator, LowConfidenceRule, Severity
from paramloop.errors import ConfigError, InputError


def alert(
    kind: str = "latency", severity: Severity = Severity.WARNING, task: str = "summarize"
) -> Alert:
    return Alert(severity, kind, task, f"{kind} on {task}", {"p99_ms": 950.0})


def test_alert_value() -> None:
    value = alert()
    assert value.dedup_key == "latency:summarize"
    assert Alert(Severity.INFO, "k", "t", "m", dedup_key="custom").dedup_key == "custom"
    assert value.to_dict() == {
        "severity": "warning",
        "kind": "latency",
        "task_type": "summarize",
        "message": "latency on summarize",
        "evidence": {"p99_ms": 950.0},
        "dedup_key": "latency:summarize",
    }
    with pytest.raises(InputError):
        Alert("loud", "latency", "t", "m")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        Alert(Severity.INFO, "", "t", "m")


#: (alert, now, admitted) in order, against one deduplicator with a 300 s cooldown.
DEDUP_SEQUENCE: list[tuple[Alert, float, bool]] = [
    (alert(), 0.0, True),
    (alert(), 1.0, False),  # same key inside the cooldown
    (alert(task="code_review"), 2.0, True),  # another task type: another key
    (alert("budget"), 3.0, True),  # another kind: another key
    (alert(severity=Severity.INFO), 4.0, False),  # less severe: suppressed
    (alert(severity=Severity.CRITICAL), 5.0, True),  # escalation goes out at once
    (alert(severity=Severity.CRITICAL), 6.0, False),
    (alert(), 304.9, False),  # cooldown counts from the last one sent (t = 5)
    (alert(), 305.0, True),  # exactly one cooldown later
]


def test_deduplication_sequence() -> None:
    dedup = AlertDeduplicator(cooldown_s=300.0)
    admitted = [dedup.admit(value, now) for value, now, _ in DEDUP_SEQUENCE]
    assert admitted == [expected for _, _, expected in DEDUP_SEQUENCE]


def test_suppressed_counts_reset_when_one_is_sent() -> None:
    dedup = AlertDeduplicator(cooldown_s=60.0)
    dedup.admit(alert(), 0.0)
    for t in (1.0, 2.0, 3.0):
        dedup.admit(alert(), t)
    assert dedup.suppressed("latency:summarize") == 3
    assert dedup.admit(alert(), 61.0)
    assert dedup.suppressed("latency:summarize") == 0


def test_zero_cooldown_sends_everything_and_bad_input_is_refused() -> None:
    dedup = AlertDeduplicator(cooldown_s=0.0)
    assert all(dedup.admit(alert(), 0.0) for _ in range(3))
    with pytest.raises(ConfigError):
        AlertDeduplicator(cooldown_s=-1.0)
    with pytest.raises(InputError):
        dedup.admit(alert(), math.nan)


@given(st.lists(st.floats(0, 1_000), max_size=50), st.floats(1, 100))
def test_one_severity_is_sent_at_most_once_per_cooldown(gaps: list[float], cooldown: float) -> None:
    dedup = AlertDeduplicator(cooldown_s=cooldown)
    now, sent = 0.0, []
    for gap in gaps:
        now += gap
        if dedup.admit(alert(), now):
            sent.append(now)
    assert all(later - earlier >= cooldown for earlier, later in itertools.pairwise(sent))


def test_low_confidence_fires_once_after_more_than_ten() -> None:
    rule = LowConfidenceRule("summarize")
    fired = [rule.update(0.3) for _ in range(12)]
    assert [i for i, a in enumerate(fired) if a is not None] == [10]  # the 11th request
    first = fired[10]
    assert (
        first is not None and first.kind == "low_confidence" and first.severity is Severity.WARNING
    )
    assert first.evidence["consecutive"] == 11
    assert rule.update(0.5) is None and rule.consecutive == 0  # 0.5 is not below 0.5
    assert [rule.update(0.1) is not None for _ in range(11)][-1]  # a new run fires again


def test_low_confidence_run_is_broken_by_one_confident_request() -> None:
    rule = LowConfidenceRule("summarize", threshold=0.5, limit=10)
    for _ in range(10):
        assert rule.update(0.2) is None
    assert rule.update(0.9) is None
    assert all(rule.update(0.2) is None for _ in range(10))


@pytest.mark.parametrize(("threshold", "limit"), [(1.5, 10), (0.5, -1)])
def test_low_confidence_config(threshold: float, limit: int) -> None:
    with pytest.raises(ConfigError):
        LowConfidenceRule("summarize", threshold, limit)


@pytest.mark.parametrize("confidence", [-0.1, 1.1, math.nan])
def test_low_confidence_input(confidence: float) -> None:
    with pytest.raises(InputError):
        LowConfidenceRule("summarize").update(confidence)
