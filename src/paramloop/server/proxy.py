"""The OpenAI-compatible proxy: ``POST /v1/chat/completions`` and ``GET /v1/models``.

The caller names the task type and context in the request's ``metadata``
(``paramloop_task_type``, and ``paramloop_context`` as a JSON object or a JSON
string) or in the ``X-Paramloop-Task-Type`` / ``X-Paramloop-Context`` headers.
The rollout's unit (who is bucketed into treatment or control) is the
``X-Paramloop-Unit-Id`` header, else ``metadata.paramloop_unit_id``, else
OpenAI's ``user`` field, else the request id.
The engine (:meth:`Service.plan`) decides the body sent upstream; this module
only moves bytes, times the call and reads the usage.  When paramloop itself
fails, the caller's request goes upstream as it was sent (fail-open, counted);
upstream errors and timeouts come back with the upstream's status (502/504
when there is none) and count as error outcomes.

What the upstream tells its caller reaches the caller: its rate-limit headers,
``Retry-After`` and request id (:data:`PASSED_HEADERS`), so SDK backoff works
through the proxy; the proxy's own errors carry an OpenAI-style ``code``.  The
other ``/v1`` endpoints (embeddings, completions, responses, …) go straight
through to the upstream of the body's ``model``: nothing is decided or logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from paramloop.engine.service import ProxyPlan, prompt_characters, prompt_hash
from paramloop.errors import InputError, ParamloopError
from paramloop.server.app import UNIT_HEADER
from paramloop.server.settings import ANY_MODEL
from paramloop.types import Outcome

if TYPE_CHECKING:
    from paramloop.server.app import AppState
    from paramloop.server.auth import Routes

log = logging.getLogger("paramloop.server")

TASK_HEADER = "x-paramloop-task-type"
CONTEXT_HEADER = "x-paramloop-context"
REQUEST_ID_HEADER = "x-paramloop-request-id"
META_TASK = "paramloop_task_type"
META_CONTEXT = "paramloop_context"
META_UNIT = "paramloop_unit_id"
#: Upstream answer headers the caller gets (names, or prefixes ending in "-").
PASSED_HEADERS = ("x-request-id", "retry-after", "retry-after-ms", "x-ratelimit-", "openai-")
#: Request headers a passed-through call takes upstream (the key is the upstream's own).
_FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "openai-beta", "openai-organization")


class ChatCompletionBody(BaseModel):
    """An OpenAI chat completion request; fields beyond these go upstream untouched."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: StrictBool | None = None
    stream_options: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = Field(
        default=None,
        description=f"`{META_TASK}` names the task type; `{META_CONTEXT}` holds the context "
        f"(a JSON object, or a string of one); `{META_UNIT}` names the rollout unit (default: "
        "`user`, else the request id). They are removed before the request goes upstream.",
    )


def register(read: Routes, write: Routes, state: AppState) -> None:
    settings, service, metrics = state.settings, state.service, state.metrics

    @read.get("/v1/models", tags=["proxy"])
    async def models() -> dict[str, Any]:
        """The models the configured task types may serve, in OpenAI's list shape."""
        names = sorted(
            {
                arm.model
                for n in service.optimizer.task_types
                for arm in service.optimizer.config(n).space.arms
            }
            | (set(settings.upstreams) - {ANY_MODEL})
        )
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "paramloop"} for m in names
            ],
        }

    @write.post("/v1/chat/completions", tags=["proxy"], response_model=None)
    async def chat_completions(body: ChatCompletionBody, request: Request) -> Response:
        """Optimize the call's parameters, forward it upstream, measure it, log it.

        The answer is the upstream's, with ``X-Paramloop-Request-Id`` (for ``/v1/feedback``)
        and ``X-Paramloop-Mode`` (optimized, control, pinned, disabled, fallback, fail_open).
        """
        sent = body.model_dump(exclude_unset=True)
        task_type, context, unit_id = _task_and_context(
            sent, request.headers, settings.default_task_type
        )
        request_id = request.headers.get(REQUEST_ID_HEADER) or os.urandom(16).hex()
        request.state.request_id = request_id
        principal = getattr(request.state, "principal", None)
        if state.rate_limits is not None and principal is not None:
            # Before the decision: a call refused for tokens is logged nowhere and charges no arm.
            await state.rate_limits.tokens(principal.name, _token_estimate(state, task_type, sent))
        try:
            with state.span("paramloop.plan", task_type=task_type):
                plan = await state.run(
                    service.plan, task_type, context, sent, request_id=request_id, unit_id=unit_id
                )
        except ParamloopError as exc:
            if isinstance(exc, ValueError | LookupError):
                raise  # the caller's input: a 4xx naming it
            plan = _fail_open(state, task_type, request_id, sent, exc)
        except Exception as exc:
            plan = _fail_open(state, task_type, request_id, sent, exc)
        metrics.proxied.labels(task_type, plan.mode).inc()
        if plan.decision is not None:
            metrics.decisions.labels(task_type, plan.decision.origin).inc()
        log.info(
            "proxied",
            extra={
                "request_id": request_id,
                "task_type": task_type,
                "mode": plan.mode,
                "model": plan.model,
                "pinned": list(plan.pinned),
                "prompt_sha256": prompt_hash(sent.get("messages")),
                "params": None if plan.decision is None else plan.decision.params.to_request(),
            },
        )
        return await _forward(
            state, plan, streaming=bool(sent.get("stream")), caller_usage=_wants_usage(sent)
        )

    async def pass_through(request: Request) -> Response:
        """Any other ``/v1`` call (embeddings, completions, responses, …), forwarded as sent
        to the upstream of its ``model`` (else ``"*"``); the upstream's answer comes back."""
        return await _pass_through(state, request)

    # Registered last: paramloop's own /v1 routes match first.
    for method in ("GET", "POST", "DELETE"):
        write.add_api_route(
            "/v1/{path:path}",
            pass_through,
            methods=[method],
            tags=["proxy"],
            operation_id=f"pass_through_{method.lower()}",
        )


def _task_and_context(
    body: dict[str, Any], headers: Mapping[str, str], default_task_type: str | None
) -> tuple[str, dict[str, Any], str | None]:
    """Take paramloop's fields out of ``body`` (in place): the task type, context and unit id."""
    metadata = body.get("metadata")
    task_type = headers.get(TASK_HEADER)
    raw_context: Any = headers.get(CONTEXT_HEADER)
    where = "X-Paramloop-Context"
    unit: Any = None
    unit_where = f"metadata.{META_UNIT}"
    if isinstance(metadata, dict):
        meta_task = metadata.pop(META_TASK, None)
        if meta_task is not None:
            task_type = meta_task
        if META_CONTEXT in metadata:
            raw_context, where = metadata.pop(META_CONTEXT), f"metadata.{META_CONTEXT}"
        unit = metadata.pop(META_UNIT, None)
        if not metadata:
            del body["metadata"]
    if headers.get(UNIT_HEADER) is not None:
        unit, unit_where = headers[UNIT_HEADER], "X-Paramloop-Unit-Id"
    if unit is not None and (not isinstance(unit, str) or not 0 < len(unit) <= 200):
        raise InputError(unit_where, "must be a string of 1 to 200 characters")
    user = body.get("user")
    if unit is None and isinstance(user, str) and user:
        unit = user  # OpenAI's end-user id: sent upstream as it is
    task_type = task_type if task_type is not None else default_task_type
    if not isinstance(task_type, str) or not task_type:
        raise InputError(
            f"metadata.{META_TASK}",
            "name the task type in the request's metadata or the X-Paramloop-Task-Type header",
        )
    if raw_context is None:
        return task_type, {}, unit
    if isinstance(raw_context, str):
        try:
            raw_context = orjson.loads(raw_context)
        except orjson.JSONDecodeError as exc:
            raise InputError(where, f"is not valid JSON: {exc}") from None
    if not isinstance(raw_context, dict):
        raise InputError(where, "must be a JSON object of context features")
    return task_type, raw_context, unit


def _token_estimate(state: AppState, task_type: str, body: Mapping[str, Any]) -> int:
    """What a call may use, for the tokens-per-minute limit: the prompt (characters / 4) and
    the completion tokens the caller pinned (when pinned values are respected), else the most
    any of the task type's arms may ask."""
    arms = state.service.optimizer.config(task_type).space.arms  # UnknownTaskTypeError: 404
    most = max((arm.max_tokens or 0 for arm in arms), default=0)
    raw = body.get("max_completion_tokens") or body.get("max_tokens")
    asked = raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0 else None
    if asked is not None and state.service.options[task_type].pinned == "respect":
        completion = asked
    else:  # paramloop chooses max_tokens (it overrides a pinned value): its largest may be sent
        completion = max(most, asked or 0)
    return prompt_characters(body.get("messages")) // 4 + completion


def _wants_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _fail_open(
    state: AppState, task_type: str, request_id: str, body: dict[str, Any], exc: Exception
) -> ProxyPlan:
    state.metrics.errors.labels("proxy_fail_open").inc()
    log.error(
        "paramloop failed; forwarding the request as sent",
        extra={
            "request_id": request_id,
            "task_type": task_type,
            "error": f"{type(exc).__name__}: {exc}",
        },
    )
    return ProxyPlan(request_id, task_type, body, "fail_open")


def _error(status: int, message: str, kind: str, headers: Mapping[str, str], code: str) -> Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


async def _forward(
    state: AppState, plan: ProxyPlan, *, streaming: bool, caller_usage: bool
) -> Response:
    headers = {"X-Paramloop-Request-Id": plan.request_id, "X-Paramloop-Mode": plan.mode}
    call = _Call(state, plan)
    upstream = state.settings.upstream_for(plan.model)
    if upstream is None:
        await _finish(state, plan, 0.0, None, error=True, call=call)
        return _error(
            502,
            f"no upstream is configured for model {plan.model!r}",
            "upstream_error",
            headers,
            "no_upstream",
        )
    body = dict(plan.body)
    if streaming and not caller_usage:
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    outgoing = {"content-type": "application/json", "accept": "application/json"}
    if upstream.api_key:
        outgoing["authorization"] = f"Bearer {upstream.api_key}"
    request = state.http.build_request(
        "POST",
        f"{upstream.base_url}/chat/completions",
        content=_dumps(body),
        headers=outgoing,
        timeout=upstream.timeout_s,
    )
    start = time.perf_counter()
    try:
        with call.current():  # the client span of the request is the call span's child
            response = await state.http.send(request, stream=streaming)
    except httpx.TimeoutException as exc:
        message = f"the upstream timed out ({type(exc).__name__})"
        return await _unreachable(state, plan, start, 504, message, headers, call)
    except httpx.HTTPError as exc:
        message = f"the upstream is unreachable ({type(exc).__name__}: {exc})"
        return await _unreachable(state, plan, start, 502, message, headers, call)
    call.status(response.status_code)
    headers.update(passed_headers(response.headers))
    media = response.headers.get("content-type", "application/json")
    if not streaming or response.status_code >= 400:
        content = await response.aread() if streaming else response.content
        await response.aclose()
        elapsed = time.perf_counter() - start
        status = response.status_code
        error = status >= 400
        completion = None if error else _json(content)
        if not error and not _is_completion(completion):
            # A 200 that is not a chat completion (an HTML error page, no choices): the
            # call failed, whatever the status says.
            state.metrics.upstream.labels(plan.model, "invalid").observe(elapsed)
            state.metrics.errors.labels("upstream").inc()
            await _finish(state, plan, elapsed * 1000, None, error=True, call=call)
            return _error(
                502,
                f"the upstream answered {status} with a body that is not a chat completion "
                f"({_preview(content)})",
                "upstream_error",
                headers,
                "invalid_upstream_response",
            )
        usage = completion.get("usage") if isinstance(completion, dict) else None
        state.metrics.upstream.labels(plan.model, str(status)).observe(elapsed)
        await _finish(
            state,
            plan,
            elapsed * 1000,
            usage if isinstance(usage, dict) else None,
            error=error,
            call=call,
        )
        return Response(content, status_code=status, media_type=media, headers=headers)
    return StreamingResponse(
        _relay(state, plan, response, start, caller_usage, call),
        status_code=response.status_code,
        media_type="text/event-stream",
        # No buffering on the way (nginx and the like honour X-Accel-Buffering).
        headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _unreachable(
    state: AppState,
    plan: ProxyPlan,
    start: float,
    status: int,
    message: str,
    headers: dict[str, str],
    call: _Call,
) -> Response:
    elapsed = time.perf_counter() - start
    state.metrics.upstream.labels(
        plan.model, "unreachable" if status == 502 else "timeout"
    ).observe(elapsed)
    state.metrics.errors.labels("upstream").inc()
    await _finish(state, plan, elapsed * 1000, None, error=True, call=call)
    code = "upstream_unreachable" if status == 502 else "upstream_timeout"
    return _error(status, message, "upstream_error", headers, code)


async def _relay(
    state: AppState,
    plan: ProxyPlan,
    response: httpx.Response,
    start: float,
    caller_usage: bool,
    call: _Call,
) -> AsyncIterator[bytes]:
    """The upstream's server-sent events, passed through; the usage chunk is read on the way.

    The call is complete when ``data: [DONE]`` goes to the caller (clients such as
    ``openai`` hang up as soon as they read it, while the upstream may keep its
    stream open a little longer) or when the upstream ends its stream; its outcome
    is recorded then, before ``[DONE]`` is sent, and shielded from the caller
    hanging up.  A caller that leaves mid-stream leaves the decision to the wait window.
    """
    usage: dict[str, Any] | None = None
    skip_blank = False
    recorded = False
    chunks = 0

    async def record(error: bool) -> None:
        nonlocal recorded
        if recorded:
            return
        recorded = True
        elapsed = time.perf_counter() - start
        invalid = not error and chunks == 0
        label = "error" if error else "invalid" if invalid else "200"
        state.metrics.upstream.labels(plan.model, label).observe(elapsed)
        with anyio.CancelScope(shield=True):
            await _finish(state, plan, elapsed * 1000, usage, error=error or invalid, call=call)

    try:
        async for line in response.aiter_lines():
            if skip_blank and not line:
                skip_blank = False
                continue
            if line.startswith("data: {"):
                chunk = _json(line[6:])
                if isinstance(chunk, dict):
                    chunks += isinstance(chunk.get("choices"), list)
                    if isinstance(chunk.get("usage"), dict):
                        usage = chunk["usage"]
                        if not caller_usage and not chunk.get("choices"):
                            skip_blank = True  # the caller did not ask for it: drop the event
                            continue
            elif line.strip() == "data: [DONE]":
                await record(False)
            yield (line + "\n").encode()
        await record(False)
    except httpx.HTTPError as exc:
        state.metrics.errors.labels("upstream").inc()
        await record(True)
        message = {
            "error": {
                "message": f"the upstream stream broke ({type(exc).__name__})",
                "type": "upstream_error",
            }
        }
        yield b"data: " + orjson.dumps(message) + b"\n\n"
    finally:
        with anyio.CancelScope(shield=True):
            await response.aclose()


async def _finish(
    state: AppState,
    plan: ProxyPlan,
    latency_ms: float,
    usage: Mapping[str, Any] | None,
    *,
    error: bool,
    call: _Call,
) -> None:
    service, metrics = state.service, state.metrics
    measured = service.measure(plan.model, latency_ms=latency_ms, usage=usage, error=error)
    call.end(measured)
    if measured.prompt_tokens is not None:
        metrics.tokens.labels(plan.task_type, "prompt").inc(measured.prompt_tokens)
    if measured.completion_tokens is not None:
        metrics.tokens.labels(plan.task_type, "completion").inc(measured.completion_tokens)
    if measured.cost is not None:
        metrics.cost.labels(plan.task_type).inc(measured.cost)
    if plan.decision is None:
        return
    try:
        recorded = await state.run(service.finish, plan, measured)
    except Exception as exc:  # the caller has the answer already; the failure is counted
        metrics.errors.labels("record").inc()
        log.error(
            "recording the outcome failed",
            extra={"request_id": plan.request_id, "error": f"{type(exc).__name__}: {exc}"},
        )
        return
    if recorded is not None:
        state.news()
        metrics.outcomes.labels(recorded.task_type, recorded.source).inc()
        metrics.rewards.labels(recorded.task_type).observe(recorded.reward)


#: The request's parameters and their GenAI semantic-convention attributes.
_GENAI_REQUEST = {
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
}


class _Call:
    """The span of one upstream chat call, by OpenTelemetry's GenAI semantic conventions
    (``chat {model}``, kind client): the parameters sent, the tokens used, the cost, and
    what paramloop decided.  Nothing without a tracer."""

    def __init__(self, state: AppState, plan: ProxyPlan) -> None:
        self.span: Any = None
        if state.tracer is None:
            return
        from opentelemetry.trace import SpanKind

        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": plan.model,
            "paramloop.request_id": plan.request_id,
            "paramloop.task_type": plan.task_type,
            "paramloop.mode": plan.mode,
        }
        for field, name in _GENAI_REQUEST.items():
            value = plan.body.get(field)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attributes[name] = value
        if plan.decision is not None:
            attributes["paramloop.arm"] = plan.decision.arm
            attributes["paramloop.propensity"] = plan.decision.propensity
            attributes["paramloop.origin"] = plan.decision.origin
        self.span = state.tracer.start_span(
            f"chat {plan.model}", kind=SpanKind.CLIENT, attributes=attributes
        )

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        if self.span is None:
            yield
            return
        from opentelemetry import trace

        with trace.use_span(self.span, end_on_exit=False):
            yield

    def status(self, code: int) -> None:
        if self.span is not None:
            self.span.set_attribute("http.response.status_code", code)

    def end(self, measured: Outcome) -> None:
        if self.span is None:
            return
        for name, value in (
            ("gen_ai.usage.input_tokens", measured.prompt_tokens),
            ("gen_ai.usage.output_tokens", measured.completion_tokens),
            ("paramloop.cost", measured.cost),
            ("paramloop.latency_ms", measured.latency_ms),
        ):
            if value is not None:
                self.span.set_attribute(name, value)
        if measured.error:
            from opentelemetry.trace import Status, StatusCode

            self.span.set_attribute("error.type", "upstream_error")
            self.span.set_status(Status(StatusCode.ERROR))
        self.span.end()
        self.span = None  # ended once, whichever path finishes the call


def passed_headers(upstream: Mapping[str, str]) -> dict[str, str]:
    """The upstream answer's headers the caller gets (:data:`PASSED_HEADERS`)."""
    return {
        name: value
        for name, value in upstream.items()
        if any(
            name.lower().startswith(p) if p.endswith("-") else name.lower() == p
            for p in PASSED_HEADERS
        )
    }


async def _pass_through(state: AppState, request: Request) -> Response:
    """Forward a ``/v1`` call paramloop does not handle to the upstream of its ``model``."""
    raw = await request.body()
    body = _json(raw) if raw else None
    model = body.get("model") if isinstance(body, dict) else None
    upstream = state.settings.upstream_for(model if isinstance(model, str) else ANY_MODEL)
    if upstream is None:
        return _error(
            502,
            f"no upstream is configured for {'model ' + repr(model) if model else 'this call'}",
            "upstream_error",
            {},
            "no_upstream",
        )
    outgoing = {k: v for k, v in request.headers.items() if k in _FORWARDED_REQUEST_HEADERS}
    if upstream.api_key:
        outgoing["authorization"] = f"Bearer {upstream.api_key}"
    # The path as the caller encoded it (a decoded one may hold characters a URL cannot).
    path = request.scope.get("raw_path", request.url.path.encode()).decode("ascii", "replace")
    query = request.url.query
    target = f"{upstream.base_url}{path.removeprefix('/v1')}" + (f"?{query}" if query else "")
    try:
        forwarded = state.http.build_request(
            request.method, target, content=raw, headers=outgoing, timeout=upstream.timeout_s
        )
    except httpx.InvalidURL as exc:
        raise InputError("path", f"cannot be forwarded: {exc}") from None
    try:
        response = await state.http.send(forwarded, stream=True)
    except httpx.TimeoutException as exc:
        message = f"the upstream timed out ({type(exc).__name__})"
        return _error(504, message, "upstream_error", {}, "upstream_timeout")
    except httpx.HTTPError as exc:
        message = f"the upstream is unreachable ({type(exc).__name__}: {exc})"
        return _error(502, message, "upstream_error", {}, "upstream_unreachable")
    state.metrics.proxied.labels("*", "pass_through").inc()
    headers = passed_headers(response.headers)
    media = response.headers.get("content-type")
    if media is not None and media.startswith("text/event-stream"):
        headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_bytes():  # decoded: no content-encoding is passed
                yield chunk
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()

    return StreamingResponse(
        relay(), status_code=response.status_code, media_type=media, headers=headers
    )


def _dumps(body: Mapping[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)
    except TypeError:  # an integer beyond 64 bits: JSON allows it, orjson does not
        return json.dumps(body, separators=(",", ":")).encode()


def _is_completion(data: Any) -> bool:
    """Whether ``data`` has the shape of a chat completion: an object with a list of choices."""
    return isinstance(data, dict) and isinstance(data.get("choices"), list)


def _preview(content: bytes, limit: int = 80) -> str:
    text = content[:limit].decode("utf-8", "replace")
    return repr(text) + ("…" if len(content) > limit else "")


def _json(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
