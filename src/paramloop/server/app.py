"""The HTTP service: decision API, operations endpoints, OpenAI-compatible proxy.

``create_app(settings)`` builds one FastAPI app (there is no module-level app)
around one loop (:func:`~paramloop.engine.loop.build_loop`: optimizer, rollout
controller, budgets, alerts).  Routes parse, call the engine
(:class:`~paramloop.engine.service.Service` and the loop), render;
authentication is one dependency per role (:mod:`paramloop.server.auth`),
errors are JSON bodies in OpenAI's shape, and one pure ASGI middleware limits
body sizes, times requests for Prometheus and logs one JSON line per request.
With an OpenTelemetry tracer provider, OpenTelemetry's own instrumentations
trace the app (a server span per request, named by route template, joining
the caller's ``traceparent``) and the upstream client (a client span per
call, ``traceparent`` sent upstream).  See ``docs/service.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import httpx
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from paramloop.engine.alerts import AlertSink, WebhookSink, log_sink
from paramloop.engine.loop import Loop, build_loop
from paramloop.engine.rollout import PromotionRefusedError
from paramloop.engine.service import Service
from paramloop.errors import (
    ConfigError,
    ConflictingOutcomeError,
    DuplicateRequestError,
    InputError,
    LateOutcomeError,
    ParamloopError,
    StaleStateError,
    StoreError,
    StoreUnavailableError,
    TransitionError,
    UnknownRequestError,
    UnknownTaskTypeError,
)
from paramloop.server.auth import AuthError, Principal, Routes, document_security
from paramloop.server.broadcast import Broadcast
from paramloop.server.limits import REPORTS, Admission, KeyLimits, RateLimits, ThrottledError
from paramloop.server.metrics import Metrics
from paramloop.server.models import (
    DecisionBody,
    ErrorBody,
    FeedbackRequest,
    OutcomeBatch,
    OutcomeItem,
    RecommendRequest,
    RecordedBatch,
    RecordedBody,
    decision_json,
)
from paramloop.server.settings import Settings
from paramloop.store.base import Store
from paramloop.store.spool import SpooledStore
from paramloop.types import AlertRecord, Decision

log = logging.getLogger("paramloop.server")
T = TypeVar("T")

#: The header naming a request's rollout unit (``unit_id``) when its body does not.
UNIT_HEADER = "x-paramloop-unit-id"

#: The published error responses, for the OpenAPI document.
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Malformed request (not JSON, wrong shape)",
        401: "Missing or unknown API key",
        403: "The key's role is too low",
        404: "Unknown task type or request id",
        409: "Conflicts with what is recorded",
        413: "Body too large",
        422: "Invalid field",
    }.items()
}


@dataclass
class AppState:
    """What the routes share: settings, the loop, the engine, metrics, the upstream client."""

    settings: Settings
    loop: Loop
    service: Service
    metrics: Metrics
    http: httpx.AsyncClient
    tracer: Any = None
    spool: SpooledStore | None = None
    rate_limits: RateLimits | None = None
    #: Tells other replicas this one logged outcomes, and wakes this one's sync (REDIS_URL).
    broadcast: Broadcast | None = None
    #: Set to sync at once (created in the lifespan, on the loop that serves).
    sync_now: asyncio.Event | None = None
    started: float = field(default_factory=time.time)
    #: The engine's threads: every call that may touch the store runs here, never on
    #: the event loop, so a stuck store cannot stall the routes that do not need it.
    engine_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(64, thread_name_prefix="paramloop-engine")
    )

    def news(self) -> None:
        """This replica logged outcomes: other replicas sync now (with a broadcast)."""
        if self.broadcast is not None:
            self.broadcast.notify()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call the engine on one of its threads."""
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.engine_pool, call)

    @contextlib.contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[Any]:
        if self.tracer is None:
            yield None
            return
        with self.tracer.start_as_current_span(name, attributes=attributes) as span:
            yield span


def create_app(
    settings: Settings,
    *,
    loop: Loop | None = None,
    tracer_provider: Any = None,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The service for ``settings``; the store is opened (and migrated) now.

    The loop is built from ``settings`` (:attr:`Settings.task_configs`; every new
    rollout placed where :meth:`Settings.initial_rollouts` says; alerts to the log,
    the optional webhook and the metrics).  ``loop`` replaces it (tests,
    embedding): its alert manager gets the metrics and webhook sinks added.
    ``tracer_provider`` is an OpenTelemetry ``TracerProvider`` (spans are made only
    with one; needs ``paramloop[otel]``); ``transport`` replaces
    the proxy's network transport (tests).
    """
    metrics = Metrics()
    webhook = (
        None
        if settings.alert_webhook_url is None
        else _Background(WebhookSink(settings.alert_webhook_url), metrics)
    )
    sinks: list[AlertSink] = (
        [metrics.alert_sink] if webhook is None else [metrics.alert_sink, webhook]
    )
    spool: SpooledStore | None = None
    if loop is None:
        from paramloop.store import open_store

        store = open_store(settings.database_url)
        spool_path = settings.spool_location()
        if spool_path is not None:
            spool = SpooledStore(
                store,
                spool_path,
                deadline_s=settings.store_timeout_s,
                on_event=lambda kind, reason: _store_event(metrics, kind, reason),
            )
            store = cast(Store, spool)
        loop = build_loop(
            settings.task_configs,
            store,
            clock=clock,
            sinks=[log_sink, *sinks],
            spend_cap=settings.prices.spend_cap,
            initial=settings.initial_rollouts(),
        )
    else:
        loop.alerts.sinks = (*loop.alerts.sinks, *sinks)
    optimizer = loop.optimizer
    service = Service(
        optimizer,
        proxy=settings.proxy,
        prices=settings.prices,
        enabled=settings.enabled,
        clock=clock,
    )
    for resource, limit in settings.budget.items():
        metrics.budget_limit.labels(resource).set(limit)
    for slo, target in settings.slo.items():
        metrics.slo_target.labels(slo).set(target)
    backend = type(spool.primary if spool is not None else optimizer.store).__name__
    pool_size = settings.upstream_max_connections or settings.max_concurrency
    rate_limits = RateLimits(
        KeyLimits(settings.rate_limit_rpm, settings.rate_limit_tpm),
        {
            key.name: KeyLimits(
                key.rpm if key.rpm is not None else settings.rate_limit_rpm,
                key.tpm if key.tpm is not None else settings.rate_limit_tpm,
            )
            for key in settings.api_keys
        },
        settings.redis_url,
        on_store_error=lambda exc: metrics.errors.labels("rate_limit_store").inc(),
    )
    state = AppState(
        settings=settings,
        loop=loop,
        service=service,
        metrics=metrics,
        http=httpx.AsyncClient(
            transport=transport,
            timeout=60.0,
            trust_env=False,
            limits=httpx.Limits(
                max_connections=pool_size, max_keepalive_connections=min(pool_size, 256)
            ),
        ),
        tracer=None if tracer_provider is None else tracer_provider.get_tracer("paramloop"),
        spool=spool,
        rate_limits=rate_limits if rate_limits.active else None,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        auth = (
            "disabled (loopback only)"
            if settings.auth_disabled
            else f"{len(settings.api_keys)} API keys"
        )
        if settings.auth_disabled:
            log.warning(
                "authentication is DISABLED: every caller is admin", extra={"host": settings.host}
            )
        log.info(
            "paramloop service started",
            extra={
                "task_types": list(settings.tasks),
                "store": backend,
                "auth": auth,
                "enabled": settings.enabled,
                "rollouts": {
                    name: f"{s.phase} {s.traffic_percent:g} %"
                    for name in loop.rollout.task_types
                    for s in (loop.rollout.state(name),)
                },
                "alert_webhook": webhook is not None,
                "spool": None if spool is None else str(spool.spool.path),
                "upstreams": {m: u.base_url for m, u in settings.upstreams.items()},
            },
        )
        state.sync_now = sync_now = asyncio.Event()
        if settings.redis_url is not None:
            state.broadcast = Broadcast(
                settings.redis_url,
                wake=sync_now.set,
                on_error=lambda exc: metrics.errors.labels("broadcast").inc(),
            )
            state.broadcast.start()
        background = [
            asyncio.create_task(_maintain_forever(state)),
            asyncio.create_task(_sync_forever(state)),
        ]
        # What exists now (modules, the app, the policies: ~150,000 objects) lives as long
        # as the service: out of the garbage collector's full passes, which scanned it all
        # each time (measured: 80-120 ms pauses, the whole p99 of a loaded replica).
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if state.broadcast is not None:
                await state.broadcast.close()
            await rate_limits.close()
            await state.http.aclose()
            if webhook is not None:
                await run_in_threadpool(webhook.close)  # delivers the alerts still queued
            await run_in_threadpool(service.close)  # snapshots the policies, closes the store
            state.engine_pool.shutdown(wait=False, cancel_futures=True)
            log.info("paramloop service stopped")

    from paramloop import __version__

    app = FastAPI(
        title="paramloop",
        version=__version__,
        description="Tune LLM call parameters with contextual bandits: decision API, "
        "operations endpoints and an OpenAI-compatible proxy.",
        lifespan=lifespan,
        responses=_ERRORS,
    )
    app.state.settings = settings
    app.state.ctx = state
    _install_error_handlers(app, state)
    from paramloop.server import ops, proxy

    roles: dict[tuple[str, str], Any] = {}
    public, read, write, admin = (
        Routes(app, None, roles),
        Routes(app, "read", roles),
        Routes(app, "write", roles, counted=_count_request),
        Routes(app, "admin", roles),
    )
    _decision_routes(write, state)
    proxy.register(read, write, state)
    ops.register(public, read, admin, state)
    document_security(app, roles)
    app.add_middleware(
        Admission,
        limit=settings.max_concurrency,
        queue_timeout_s=settings.queue_timeout_s,
        on_refused=lambda: metrics.errors.labels("overloaded").inc(),
    )
    app.add_middleware(Edge, state=state)
    if tracer_provider is not None:
        _instrument(app, state.http, tracer_provider)
    return app


def _instrument(app: FastAPI, http: httpx.AsyncClient, tracer_provider: Any) -> None:
    """Trace the app and its upstream client with OpenTelemetry's instrumentations."""
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    except ImportError as exc:
        raise ConfigError(
            "tracing",
            f"needs OpenTelemetry's instrumentations: pip install 'paramloop[otel]' ({exc})",
        ) from None
    # The ASGI send/receive events would add two spans per request to every trace.
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=tracer_provider, exclude_spans=["receive", "send"]
    )
    HTTPXClientInstrumentor.instrument_client(http, tracer_provider=tracer_provider)


async def _count_request(request: Request) -> None:
    """Count a write request against its key's requests per minute (429 past it); reports of
    calls that already happened are not counted (refused, they would become default rewards)."""
    limits: RateLimits | None = request.app.state.ctx.rate_limits
    principal: Principal | None = getattr(request.state, "principal", None)
    if limits is not None and principal is not None and request.url.path not in REPORTS:
        await limits.request(principal.name)


def app_from_environment() -> FastAPI:
    """The app of one ``paramloop serve --workers N`` worker: settings from the environment
    (``PARAMLOOP_CONFIG`` and the rest, as the parent checked them)."""
    from paramloop.server.jsonlog import configure

    settings = Settings.load()
    configure(settings.log_level)
    return create_app(settings, tracer_provider=environment_tracer_provider())


def environment_tracer_provider() -> object | None:
    """OpenTelemetry's global tracer provider when OTEL_* variables configure tracing
    (``opentelemetry-instrument paramloop serve`` sets it up from them), else ``None``."""
    if not any(key.startswith("OTEL_") for key in os.environ):
        return None
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace.get_tracer_provider()


def _decision_routes(write: Routes, state: AppState) -> None:
    service, metrics = state.service, state.metrics

    # The deployment guide's runbooks call the decision routes under /api/optimization too.
    @write.post("/v1/recommend", tags=["decisions"], response_model=DecisionBody)
    @write.post("/api/optimization/recommend", tags=["decisions"], response_model=DecisionBody)
    async def recommend(body: RecommendRequest, request: Request) -> Response:
        """Choose the parameters of one call; log the decision with its exact propensity.

        The rollout buckets ``unit_id`` (or the ``X-Paramloop-Unit-Id`` header, else the
        request id) into treatment or control; the propensity is the split's mixture.
        """
        if not service.enabled:
            decision = await state.run(
                service.baseline, body.task_type, body.context, request_id=body.request_id
            )
            return _decision_response(service, decision)
        with state.span("paramloop.recommend", task_type=body.task_type):
            decision = await state.run(
                service.recommend,
                body.task_type,
                body.context,
                request_id=body.request_id,
                seed=body.seed,
                unit_id=body.unit_id or unit_header(request),
            )
        request.state.request_id = decision.request_id
        metrics.decisions.labels(decision.task_type, decision.origin).inc()
        if decision.error is not None:
            metrics.errors.labels("recommend").inc()
        return _decision_response(service, decision)

    @write.post("/v1/outcomes", tags=["decisions"])
    @write.post("/api/optimization/record-outcome", tags=["decisions"])
    async def outcomes(
        body: OutcomeItem | OutcomeBatch, request: Request
    ) -> RecordedBody | RecordedBatch:
        """Record one outcome, or a batch all or none; idempotent by request id."""
        items = body.outcomes if isinstance(body, OutcomeBatch) else [body]
        pairs = [(item.request_id, item.outcome.to_outcome()) for item in items]
        recorded = await state.run(service.record_outcomes, pairs)
        for stored in recorded:
            observe_outcome(metrics, stored.task_type, stored.source, stored.reward)
        state.news()
        rendered = [RecordedBody.of(stored) for stored in recorded]
        if isinstance(body, OutcomeBatch):
            return RecordedBatch(recorded=rendered)
        request.state.request_id = body.request_id
        return rendered[0]

    @write.post("/v1/feedback", tags=["proxy"])
    async def feedback(body: FeedbackRequest, request: Request) -> RecordedBody:
        """Attach a quality score or user feedback to a proxied request (by its request id)."""
        request.state.request_id = body.request_id
        recorded = await state.run(
            service.feedback, body.request_id, quality=body.quality, feedback=body.feedback
        )
        observe_outcome(metrics, recorded.task_type, recorded.source, recorded.reward)
        state.news()
        return RecordedBody.of(recorded)


def _decision_response(service: Service, decision: Decision) -> Response:
    """The decision with its prompt variant's declaration, rendered directly (the shape is
    DecisionBody's): this is the hottest route."""
    variant = service.optimizer.config(decision.task_type).variant(decision.params.prompt_variant)
    return Response(orjson.dumps(decision_json(decision, variant)), media_type="application/json")


def unit_header(request: Request) -> str | None:
    """The ``X-Paramloop-Unit-Id`` header (≤ 200 characters), or ``None``."""
    unit = request.headers.get(UNIT_HEADER)
    if unit is not None and not 0 < len(unit) <= 200:
        raise InputError("X-Paramloop-Unit-Id", "must be 1 to 200 characters")
    return unit or None


def observe_outcome(metrics: Metrics, task_type: str, source: str, reward: float) -> None:
    metrics.outcomes.labels(task_type, source).inc()
    metrics.rewards.labels(task_type).observe(reward)


async def _maintain_forever(state: AppState) -> None:
    """Every ``expire_interval_s``: record the outcomes whose wait window closed.

    (Other replicas' rollout changes are re-read by the sync loop, every ``sync_interval_s``.)
    """
    while True:
        await asyncio.sleep(state.settings.expire_interval_s)
        try:
            count = await run_in_threadpool(state.service.expire)
        except Exception as exc:
            state.metrics.errors.labels("expire").inc()
            log.error("expiring outcomes failed: %s", exc, extra={"error": type(exc).__name__})
            continue
        if count:
            state.news()
            state.metrics.outcomes.labels("*", "expired").inc(count)
            log.info("recorded outcomes whose wait window closed", extra={"outcomes": count})


async def _sync_forever(state: AppState) -> None:
    """Learn the outcomes other replicas (or the replayed spool) logged: every
    ``sync_interval_s``, and at once when another replica broadcasts that it logged some."""
    assert state.sync_now is not None
    wake = state.sync_now
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), state.settings.sync_interval_s)
        wake.clear()
        try:
            learned = await state.run(state.service.optimizer.sync)
        except StoreUnavailableError:
            continue  # the spool says so already; the next round catches up
        except Exception as exc:
            state.metrics.errors.labels("sync").inc()
            log.error("learning other replicas' outcomes failed: %s", exc)
            continue
        if learned:
            state.metrics.outcomes.labels("*", "synced").inc(learned)


def _store_event(metrics: Metrics, kind: str, reason: str) -> None:
    """The spool's events: the store went down or came back, or refused a spooled write."""
    if kind in ("down", "refused"):
        metrics.errors.labels(f"store_{kind}").inc()


class _Background:
    """Deliver alerts to a slow sink (a webhook) from one worker thread, never in the request.

    A failed delivery is logged and counted (``paramloop_errors_total{kind="alert_sink"}``).
    """

    def __init__(self, sink: AlertSink, metrics: Metrics) -> None:
        self.sink = sink
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="paramloop-alerts")

    def __call__(self, alert: AlertRecord) -> None:
        self.pool.submit(self._deliver, alert)

    def _deliver(self, alert: AlertRecord) -> None:
        try:
            self.sink(alert)
        except Exception as exc:
            self.metrics.errors.labels("alert_sink").inc()
            log.warning(
                "alert delivery failed: %s",
                exc,
                extra={"alert": alert.id, "error": type(exc).__name__},
            )

    def close(self) -> None:
        self.pool.shutdown(wait=True)


# -- errors ------------------------------------------------------------------------------


def error_response(
    status: int,
    message: str,
    kind: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": None, **extra}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


_CONFLICTS = (
    DuplicateRequestError,
    ConflictingOutcomeError,
    LateOutcomeError,
    PromotionRefusedError,
    TransitionError,
    StaleStateError,
)


def _status_of(exc: ParamloopError) -> tuple[int, str]:
    if isinstance(exc, UnknownTaskTypeError | UnknownRequestError):
        return 404, "not_found_error"
    if isinstance(exc, _CONFLICTS):
        return 409, "conflict_error"
    if isinstance(exc, StoreError):
        return 503, "server_error"
    if isinstance(exc, ValueError | LookupError):
        return 422, "invalid_request_error"
    return 500, "server_error"


def _install_error_handlers(app: FastAPI, state: AppState) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems, params = [], []
        status = 422
        for error in exc.errors():
            if error.get("type") == "json_invalid":
                status = 400
                problems.append(
                    f"the body is not valid JSON ({error.get('ctx', {}).get('error', '')})"
                )
                continue
            where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
            params.append(where)
            problems.append(f"{where}: {error.get('msg', 'invalid')}")
        return error_response(
            status, "; ".join(problems), "invalid_request_error", params[0] if params else None
        )

    @app.exception_handler(ThrottledError)
    async def throttled(_: Request, exc: ThrottledError) -> Response:
        state.metrics.errors.labels(f"throttled_{exc.kind}").inc()
        return Response(
            exc.body(), exc.status, headers=exc.headers(), media_type="application/json"
        )

    @app.exception_handler(AuthError)
    async def refused(_: Request, exc: AuthError) -> JSONResponse:
        if exc.status == 401:
            return error_response(
                401, str(exc), "authentication_error", headers={"WWW-Authenticate": "Bearer"}
            )
        return error_response(403, str(exc), "permission_error")

    @app.exception_handler(ParamloopError)
    async def domain(_: Request, exc: ParamloopError) -> JSONResponse:
        status, kind = _status_of(exc)
        message = str(exc)
        notes = getattr(exc, "__notes__", None)
        param = notes[0] if notes else getattr(exc, "field", None) or getattr(exc, "feature", None)
        extra: dict[str, Any] = {}
        if isinstance(exc, PromotionRefusedError):
            extra["requirements"] = [
                {"name": r.name, "reason": r.reason} for r in exc.verdict.failed
            ]
        elif isinstance(exc, StaleStateError):
            message = (
                f"the {exc.kind} of {exc.key!r} changed meanwhile (another request or replica); "
                "nothing was changed: read it again and retry"
            )
        if status >= 500:
            state.metrics.errors.labels(type(exc).__name__).inc()
            log.error("request failed: %s", message, extra={"error": type(exc).__name__})
        return error_response(status, message, kind, param, **extra)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        if exc.status_code == 404:
            kind = "not_found_error"
        return error_response(
            exc.status_code, str(exc.detail), kind, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def crashed(_: Request, exc: Exception) -> JSONResponse:
        state.metrics.errors.labels("internal").inc()
        log.error("internal error", exc_info=exc, extra={"error": type(exc).__name__})
        return error_response(
            500, f"internal error ({type(exc).__name__}); see the service log", "server_error"
        )


# -- the edge middleware --------------------------------------------------------------------


class Edge:
    """Pure ASGI middleware: body limit (413), timing, one JSON log line per request."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state
        self.limit = state.settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        method: str = scope["method"]
        status = 500
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.limit:
                    await _too_large(send, self.limit)
                    self._done(scope, method, 413, start)
                    return
                break

        received = 0
        refused = False  # a 413 went out: whatever the app answers after it is dropped

        async def limited() -> Message:
            nonlocal received, refused, status
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit and not refused:
                    refused, status = True, 413
                    await _too_large(send, self.limit)
                if refused:
                    raise _BodyTooLargeError  # the app stops reading (it may wrap this error)
            return message

        async def sending(message: Message) -> None:
            nonlocal status
            if refused:
                return
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with contextlib.suppress(_BodyTooLargeError):
            await self.app(scope, limited, sending)
        self._done(scope, method, status, start)

    def _done(self, scope: Scope, method: str, status: int, start: float) -> None:
        elapsed = time.perf_counter() - start
        route = scope.get("route")
        path = getattr(route, "path", "unmatched")
        self.state.metrics.http.labels(method, path, str(status)).observe(elapsed)
        app_state = scope.get("state") or {}
        principal: Principal | None = app_state.get("principal")
        if log.isEnabledFor(logging.INFO):
            log.info(
                "request",
                extra={
                    "method": method,
                    "route": path,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "request_id": app_state.get("request_id"),
                    "caller": None if principal is None else principal.name,
                },
            )


class _BodyTooLargeError(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    body = (
        b'{"error":{"message":"the body is larger than '
        + str(limit).encode()
        + b' bytes","type":"request_too_large","param":null,"code":null}}'
    )
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
