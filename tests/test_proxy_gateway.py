"""The proxy as a gateway callers put in front of their apps (issue 11, fidelity).

What the upstream tells its caller reaches the caller: rate-limit and request-id
headers (so the ``openai`` SDK's backoff works through the proxy), OpenAI error
codes for the proxy's own errors, unbuffered server-sent events, and the other
``/v1`` endpoints (embeddings, completions, responses) passed straight through.
Through the real HTTP surface: uvicorn on loopback, the official ``openai``
client, an upstream that is a real HTTP server recording what it received.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from paramloop.server.app import create_app
from paramloop.server.settings import Settings
from paramloop.store import open_store

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
        "space": {"temperature": [0.4], "prompt_variant": ["plain", "terse", "persona"]},
        "exploration": 0.9,  # every variant gets served in a few calls
        "variants": {
            "plain": {"prefix": "Question: "},
            "terse": {"suffix": " Answer in one word.", "version": 2},
            "persona": {"system": "You are a careful tutor."},
        },
    },
}
META = {"paramloop_task_type": "qa"}
USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
Serve = Callable[..., AbstractContextManager[str]]


class Upstream:
    """An OpenAI-compatible upstream that records each request and answers from a script.

    ``script`` is a list of ``(status, headers)`` used in turn for chat completions
    (the last one repeats).
    """

    def __init__(self, script: list[tuple[int, dict[str, str]]] | None = None) -> None:
        self.script = script or [(200, {})]
        self.seen: list[tuple[str, str, dict[str, Any] | None, dict[str, str]]] = []

    def app(self) -> Starlette:
        async def chat(request: Request) -> Response:
            body = await request.json()
            self.seen.append(("POST", request.url.path, body, dict(request.headers)))
            status, headers = self.script[min(len(self.seen) - 1, len(self.script) - 1)]
            if status != 200:
                error = {"error": {"message": "slow down", "type": "requests", "code": "rate"}}
                return JSONResponse(error, status_code=status, headers=headers)
            if body.get("stream"):
                return StreamingResponse(self._events(), media_type="text/event-stream")
            completion = {
                "id": "c1",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "7"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": USAGE,
            }
            return JSONResponse(completion, headers=headers)

        async def other(request: Request) -> Response:
            raw = await request.body()
            body = json.loads(raw) if raw else None
            self.seen.append((request.method, request.url.path, body, dict(request.headers)))
            if request.url.path.endswith("/embeddings"):
                data = [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5]}]
                answer: dict[str, Any] = {
                    "object": "list",
                    "data": data,
                    "model": body["model"] if body else "?",
                    "usage": {"prompt_tokens": 2, "total_tokens": 2},
                }
            elif request.url.path.endswith("/completions"):
                answer = {
                    "id": "cmpl-1",
                    "object": "text_completion",
                    "created": 0,
                    "model": body["model"] if body else "?",
                    "choices": [
                        {"index": 0, "text": " world", "finish_reason": "stop", "logprobs": None}
                    ],
                }
            else:
                return JSONResponse({"error": {"message": "no such route"}}, status_code=404)
            return JSONResponse(answer, headers={"x-request-id": "up-other"})

        return Starlette(
            routes=[
                Route("/v1/chat/completions", chat, methods=["POST"]),
                Route("/v1/{rest:path}", other, methods=["GET", "POST", "DELETE"]),
            ]
        )

    @staticmethod
    async def _events() -> Any:
        base = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m"}
        for delta, finish in (({"role": "assistant", "content": "7"}, None), ({}, "stop")):
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
        yield b"data: " + json.dumps({**base, "choices": [], "usage": USAGE}).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"


@pytest.fixture
def sdk() -> Iterator[Callable[[str, int], openai.OpenAI]]:
    """``sdk(url, max_retries)``: the official client of the proxy at ``url``, closed at the end."""
    clients: list[openai.OpenAI] = []

    def make(url: str, max_retries: int) -> openai.OpenAI:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=max_retries)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def settings(db: Path, upstream: str | None) -> Settings:
    upstreams = {} if upstream is None else {"*": {"base_url": upstream, "timeout_s": 10}}
    return Settings.from_mapping(
        {
            "tasks": TASKS,
            "service": {
                "database_url": f"sqlite:///{db}",
                "auth": "disabled",
                "mode": "general",
                "upstreams": upstreams,
            },
        },
        env={},
    )


@pytest.fixture
def gateway(serve_app: Serve, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """``gateway(upstream)``: the proxy's URL in front of ``upstream`` (a base URL as is;
    ``None``: no upstream configured)."""
    with ExitStack() as stack:

        def start(upstream: Upstream | str | None) -> str:
            base = upstream if not isinstance(upstream, Upstream) else None
            if isinstance(upstream, Upstream):
                base = stack.enter_context(serve_app(upstream.app())) + "/v1"
            app = create_app(settings(tmp_path / "gw.db", base))
            return stack.enter_context(serve_app(app, lifespan="on"))

        yield start


def test_rate_limit_headers_pass_through_and_the_sdk_backs_off_as_told(
    gateway: Callable[..., str], sdk: Callable[[str, int], openai.OpenAI]
) -> None:
    """The upstream's 429 reaches the caller with its Retry-After and rate-limit headers,
    so the official SDK retries when told to; the answer carries the upstream's headers."""
    limited = {
        "retry-after": "0",
        "x-ratelimit-remaining-requests": "0",
        "x-request-id": "up-429",
    }
    upstream = Upstream([(429, limited), (200, {"x-request-id": "up-200", "x-ratelimit-remaining-requests": "99", "openai-processing-ms": "7"})])  # fmt: skip
    url = gateway(upstream)
    with httpx.Client(base_url=url, timeout=30) as http:
        refused = http.post(
            "/v1/chat/completions",
            json={
                "model": "small",
                "messages": [{"role": "user", "content": "hi"}],
                "metadata": META,
            },
        )
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "0"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-request-id"] == "up-429"

    client = sdk(url, 2)
    raw = client.chat.completions.with_raw_response.create(
        model="small",
        messages=[{"role": "user", "content": "hi"}],
        metadata=META,
    )
    assert raw.headers["x-request-id"] == "up-200"
    assert raw.headers["x-ratelimit-remaining-requests"] == "99"
    assert raw.headers["openai-processing-ms"] == "7"
    assert raw.headers["x-paramloop-mode"] in ("optimized", "control")
    assert raw.parse().choices[0].message.content == "7"
    # the refused call, then the SDK's call, then (Retry-After: 0) its retry
    assert len(upstream.seen) == 2


def test_server_sent_events_are_not_buffered(gateway: Callable[..., str]) -> None:
    url = gateway(Upstream())
    body = {
        "model": "small",
        "messages": [{"role": "user", "content": "hi"}],
        "metadata": META,
        "stream": True,
    }
    with (
        httpx.Client(base_url=url, timeout=30) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        lines = [line for line in response.iter_lines() if line]
    assert response.status_code == 200
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["cache-control"] == "no-cache"
    assert lines[-1] == "data: [DONE]"


@pytest.mark.parametrize(
    ("upstream", "status", "code"),
    [
        (None, 502, "no_upstream"),
        ("http://127.0.0.1:9/v1", 502, "upstream_unreachable"),  # nothing listens on port 9
    ],
)
def test_the_proxys_own_errors_carry_an_openai_error_code(
    gateway: Callable[..., str],
    sdk: Callable[[str, int], openai.OpenAI],
    upstream: str | None,
    status: int,
    code: str,
) -> None:
    url = gateway(upstream)
    client = sdk(url, 0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="small", messages=[{"role": "user", "content": "hi"}], metadata=META
        )
    assert caught.value.status_code == status
    assert caught.value.code == code


def test_other_v1_endpoints_go_straight_through(
    gateway: Callable[..., str], sdk: Callable[[str, int], openai.OpenAI]
) -> None:
    """Embeddings, completions and responses are forwarded as sent; nothing is decided."""
    upstream = Upstream()
    url = gateway(upstream)
    client = sdk(url, 0)
    embedded = client.embeddings.with_raw_response.create(model="small", input="hello")
    assert embedded.parse().data[0].embedding == [0.25, -0.5]
    assert embedded.headers["x-request-id"] == "up-other"
    completed = client.completions.create(model="small", prompt="hello", max_tokens=3)
    assert completed.choices[0].text == " world"
    assert [(method, path) for method, path, _, _ in upstream.seen] == [
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/completions"),
    ]
    embed_body, complete_body = upstream.seen[0][2], upstream.seen[1][2]
    assert embed_body is not None and (embed_body["model"], embed_body["input"]) == (
        "small",
        "hello",
    )
    assert complete_body == {"model": "small", "prompt": "hello", "max_tokens": 3}
    with httpx.Client(base_url=url, timeout=30) as http:
        missing = http.post("/v1/responses/nothing", json={"model": "small"})
        assert missing.status_code == 404  # the upstream's answer, passed through
        assert missing.json() == {"error": {"message": "no such route"}}
        ours = http.get("/v1/models")  # paramloop's own /v1 routes still answer
        assert ours.status_code == 200 and ours.json()["object"] == "list"


def test_the_prompt_variant_a_decision_names_is_the_one_sent(
    gateway: Callable[..., str], sdk: Callable[[str, int], openai.OpenAI], tmp_path: Path
) -> None:
    """Through the official client: each call's messages upstream are the caller's with the
    logged decision's variant applied (before, the variant was a label never sent)."""
    upstream = Upstream()
    client = sdk(gateway(upstream), 0)
    asked: list[dict[str, Any]] = [{"role": "user", "content": "What is 2 + 2?"}]
    request_ids = []
    for _ in range(15):
        raw = client.chat.completions.with_raw_response.create(
            model="small",
            messages=[{"role": "user", "content": "What is 2 + 2?"}],
            metadata={"paramloop_task_type": "styled"},
        )
        request_ids.append(raw.headers["x-paramloop-request-id"])
    expected = {
        "plain": [{"role": "user", "content": "Question: What is 2 + 2?"}],
        "terse": [{"role": "user", "content": "What is 2 + 2? Answer in one word."}],
        "persona": [{"role": "system", "content": "You are a careful tutor."}, *asked],
    }
    store = open_store(f"sqlite:///{tmp_path / 'gw.db'}")
    try:
        served = []
        for request_id, (_, _, body, _) in zip(request_ids, upstream.seen, strict=True):
            decision = store.get_decision(request_id)
            assert decision is not None and body is not None
            variant = decision.params.prompt_variant
            assert variant is not None and body["messages"] == expected[variant], variant
            served.append(variant)
    finally:
        store.close()
    assert set(served) == set(expected)  # each variant was decided, logged and sent
