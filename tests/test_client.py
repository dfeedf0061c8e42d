"""``paramloop.client`` against the real service: the typed clients and the ``openai`` wrapper.

The service is ``create_app`` under uvicorn in a thread of this process (with its
lifespan, on SQLite); the model behind the wrapper is a small OpenAI-compatible
upstream, also served over HTTP, that records every body it receives, so a test
can check what the official ``openai`` client really sent.  Nothing of paramloop
is mocked.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from paramloop.client import (
    AsyncOptimizedOpenAI,
    AsyncParamloopClient,
    OptimizedOpenAI,
    ParamloopAPIError,
    ParamloopClient,
    ParamloopConnectionError,
)
from paramloop.core.rollout import Phase
from paramloop.errors import ConfigError
from paramloop.server.app import create_app
from paramloop.server.settings import Settings
from paramloop.store import open_store
from paramloop.store.base import Store
from paramloop.types import GateReportRecord, Outcome, Params

Serve = Callable[..., AbstractContextManager[str]]
KEYS = {"read": "r-key", "write": "w-key", "admin": "a-key"}
LIMITED = "l-key"  # write, one request per minute
TASKS: dict[str, Any] = {
    "qa": {
        "preset": "published",
        "baseline": {"model": "small", "temperature": 0.4, "max_tokens": 32},
        "space": {"temperature": [0.0, 0.4, 0.8], "max_tokens": [16, 32]},
        "reward_wait_s": 600,
    },
    "styled": {
        "preset": "published",
        "baseline": {"model": "small", "temperature": 0.4, "prompt_variant": "plain"},
        "space": {"temperature": [0.4], "prompt_variant": ["plain", "tutor"]},
        "exploration": 0.9,
        "variants": {"plain": {"suffix": " Be brief."}, "tutor": {"system": "You teach."}},
    },
}
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is 3 + 4?"}]
FAIL: list[ChatCompletionMessageParam] = [{"role": "user", "content": "fail"}]


class Upstream:
    """An OpenAI-compatible upstream that keeps every body it receives; "fail" gets a 500."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.received.append(body)
        if body["messages"][-1]["content"] == "fail":
            error = {"message": "the model crashed", "type": "server_error"}
            return JSONResponse({"error": error}, status_code=500)
        message = {"role": "assistant", "content": "7"}
        return JSONResponse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
            }
        )


@dataclass
class Service:
    url: str
    db: Path
    upstream: Upstream
    upstream_url: str

    @contextmanager
    def store(self) -> Iterator[Store]:
        """The service's database, opened beside the service (what it committed)."""
        store = open_store(f"sqlite:///{self.db}")
        try:
            yield store
        finally:
            store.close()


def key_entry(name: str, role: str, key: str, **limits: int) -> dict[str, Any]:
    return {
        "name": name,
        "role": role,
        "sha256": hashlib.sha256(key.encode()).hexdigest(),
        **limits,
    }


@pytest.fixture
def upstream(serve_app: Serve) -> Iterator[tuple[Upstream, str]]:
    """The recording upstream and its ``/v1`` URL."""
    model = Upstream()
    with serve_app(model.app) as url:
        yield model, f"{url}/v1"


@pytest.fixture
def service(serve_app: Serve, tmp_path: Path, upstream: tuple[Upstream, str]) -> Iterator[Service]:
    """paramloop served with its lifespan, keys for every role and one rate-limited key."""
    model, upstream_url = upstream
    db = tmp_path / "svc.db"
    settings = Settings.from_mapping(
        {
            "tasks": TASKS,
            "service": {
                "database_url": f"sqlite:///{db}",
                "mode": "general",  # the policy's choices are served (the default is shadow)
                "upstreams": {"*": {"base_url": upstream_url, "timeout_s": 10}},
                "api_keys": [
                    *(key_entry(f"{role}-bot", role, key) for role, key in KEYS.items()),
                    key_entry("limited-bot", "write", LIMITED, rpm=1),
                ],
            },
        },
        env={},
    )
    with serve_app(create_app(settings), lifespan="on") as url:
        yield Service(url, db, model, upstream_url)


def openai_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", timeout=30, max_retries=0)


# -- the typed clients -------------------------------------------------------------------------


def test_a_decision_and_its_outcome_round_trip_into_the_store(service: Service) -> None:
    outcome = Outcome(quality=0.9, latency_ms=120.0, prompt_tokens=30, completion_tokens=7)
    with ParamloopClient(service.url, KEYS["write"]) as client:
        decision = client.recommend("qa", {"risk_tier": "low"}, request_id="rt-1", seed=3)
        receipt = client.record_outcome("rt-1", outcome)
        again = client.record_outcome("rt-1", outcome)  # idempotent
        other = client.recommend("qa", request_id="rt-2")
        batch = client.record_outcomes([("rt-2", Outcome(quality=0.5))])
    assert isinstance(decision.params, Params) and decision.logged
    assert decision.request_id == "rt-1" and decision.task_type == "qa"
    assert 0 < decision.propensity <= 1 and decision.phase == "general"
    assert dict(decision.request) == decision.params.to_request()
    assert receipt.request_id == "rt-1" and receipt.source == "observed"
    assert receipt.outcome == outcome and again == receipt
    assert [r.request_id for r in batch] == [other.request_id]
    with service.store() as store:
        logged = store.get_decision("rt-1")
        recorded = store.get_outcome("rt-1")
    assert logged is not None and recorded is not None
    assert logged.params == decision.params and logged.arm == decision.arm
    assert logged.propensity == decision.propensity
    assert logged.context_fingerprint == decision.context_fingerprint
    assert recorded.outcome == outcome and recorded.reward == receipt.reward


def test_error_answers_raise_an_api_error_with_the_services_error_body(
    service: Service,
) -> None:
    with ParamloopClient(service.url, KEYS["write"]) as client:
        with pytest.raises(ParamloopAPIError) as invalid:
            client.recommend("")
        with pytest.raises(ParamloopAPIError) as unknown:
            client.recommend("poetry")
        with pytest.raises(ParamloopAPIError) as feature:
            client.recommend("qa", {"risk_tier": 5})
        with pytest.raises(ParamloopAPIError) as no_decision:
            client.record_outcome("never-decided", Outcome(quality=1.0))
        client.recommend("qa", request_id="once")
        client.record_outcome("once", Outcome(quality=1.0))
        with pytest.raises(ParamloopAPIError) as conflict:
            client.record_outcome("once", Outcome(quality=0.0))
    with (
        ParamloopClient(service.url, "not-a-key") as stranger,
        pytest.raises(ParamloopAPIError) as unauthenticated,
    ):
        stranger.recommend("qa")
    with (
        ParamloopClient(service.url, KEYS["read"]) as reader,
        pytest.raises(ParamloopAPIError) as forbidden,
    ):
        reader.recommend("qa")

    assert (invalid.value.status, invalid.value.field) == (422, "task_type")
    assert invalid.value.error_type == "invalid_request_error"
    assert invalid.value.body["error"]["param"] == "task_type"
    assert unknown.value.status == 404 and "'poetry'" in unknown.value.message
    assert "qa" in unknown.value.message  # the configured task types are named
    assert (feature.value.status, feature.value.field) == (422, "risk_tier")
    assert no_decision.value.status == 404 and "never-decided" in no_decision.value.message
    assert conflict.value.status == 409 and conflict.value.error_type == "conflict_error"
    assert unauthenticated.value.status == 401
    assert unauthenticated.value.error_type == "authentication_error"
    assert forbidden.value.status == 403
    for caught in (invalid, unknown, feature, no_decision, conflict, forbidden):
        assert caught.value.retry_after is None and not caught.value.unavailable


def test_a_rate_limited_key_gets_429_with_retry_after(service: Service) -> None:
    with ParamloopClient(service.url, LIMITED) as client:
        client.recommend("qa")
        with pytest.raises(ParamloopAPIError) as refused:
            client.recommend("qa")
    error = refused.value
    assert error.status == 429 and error.unavailable
    assert error.retry_after is not None and 1 <= error.retry_after <= 60
    assert error.error_type == "requests" and "limited-bot" in error.message


def test_an_unreachable_service_is_a_connection_error(free_port: int) -> None:
    with (
        ParamloopClient(f"http://127.0.0.1:{free_port}", "k", timeout=2) as client,
        pytest.raises(ParamloopConnectionError) as caught,
    ):
        client.live()
    assert str(free_port) in str(caught.value)


def test_operations_endpoints(service: Service) -> None:
    with service.store() as store:
        report = store.save_gate_report(
            GateReportRecord("qa", "learned@1", "baseline@1", "pass", {}, 1_700_000_000.0)
        )
    with ParamloopClient(service.url, KEYS["admin"]) as admin:
        live, ready = admin.live(), admin.ready()
        status = admin.status()
        rollout = admin.rollout_status("qa")
        slo = admin.slo_status("qa")
        rolled_back = admin.rollback("qa", "client test", to="previous")
        traffic = admin.set_traffic("qa", 30, "client test")
        alerts = admin.alerts("qa")
        approval = admin.approve(report.id, "the lift holds")
        with pytest.raises(ParamloopAPIError) as outside:
            admin.set_traffic("qa", 90, "beyond guarded")
        with pytest.raises(ParamloopAPIError) as missing:
            admin.rollout_status("poetry")
    with (
        ParamloopClient(service.url, KEYS["read"]) as reader,
        pytest.raises(ParamloopAPIError) as forbidden,
    ):
        reader.rollback("qa", "a reader may not")

    assert live.status == "ok" and live.live and live.ready is None
    assert ready.status == "ok" and ready.ready is True and ready.details["store"]["ok"]
    assert status.enabled and status.mode == "general" and status.store_ok
    assert [(t.task_type, t.phase, t.pinned) for t in status.tasks] == [
        ("qa", "general", "respect"),
        ("styled", "general", "respect"),
    ]
    assert [r.task_type for r in rollout] == ["qa"] and rollout[0].state.phase is Phase.GENERAL
    assert [s.task_type for s in slo] == ["qa"] and slo[0].verdict == rollout[0].slo_verdict
    assert rolled_back.state.phase is Phase.GUARDED and rolled_back.state.frozen
    assert traffic.state.traffic_percent == 30.0
    assert all(a.task_type == "qa" for a in alerts)
    assert (approval.kind, approval.actor, approval.task_type) == (
        "gate_approval",
        "admin-bot",
        "qa",
    )
    assert outside.value.status == 422 and "guarded traffic" in outside.value.message
    assert missing.value.status == 404
    assert forbidden.value.status == 403


def test_the_async_client(service: Service) -> None:
    async def run() -> tuple[Any, ...]:
        async with AsyncParamloopClient(service.url, KEYS["admin"]) as client:
            decision = await client.recommend("qa", {"risk_tier": "high"}, unit_id="user-7")
            receipt = await client.feedback(decision.request_id, quality=0.8)
            status = await client.status()
            ready = await client.ready()
            with pytest.raises(ParamloopAPIError) as unknown:
                await client.recommend("poetry")
            return decision, receipt, status, ready, unknown.value

    decision, receipt, status, ready, unknown = asyncio.run(run())
    assert decision.logged and receipt.request_id == decision.request_id
    assert receipt.outcome.quality == 0.8
    assert status.loop["decisions"] >= 1 and ready.ready is True
    assert unknown.status == 404
    with service.store() as store:
        recorded = store.get_outcome(decision.request_id)
    assert recorded is not None and recorded.outcome.quality == 0.8


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"base_url": "ftp://127.0.0.1:8080"}, "base_url"),
        ({"base_url": "127.0.0.1:8080"}, "base_url"),
        ({"base_url": "http://127.0.0.1:8080/v1"}, "base_url"),
        ({"base_url": "http://127.0.0.1:8080?x=1"}, "base_url"),
        ({"api_key": ""}, "api_key"),
        ({"api_key": "two words"}, "api_key"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"http_client": object()}, "http_client"),
    ],
)
@pytest.mark.parametrize("client_type", [ParamloopClient, AsyncParamloopClient])
def test_bad_client_arguments_are_refused_by_name(
    client_type: Any, arguments: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        client_type(**{"base_url": "http://127.0.0.1:8080", "api_key": "k", **arguments})
    assert caught.value.field == field


def test_bad_wrapper_arguments_are_refused_by_name() -> None:
    anything: Any = object()
    async_paramloop: Any = AsyncParamloopClient("http://127.0.0.1:9")
    with openai_client("http://127.0.0.1:9/v1") as oa, ParamloopClient("http://127.0.0.1:9") as pc:
        paramloop: Any = pc
        cases: list[tuple[Callable[[], object], str]] = [
            (lambda: OptimizedOpenAI(oa, pc, task_type=""), "task_type"),
            (lambda: OptimizedOpenAI(anything, pc, task_type="qa"), "openai_client"),
            (lambda: OptimizedOpenAI(oa, async_paramloop, task_type="qa"), "paramloop"),
            (lambda: AsyncOptimizedOpenAI(anything, paramloop, task_type="qa"), "paramloop"),
            (lambda: OptimizedOpenAI(oa, pc, task_type="qa", cost=anything), "cost"),
            (lambda: OptimizedOpenAI(oa, pc, task_type="qa", quality=anything), "quality"),
        ]
        for build, field in cases:
            with pytest.raises(ConfigError) as caught:
                build()
            assert caught.value.field == field
    asyncio.run(async_paramloop.aclose())


# -- the openai wrapper ------------------------------------------------------------------------


def test_the_wrapper_sends_the_decisions_parameters_and_records_the_outcome(
    service: Service,
) -> None:
    def quality(completion: ChatCompletion) -> float:
        return 1.0 if completion.choices[0].message.content == "7" else 0.0

    with (
        openai_client(service.upstream_url) as oa,
        ParamloopClient(service.url, KEYS["write"]) as pc,
    ):
        wrapped = OptimizedOpenAI(
            oa,
            pc,
            task_type="qa",
            context={"risk_tier": "low"},
            cost=lambda *_: 0.002,
            quality=quality,
        )
        completion = wrapped.chat.completions.create(
            model="caller-model",
            messages=MESSAGES,
            temperature=1.5,
            max_tokens=500,
            top_p=0.9,
            request_id="wrapped-1",
        )
        assert wrapped.models is oa.models  # everything else is the openai client's own
    sent = service.upstream.received[-1]
    with service.store() as store:
        decision = store.get_decision("wrapped-1")
        recorded = store.get_outcome("wrapped-1")
    assert completion.choices[0].message.content == "7"
    assert decision is not None and recorded is not None
    # The decision's model and parameters replaced the caller's; top_p is not in the space.
    assert sent["model"] == decision.params.model == "small"
    assert sent["temperature"] == decision.params.temperature != 1.5
    assert sent["max_tokens"] == decision.params.max_tokens != 500
    assert sent["top_p"] == 0.9 and sent["messages"] == MESSAGES
    outcome = recorded.outcome
    assert (outcome.prompt_tokens, outcome.completion_tokens) == (12, 3)
    assert outcome.latency_ms is not None and outcome.latency_ms > 0 and not outcome.error
    assert (outcome.cost, outcome.quality) == (0.002, 1.0)


def test_the_wrapper_applies_the_decisions_prompt_variant(service: Service) -> None:
    """The decision carries its variant's declaration; the wrapper sends its messages."""
    expected = {
        "plain": [{"role": "user", "content": "What is 3 + 4? Be brief."}],
        "tutor": [{"role": "system", "content": "You teach."}, *MESSAGES],
    }
    seen = set()
    with (
        openai_client(service.upstream_url) as oa,
        ParamloopClient(service.url, KEYS["write"]) as pc,
    ):
        recommendation = pc.recommend("styled")
        assert recommendation.variant is not None
        assert recommendation.variant.name == recommendation.params.prompt_variant
        wrapped = OptimizedOpenAI(oa, pc, task_type="styled")
        for i in range(12):
            wrapped.chat.completions.create(
                model="small", messages=MESSAGES, request_id=f"styled-{i}"
            )
            with service.store() as store:
                decision = store.get_decision(f"styled-{i}")
            assert decision is not None and decision.params.prompt_variant is not None
            variant = decision.params.prompt_variant
            assert service.upstream.received[-1]["messages"] == expected[variant]
            seen.add(variant)
    assert seen == set(expected)


def test_the_wrapper_records_an_error_outcome_and_reraises_the_callers_exception(
    service: Service,
) -> None:
    with (
        openai_client(service.upstream_url) as oa,
        ParamloopClient(service.url, KEYS["write"]) as pc,
    ):
        wrapped = OptimizedOpenAI(oa, pc, task_type="qa")
        with pytest.raises(openai.InternalServerError) as caught:
            wrapped.chat.completions.create(model="m", messages=FAIL, request_id="wrapped-err")
        scorer = OptimizedOpenAI(oa, pc, task_type="qa", quality=lambda _: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            scorer.chat.completions.create(model="m", messages=MESSAGES, request_id="bad-score")
    assert caught.value.status_code == 500
    with service.store() as store:
        recorded = store.get_outcome("wrapped-err")
        measured = store.get_outcome("bad-score")
    assert recorded is not None and recorded.outcome.error
    assert recorded.outcome.latency_ms is not None and recorded.outcome.latency_ms > 0
    # The caller's quality function failed, not the call: what was measured is recorded.
    assert measured is not None and not measured.outcome.error
    assert measured.outcome.completion_tokens == 3 and measured.outcome.quality is None


def test_the_wrapper_raises_the_callers_mistakes_before_calling_the_model(
    service: Service,
) -> None:
    with (
        openai_client(service.upstream_url) as oa,
        ParamloopClient(service.url, KEYS["write"]) as pc,
    ):
        wrapped = OptimizedOpenAI(oa, pc, task_type="poetry")
        with pytest.raises(ParamloopAPIError) as caught:
            wrapped.chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.status == 404
    assert service.upstream.received == []


def test_the_wrapper_fails_open_when_paramloop_is_down_or_refuses_for_load(
    service: Service, free_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="paramloop.client")
    with (
        openai_client(service.upstream_url) as oa,
        ParamloopClient(f"http://127.0.0.1:{free_port}", "k", timeout=2) as down,
        ParamloopClient(service.url, LIMITED) as limited,
    ):
        completion = OptimizedOpenAI(oa, down, task_type="qa").chat.completions.create(
            model="caller-model", messages=MESSAGES, temperature=1.5, max_tokens=500
        )
        throttled = OptimizedOpenAI(oa, limited, task_type="qa")
        throttled.chat.completions.create(model="m", messages=MESSAGES, request_id="first")
        throttled.chat.completions.create(
            model="caller-model", messages=MESSAGES, temperature=1.2, request_id="second"
        )
    assert completion.choices[0].message.content == "7"
    as_sent = [service.upstream.received[0], service.upstream.received[2]]
    assert [(b["model"], b.get("temperature")) for b in as_sent] == [
        ("caller-model", 1.5),
        ("caller-model", 1.2),
    ]
    assert as_sent[0]["max_tokens"] == 500
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("unavailable" in r.getMessage() for r in warnings)
    with service.store() as store:
        assert store.get_decision("second") is None  # refused before any decision


def test_a_streamed_call_goes_out_as_sent_and_logs_no_decision(service: Service) -> None:
    with (
        openai_client(service.upstream_url) as oa,
        ParamloopClient(service.url, KEYS["write"]) as pc,
    ):
        wrapped = OptimizedOpenAI(oa, pc, task_type="qa")
        with wrapped.chat.completions.create(
            model="caller-model", messages=MESSAGES, temperature=1.5, stream=True
        ) as stream:
            list(stream)  # the stub answers with JSON, not events: nothing to read
    assert [(b["model"], b["temperature"], b["stream"]) for b in service.upstream.received] == [
        ("caller-model", 1.5, True)
    ]
    with service.store() as store:
        assert store.count_decisions("qa") == 0


def test_the_async_wrapper(service: Service, free_port: int) -> None:
    async def run() -> tuple[ChatCompletion, ChatCompletion]:
        async with (
            openai.AsyncOpenAI(
                base_url=service.upstream_url, api_key="unused", timeout=30, max_retries=0
            ) as oa,
            AsyncParamloopClient(service.url, KEYS["write"]) as pc,
            AsyncParamloopClient(f"http://127.0.0.1:{free_port}", timeout=2) as down,
        ):
            wrapped = AsyncOptimizedOpenAI(oa, pc, task_type="qa")
            optimized = await wrapped.chat.completions.create(
                model="caller-model", messages=MESSAGES, temperature=1.5, request_id="async-1"
            )
            with pytest.raises(openai.InternalServerError):
                await wrapped.chat.completions.create(
                    model="m", messages=FAIL, request_id="async-err"
                )
            unoptimized = await AsyncOptimizedOpenAI(
                oa, down, task_type="qa"
            ).chat.completions.create(model="caller-model", messages=MESSAGES, temperature=1.5)
            return optimized, unoptimized

    optimized, unoptimized = asyncio.run(run())
    with service.store() as store:
        decision = store.get_decision("async-1")
        recorded = store.get_outcome("async-1")
        failed = store.get_outcome("async-err")
    assert decision is not None and recorded is not None and failed is not None
    first, _, last = service.upstream.received
    assert (first["model"], first["temperature"]) == ("small", decision.params.temperature)
    assert (last["model"], last["temperature"]) == ("caller-model", 1.5)
    assert recorded.outcome.completion_tokens == 3 and not recorded.outcome.error
    assert failed.outcome.error
    assert optimized.choices[0].message.content == unoptimized.choices[0].message.content == "7"


def test_import_paramloop_imports_no_client_and_the_client_no_server() -> None:
    code = (
        "import sys, paramloop; "
        "print('httpx' in sys.modules); "
        "import paramloop.client; "
        "heavy = ('fastapi', 'starlette', 'uvicorn', 'sqlalchemy', 'openai', 'paramloop.server'); "
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.split("\n")[:2] == ["False", ""]


def test_an_injected_http_client_is_used_and_left_open(service: Service) -> None:
    seen: list[str] = []

    def count(request: httpx.Request) -> None:
        seen.append(request.url.path)

    with httpx.Client(event_hooks={"request": [count]}) as http:
        with ParamloopClient(service.url, KEYS["read"], http_client=http) as client:
            client.live()
        assert not http.is_closed
        assert seen == ["/health/live"]
