"""Raising alerts: deduplicated against the store, kept there, and sent to pluggable sinks.

An alert is raised once per ``dedup_key`` within ``cooldown_s`` — across
restarts and replicas, because the check reads the store's alert table.  A
sink is any callable taking an :class:`~paramloop.types.AlertRecord`; a sink
that fails is counted and logged, never raised into the request that caused
the alert.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from paramloop.core.alerts import Alert
from paramloop.errors import ConfigError
from paramloop.store.base import StateStore
from paramloop.types import AlertRecord

#: Anything that delivers an alert somewhere.
AlertSink = Callable[[AlertRecord], None]

logger = logging.getLogger("paramloop.alerts")


def log_sink(alert: AlertRecord) -> None:
    """Write the alert to the ``paramloop.alerts`` logger as one JSON line (critical → ERROR)."""
    level = {"critical": logging.ERROR, "warning": logging.WARNING}.get(
        alert.severity, logging.INFO
    )
    logger.log(level, json.dumps(alert.to_dict(), sort_keys=True))


@dataclass(frozen=True)
class WebhookSink:
    """POST the alert as JSON to ``url`` (Slack-, PagerDuty- or anything-compatible relay)."""

    url: str
    timeout_s: float = 5.0
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError("alerts.webhook.url", f"must be an http(s) URL, got {self.url!r}")
        if not self.timeout_s > 0:
            raise ConfigError("alerts.webhook.timeout_s", "must be > 0")

    def __call__(self, alert: AlertRecord) -> None:
        request = urllib.request.Request(
            self.url,
            data=json.dumps(alert.to_dict()).encode(),
            headers={"Content-Type": "application/json", **dict(self.headers)},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            response.read()


@dataclass
class AlertManager:
    """Deduplicates, stores and delivers alerts.  ``failures`` counts sink errors."""

    store: StateStore
    sinks: Sequence[AlertSink] = (log_sink,)
    cooldown_s: float = 300.0
    clock: Callable[[], float] = time.time
    failures: int = field(default=0, init=False)
    #: When this process last raised each dedup key: within the cooldown, a repeat is
    #: dropped without asking the store (alerts fire on the request path).
    _raised: dict[str, float] = field(default_factory=dict, init=False, repr=False)

    def raise_alert(self, alert: Alert) -> AlertRecord | None:
        """Store and deliver ``alert`` unless the same key was raised within the cooldown."""
        now = self.clock()
        last = self._raised.get(alert.dedup_key)
        if last is not None and now - last < self.cooldown_s:
            return None
        self._raised[alert.dedup_key] = now
        if len(self._raised) > 10_000:
            self._raised = {k: t for k, t in self._raised.items() if now - t < self.cooldown_s}
        if self.store.list_alerts(dedup_key=alert.dedup_key, since=now - self.cooldown_s, limit=1):
            return None  # another replica raised it
        record = self.store.append_alert(
            AlertRecord(
                severity=str(alert.severity),
                kind=alert.kind,
                task_type=alert.task_type,
                message=alert.message,
                evidence=dict(alert.evidence),
                dedup_key=alert.dedup_key,
                created_at=now,
            )
        )
        for sink in self.sinks:
            try:
                sink(record)
            except Exception as exc:  # a broken sink must not break the request
                self.failures += 1
                logger.warning("alert sink %r failed: %s", sink, exc)
        return record
