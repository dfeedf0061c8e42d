"""Operations endpoints: ``/health``, Prometheus ``/metrics`` and ``/api/optimization/*``.

Read routes answer from the engine and the store; the rollout routes read and
move the loop's :class:`~paramloop.engine.rollout.RolloutController` and
:class:`~paramloop.engine.budgets.BudgetManager`.  Every admin action names the
caller's key as the actor, and the engine appends its audit record with the
change.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any, cast

from fastapi import Query, Request
from fastapi.responses import JSONResponse, Response

from paramloop.core.rollout import RolloutState
from paramloop.engine.rollout import json_safe as finite_json
from paramloop.engine.service import convergence, parameter_evolution, served_rows
from paramloop.server.auth import Principal
from paramloop.server.models import (
    ApprovalRequest,
    RollbackRequest,
    RolloutAction,
    TrafficRequest,
    WaiverRequest,
)
from paramloop.types import AlertRecord

if TYPE_CHECKING:
    from paramloop.server.app import AppState
    from paramloop.server.auth import Routes
    from paramloop.store.base import Store

PREFIX = "/api/optimization"
#: The longest a health check waits for the store or the spool.
HEALTH_BUDGET_S = 0.1
_DAY_S = 86_400.0
#: Alerts read for the compliance summary (the newest; ``truncated`` says when there were more).
_ALERTS_SUMMARIZED = 1_000
TaskTypeQuery = Annotated[
    str | None, Query(max_length=200, description="One task type (default: all).")
]


def register(public: Routes, read: Routes, admin: Routes, state: AppState) -> None:
    settings, service, metrics = state.settings, state.service, state.metrics
    optimizer = service.optimizer
    store = cast("Store", optimizer.store)  # every paramloop store keeps the audit log too
    rollout, budgets = state.loop.rollout, state.loop.budgets

    def rollout_summary(name: str) -> dict[str, Any]:
        status = rollout.status(name)
        rollout_state = status["state"]
        return {
            "task_type": name,
            "phase": rollout_state["phase"],
            "traffic_percent": rollout_state["traffic_percent"],
            "frozen": rollout_state["frozen_reason"],
            "recommendations_frozen": status["recommendations_frozen"],
            "slo_verdict": status["slo"]["verdict"],
            "promotion_ready": status["promotion"]["ready"],
            "budget_level": str(budgets.level(name)),
        }

    def task_types(task_type: str | None) -> list[str]:
        if task_type is None:
            return list(optimizer.task_types)
        optimizer.config(task_type)  # UnknownTaskTypeError -> 404
        return [task_type]

    def store_probe() -> dict[str, Any]:
        start = time.perf_counter()
        try:
            store.get_decision("__paramloop_health__")
        except Exception as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {"ok": True, "latency_ms": round((time.perf_counter() - start) * 1000, 3)}

    async def readiness() -> dict[str, Any]:
        """The store (asked for at most ``HEALTH_BUDGET_S``) and the spool: can writes be kept?"""
        try:
            probe = await asyncio.wait_for(state.run(store_probe), HEALTH_BUDGET_S)
        except TimeoutError:
            probe = {"ok": False, "error": f"no answer within {HEALTH_BUDGET_S * 1000:g} ms"}
        body: dict[str, Any] = {"store": probe}
        spooled = state.spool
        if spooled is not None:
            try:
                pending = await asyncio.wait_for(state.run(len, spooled.spool), HEALTH_BUDGET_S)
                body["spool"] = {"ok": True, "pending": pending, "path": str(spooled.spool.path)}
            except Exception as exc:
                body["spool"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        # Writes are kept when the store takes them, or the spool does while it is away.
        ready = probe["ok"] or body.get("spool", {}).get("ok", False)
        body["ready"] = ready
        body["status"] = "ok" if probe["ok"] else "degraded" if ready else "unavailable"
        return body

    @public.get("/health/live", tags=["operations"])
    async def live() -> dict[str, Any]:
        """Liveness: the process answers (the store is never asked)."""
        return {"status": "ok", "live": True, "uptime_s": round(time.time() - state.started, 3)}

    @public.get("/health/ready", tags=["operations"])
    async def ready() -> JSONResponse:
        """Readiness, within 100 ms: 200 when writes are kept (by the store, or by this
        replica's spool while the store is away: ``status`` "degraded"), 503 when not."""
        body = await readiness()
        return JSONResponse({**body, "live": True}, status_code=200 if body["ready"] else 503)

    @public.get("/health", tags=["operations"])
    async def health() -> JSONResponse:
        """Liveness and readiness together (as ``/health/ready``), within 100 ms."""
        body = await readiness()
        return JSONResponse({**body, "live": True}, status_code=200 if body["ready"] else 503)

    metrics_router = public if settings.public_metrics else read

    def render() -> bytes:
        names = optimizer.task_types
        return metrics.render(
            optimizer.stats,
            {n: rollout.state(n) for n in names},
            {n: budgets.status(n) for n in names if budgets.limits.get(n)},
        )

    @metrics_router.get("/metrics", tags=["operations"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus text exposition of this process's metrics."""
        return Response(
            await state.run(render), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    def status_body() -> dict[str, Any]:
        stats = optimizer.stats
        return {
            "service": "paramloop",
            # which replica answered (a process of `paramloop serve --workers N`, or a host)
            "replica": {"host": socket.gethostname(), "pid": os.getpid()},
            "uptime_s": round(time.time() - state.started, 3),
            "enabled": settings.enabled,
            # where a new rollout starts; a stored rollout keeps its own phase (tasks[].rollout)
            "mode": settings.mode,
            "traffic_percentage": settings.traffic_percentage,
            "auth": "disabled" if settings.auth_disabled else "keys",
            "store": {"backend": type(store).__name__, **store_probe()},
            "loop": {
                "decisions": stats.decisions,
                "outcomes": stats.outcomes,
                "duplicate_outcomes": stats.duplicate_outcomes,
                "default_rewards": stats.default_rewards,
                "measured_outcomes": stats.measured_outcomes,
                "fallbacks": stats.fallbacks,
                "last_error": stats.last_error,
            },
            "tasks": [
                {
                    "task_type": name,
                    "policy": optimizer.policy(name).label,
                    "policy_revision": optimizer.policy(name).revision,
                    "feasible_arms": len(optimizer.config(name).space.feasible_arms),
                    "reward_wait_s": optimizer.config(name).reward_wait_s,
                    "feedback": service.options[name].feedback,
                    "pinned": service.options[name].pinned,
                    "rollout": {
                        "phase": str(rollout_state.phase),
                        "traffic_percent": rollout_state.traffic_percent,
                        "frozen": rollout_state.frozen_reason,
                    },
                }
                for name in optimizer.task_types
                for rollout_state in (rollout.state(name),)
            ],
            "slo": dict(settings.slo),
            "budget": dict(settings.budget),
        }

    @read.get(f"{PREFIX}/status", tags=["operations"])
    async def status() -> dict[str, Any]:
        """The service: mode, traffic share, store, loop counters, task types, SLO and budget settings."""
        return await state.run(status_body)

    def metrics_body(task_type: str | None) -> dict[str, Any]:
        names = task_types(task_type)
        served = _by_label(metrics, "paramloop_proxy_requests", "task_type")
        tokens = _by_label(metrics, "paramloop_tokens", "task_type")
        cost = _by_label(metrics, "paramloop_cost_dollars", "task_type")
        rows = []
        for name in names:
            recent = service.activity.recent(name)
            rewards = [s.reward for s in recent if s.reward is not None]
            rows.append(
                {
                    "task_type": name,
                    "decisions_logged": store.count_decisions(name),
                    "recent_decisions": len(recent),
                    "recent_rewarded": len(rewards),
                    "recent_reward_mean": sum(rewards) / len(rewards) if rewards else None,
                    "proxied": served.get(name, {}),
                    "tokens": tokens.get(name, {}),
                    "cost": sum(cost.get(name, {}).values()),
                }
            )
        return {"tasks": rows, "errors": _by_label(metrics, "paramloop_errors", None).get(None, {})}

    @read.get(f"{PREFIX}/metrics", tags=["operations"])
    async def metrics_json(task_type: TaskTypeQuery = None) -> dict[str, Any]:
        """Per task type: decisions, recent rewards, proxied requests by mode, tokens and cost."""
        return await state.run(metrics_body, task_type)

    @read.get(f"{PREFIX}/dashboard", tags=["operations"])
    async def dashboard(task_type: TaskTypeQuery = None) -> dict[str, Any]:
        """Everything the dashboard draws, in one document."""

        def build() -> dict[str, Any]:
            names = task_types(task_type)
            return {
                "status": status_body(),
                "metrics": metrics_body(task_type)["tasks"],
                "convergence": convergence(service.activity, names),
                "parameter_evolution": {
                    n: parameter_evolution(service.activity, n, 20) for n in names
                },
                "baseline_parameters": [_baseline(optimizer, n) for n in names],
                "rollout": [rollout_summary(n) for n in names],
            }

        return json_safe(await state.run(build))

    @read.get(f"{PREFIX}/baseline-parameters", tags=["operations"])
    async def baseline_parameters(task_type: TaskTypeQuery = None) -> dict[str, Any]:
        """The baseline of each task type (what is served when paramloop is off) and its trust region."""
        return {"tasks": [_baseline(optimizer, n) for n in task_types(task_type)]}

    @read.get(f"{PREFIX}/logs", tags=["operations"])
    async def logs(
        task_type: Annotated[str, Query(max_length=200)],
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """The latest decisions of a task type served by this process, newest first, with rewards."""
        task_types(task_type)
        return {
            "task_type": task_type,
            "decisions": served_rows(service.activity, task_type, limit),
        }

    @read.get(f"{PREFIX}/db-status", tags=["operations"])
    async def db_status() -> dict[str, Any]:
        """The store: backend, location (no password), reachability, schema revision, row counts."""

        def build() -> dict[str, Any]:
            from paramloop.store.migrate import HEAD

            probe = store_probe()
            spooled = state.spool
            primary = spooled.primary if spooled is not None else store
            body: dict[str, Any] = {
                "backend": type(primary).__name__,
                "location": getattr(primary, "location", "memory"),
                "schema_revision": HEAD,
                **probe,
            }
            if spooled is not None:
                body["spool"] = {
                    "path": str(spooled.spool.path),
                    "pending": len(spooled.spool),
                    "refused": spooled.spool.refused,
                    "store_available": spooled.available,
                    "down_reason": spooled.down_reason,
                    **asdict(spooled.stats),
                }
            if probe["ok"]:
                body["decisions"] = {n: store.count_decisions(n) for n in optimizer.task_types}
            return body

        return await state.run(build)

    @read.get(f"{PREFIX}/audit-logs", tags=["operations"])
    async def audit_logs(
        task_type: TaskTypeQuery = None,
        kind: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """The append-only audit trail (approvals, phase changes, rollbacks, waivers), newest first."""
        records = await state.run(store.list_provenance, task_type, kind, limit)
        return {
            "records": [
                {
                    "id": r.id,
                    "kind": r.kind,
                    "task_type": r.task_type,
                    "actor": r.actor,
                    "reason": r.reason,
                    "evidence": dict(r.evidence),
                    "policy_versions": dict(r.policy_versions),
                    "timestamp": r.timestamp,
                }
                for r in records
            ]
        }

    @read.get(f"{PREFIX}/convergence", tags=["operations"])
    async def convergence_route(task_type: TaskTypeQuery = None) -> dict[str, Any]:
        """Is each policy settling? Top-arm share and rewards of the recent decisions of this process."""
        return {"tasks": convergence(service.activity, task_types(task_type))}

    @read.get(f"{PREFIX}/parameter-evolution", tags=["operations"])
    async def parameter_evolution_route(
        task_type: Annotated[str, Query(max_length=200)],
        buckets: Annotated[int, Query(ge=1, le=200)] = 20,
    ) -> dict[str, Any]:
        """Mean parameters and reward of the recent decisions, in equal slices, oldest first."""
        task_types(task_type)
        return {
            "task_type": task_type,
            "buckets": parameter_evolution(service.activity, task_type, buckets),
        }

    @admin.post(f"{PREFIX}/approvals", tags=["operations"], status_code=201)
    async def approve(body: ApprovalRequest, request: Request) -> dict[str, Any]:
        """Approve a passed gate report; the caller's key name is the actor in the audit record."""
        from paramloop.engine.gates import approve as approve_report

        principal: Principal = request.state.principal
        record = await state.run(
            approve_report, store, body.report_id, actor=principal.name, reason=body.reason
        )
        return {
            "id": record.id,
            "kind": record.kind,
            "task_type": record.task_type,
            "actor": record.actor,
        }

    @read.get(f"{PREFIX}/rollout-status", tags=["rollout"])
    async def rollout_status(task_type: TaskTypeQuery = None) -> dict[str, Any]:
        """Per task type: phase, traffic, freezes, SLOs, windows, promotion requirements, drift."""

        def build() -> dict[str, Any]:
            return {"tasks": [json_safe(rollout.status(n)) for n in task_types(task_type)]}

        return await state.run(build)

    @read.get(f"{PREFIX}/slo-status", tags=["rollout"])
    async def slo_status(task_type: TaskTypeQuery = None) -> dict[str, Any]:
        """Per task type: the SLO verdict of the phase, each rule's figures, and the windows."""

        def build() -> dict[str, Any]:
            rows = []
            for name in task_types(task_type):
                status = rollout.status(name)
                rows.append(
                    {
                        "task_type": name,
                        "phase": status["state"]["phase"],
                        "traffic_percent": status["state"]["traffic_percent"],
                        "verdict": status["slo"]["verdict"],
                        "rules": status["slo"]["rules"],
                        "windows": status["windows"],
                    }
                )
            return json_safe({"tasks": rows})

        return await state.run(build)

    @read.get(f"{PREFIX}/compliance-status", tags=["rollout"])
    async def compliance_status(task_type: TaskTypeQuery = None) -> dict[str, Any]:
        """Budgets of today, hard-constraint breaches and alerts of the last 24 hours."""

        def build() -> dict[str, Any]:
            names = task_types(task_type)
            since = rollout.clock() - _DAY_S
            by_origin = _by_label(metrics, "paramloop_decisions", "task_type")
            rows = []
            for name in names:
                reward = optimizer.config(name).reward
                logged = store.summarize_log(
                    name,
                    since,
                    max_latency_ms=reward.max_latency_ms,
                    max_tokens=reward.max_tokens,
                    max_cost=reward.max_cost,
                )
                rows.append(
                    {
                        "task_type": name,
                        "budget": budgets.status(name),
                        "constraints": {
                            "window_s": _DAY_S,
                            "decisions": logged.decisions,
                            "outcomes": logged.outcomes,
                            "violations": logged.violations,
                            "budget_baseline_served": by_origin.get(name, {}).get(
                                "budget:baseline", 0.0
                            ),
                        },
                    }
                )
            recent = store.list_alerts(task_type, since=since, limit=_ALERTS_SUMMARIZED)
            return json_safe({"tasks": rows, "alerts": _alert_summary(recent, _DAY_S)})

        return await state.run(build)

    @read.get(f"{PREFIX}/alerts", tags=["rollout"])
    async def alerts(
        task_type: TaskTypeQuery = None,
        since: Annotated[float | None, Query(ge=0, description="Epoch seconds.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """Raised alerts (rollbacks, freezes, budget levels, low confidence), newest first."""
        if task_type is not None:
            task_types(task_type)
        records = await state.run(store.list_alerts, task_type, since=since, limit=limit)
        return json_safe({"alerts": [a.to_dict() for a in records]})

    def action(change: Callable[..., RolloutState], doc: str) -> Any:
        async def endpoint(body: RolloutAction, request: Request) -> dict[str, Any]:
            principal: Principal = request.state.principal
            new = await state.run(change, body.task_type, actor=principal.name, reason=body.reason)
            return {"task_type": body.task_type, "state": new.to_dict()}

        endpoint.__doc__ = doc
        endpoint.__name__ = change.__name__
        return endpoint

    for name, change, doc in (
        (
            "advance",
            rollout.advance,
            "Promote to the next phase when every requirement holds (the caller approves); "
            "409 with the failed requirements otherwise.",
        ),
        ("pause", rollout.pause, "Hold an active phase: traffic stays, nothing advances."),
        ("resume", rollout.resume, "Resume the paused phase (its clock restarts)."),
        ("restart", rollout.restart, "Start again in shadow after a rollback."),
        (
            "unfreeze",
            rollout.unfreeze,
            "Thaw a freeze (drift, inconclusive SLOs, a step back) after review.",
        ),
    ):
        admin.add_api_route(
            f"{PREFIX}/{name}", action(change, doc), methods=["POST"], tags=["rollout"]
        )

    @admin.post(f"{PREFIX}/rollback", tags=["rollout"])
    async def rollback(body: RollbackRequest, request: Request) -> dict[str, Any]:
        """Roll back now: one phase down (``previous``) or to baseline-only (default: the plan's)."""
        principal: Principal = request.state.principal
        new = await state.run(
            rollout.rollback, body.task_type, actor=principal.name, reason=body.reason, to=body.to
        )
        return {"task_type": body.task_type, "state": new.to_dict()}

    @admin.post(f"{PREFIX}/traffic", tags=["rollout"])
    async def traffic(body: TrafficRequest, request: Request) -> dict[str, Any]:
        """Set the treatment share within the current phase's bounds (422 outside them)."""
        principal: Principal = request.state.principal
        new = await state.run(
            rollout.set_traffic,
            body.task_type,
            body.percent,
            actor=principal.name,
            reason=body.reason,
        )
        return {"task_type": body.task_type, "state": new.to_dict()}

    from paramloop.server import runbook  # imports this module's helpers

    runbook.register(read, admin, state, readiness=readiness, summary=rollout_summary)

    @admin.post(f"{PREFIX}/budget-waiver", tags=["rollout"])
    async def budget_waiver(body: WaiverRequest, request: Request) -> dict[str, Any]:
        """Raise today's budget limits by ``percent`` (at most the task type's threshold: 422)."""
        principal: Principal = request.state.principal

        def waive() -> dict[str, Any]:
            budgets.waive(body.task_type, body.percent, actor=principal.name, reason=body.reason)
            return budgets.status(body.task_type)

        return {"task_type": body.task_type, "budget": json_safe(await state.run(waive))}


def json_safe(document: Mapping[str, Any]) -> dict[str, Any]:
    """Plain JSON data: NaN and infinities (open bounds, unlimited amounts) become ``None``."""
    return cast("dict[str, Any]", finite_json(document))


def _alert_summary(alerts: list[AlertRecord], window_s: float) -> dict[str, Any]:
    """Counts by severity and kind, and the latest few, of alerts newest first."""
    by_severity: dict[str, int] = {}
    by_kind: dict[str, int] = {}
    for alert in alerts:
        by_severity[alert.severity] = by_severity.get(alert.severity, 0) + 1
        by_kind[alert.kind] = by_kind.get(alert.kind, 0) + 1
    return {
        "window_s": window_s,
        "total": len(alerts),
        "truncated": len(alerts) >= _ALERTS_SUMMARIZED,
        "by_severity": by_severity,
        "by_kind": by_kind,
        "latest": [a.to_dict() for a in alerts[:10]],
    }


def _baseline(optimizer: Any, task_type: str) -> dict[str, Any]:
    space = optimizer.config(task_type).space
    return {
        "task_type": task_type,
        "params": space.baseline.to_dict(),
        "request": space.baseline.to_request(),
        "trust_region": {
            "radius": dict(space.trust_region.radius),
            "allowed": {k: list(v) for k, v in space.trust_region.allowed.items()},
        },
    }


def _by_label(metrics: Any, name: str, label: str | None) -> dict[Any, dict[str, float]]:
    """Counter totals of one metric, grouped by one label's value, then by the other labels."""
    out: dict[Any, dict[str, float]] = {}
    for family in metrics.registry.collect():
        if family.name != name:
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = dict(sample.labels)
            key = labels.pop(label) if label is not None else None
            rest = ",".join(str(v) for _, v in sorted(labels.items())) or "total"
            out.setdefault(key, {})[rest] = out.get(key, {}).get(rest, 0.0) + sample.value
    return out
