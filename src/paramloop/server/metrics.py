"""Prometheus metrics of one app, on a registry of its own (tests build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from paramloop.engine.optimizer import LoopStats

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
    """Decisions, outcomes, rewards, latencies, phase, budget use and errors."""

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
        self.phase = Gauge("paramloop_phase", "1 for the current phase.", ["phase"], registry=r)
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

    def render(self, stats: LoopStats) -> bytes:
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
