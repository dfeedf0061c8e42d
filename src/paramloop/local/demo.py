"""The proxy demo's tasks: real prompts with honest automatic quality checks.

Three task types, each with prompts whose answer can be checked exactly:

* ``arithmetic``: "What is 17 + 25?": quality 1 when the last number of the reply's
  first line is the sum ("17 + 25 = 42" is right, "17 + 25 = 6" is not), else 0;
* ``json_profile``: "Return JSON with name and age for: 'Alice is 31'": the share
  of required fields present and right in a reply that parses as a JSON object
  (0 when it does not parse: too small a ``max_tokens`` truncates it);
* ``short_answer``: "Name a fruit in one word": a length bound, 1 for a reply of at
  most six words, else 0.

:func:`run` sends requests through the proxy (plain HTTP, any OpenAI-compatible
proxy would do), scores each reply, posts the score to ``/v1/feedback`` and
returns one :class:`Round` per request.  ``examples/proxy_demo.py`` runs it
against the real local model and prints how the chosen parameters and rewards
move; ``tests/test_proxy_openai.py`` runs a short loop of it.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from paramloop.server.settings import embedded_document


def config(database_url: str, upstream: str) -> dict[str, Any]:
    """The TOML document (as a mapping) of the demo's service, auth off on loopback.

    The task types are the embedded default's (``embedded.toml``, what ``paramloop
    serve`` runs without a configuration).  The demo shows the policy learning, so
    every task type starts in general here, said explicitly: a deployment's new task
    types start in shadow.
    """
    document = embedded_document()
    service = dict(document.pop("service"))
    service.update(
        database_url=database_url,
        upstreams={"*": {"base_url": upstream, "timeout_s": 120}},
        expire_interval_s=5,
        mode="general",
    )
    return {**document, "service": service}


@dataclass(frozen=True, slots=True)
class Prompt:
    task_type: str
    messages: list[dict[str, str]]
    check: Callable[[str], float]
    extra: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Round:
    task_type: str
    request_id: str
    temperature: float | None
    max_tokens: int | None
    quality: float
    reward: float
    reply: str


def _arithmetic(rng: random.Random) -> Prompt:
    a, b = rng.randint(2, 20), rng.randint(2, 20)

    def check(reply: str) -> float:
        numbers = re.findall(r"-?\d+", reply.strip().split("\n", 1)[0])
        return float(bool(numbers) and int(numbers[-1]) == a + b)

    question = f"What is {a} + {b}? Reply with only the number."
    return Prompt("arithmetic", [{"role": "user", "content": question}], check, {})


_PEOPLE = ["Alice", "Bob", "Chen", "Dana", "Emil", "Fatima"]


def _json_profile(rng: random.Random) -> Prompt:
    name, age = rng.choice(_PEOPLE), rng.randint(18, 90)

    def check(reply: str) -> float:
        try:
            data = json.loads(reply)
        except ValueError:
            return 0.0
        if not isinstance(data, dict):
            return 0.0
        right = (str(data.get("name", "")).strip() == name) + (data.get("age") in (age, str(age)))
        return right / 2

    text = f'Return a JSON object with the keys "name" and "age" for: "{name} is {age} years old."'
    return Prompt(
        "json_profile",
        [{"role": "user", "content": text}],
        check,
        {"response_format": {"type": "json_object"}},
    )


def _short_answer(rng: random.Random) -> Prompt:
    thing = rng.choice(["a colour", "a fruit", "an animal", "a country"])

    def check(reply: str) -> float:
        return float(0 < len(reply.split()) <= 6)

    question = f"Name {thing}. Answer with one word only."
    return Prompt("short_answer", [{"role": "user", "content": question}], check, {})


PROMPTS: tuple[Callable[[random.Random], Prompt], ...] = (_arithmetic, _json_profile, _short_answer)


def prompts(seed: int) -> Iterator[Prompt]:
    """An endless, reproducible stream of prompts, task types in turn."""
    rng = random.Random(seed)
    while True:
        for make in PROMPTS:
            yield make(rng)


def run(
    client: httpx.Client,
    rounds: int,
    *,
    seed: int = 0,
    on_round: Callable[[Round], None] | None = None,
) -> list[Round]:
    """Send ``rounds`` requests through the proxy at ``client.base_url``, score them, send feedback."""
    out = []
    stream = prompts(seed)
    for i in range(rounds):
        prompt = next(stream)
        body = {
            "model": "smollm2",
            "messages": prompt.messages,
            "seed": seed * 100_003 + i,
            "metadata": {"paramloop_task_type": prompt.task_type},
            **prompt.extra,
        }
        response = client.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        request_id = response.headers["x-paramloop-request-id"]
        reply = response.json()["choices"][0]["message"]["content"] or ""
        quality = prompt.check(reply)
        recorded = client.post("/v1/feedback", json={"request_id": request_id, "quality": quality})
        recorded.raise_for_status()
        latest = client.get(
            "/api/optimization/logs", params={"task_type": prompt.task_type, "limit": 1}
        ).json()["decisions"]
        decision = next((d for d in latest if d["request_id"] == request_id), None)
        params = decision["params"] if decision is not None else {}
        round_ = Round(
            prompt.task_type,
            request_id,
            params.get("temperature"),
            params.get("max_tokens"),
            quality,
            recorded.json()["reward"],
            reply,
        )
        out.append(round_)
        if on_round is not None:
            on_round(round_)
    return out


__all__ = ["PROMPTS", "Prompt", "Round", "config", "prompts", "run"]
