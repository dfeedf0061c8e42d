"""Operations endpoints: ``/health``, Prometheus ``/metrics`` and ``/api/optimization/*``.

Read routes answer from the engine and the store; the rollout and budget
routes (``slo-status``, ``rollout-status``, ``compliance-status``,
``rollback``, ``advance``) are published with their roles and answer 501 until
the rollout controller lands.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any, cast

from fastapi import Query, Request
from fastapi.responses import JSONResponse, Response

from paramloop.engine.service import convergence, parameter_evolution, served_rows
from paramloop.server.auth import Principal
from paramloop.server.models import ApprovalRequest

if TYPE_CHECKING:
    from paramloop.server.app import AppState
    from paramloop.server.auth import Routes
    from paramloop.store.base import Store

_PREFIX = "/api/optimization"
_LATER = "needs the rollout controller, which this version of paramloop does not have yet"
TaskTypeQuery = Annotated[
    str | None, Query(max_length=200, description="One task type (default: all).")
]


def register(public: Routes, read: Routes, admin: Routes, state: AppState) -> None:
    settings, service, metrics = state.settings, state.service, state.metrics
    optimizer = service.optimizer
    store = cast("Store", optimizer.store)  # every paramloop store keeps the audit log too

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

    @public.get("/health", tags=["operations"])
    async def health() -> JSONResponse:
        """Liveness (the process answers) and readiness (the store answers): 200 ready, 503 not."""
        probe = await state.run(store_probe)
        body = {
            "status": "ok" if probe["ok"] else "unavailable",
            "live": True,
            "ready": probe["ok"],
            "store": probe,
        }
        return JSONResponse(body, status_code=200 if probe["ok"] else 503)

    metrics_router = public if settings.public_metrics else read

    @metrics_router.get("/metrics", tags=["operations"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus text exposition of this process's metrics."""
        return Response(
            metrics.render(optimizer.stats), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    def status_body() -> dict[str, Any]:
        stats = optimizer.stats
        return {
            "service": "paramloop",
            "uptime_s": round(time.time() - state.started, 3),
            "enabled": settings.enabled,
            "mode": settings.mode,
            "optimizing": settings.optimizing,
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
                }
                for name in optimizer.task_types
            ],
            "slo": dict(settings.slo),
            "budget": dict(settings.budget),
        }

    @read.get(f"{_PREFIX}/status", tags=["operations"])
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

    @read.get(f"{_PREFIX}/metrics", tags=["operations"])
    async def metrics_json(task_type: TaskTypeQuery = None) -> dict[str, Any]:
        """Per task type: decisions, recent rewards, proxied requests by mode, tokens and cost."""
        return await state.run(metrics_body, task_type)

    @read.get(f"{_PREFIX}/dashboard", tags=["operations"])
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
            }

        return await state.run(build)

    @read.get(f"{_PREFIX}/baseline-parameters", tags=["operations"])
    async def baseline_parameters(task_type: TaskTypeQuery = None) -> dict[str, Any]:
        """The baseline of each task type (what is served when paramloop is off) and its trust region."""
        return {"tasks": [_baseline(optimizer, n) for n in task_types(task_type)]}

    @read.get(f"{_PREFIX}/logs", tags=["operations"])
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

    @read.get(f"{_PREFIX}/db-status", tags=["operations"])
    async def db_status() -> dict[str, Any]:
        """The store: backend, location (no password), reachability, schema revision, row counts."""

        def build() -> dict[str, Any]:
            from paramloop.store.migrate import HEAD

            probe = store_probe()
            body: dict[str, Any] = {
                "backend": type(store).__name__,
                "location": getattr(store, "location", "memory"),
                "schema_revision": HEAD,
                **probe,
            }
            if probe["ok"]:
                body["decisions"] = {n: store.count_decisions(n) for n in optimizer.task_types}
            return body

        return await state.run(build)

    @read.get(f"{_PREFIX}/audit-logs", tags=["operations"])
    async def audit_logs(
        task_type: TaskTypeQuery = None,
        kind: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """The append-only audit trail (approvals, later phase changes and rollbacks), newest first."""
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

    @read.get(f"{_PREFIX}/convergence", tags=["operations"])
    async def convergence_route(task_type: TaskTypeQuery = None) -> dict[str, Any]:
        """Is each policy settling? Top-arm share and rewards of the recent decisions of this process."""
        return {"tasks": convergence(service.activity, task_types(task_type))}

    @read.get(f"{_PREFIX}/parameter-evolution", tags=["operations"])
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

    @admin.post(f"{_PREFIX}/approvals", tags=["operations"], status_code=201)
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

    for path, router, method in (
        ("slo-status", read, "GET"),
        ("rollout-status", read, "GET"),
        ("compliance-status", read, "GET"),
        ("rollback", admin, "POST"),
        ("advance", admin, "POST"),
    ):
        router.add_api_route(
            f"{_PREFIX}/{path}",
            _later(path),
            methods=[method],
            tags=["operations (later)"],
            responses={501: {"description": "Not implemented yet: " + _LATER}},
        )


def _later(name: str) -> Any:
    async def later() -> JSONResponse:
        body = {
            "error": {
                "message": f"{name} {_LATER}",
                "type": "not_implemented",
                "param": None,
                "code": None,
            }
        }
        return JSONResponse(body, status_code=501)

    later.__name__ = name.replace("-", "_")
    return later


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
