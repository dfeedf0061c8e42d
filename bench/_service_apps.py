"""The apps ``bench_service.py`` serves with uvicorn (``--factory``), one per subprocess.

``paramloop_app``: the paramloop service, SQLite store at ``$BENCH_DB`` (durable: every
decision committed before the answer) or the database at ``$BENCH_DATABASE_URL``, API-key
auth on, JSON request logs at INFO.
``bare_app``: a FastAPI JSON endpoint with nothing behind it.  ``stub_upstream``: an
OpenAI-compatible chat completion endpoint that answers at once with a fixed reply.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from fastapi import FastAPI

KEY = "bench-key"

TASK = {
    "preset": "published",  # the published task features: risk_tier, prompt_tokens, prior_failures, …
    "baseline": {"model": "small", "temperature": 0.5, "max_tokens": 256},
    "space": {"temperature": [0.3, 0.5, 0.7, 0.9], "max_tokens": [128, 256]},
    "trust_region": {"temperature": 1.0, "max_tokens": 200},
}


def paramloop_app() -> FastAPI:
    from paramloop.server.app import create_app
    from paramloop.server.jsonlog import configure
    from paramloop.server.settings import Settings

    config: dict[str, Any] = {
        "tasks": {"bench": TASK},
        "service": {
            # The whole loop: every decision the policy's (the default, shadow, serves the
            # baseline and only logs the policy's choice).
            "mode": "general",
            "database_url": os.environ.get("BENCH_DATABASE_URL")
            or f"sqlite:///{os.environ['BENCH_DB']}",
            "api_keys": [
                {
                    "name": "bench",
                    "role": "write",
                    "sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                }
            ],
            "upstreams": {
                "*": {"base_url": os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:9/v1")}
            },
        },
    }
    configure("info")
    return create_app(Settings.from_mapping(config, env={}))


def bare_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/recommend")
    async def recommend(body: dict[str, Any]) -> dict[str, Any]:
        return {"request_id": "x", "task_type": body.get("task_type"), "propensity": 1.0}

    return app


def stub_upstream() -> FastAPI:
    app = FastAPI()
    reply = {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": "small",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
    }

    @app.post("/v1/chat/completions")
    async def chat(body: dict[str, Any]) -> dict[str, Any]:
        return {**reply, "model": body.get("model", "small")}

    return app
