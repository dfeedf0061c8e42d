"""The service under faults: what callers were told is what the store holds.

Each test reproduces a failure found by probing the service as an operator
would (issue 10) through its real HTTP surface: uvicorn on a loopback port,
the official ``openai`` client, and an upstream that is a real HTTP server
whose misbehaviour is chosen per test (a stream that ends late, garbage with a
200).  Stores are real (SQLite here; PostgreSQL outages in
``tests/test_service_outage.py``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
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
    }
}
USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
META = {"paramloop_task_type": "qa"}


def upstream_app(*, linger_s: float = 0.3, garbage: bytes | None = None) -> Starlette:
    """An OpenAI-compatible upstream that keeps its stream open ``linger_s`` after ``[DONE]``.

    With ``garbage``, every plain completion answers 200 with those bytes.
    """

    async def chat(request: Request) -> Response:
        body = await request.json()
        if not body.get("stream"):
            if garbage is not None:
                return Response(garbage, media_type="application/json")
            message = {"role": "assistant", "content": "7"}
            return JSONResponse(
                {
                    "id": "c1",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": USAGE,
                }
            )

        async def events() -> AsyncIterator[bytes]:
            base = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m"}
            for delta, finish in (({"role": "assistant", "content": "7"}, None), ({}, "stop")):
                chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
            if (body.get("stream_options") or {}).get("include_usage"):
                yield b"data: " + json.dumps({**base, "choices": [], "usage": USAGE}).encode()
                yield b"\n\n"
            yield b"data: [DONE]\n\n"
            await asyncio.sleep(linger_s)  # some servers close their stream a little later

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


Serve = Callable[..., AbstractContextManager[str]]


def settings(db: Path, upstream: str, **service: Any) -> Settings:
    return Settings.from_mapping(
        {
            "tasks": TASKS,
            "service": {
                "database_url": f"sqlite:///{db}",
                "auth": "disabled",
                "upstreams": {"*": {"base_url": upstream, "timeout_s": 10}},
                "prices": {"small": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}},
                **service,
            },
        },
        env={},
    )


@pytest.fixture
def proxy(serve_app: Serve, tmp_path: Path) -> Iterator[Callable[..., tuple[str, Path]]]:
    """``proxy(**upstream_options)`` starts an upstream and the proxy in front of it."""
    opened: list[AbstractContextManager[str]] = []

    def start(**upstream: Any) -> tuple[str, Path]:
        up = serve_app(upstream_app(**upstream))
        opened.append(up)
        upstream_url = up.__enter__()
        db = tmp_path / "svc.db"
        served = serve_app(create_app(settings(db, f"{upstream_url}/v1")), lifespan="on")
        opened.append(served)
        return served.__enter__(), db

    yield start
    for context in reversed(opened):
        context.__exit__(None, None, None)


def wait_for_outcomes(db: Path, request_ids: list[str], timeout_s: float = 10.0) -> int:
    """How many of ``request_ids`` have an outcome once they all do, or the timeout passes."""
    store = open_store(f"sqlite:///{db}")
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            found = sum(store.get_outcome(rid) is not None for rid in request_ids)
            if found == len(request_ids) or time.monotonic() > deadline:
                return found
            time.sleep(0.05)
    finally:
        store.close()


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_stream_whose_done_reached_the_caller_is_recorded(
    proxy: Callable[..., tuple[str, Path]], include_usage: bool
) -> None:
    # The openai client closes the connection when it reads [DONE]; this upstream
    # closes its own stream 300 ms later.  Every call completed for the caller.
    url, db = proxy(linger_s=0.3)
    rids: list[str] = []
    options: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    with openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=30) as oa:
        for _ in range(10):
            raw = oa.chat.completions.with_streaming_response.create(
                model="small",
                messages=[{"role": "user", "content": "3 + 4?"}],
                metadata=META,
                stream=True,
                **options,
            )
            with raw as response:
                rids.append(response.headers["x-paramloop-request-id"])
                text = "".join(
                    chunk.choices[0].delta.content or ""
                    for chunk in response.parse()
                    if chunk.choices
                )
            assert text == "7"
    assert wait_for_outcomes(db, rids) == len(rids)
    store = open_store(f"sqlite:///{db}")
    recorded = store.get_outcome(rids[0])
    store.close()
    assert recorded is not None and recorded.outcome.error is False
    assert recorded.outcome.completion_tokens == USAGE["completion_tokens"]
    assert recorded.outcome.cost == pytest.approx((12 * 1.0 + 3 * 2.0) / 1e6)


@pytest.mark.parametrize(
    "garbage",
    [b"<html>502 Bad Gateway</html>", b'{"id": "x", "object": "chat.completion"}', b"[1, 2]"],
)
def test_a_200_that_is_not_a_completion_is_an_error_outcome(
    proxy: Callable[..., tuple[str, Path]], garbage: bytes
) -> None:
    url, db = proxy(garbage=garbage)
    body = {"model": "small", "messages": [{"role": "user", "content": "hi"}], "metadata": META}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 502, response.text
    assert "not a chat completion" in response.json()["error"]["message"]
    rid = response.headers["x-paramloop-request-id"]
    assert wait_for_outcomes(db, [rid]) == 1
    store = open_store(f"sqlite:///{db}")
    recorded = store.get_outcome(rid)
    store.close()
    assert recorded is not None and recorded.outcome.error is True


# -- bad input: a 4xx naming the field, never a 5xx, nothing stored ------------------------


@pytest.fixture
def service(serve_app: Serve, tmp_path: Path) -> Iterator[tuple[httpx.Client, Path]]:
    """The service (no upstream needed) under uvicorn, and its SQLite file."""
    db = tmp_path / "svc.db"
    app = create_app(settings(db, "http://127.0.0.1:9/v1"))
    with serve_app(app, lifespan="on") as url, httpx.Client(base_url=url, timeout=30) as http:
        yield http, db


HUGE = int("9" * 400)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"task_type": "qa", "context": {"prompt_tokens": HUGE}}, "prompt_tokens"),
        ({"task_type": "qa", "context": {"prior_failures": -HUGE}}, "prior_failures"),
        ({"task_type": "qa", "context": {"prompt_tokens": 2**64}}, "prompt_tokens"),
        ({"task_type": "qa", "request_id": "a\x00b"}, "request_id"),
        ({"task_type": "qa", "unit_id": "u\x00"}, "unit_id"),
        ({"task_type": "qa", "context": {"risk_tier": "hi\x00gh"}}, "risk_tier"),
        ({"task_type": "q\x00a"}, "task_type"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field_and_keeps_the_connection(
    service: tuple[httpx.Client, Path], body: dict[str, Any], field: str
) -> None:
    http, db = service
    content = json.dumps(body).encode()  # json, not orjson: a 400-digit integer is valid JSON
    first = http.post(
        "/v1/recommend", content=content, headers={"content-type": "application/json"}
    )
    assert 400 <= first.status_code < 500, first.text
    error = first.json()["error"]
    assert field in (error["param"] or "") or field in error["message"], error
    assert first.headers.get("connection") != "close"
    # the same connection still serves, and nothing was stored
    assert http.post("/v1/recommend", json={"task_type": "qa"}).status_code == 200
    store = open_store(f"sqlite:///{db}")
    assert store.count_decisions("qa") == 1
    store.close()


def test_a_retried_recommend_gets_the_stored_decision(service: tuple[httpx.Client, Path]) -> None:
    http, _ = service
    body = {"task_type": "qa", "request_id": "r-1", "context": {"prompt_tokens": 900}}
    first = http.post("/v1/recommend", json=body)
    assert first.status_code == 200 and first.json()["logged"] is True
    again = http.post("/v1/recommend", json=body)  # the first answer was lost on the way
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    changed = http.post("/v1/recommend", json={**body, "context": {"prompt_tokens": 901}})
    assert changed.status_code == 409
    assert "r-1" in changed.json()["error"]["message"]
