"""``OptimizedOpenAI``: the official ``openai`` client with paramloop around each chat completion.

For callers who do not want the proxy.  ``chat.completions.create(..., context=…)``

1. asks the service for a decision (``recommend``) for the wrapper's task type;
2. sends the caller's request with the decision's model and the parameters it
   sets (temperature, top_p, max_tokens, the penalties) in place of the
   caller's, through :func:`paramloop.engine.service.upstream_body`, the helper
   the proxy uses (so both apply a decision the same way); parameters the
   decision does not set pass through as the caller gave them;
3. records the outcome: latency, tokens from the usage, optionally a cost and a
   quality; an exception from ``openai`` is recorded as an error outcome and
   re-raised as it was.

Fail open: when paramloop is unreachable, times out or answers 429/5xx, the call
goes out with the caller's own parameters, nothing is recorded, and a warning
is logged (``paramloop.client``).  A 4xx (unknown task type, a bad context, a
refused key) is the caller's mistake and raises
:class:`~paramloop.client.models.ParamloopAPIError` before the model is called,
as the proxy answers it.  A failure to record the outcome is logged; the caller
still gets the completion.

Streamed calls (``stream=True``) go out as sent, unoptimized and unrecorded:
the proxy measures streams.  Everything other than ``chat.completions.create``
is the wrapped client's own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from paramloop.client.api import AsyncParamloopClient, ParamloopClient
from paramloop.client.models import (
    ParamloopAPIError,
    ParamloopConnectionError,
    Recommendation,
)
from paramloop.core.space import NUMERIC_DIMS
from paramloop.engine.service import upstream_body
from paramloop.errors import ConfigError, ParamloopError
from paramloop.types import FeatureValue, Outcome

if TYPE_CHECKING:
    from openai import AsyncOpenAI, AsyncStream, OpenAI, Stream
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

log = logging.getLogger("paramloop.client")
#: The ``completions`` of a wrapper's ``chat``: sync or async.
C = TypeVar("C", "_Completions", "_AsyncCompletions")

#: ``cost(model, prompt_tokens, completion_tokens)``: the call's cost in dollars, or ``None``.
CostFunction = Callable[[str, int | None, int | None], float | None]
#: ``quality(completion)``: a score in [0, 1] of a completed call, or ``None``.
QualityFunction = Callable[["ChatCompletion"], float | None]


def decided_fields(recommendation: Recommendation) -> frozenset[str]:
    """The numeric parameters the decision sets (the others stay the caller's)."""
    params = recommendation.params
    return frozenset(name for name in NUMERIC_DIMS if getattr(params, name) is not None)


def optimized_request(kwargs: Mapping[str, Any], recommendation: Recommendation) -> dict[str, Any]:
    """The caller's ``create`` arguments with the decision's model, parameters and prompt
    variant applied."""
    return upstream_body(
        kwargs, recommendation.params, decided_fields(recommendation), recommendation.variant
    )


def given(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` without the ``openai`` SDK's "not given" markers (``NOT_GIVEN``, ``omit``)."""
    from openai import NotGiven, Omit

    return {k: v for k, v in kwargs.items() if not isinstance(v, NotGiven | Omit)}


class _Wrapper:
    """What the sync and async wrappers share: arguments, planning, measuring, logging."""

    def __init__(
        self,
        openai_client: Any,
        task_type: str,
        context: Mapping[str, FeatureValue] | None,
        cost: CostFunction | None,
        quality: QualityFunction | None,
    ) -> None:
        create = getattr(
            getattr(getattr(openai_client, "chat", None), "completions", None), "create", None
        )
        if not callable(create):
            raise ConfigError(
                "openai_client",
                f"must be an openai client (with chat.completions.create), "
                f"got {type(openai_client).__name__}",
            )
        if not isinstance(task_type, str) or not 0 < len(task_type) <= 200:
            raise ConfigError(
                "task_type", f"must be a name of 1 to 200 characters, got {task_type!r}"
            )
        for name, function in (("cost", cost), ("quality", quality)):
            if function is not None and not callable(function):
                raise ConfigError(name, f"must be a function, got {type(function).__name__}")
        self.openai = openai_client
        self.task_type = task_type
        self.context: Mapping[str, FeatureValue] = dict(context or {})
        self.cost = cost
        self.quality = quality

    def context_of(self, context: Mapping[str, FeatureValue] | None) -> dict[str, FeatureValue]:
        """The wrapper's context with the call's on top."""
        return {**self.context, **(context or {})}

    def fail_open(self, task_type: str, exc: ParamloopError) -> None:
        """Raise a 4xx (the caller's mistake); log that the call goes out unoptimized otherwise."""
        if isinstance(exc, ParamloopAPIError) and not exc.unavailable:
            raise exc
        log.warning(
            "paramloop is unavailable; calling the model with the caller's own parameters (%s)",
            exc,
            extra={"task_type": task_type, "error": str(exc)},
        )

    @staticmethod
    def measured(latency_s: float, completion: ChatCompletion | None) -> Outcome:
        """What was measured of one call (``completion`` is ``None`` when it raised)."""
        if completion is None:
            return Outcome(latency_ms=latency_s * 1000, error=True)
        usage = completion.usage
        return Outcome(
            latency_ms=latency_s * 1000,
            prompt_tokens=None if usage is None else usage.prompt_tokens,
            completion_tokens=None if usage is None else usage.completion_tokens,
        )

    def finished(
        self, latency_s: float, model: str, completion: ChatCompletion
    ) -> tuple[Outcome, Exception | None]:
        """The outcome of a completed call, scored with the caller's cost and quality.

        When one of those functions raises, the outcome is what was measured and
        the exception comes back too, for the caller to see once it is recorded.
        """
        measured = self.measured(latency_s, completion)
        try:
            cost = (
                None
                if self.cost is None
                else self.cost(model, measured.prompt_tokens, measured.completion_tokens)
            )
            quality = None if self.quality is None else self.quality(completion)
        except Exception as exc:
            return measured, exc
        return replace(measured, cost=cost, quality=quality), None

    @staticmethod
    def record_failed(request_id: str, exc: ParamloopError) -> None:
        log.error(
            "recording the outcome of %s failed; the caller has the answer (%s)",
            request_id,
            exc,
            extra={"request_id": request_id, "error": str(exc)},
        )

    def __getattr__(self, name: str) -> Any:
        # Everything but chat.completions.create is the wrapped client's own.
        return getattr(self.__dict__.get("openai"), name)


class OptimizedOpenAI(_Wrapper):
    """An ``openai.OpenAI`` client whose chat completions paramloop tunes (see the module).

    ``task_type`` names the task type of every call (a call may name another with
    ``task_type=``); ``context`` is merged under each call's ``context=``.
    ``cost(model, prompt_tokens, completion_tokens)`` prices a call and
    ``quality(completion)`` scores it, both optional.  Raises
    :class:`~paramloop.errors.ConfigError` naming a bad argument.

    For example (``messages`` as for ``openai``)::

        client = OptimizedOpenAI(
            openai.OpenAI(), ParamloopClient(url, key), task_type="summarize"
        )
        client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, context={"risk_tier": "low"}
        )
    """

    def __init__(
        self,
        openai_client: OpenAI,
        paramloop: ParamloopClient,
        *,
        task_type: str,
        context: Mapping[str, FeatureValue] | None = None,
        cost: CostFunction | None = None,
        quality: QualityFunction | None = None,
    ) -> None:
        if not isinstance(paramloop, ParamloopClient):
            raise ConfigError(
                "paramloop",
                f"must be a ParamloopClient (an AsyncParamloopClient goes with "
                f"AsyncOptimizedOpenAI), got {type(paramloop).__name__}",
            )
        super().__init__(openai_client, task_type, context, cost, quality)
        self.paramloop = paramloop
        self.chat = _Chat(_Completions(self))


class _Chat(Generic[C]):
    """``chat`` of either wrapper: its ``completions``, the rest the wrapped client's."""

    def __init__(self, completions: C) -> None:
        self.completions: C = completions

    def __getattr__(self, name: str) -> Any:
        return getattr(self.completions.wrapper.openai.chat, name)


class _Completions:
    def __init__(self, wrapper: OptimizedOpenAI) -> None:
        self.wrapper = wrapper

    @overload
    def create(
        self,
        *,
        stream: Literal[True],
        context: Mapping[str, FeatureValue] | None = None,
        task_type: str | None = None,
        request_id: str | None = None,
        unit_id: str | None = None,
        **kwargs: Any,
    ) -> Stream[ChatCompletionChunk]: ...

    @overload
    def create(
        self,
        *,
        stream: Literal[False] | None = None,
        context: Mapping[str, FeatureValue] | None = None,
        task_type: str | None = None,
        request_id: str | None = None,
        unit_id: str | None = None,
        **kwargs: Any,
    ) -> ChatCompletion: ...

    def create(
        self,
        *,
        stream: bool | None = None,
        context: Mapping[str, FeatureValue] | None = None,
        task_type: str | None = None,
        request_id: str | None = None,
        unit_id: str | None = None,
        **kwargs: Any,
    ) -> ChatCompletion | Stream[ChatCompletionChunk]:
        """``openai``'s ``chat.completions.create`` with paramloop's parameters (see the module).

        ``request_id`` names the decision (default: paramloop makes one); ``unit_id``
        is who the rollout buckets (a user id keeps a user in one group).
        """
        w = self.wrapper
        create = w.openai.chat.completions.create
        if stream:
            log.info("a streamed call goes out unoptimized", extra={"task_type": w.task_type})
            return create(stream=True, **kwargs)  # type: ignore[no-any-return]
        if stream is not None:
            kwargs["stream"] = stream
        body = given(kwargs)
        name = task_type or w.task_type
        try:
            decision = w.paramloop.recommend(
                name, w.context_of(context), request_id=request_id, unit_id=unit_id
            )
        except (ParamloopAPIError, ParamloopConnectionError) as exc:
            w.fail_open(name, exc)
            return create(**kwargs)  # type: ignore[no-any-return]
        sent = optimized_request(body, decision)
        start = time.perf_counter()
        try:
            completion: ChatCompletion = create(**sent)
        except Exception:
            self._record(decision, w.measured(time.perf_counter() - start, None))
            raise
        outcome, failed = w.finished(time.perf_counter() - start, sent["model"], completion)
        self._record(decision, outcome)
        if failed is not None:  # the caller's cost or quality function
            raise failed
        return completion

    def _record(self, decision: Recommendation, outcome: Outcome) -> None:
        if not decision.logged:  # the baseline served unlogged: nothing to record against
            return
        try:
            self.wrapper.paramloop.record_outcome(decision.request_id, outcome)
        except (ParamloopAPIError, ParamloopConnectionError) as exc:
            _Wrapper.record_failed(decision.request_id, exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapper.openai.chat.completions, name)


class AsyncOptimizedOpenAI(_Wrapper):
    """:class:`OptimizedOpenAI` for ``openai.AsyncOpenAI`` and :class:`AsyncParamloopClient`."""

    def __init__(
        self,
        openai_client: AsyncOpenAI,
        paramloop: AsyncParamloopClient,
        *,
        task_type: str,
        context: Mapping[str, FeatureValue] | None = None,
        cost: CostFunction | None = None,
        quality: QualityFunction | None = None,
    ) -> None:
        if not isinstance(paramloop, AsyncParamloopClient):
            raise ConfigError(
                "paramloop",
                f"must be an AsyncParamloopClient (a ParamloopClient goes with OptimizedOpenAI), "
                f"got {type(paramloop).__name__}",
            )
        super().__init__(openai_client, task_type, context, cost, quality)
        self.paramloop = paramloop
        self.chat = _Chat(_AsyncCompletions(self))


class _AsyncCompletions:
    def __init__(self, wrapper: AsyncOptimizedOpenAI) -> None:
        self.wrapper = wrapper

    @overload
    async def create(
        self,
        *,
        stream: Literal[True],
        context: Mapping[str, FeatureValue] | None = None,
        task_type: str | None = None,
        request_id: str | None = None,
        unit_id: str | None = None,
        **kwargs: Any,
    ) -> AsyncStream[ChatCompletionChunk]: ...

    @overload
    async def create(
        self,
        *,
        stream: Literal[False] | None = None,
        context: Mapping[str, FeatureValue] | None = None,
        task_type: str | None = None,
        request_id: str | None = None,
        unit_id: str | None = None,
        **kwargs: Any,
    ) -> ChatCompletion: ...

    async def create(
        self,
        *,
        stream: bool | None = None,
        context: Mapping[str, FeatureValue] | None = None,
        task_type: str | None = None,
        request_id: str | None = None,
        unit_id: str | None = None,
        **kwargs: Any,
    ) -> ChatCompletion | AsyncStream[ChatCompletionChunk]:
        w = self.wrapper
        create = w.openai.chat.completions.create
        if stream:
            log.info("a streamed call goes out unoptimized", extra={"task_type": w.task_type})
            return await create(stream=True, **kwargs)  # type: ignore[no-any-return]
        if stream is not None:
            kwargs["stream"] = stream
        body = given(kwargs)
        name = task_type or w.task_type
        try:
            decision = await w.paramloop.recommend(
                name, w.context_of(context), request_id=request_id, unit_id=unit_id
            )
        except (ParamloopAPIError, ParamloopConnectionError) as exc:
            w.fail_open(name, exc)
            return await create(**kwargs)  # type: ignore[no-any-return]
        sent = optimized_request(body, decision)
        start = time.perf_counter()
        try:
            completion: ChatCompletion = await create(**sent)
        except Exception:
            await self._record(decision, w.measured(time.perf_counter() - start, None))
            raise
        outcome, failed = w.finished(time.perf_counter() - start, sent["model"], completion)
        await self._record(decision, outcome)
        if failed is not None:
            raise failed
        return completion

    async def _record(self, decision: Recommendation, outcome: Outcome) -> None:
        if not decision.logged:
            return
        try:
            await self.wrapper.paramloop.record_outcome(decision.request_id, outcome)
        except (ParamloopAPIError, ParamloopConnectionError) as exc:
            _Wrapper.record_failed(decision.request_id, exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapper.openai.chat.completions, name)


__all__ = [
    "AsyncOptimizedOpenAI",
    "CostFunction",
    "OptimizedOpenAI",
    "QualityFunction",
    "decided_fields",
    "optimized_request",
]
