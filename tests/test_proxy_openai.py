"""The official ``openai`` client against the proxy, in front of the real local model.

The model (SmolLM2-135M on llama.cpp) is served once per session from a thread
(``local_upstream_url`` in ``conftest.py``); the proxy runs under uvicorn in another
thread, with its lifespan, on a SQLite store.  Replies are short.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from paramloop.local import demo
from paramloop.server.app import create_app
from paramloop.server.settings import Settings
from paramloop.store import open_store

PROMPT: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is 3 + 4? Reply with only the number."}
]
META = {"paramloop_task_type": "arithmetic"}


def _proxy(
    serve_app: Callable[..., AbstractContextManager[str]], upstream: str, db: Path
) -> AbstractContextManager[str]:
    settings = Settings.from_mapping(demo.config(f"sqlite:///{db}", upstream), env={})
    return serve_app(create_app(settings), lifespan="on")


@pytest.fixture
def proxied(
    local_upstream_url: str,
    serve_app: Callable[..., AbstractContextManager[str]],
    tmp_path: Path,
) -> Iterator[tuple[str, Path]]:
    db = tmp_path / "proxy.db"
    with _proxy(serve_app, local_upstream_url, db) as url:
        yield url, db


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=120, max_retries=0)


def test_a_plain_completion_through_the_proxy(proxied: tuple[str, Path]) -> None:
    url, db = proxied
    with client(url) as oa:
        raw = oa.chat.completions.with_raw_response.create(
            model="smollm2", messages=PROMPT, metadata=META, seed=1
        )
        completion = raw.parse()
        rid = raw.headers["x-paramloop-request-id"]
        assert raw.headers["x-paramloop-mode"] == "optimized"
    assert completion.choices[0].message.content is not None
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    with httpx.Client(base_url=url, timeout=60) as http:
        recorded = http.post("/v1/feedback", json={"request_id": rid, "quality": 1.0}).json()
    assert recorded["outcome"]["completion_tokens"] == completion.usage.completion_tokens
    assert recorded["outcome"]["prompt_tokens"] == completion.usage.prompt_tokens
    store = open_store(f"sqlite:///{db}")
    decision = store.get_decision(rid)
    assert decision is not None and decision.params.max_tokens is not None
    assert completion.usage.completion_tokens <= decision.params.max_tokens
    store.close()


def test_a_streamed_completion_through_the_proxy(proxied: tuple[str, Path]) -> None:
    url, _ = proxied
    pieces: list[str] = []
    with (
        client(url) as oa,
        oa.chat.completions.create(
            model="smollm2", messages=PROMPT, metadata=META, seed=2, stream=True
        ) as stream,
    ):
        for chunk in stream:
            assert chunk.usage is None  # not asked for: the proxy's own usage chunk is dropped
            pieces.extend(choice.delta.content or "" for choice in chunk.choices)
    assert "".join(pieces).strip()
    with client(url) as oa:
        chunks = list(
            oa.chat.completions.create(
                model="smollm2",
                messages=PROMPT,
                metadata=META,
                seed=2,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_parameters_the_model_rejects_come_back_as_its_400(proxied: tuple[str, Path]) -> None:
    url, _ = proxied
    with client(url) as oa, pytest.raises(openai.BadRequestError) as caught:
        oa.chat.completions.create(
            model="smollm2", messages=PROMPT, metadata=META, extra_body={"logprobs": True}
        )
    assert caught.value.status_code == 400
    assert "not supported by this upstream" in str(caught.value.body)


def test_a_short_learning_loop_with_automatic_quality_checks(proxied: tuple[str, Path]) -> None:
    url, db = proxied
    with httpx.Client(base_url=url, timeout=120) as http:
        rounds = demo.run(http, 21, seed=5)
        status = http.get("/api/optimization/status").json()
    assert {r.task_type for r in rounds} == {"arithmetic", "json_profile", "short_answer"}
    assert all(0.0 <= r.quality <= 1.0 and 0.0 <= r.reward <= 1.0 for r in rounds)
    assert all(r.max_tokens in (6, 12, 24, 48) for r in rounds)
    assert status["loop"]["decisions"] == 21 and status["loop"]["outcomes"] == 21
    store = open_store(f"sqlite:///{db}")
    for r in rounds:
        recorded = store.get_outcome(r.request_id)
        assert recorded is not None and recorded.outcome.quality == r.quality
        assert recorded.outcome.latency_ms is not None and recorded.outcome.latency_ms > 0
    store.close()
