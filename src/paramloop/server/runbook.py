"""The endpoints the deployment guide's runbooks call, under ``/api/optimization``.

``health`` (readiness with each rollout's state and the last hour's critical
alerts), ``rollback-status``, ``performance`` (treatment against control over
the SLO window), ``caws-status`` (budgets and waivers, the guide's "CAWS"),
``security-status`` (admin: the keys' names and roles, never their digests) and
``POST test-shadow`` (recent traffic replayed through the candidate policy, no
side effects).  The decision routes' aliases (``recommend``,
``record-outcome``) are registered with the routes themselves (``server/app.py``).
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, cast

from fastapi.responses import JSONResponse

from paramloop.engine.budgets import WAIVER_KIND
from paramloop.errors import ParamloopError
from paramloop.server.models import ShadowTestRequest
from paramloop.server.ops import HEALTH_BUDGET_S, PREFIX, TaskTypeQuery, json_safe
from paramloop.types import Decision

if TYPE_CHECKING:
    from paramloop.server.app import AppState
    from paramloop.server.auth import Routes
    from paramloop.store.base import Store

_HOUR_S = 3_600.0
#: Phases and freezes a person should look at (``health`` lists them under ``attention``).
_ATTENTION_PHASES = ("rolled_back", "paused")


def register(
    read: Routes,
    admin: Routes,
    state: AppState,
    *,
    readiness: Callable[[], Awaitable[dict[str, Any]]],
    summary: Callable[[str], dict[str, Any]],
) -> None:
    settings, optimizer = state.settings, state.service.optimizer
    store = cast("Store", optimizer.store)
    rollout, budgets = state.loop.rollout, state.loop.budgets

    def task_types(task_type: str | None) -> list[str]:
        if task_type is None:
            return list(optimizer.task_types)
        optimizer.config(task_type)  # UnknownTaskTypeError -> 404
        return [task_type]

    @read.get(f"{PREFIX}/health", tags=["runbook"])
    async def health() -> JSONResponse:
        """Readiness (as ``/health/ready``), each task type's rollout, the critical alerts of
        the last hour, and the task types a person should look at; 503 when not ready.
        Answers within about 200 ms whatever the store does (``null`` parts timed out)."""
        body = await readiness()

        def loop_view() -> dict[str, Any]:
            rollouts = [summary(name) for name in optimizer.task_types]
            since = rollout.clock() - _HOUR_S
            critical = [a for a in store.list_alerts(since=since) if a.severity == "critical"]
            return {"rollouts": rollouts, "critical_alerts_last_hour": len(critical)}

        try:
            view = await asyncio.wait_for(state.run(loop_view), HEALTH_BUDGET_S)
        except TimeoutError:
            view = {"rollouts": None, "critical_alerts_last_hour": None}
        rollouts = view["rollouts"] or []
        attention = [
            r["task_type"]
            for r in rollouts
            if r["phase"] in _ATTENTION_PHASES or r["frozen"] or r["recommendations_frozen"]
        ]
        document = json_safe({**body, "live": True, **view, "attention": attention})
        return JSONResponse(document, status_code=200 if body["ready"] else 503)

    @read.get(f"{PREFIX}/rollback-status", tags=["runbook"])
    async def rollback_status(task_type: TaskTypeQuery = None) -> dict[str, Any]:
        """Per task type: the phase, whether it is rolled back or frozen, the SLO rules in
        breach (the automatic rollback's trigger), and the rollbacks recorded, latest first."""

        def build() -> dict[str, Any]:
            rows = []
            for name in task_types(task_type):
                status = rollout.status(name)
                phase_state = status["state"]
                records = store.list_provenance(name, "rollback", limit=20)
                rows.append(
                    {
                        "task_type": name,
                        "phase": phase_state["phase"],
                        "previous_phase": phase_state.get("previous"),
                        "rolled_back": phase_state["phase"] == "rolled_back",
                        "frozen": phase_state["frozen_reason"],
                        "slo_verdict": status["slo"]["verdict"],
                        "breached_rules": [
                            rule for rule in status["slo"]["rules"] if rule["verdict"] == "breach"
                        ],
                        "last_rollback": asdict(records[0]) if records else None,
                        "rollbacks": [asdict(record) for record in records],
                    }
                )
            return json_safe({"tasks": rows})

        return await state.run(build)

    @read.get(f"{PREFIX}/performance", tags=["runbook"])
    async def performance(task_type: TaskTypeQuery = None) -> dict[str, Any]:
        """Per task type: treatment against control over the SLO window (requests, latency
        p50/p99, quality, error rate, cost per request) and their differences, the policy's
        confidence and shadow agreement, and the decisions logged."""

        def build() -> dict[str, Any]:
            rows = []
            for name in task_types(task_type):
                status = rollout.status(name)
                treated, control = status["windows"]["treatment"], status["windows"]["control"]
                rows.append(
                    {
                        "task_type": name,
                        "phase": status["state"]["phase"],
                        "traffic_percent": status["state"]["traffic_percent"],
                        "decisions_logged": store.count_decisions(name),
                        "treatment": treated,
                        "control": control,
                        "difference": {
                            key: _difference(treated.get(key), control.get(key))
                            for key in (
                                "latency_p50_ms",
                                "latency_p99_ms",
                                "quality_mean",
                                "error_rate",
                                "cost_per_request",
                            )
                        },
                        "confidence": status["confidence"],
                        "shadow_agreement": status["shadow_agreement"],
                    }
                )
            return json_safe({"tasks": rows})

        return await state.run(build)

    @read.get(f"{PREFIX}/caws-status", tags=["runbook"])
    async def caws_status(task_type: TaskTypeQuery = None) -> dict[str, Any]:
        """Budgets and waivers (the guide's CAWS): per task type today's limits, spend,
        reservations and level, the waiver in force and its ceiling, and the waivers granted."""

        def build() -> dict[str, Any]:
            rows = []
            for name in task_types(task_type):
                waivers = store.list_provenance(name, WAIVER_KIND, limit=20)
                rows.append(
                    {
                        **budgets.status(name),
                        "waivers": [asdict(record) for record in waivers],
                    }
                )
            return json_safe(
                {
                    "enabled": any(row["budget"] for row in rows),
                    "defaults": dict(settings.budget),
                    "tasks": rows,
                }
            )

        return await state.run(build)

    @admin.get(f"{PREFIX}/security-status", tags=["runbook"])
    async def security_status() -> dict[str, Any]:
        """How callers are admitted: authentication, the keys (name and role; never the
        digests), rate and concurrency limits, the body size limit, the bound host."""
        keys = Counter(key.role for key in settings.api_keys)
        return {
            "auth": "disabled" if settings.auth_disabled else "api_keys",
            "host": settings.host,
            "keys": [{"name": key.name, "role": key.role} for key in settings.api_keys],
            "keys_by_role": dict(keys),
            "rate_limits": {
                "requests_per_minute": settings.rate_limit_rpm,
                "tokens_per_minute": settings.rate_limit_tpm,
                "shared_across_replicas": settings.redis_url is not None,
            },
            "max_concurrency": settings.max_concurrency,
            "max_body_bytes": settings.max_body_bytes,
            "public_metrics": settings.public_metrics,
        }

    @admin.post(f"{PREFIX}/test-shadow", tags=["runbook"])
    async def test_shadow(body: ShadowTestRequest) -> dict[str, Any]:
        """Replay up to ``sample`` recent decisions through the candidate policy (its own
        distribution, whatever the rollout's split) and report how often it would have
        served what was served: ``agreement`` (its most probable arm is the served one) and
        ``expected_agreement`` (the mean probability it gives the served arm).  Nothing is
        logged, learned or changed."""

        def replay() -> dict[str, Any]:
            task_types(body.task_type)
            since = rollout.clock() - body.window_s
            recent: deque[Decision] = deque(maxlen=body.sample)
            for chunk in store.iter_logged(body.task_type, since):
                recent.extend(decision for decision, _ in chunk)
            agree, mass, skipped = 0, 0.0, 0
            served: Counter[int] = Counter()
            preferred: Counter[int] = Counter()
            for decision in recent:
                try:
                    candidate = optimizer.probabilities(
                        body.task_type,
                        decision.context,
                        request_id=decision.request_id,
                        seed=decision.seed,
                        rollout_split=False,
                    )
                except ParamloopError:
                    skipped += 1  # a context today's configuration no longer accepts
                    continue
                best = max(range(len(candidate.arms)), key=candidate.probabilities.__getitem__)
                top = candidate.arms[best]
                agree += top == decision.arm
                mass += candidate.of(decision.arm)
                served[decision.arm] += 1
                preferred[top] += 1
            compared = len(recent) - skipped
            space = optimizer.config(body.task_type).space
            return json_safe(
                {
                    "task_type": body.task_type,
                    "window_s": body.window_s,
                    "sampled": len(recent),
                    "compared": compared,
                    "skipped": skipped,
                    "agreement": agree / compared if compared else None,
                    "expected_agreement": mass / compared if compared else None,
                    "served": _arms(served, space),
                    "candidate_prefers": _arms(preferred, space),
                }
            )

        return await state.run(replay)


def _difference(treatment: Any, control: Any) -> float | None:
    if isinstance(treatment, int | float) and isinstance(control, int | float):
        return float(treatment) - float(control)
    return None


def _arms(counts: Counter[int], space: Any) -> list[dict[str, Any]]:
    """The ten most frequent arms with their parameters and counts."""
    return [
        {"arm": arm, "params": space.params(arm).to_dict(), "count": count}
        for arm, count in counts.most_common(10)
    ]
