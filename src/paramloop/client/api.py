"""``ParamloopClient`` and ``AsyncParamloopClient``: the service's decision API and operations.

Both speak to one paramloop service over httpx and return the typed values of
:mod:`paramloop.client.models`.  Each endpoint is described once, as a
:class:`Call` (method, path, body, how to read the answer); the two clients
differ only in how they send it.  An error answer raises
:class:`~paramloop.client.models.ParamloopAPIError` with the service's error
body; a service that cannot be reached raises
:class:`~paramloop.client.models.ParamloopConnectionError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar
from urllib.parse import urlsplit

import httpx
import orjson

from paramloop import __version__
from paramloop.client.models import (
    Alert,
    Approval,
    Health,
    OutcomeReceipt,
    ParamloopAPIError,
    ParamloopConnectionError,
    Recommendation,
    RolloutChange,
    RolloutStatus,
    ServiceStatus,
    SLOStatus,
)
from paramloop.errors import ConfigError
from paramloop.types import FeatureValue, Outcome

T = TypeVar("T")

#: Where the service keeps its operations endpoints.
OPERATIONS = "/api/optimization"
DEFAULT_TIMEOUT_S = 10.0
USER_AGENT = f"paramloop-client/{__version__}"


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """A client's validated arguments (see :class:`ParamloopClient`)."""

    base_url: str
    api_key: str | None
    timeout: float

    def __post_init__(self) -> None:
        if not isinstance(self.base_url, str):
            raise ConfigError("base_url", f"must be a string, got {type(self.base_url).__name__}")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                "base_url",
                f"must be an http(s) URL such as http://127.0.0.1:8080, got {self.base_url!r}",
            )
        if parts.query or parts.fragment:
            raise ConfigError("base_url", f"must have no query or fragment, got {self.base_url!r}")
        if parts.path.rstrip("/").endswith("/v1"):
            raise ConfigError(
                "base_url",
                f"is the service's root, without /v1 (that is the OpenAI clients' base URL), "
                f"got {self.base_url!r}",
            )
        if self.api_key is not None and (
            not isinstance(self.api_key, str)
            or not self.api_key
            or any(c.isspace() or not c.isprintable() for c in self.api_key)
        ):
            raise ConfigError(
                "api_key", "must be a non-empty string without spaces or control characters"
            )
        if (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, int | float)
            or not math.isfinite(self.timeout)
            or self.timeout <= 0
        ):
            raise ConfigError(
                "timeout", f"must be a positive number of seconds, got {self.timeout!r}"
            )

    @property
    def root(self) -> str:
        return self.base_url.rstrip("/")

    def headers(self) -> dict[str, str]:
        headers = {"accept": "application/json", "user-agent": USER_AGENT}
        if self.api_key is not None:
            headers["authorization"] = f"Bearer {self.api_key}"
        return headers


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request to the service and how to read its answer.

    ``read`` turns the JSON body of an answer whose status is in ``accept`` into
    the result; any other status is an error.
    """

    method: Literal["GET", "POST"]
    path: str
    read: Callable[[Any], T]
    json: Mapping[str, Any] | None = None
    query: Mapping[str, str | int | float] | None = None
    accept: tuple[int, ...] = (200,)


def answer(call: Call[T], response: httpx.Response) -> T:
    """The result of ``call`` from its ``response``, or the :class:`ParamloopAPIError` it is."""
    content = response.content
    try:
        parsed = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        parsed = None
    if response.status_code not in call.accept:
        raise ParamloopAPIError.from_response(
            response.status_code, content, response.headers, parsed
        )
    try:
        return call.read(parsed)
    except (KeyError, TypeError, ValueError) as exc:
        raise ParamloopAPIError(
            response.status_code,
            f"the answer to {call.method} {call.path} is not what paramloop sends "
            f"({type(exc).__name__}: {exc}): {content[:200].decode('utf-8', 'replace')}",
        ) from exc


def unreachable(url: str, exc: httpx.HTTPError) -> ParamloopConnectionError:
    if isinstance(exc, httpx.TimeoutException):
        return ParamloopConnectionError(url, f"no answer in time ({type(exc).__name__})")
    return ParamloopConnectionError(url, f"{type(exc).__name__}: {exc}")


# -- the endpoints ---------------------------------------------------------------------------


def _optional(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def recommend_call(
    task_type: str,
    context: Mapping[str, FeatureValue] | None,
    request_id: str | None,
    seed: int | None,
    unit_id: str | None,
) -> Call[Recommendation]:
    body = {
        "task_type": task_type,
        "context": {k: list(v) if isinstance(v, tuple) else v for k, v in (context or {}).items()},
        **_optional(request_id=request_id, seed=seed, unit_id=unit_id),
    }
    return Call("POST", "/v1/recommend", Recommendation.from_json, json=body)


def outcome_call(request_id: str, outcome: Outcome) -> Call[OutcomeReceipt]:
    body = {"request_id": request_id, "outcome": outcome.to_dict()}
    return Call("POST", "/v1/outcomes", OutcomeReceipt.from_json, json=body)


def outcomes_call(items: Iterable[tuple[str, Outcome]]) -> Call[tuple[OutcomeReceipt, ...]]:
    body = {"outcomes": [{"request_id": r, "outcome": o.to_dict()} for r, o in items]}
    return Call(
        "POST",
        "/v1/outcomes",
        lambda data: tuple(OutcomeReceipt.from_json(d) for d in data["recorded"]),
        json=body,
    )


def feedback_call(
    request_id: str, quality: float | None, feedback: float | None
) -> Call[OutcomeReceipt]:
    body = {"request_id": request_id, "quality": quality, "feedback": feedback}
    return Call("POST", "/v1/feedback", OutcomeReceipt.from_json, json=body)


def status_call() -> Call[ServiceStatus]:
    return Call("GET", f"{OPERATIONS}/status", ServiceStatus.from_json)


def rollout_status_call(task_type: str | None) -> Call[tuple[RolloutStatus, ...]]:
    return Call(
        "GET",
        f"{OPERATIONS}/rollout-status",
        lambda data: tuple(RolloutStatus.from_json(t) for t in data["tasks"]),
        query=_optional(task_type=task_type),
    )


def slo_status_call(task_type: str | None) -> Call[tuple[SLOStatus, ...]]:
    return Call(
        "GET",
        f"{OPERATIONS}/slo-status",
        lambda data: tuple(SLOStatus.from_json(t) for t in data["tasks"]),
        query=_optional(task_type=task_type),
    )


def alerts_call(task_type: str | None, since: float | None, limit: int) -> Call[tuple[Alert, ...]]:
    return Call(
        "GET",
        f"{OPERATIONS}/alerts",
        lambda data: tuple(Alert.from_json(a) for a in data["alerts"]),
        query=_optional(task_type=task_type, since=since, limit=limit),
    )


def rollback_call(
    task_type: str, reason: str, to: Literal["previous", "baseline"] | None
) -> Call[RolloutChange]:
    body = {"task_type": task_type, "reason": reason, **_optional(to=to)}
    return Call("POST", f"{OPERATIONS}/rollback", RolloutChange.from_json, json=body)


def traffic_call(task_type: str, percent: float, reason: str) -> Call[RolloutChange]:
    body = {"task_type": task_type, "percent": percent, "reason": reason}
    return Call("POST", f"{OPERATIONS}/traffic", RolloutChange.from_json, json=body)


def approval_call(report_id: int, reason: str) -> Call[Approval]:
    body = {"report_id": report_id, "reason": reason}
    return Call("POST", f"{OPERATIONS}/approvals", Approval.from_json, json=body, accept=(201,))


def live_call() -> Call[Health]:
    return Call("GET", "/health/live", Health.from_json)


def ready_call() -> Call[Health]:
    # 503 is an answer here, not an error: the service is live but cannot keep writes.
    return Call("GET", "/health/ready", Health.from_json, accept=(200, 503))


# -- the clients -----------------------------------------------------------------------------


class ParamloopClient:
    """A client of one paramloop service (synchronous).

    ``base_url`` is the service's root (``http://127.0.0.1:8080``), ``api_key`` is
    sent as ``Authorization: Bearer …`` (``None`` where auth is disabled),
    ``timeout`` bounds every call in seconds.  ``http_client`` replaces the
    client's own ``httpx.Client`` (proxies, TLS, a transport); it is then the
    caller's to close.  Bad arguments raise :class:`~paramloop.errors.ConfigError`
    naming the argument.  Every method raises
    :class:`~paramloop.client.models.ParamloopAPIError` for an error answer and
    :class:`~paramloop.client.models.ParamloopConnectionError` when the service
    cannot be reached.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.settings = ClientSettings(base_url, api_key, timeout)
        if http_client is not None and not isinstance(http_client, httpx.Client):
            raise ConfigError(
                "http_client", f"must be an httpx.Client, got {type(http_client).__name__}"
            )
        self._owned = http_client is None
        self._http = http_client if http_client is not None else httpx.Client()

    def send(self, call: Call[T]) -> T:
        """Send one :class:`Call` and read its answer (every method goes through here)."""
        url = self.settings.root + call.path
        try:
            response = self._http.request(
                call.method,
                url,
                json=call.json,
                params=call.query,
                headers=self.settings.headers(),
                timeout=self.settings.timeout,
            )
        except httpx.HTTPError as exc:
            raise unreachable(self.settings.root, exc) from exc
        return answer(call, response)

    # -- decisions

    def recommend(
        self,
        task_type: str,
        context: Mapping[str, FeatureValue] | None = None,
        *,
        request_id: str | None = None,
        seed: int | None = None,
        unit_id: str | None = None,
    ) -> Recommendation:
        """Choose the parameters of one call; the decision is logged with its propensity."""
        return self.send(recommend_call(task_type, context, request_id, seed, unit_id))

    def record_outcome(self, request_id: str, outcome: Outcome) -> OutcomeReceipt:
        """Record what happened after the call (idempotent: the same outcome again is a no-op)."""
        return self.send(outcome_call(request_id, outcome))

    def record_outcomes(self, items: Iterable[tuple[str, Outcome]]) -> tuple[OutcomeReceipt, ...]:
        """Record up to 1,000 outcomes, all or none."""
        return self.send(outcomes_call(items))

    def feedback(
        self, request_id: str, *, quality: float | None = None, feedback: float | None = None
    ) -> OutcomeReceipt:
        """A quality score and/or user feedback for a decision: joined with a proxied call's
        measurement, or the outcome itself when nothing was recorded yet (else 409)."""
        return self.send(feedback_call(request_id, quality, feedback))

    # -- operations

    def status(self) -> ServiceStatus:
        return self.send(status_call())

    def rollout_status(self, task_type: str | None = None) -> tuple[RolloutStatus, ...]:
        return self.send(rollout_status_call(task_type))

    def slo_status(self, task_type: str | None = None) -> tuple[SLOStatus, ...]:
        return self.send(slo_status_call(task_type))

    def alerts(
        self, task_type: str | None = None, *, since: float | None = None, limit: int = 100
    ) -> tuple[Alert, ...]:
        """Raised alerts, newest first (``since``: epoch seconds)."""
        return self.send(alerts_call(task_type, since, limit))

    def rollback(
        self, task_type: str, reason: str, *, to: Literal["previous", "baseline"] | None = None
    ) -> RolloutChange:
        """Roll back now: one phase down, or to baseline-only (default: the plan's choice)."""
        return self.send(rollback_call(task_type, reason, to))

    def set_traffic(self, task_type: str, percent: float, reason: str) -> RolloutChange:
        """The treatment share within the current phase's bounds."""
        return self.send(traffic_call(task_type, percent, reason))

    def approve(self, report_id: int, reason: str) -> Approval:
        """Approve a passed gate report; the key's name is the actor in the audit record."""
        return self.send(approval_call(report_id, reason))

    def live(self) -> Health:
        return self.send(live_call())

    def ready(self) -> Health:
        """Readiness: ``ready`` is ``False`` (not an error) when the service cannot keep writes."""
        return self.send(ready_call())

    # -- lifetime

    def close(self) -> None:
        """Close the client's own connections (an injected ``http_client`` stays open)."""
        if self._owned:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncParamloopClient:
    """:class:`ParamloopClient` for asyncio: the same arguments (``http_client`` is an
    ``httpx.AsyncClient``), the same methods, awaited."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings = ClientSettings(base_url, api_key, timeout)
        if http_client is not None and not isinstance(http_client, httpx.AsyncClient):
            raise ConfigError(
                "http_client", f"must be an httpx.AsyncClient, got {type(http_client).__name__}"
            )
        self._owned = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient()

    async def send(self, call: Call[T]) -> T:
        url = self.settings.root + call.path
        try:
            response = await self._http.request(
                call.method,
                url,
                json=call.json,
                params=call.query,
                headers=self.settings.headers(),
                timeout=self.settings.timeout,
            )
        except httpx.HTTPError as exc:
            raise unreachable(self.settings.root, exc) from exc
        return answer(call, response)

    async def recommend(
        self,
        task_type: str,
        context: Mapping[str, FeatureValue] | None = None,
        *,
        request_id: str | None = None,
        seed: int | None = None,
        unit_id: str | None = None,
    ) -> Recommendation:
        return await self.send(recommend_call(task_type, context, request_id, seed, unit_id))

    async def record_outcome(self, request_id: str, outcome: Outcome) -> OutcomeReceipt:
        return await self.send(outcome_call(request_id, outcome))

    async def record_outcomes(
        self, items: Iterable[tuple[str, Outcome]]
    ) -> tuple[OutcomeReceipt, ...]:
        return await self.send(outcomes_call(items))

    async def feedback(
        self, request_id: str, *, quality: float | None = None, feedback: float | None = None
    ) -> OutcomeReceipt:
        return await self.send(feedback_call(request_id, quality, feedback))

    async def status(self) -> ServiceStatus:
        return await self.send(status_call())

    async def rollout_status(self, task_type: str | None = None) -> tuple[RolloutStatus, ...]:
        return await self.send(rollout_status_call(task_type))

    async def slo_status(self, task_type: str | None = None) -> tuple[SLOStatus, ...]:
        return await self.send(slo_status_call(task_type))

    async def alerts(
        self, task_type: str | None = None, *, since: float | None = None, limit: int = 100
    ) -> tuple[Alert, ...]:
        return await self.send(alerts_call(task_type, since, limit))

    async def rollback(
        self, task_type: str, reason: str, *, to: Literal["previous", "baseline"] | None = None
    ) -> RolloutChange:
        return await self.send(rollback_call(task_type, reason, to))

    async def set_traffic(self, task_type: str, percent: float, reason: str) -> RolloutChange:
        return await self.send(traffic_call(task_type, percent, reason))

    async def approve(self, report_id: int, reason: str) -> Approval:
        return await self.send(approval_call(report_id, reason))

    async def live(self) -> Health:
        return await self.send(live_call())

    async def ready(self) -> Health:
        return await self.send(ready_call())

    async def aclose(self) -> None:
        if self._owned:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "OPERATIONS",
    "AsyncParamloopClient",
    "Call",
    "ClientSettings",
    "ParamloopClient",
]
