"""Prometheus metrics of one app, on a registry of its own (tests build many apps)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from paramloop.core.rollout import Phase, RolloutState
from paramloop.engine.optimizer import LoopStats
from paramloop.types import AlertRecord

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)
_REWARD_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class Metrics:
    """Decisions, outcomes, rewards, latencies, rollouts, budget use, alerts and errors."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter(
            "paramloop_decisions", "Decisions served.", ["task_type", "origin"], registry=r
        )
        self.outcomes = Counter(
            "paramloop_outcomes", "Outcomes recorded.", ["task_type", "source"], registry=r
        )
        self.rewards = Histogram(
            "paramloop_reward",
            "Rewards of recorded outcomes.",
            ["task_type"],
            buckets=_REWARD_BUCKETS,
            registry=r,
        )
        self.http = Histogram(
            "paramloop_http_request_duration_seconds",
            "HTTP requests, by route and status.",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream = Histogram(
            "paramloop_upstream_duration_seconds",
            "Upstream calls of the proxy.",
            ["model", "result"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.proxied = Counter(
            "paramloop_proxy_requests",
            "Proxied chat completions, by how they were served.",
            ["task_type", "mode"],
            registry=r,
        )
        self.tokens = Counter(
            "paramloop_tokens",
            "Tokens measured by the proxy (budget use).",
            ["task_type", "kind"],
            registry=r,
        )
        self.cost = Counter(
            "paramloop_cost_dollars",
            "Cost measured by the proxy (budget use).",
            ["task_type"],
            registry=r,
        )
        self.errors = Counter(
            "paramloop_errors",
            "Failures inside paramloop and of upstreams, by kind.",
            ["kind"],
            registry=r,
        )
        self.phase = Gauge(
            "paramloop_phase",
            "1 for the rollout's current phase of each task type, 0 for the others.",
            ["task_type", "phase"],
            registry=r,
        )
        self.traffic = Gauge(
            "paramloop_treatment_traffic_percent",
            "Share of units served the policy's choice (the rollout's treatment traffic).",
            ["task_type"],
            registry=r,
        )
        self.frozen = Gauge(
            "paramloop_rollout_frozen",
            "1 when the rollout may not advance (rollback, drift, inconclusive SLOs).",
            ["task_type"],
            registry=r,
        )
        self.budget_used = Gauge(
            "paramloop_budget_used_fraction",
            "Today's spent + reserved over the daily limit (waiver included).",
            ["task_type", "resource"],
            registry=r,
        )
        self.alerts = Counter(
            "paramloop_alerts",
            "Alerts raised by this process.",
            ["task_type", "severity", "kind"],
            registry=r,
        )
        self.rollbacks = Counter(
            "paramloop_rollbacks",
            "Rollbacks made by this process (by a rule or a person).",
            ["task_type"],
            registry=r,
        )
        self.budget_limit = Gauge(
            "paramloop_budget_daily_limit", "Configured daily budget.", ["resource"], registry=r
        )
        self.slo_target = Gauge(
            "paramloop_slo_target", "Configured SLO targets.", ["slo"], registry=r
        )
        self.loop = Gauge(
            "paramloop_optimizer_events",
            "The optimizer's counters (fallbacks, default rewards, …).",
            ["event"],
            registry=r,
        )

    def alert_sink(self, alert: AlertRecord) -> None:
        """An alert sink (:mod:`paramloop.engine.alerts`): count the alert, and rollbacks."""
        self.alerts.labels(alert.task_type, alert.severity, alert.kind).inc()
        if alert.kind == "rollback":
            self.rollbacks.labels(alert.task_type).inc()

    def render(
        self,
        stats: LoopStats,
        rollouts: Mapping[str, RolloutState] | None = None,
        budgets: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> bytes:
        """The text exposition, with the gauges set from the rollouts and budget statuses now."""
        for task_type, state in (rollouts or {}).items():
            for phase in Phase:
                self.phase.labels(task_type, str(phase)).set(int(state.phase is phase))
            self.traffic.labels(task_type).set(state.traffic_percent)
            self.frozen.labels(task_type).set(int(state.frozen))
        for task_type, status in (budgets or {}).items():
            for resource, limit in (status.get("limits") or {}).items():
                if limit:
                    used = status["spent"][resource] + status["reserved"][resource]
                    self.budget_used.labels(task_type, resource).set(used / limit)
        for name in (
            "decisions",
            "outcomes",
            "duplicate_outcomes",
            "default_rewards",
            "measured_outcomes",
            "fallbacks",
        ):
            self.loop.labels(name).set(getattr(stats, name))
        return generate_latest(self.registry)
