"""Alerts as values, their deduplication, and the low-confidence rule.

Sending an alert (a log line, a webhook) is I/O and lives in the engine; here an
alert is a frozen value, and deciding whether to send it is arithmetic on its
dedup key and ``now``: the same key within ``cooldown_s`` of the last one sent
is suppressed, unless it is more severe than that one (an escalation always
goes out).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from paramloop.errors import ConfigError, InputError


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return (Severity.INFO, Severity.WARNING, Severity.CRITICAL).index(self)


@dataclass(frozen=True, slots=True)
class Alert:
    """Something an operator should know, with the figures that triggered it.

    ``dedup_key`` groups repeats of the same condition; by default it is
    ``kind:task_type``, so a latency breach and a budget warning of one task type
    never suppress each other.
    """

    severity: Severity
    kind: str
    task_type: str
    message: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    dedup_key: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.severity, Severity):
            raise InputError("severity", f"must be one of {', '.join(Severity)}")
        if not self.kind:
            raise InputError("kind", "must be a non-empty string")
        if not self.dedup_key:
            object.__setattr__(self, "dedup_key", f"{self.kind}:{self.task_type}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": str(self.severity),
            "kind": self.kind,
            "task_type": self.task_type,
            "message": self.message,
            "evidence": dict(self.evidence),
            "dedup_key": self.dedup_key,
        }


class AlertDeduplicator:
    """Decides which alerts to send; remembers, per dedup key, the last one sent.

    >>> dedup = AlertDeduplicator(cooldown_s=300.0)
    >>> alert = Alert(Severity.WARNING, "latency", "summarize", "p99 up")
    >>> dedup.admit(alert, now=0.0), dedup.admit(alert, now=10.0), dedup.admit(alert, now=300.0)
    (True, False, True)
    """

    def __init__(self, cooldown_s: float = 300.0) -> None:
        if not (math.isfinite(cooldown_s) and cooldown_s >= 0):
            raise ConfigError("alerts.cooldown_s", f"must be ≥ 0 seconds, got {cooldown_s!r}")
        self.cooldown_s = cooldown_s
        self._last: dict[str, tuple[float, Severity]] = {}
        self._suppressed: dict[str, int] = {}

    def admit(self, alert: Alert, now: float) -> bool:
        """True when ``alert`` should be sent at ``now`` (and then it counts as sent)."""
        if not math.isfinite(now):
            raise InputError("now", "must be finite seconds")
        last = self._last.get(alert.dedup_key)
        if last is not None:
            sent_at, severity = last
            cooling = now - sent_at < self.cooldown_s
            if cooling and alert.severity.rank <= severity.rank:
                self._suppressed[alert.dedup_key] = self._suppressed.get(alert.dedup_key, 0) + 1
                return False
        self._last[alert.dedup_key] = (now, alert.severity)
        self._suppressed.pop(alert.dedup_key, None)
        self._forget(now)
        return True

    def suppressed(self, dedup_key: str) -> int:
        """How many alerts with this key were suppressed since the last one sent."""
        return self._suppressed.get(dedup_key, 0)

    def _forget(self, now: float) -> None:
        # Keys whose cooldown is over can never suppress again; dropping them bounds memory.
        for key in [k for k, (at, _) in self._last.items() if now - at >= self.cooldown_s]:
            if key not in self._suppressed:
                del self._last[key]


class LowConfidenceRule:
    """Alert when recommendation confidence stays below ``threshold`` for more than ``limit`` requests.

    Fires once per run of low-confidence requests (at request ``limit + 1``); a
    request at or above the threshold ends the run.

    >>> rule = LowConfidenceRule("summarize", threshold=0.5, limit=2)
    >>> [rule.update(0.1) is not None for _ in range(4)]
    [False, False, True, False]
    """

    def __init__(self, task_type: str, threshold: float = 0.5, limit: int = 10) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(
                "alerts.low_confidence.threshold", f"must be in [0, 1], got {threshold!r}"
            )
        if limit < 0:
            raise ConfigError("alerts.low_confidence.limit", f"must be ≥ 0, got {limit!r}")
        self.task_type, self.threshold, self.limit = task_type, threshold, limit
        self.consecutive = 0

    def update(self, confidence: float) -> Alert | None:
        """Count one request; return the alert on the request that crosses the limit."""
        if not (math.isfinite(confidence) and 0.0 <= confidence <= 1.0):
            raise InputError("confidence", f"must be in [0, 1], got {confidence!r}")
        if confidence >= self.threshold:
            self.consecutive = 0
            return None
        self.consecutive += 1
        if self.consecutive != self.limit + 1:
            return None
        return Alert(
            Severity.WARNING,
            "low_confidence",
            self.task_type,
            f"recommendation confidence below {self.threshold:g} for more than "
            f"{self.limit} consecutive requests",
            {"consecutive": self.consecutive, "threshold": self.threshold, "last": confidence},
        )
