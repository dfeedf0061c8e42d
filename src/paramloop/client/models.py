"""What the service answers, as frozen dataclasses; and the errors a client raises.

The service's bodies are pydantic models in ``paramloop.server.models``, but the
client does not import the server (it would bring FastAPI along), so each answer
is read here into a small typed value through its ``from_json`` constructor.
Where a part of an answer has no type of its own yet (an SLO rule's figures, a
rollout's windows) it stays a read-only mapping of plain JSON data.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from paramloop.core.rollout import RolloutState
from paramloop.engine.variants import PromptVariant
from paramloop.errors import ParamloopError
from paramloop.types import Outcome, Params


class ParamloopAPIError(ParamloopError):
    """The service answered with an error.

    ``status`` is the HTTP status; ``error_type`` (the body's ``type``), ``code``,
    ``message`` and ``field``
    (the error body's ``param``: the offending field, when there is one) come from
    the JSON error body, kept whole in ``body``.  ``retry_after`` is the seconds
    the service asked the caller to wait (``Retry-After``, on 429 and 503), else
    ``None``; ``requirements`` lists the failed requirements of a refused promotion.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        code: str | None = None,
        field: str | None = None,
        retry_after: float | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code
        self.field = field
        self.retry_after = retry_after
        self.body: Mapping[str, Any] = MappingProxyType(dict(body or {}))
        where = f" ({field})" if field else ""
        super().__init__(f"paramloop answered {status}{where}: {message}")

    @property
    def unavailable(self) -> bool:
        """Whether the service could not take the call now (429: rate limited; 5xx: overloaded,
        its store away, …), rather than refusing the call itself: retrying later may work."""
        return self.status == 429 or self.status >= 500

    @property
    def requirements(self) -> tuple[Mapping[str, Any], ...]:
        error = self.body.get("error")
        found = error.get("requirements") if isinstance(error, Mapping) else None
        return tuple(found) if isinstance(found, list) else ()

    @classmethod
    def from_response(
        cls, status: int, content: bytes, headers: Mapping[str, str], parsed: Any
    ) -> ParamloopAPIError:
        """The error of one answer: ``parsed`` is its JSON body, or ``None`` when it had none."""
        retry_after = parse_retry_after(headers.get("retry-after"))
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if not isinstance(error, dict):
            text = content[:200].decode("utf-8", "replace").strip() or "(no body)"
            return cls(status, f"not a paramloop error body: {text}", retry_after=retry_after)
        return cls(
            status,
            str(error.get("message") or "(no message)"),
            error_type=_str_or_none(error.get("type")),
            code=_str_or_none(error.get("code")),
            field=_str_or_none(error.get("param")),
            retry_after=retry_after,
            body=parsed,
        )


class ParamloopConnectionError(ParamloopError):
    """The service could not be reached, or did not answer within the client's timeout."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(f"paramloop at {url} could not be reached: {problem}")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), else ``None``.

    >>> parse_retry_after("7"), parse_retry_after(None), parse_retry_after("soon")
    (7.0, None, None)
    >>> parse_retry_after("Thu, 01 Jan 1970 00:01:00 GMT", now=30.0)
    30.0
    """
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


@dataclass(frozen=True, slots=True)
class Recommendation:
    """The answer to ``recommend``: one logged decision (see the glossary's *decision*).

    ``params`` are the chosen parameters; ``request`` the same as keyword arguments
    of an OpenAI chat completion call.  ``logged`` says whether an outcome can be
    recorded for it (``False`` for the baseline served while optimization is off or
    when the decision could not be logged).
    """

    request_id: str
    task_type: str
    params: Params
    request: Mapping[str, Any]
    arm: int
    propensity: float
    confidence: float
    policy: str
    policy_revision: int
    origin: str
    phase: str
    intended_arm: int | None
    applied: bool
    logged: bool
    context_fingerprint: int
    timestamp: float
    error: str | None = None
    #: The declaration of ``params.prompt_variant`` (the wrapper applies it to the messages).
    variant: PromptVariant | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Recommendation:
        intended = data.get("intended_arm")
        variant = data.get("variant")
        return cls(
            request_id=str(data["request_id"]),
            task_type=str(data["task_type"]),
            params=Params.from_dict(data["params"]),
            request=MappingProxyType(dict(data["request"])),
            arm=int(data["arm"]),
            propensity=float(data["propensity"]),
            confidence=float(data["confidence"]),
            policy=str(data["policy"]),
            policy_revision=int(data["policy_revision"]),
            origin=str(data["origin"]),
            phase=str(data["phase"]),
            intended_arm=None if intended is None else int(intended),
            applied=bool(data["applied"]),
            logged=bool(data["logged"]),
            context_fingerprint=int(data["context_fingerprint"]),
            timestamp=float(data["timestamp"]),
            error=_str_or_none(data.get("error")),
            variant=None if variant is None else PromptVariant(**variant),
        )


@dataclass(frozen=True, slots=True)
class OutcomeReceipt:
    """An outcome as the service recorded it, with its reward (``source``: ``observed``, …)."""

    request_id: str
    task_type: str
    outcome: Outcome
    reward: float
    reward_version: str
    source: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OutcomeReceipt:
        return cls(
            request_id=str(data["request_id"]),
            task_type=str(data["task_type"]),
            outcome=Outcome.from_dict(data["outcome"]),
            reward=float(data["reward"]),
            reward_version=str(data["reward_version"]),
            source=str(data["source"]),
        )


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """One task type in ``status``: its policy, feedback and pin modes, and its rollout."""

    task_type: str
    policy: str
    policy_revision: int
    feasible_arms: int
    reward_wait_s: float
    feedback: str
    pinned: str
    phase: str
    traffic_percent: float
    frozen: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskStatus:
        rollout = data["rollout"]
        return cls(
            task_type=str(data["task_type"]),
            policy=str(data["policy"]),
            policy_revision=int(data["policy_revision"]),
            feasible_arms=int(data["feasible_arms"]),
            reward_wait_s=float(data["reward_wait_s"]),
            feedback=str(data["feedback"]),
            pinned=str(data["pinned"]),
            phase=str(rollout["phase"]),
            traffic_percent=float(rollout["traffic_percent"]),
            frozen=_str_or_none(rollout.get("frozen")),
        )


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """``status``: whether optimization is on, where new rollouts start, the store, the task types.

    ``store`` and ``loop`` (the loop's counters) are kept as the service sent them.
    """

    enabled: bool
    mode: str
    traffic_percentage: float | None
    auth: str
    store: Mapping[str, Any]
    loop: Mapping[str, Any]
    tasks: tuple[TaskStatus, ...]
    uptime_s: float

    @property
    def store_ok(self) -> bool:
        return bool(self.store.get("ok"))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServiceStatus:
        traffic = data.get("traffic_percentage")
        return cls(
            enabled=bool(data["enabled"]),
            mode=str(data["mode"]),
            traffic_percentage=None if traffic is None else float(traffic),
            auth=str(data["auth"]),
            store=_frozen(data["store"]),
            loop=_frozen(data["loop"]),
            tasks=tuple(TaskStatus.from_json(t) for t in data["tasks"]),
            uptime_s=float(data["uptime_s"]),
        )


@dataclass(frozen=True, slots=True)
class RolloutStatus:
    """``rollout-status`` of one task type: its state, SLO verdict and promotion readiness.

    ``slo``, ``windows``, ``promotion`` and ``drift`` are the service's documents.
    """

    task_type: str
    state: RolloutState
    in_phase_s: float
    recommendations_frozen: bool
    slo_verdict: str
    promotion_ready: bool
    slo: Mapping[str, Any]
    windows: Mapping[str, Any]
    promotion: Mapping[str, Any]
    drift: Mapping[str, Any]
    note: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RolloutStatus:
        return cls(
            task_type=str(data["task_type"]),
            state=RolloutState.from_dict(data["state"]),
            in_phase_s=float(data["in_phase_s"]),
            recommendations_frozen=bool(data["recommendations_frozen"]),
            slo_verdict=str(data["slo"]["verdict"]),
            promotion_ready=bool(data["promotion"].get("ready")),
            slo=_frozen(data["slo"]),
            windows=_frozen(data["windows"]),
            promotion=_frozen(data["promotion"]),
            drift=_frozen(data["drift"]),
            note=_str_or_none(data.get("note")),
        )


@dataclass(frozen=True, slots=True)
class SLOStatus:
    """``slo-status`` of one task type: the phase's verdict, each rule's figures, the windows."""

    task_type: str
    phase: str
    traffic_percent: float
    verdict: str
    rules: tuple[Mapping[str, Any], ...]
    windows: Mapping[str, Any]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SLOStatus:
        return cls(
            task_type=str(data["task_type"]),
            phase=str(data["phase"]),
            traffic_percent=float(data["traffic_percent"]),
            verdict=str(data["verdict"]),
            rules=tuple(_frozen(r) for r in data["rules"]),
            windows=_frozen(data["windows"]),
        )


@dataclass(frozen=True, slots=True)
class Alert:
    """A raised alert: rollbacks, freezes, budget levels, low confidence."""

    id: int
    severity: str
    kind: str
    task_type: str
    message: str
    evidence: Mapping[str, Any]
    created_at: float

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Alert:
        return cls(
            id=int(data["id"]),
            severity=str(data["severity"]),
            kind=str(data["kind"]),
            task_type=str(data["task_type"]),
            message=str(data["message"]),
            evidence=_frozen(data.get("evidence") or {}),
            created_at=float(data["created_at"]),
        )


@dataclass(frozen=True, slots=True)
class RolloutChange:
    """The answer to an admin action on a rollout (rollback, traffic): its new state."""

    task_type: str
    state: RolloutState

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RolloutChange:
        return cls(task_type=str(data["task_type"]), state=RolloutState.from_dict(data["state"]))


@dataclass(frozen=True, slots=True)
class Approval:
    """The audit record of an approved gate report; ``actor`` is the approving key's name."""

    id: int
    kind: str
    task_type: str
    actor: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Approval:
        return cls(
            id=int(data["id"]),
            kind=str(data["kind"]),
            task_type=str(data["task_type"]),
            actor=str(data["actor"]),
        )


@dataclass(frozen=True, slots=True)
class Health:
    """``health/live`` or ``health/ready``: ``ready`` is ``None`` for liveness (not asked).

    ``status`` is ``ok``, ``degraded`` (the store is away and this replica's spool
    keeps the writes) or ``unavailable``; ``details`` holds the store and spool probes.
    """

    status: str
    live: bool
    ready: bool | None
    details: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Health:
        ready = data.get("ready")
        rest = {k: v for k, v in data.items() if k not in ("status", "live", "ready")}
        return cls(
            status=str(data["status"]),
            live=bool(data.get("live", True)),
            ready=None if ready is None else bool(ready),
            details=_frozen(rest),
        )


def _frozen(data: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(data))


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


__all__ = [
    "Alert",
    "Approval",
    "Health",
    "OutcomeReceipt",
    "ParamloopAPIError",
    "ParamloopConnectionError",
    "RolloutChange",
    "RolloutStatus",
    "SLOStatus",
    "ServiceStatus",
    "TaskStatus",
    "parse_retry_after",
]
