"""Property-based fuzzing of the served OpenAPI document (schemathesis): no 5xx, on any route.

Every operation gets generated valid and invalid inputs (bounded, so the whole
run takes seconds) against the ASGI app in process, called with an admin key so
that the handlers, not only authentication, see the inputs: the rollout's admin
actions (advance, rollback, pause, traffic, waivers, …) included, in whatever
order hypothesis picks.  The proxy's upstream is a stub that answers like OpenAI.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

from paramloop.server.app import create_app
from paramloop.server.settings import Settings

ADMIN_KEY = "fuzz-admin"
EXAMPLES = 30  # per operation: ~30 operations in seconds


def _upstream(request: httpx.Request) -> httpx.Response:
    if not request.url.path.endswith("/chat/completions"):  # a passed-through /v1 call
        return httpx.Response(200, json={"object": "echo", "path": request.url.path})
    body = json.loads(request.content)
    message = {"role": "assistant", "content": "ok"}
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    if body.get("stream"):
        chunk = {"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]}
        text = (
            f"data: {json.dumps(chunk)}\n\ndata: {json.dumps({'choices': [], 'usage': usage})}\n\n"
        )
        return httpx.Response(200, content=(text + "data: [DONE]\n\n").encode())
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return httpx.Response(200, json={"choices": [choice], "usage": usage, "model": body["model"]})


def test_no_route_answers_with_a_server_error(tmp_path: Path) -> None:
    config: dict[str, Any] = {
        "tasks": {
            "qa": {
                "preset": "published",
                "baseline": {"model": "small", "temperature": 0.4, "max_tokens": 32},
                "space": {"temperature": [0.0, 0.4, 0.8], "max_tokens": [16, 32]},
                "budget": {"tokens_per_day": 1_000_000},
            }
        },
        "service": {
            "database_url": f"sqlite:///{tmp_path / 'fuzz.db'}",
            "api_keys": [
                {
                    "name": "fuzzer",
                    "role": "admin",
                    "sha256": hashlib.sha256(ADMIN_KEY.encode()).hexdigest(),
                }
            ],
            "upstreams": {"*": {"base_url": "http://upstream.test/v1"}},
            "default_task_type": "qa",
        },
    }
    app = create_app(
        Settings.from_mapping(config, env={}), transport=httpx.MockTransport(_upstream)
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [r.ok() for r in schema.get_all_operations() if isinstance(r, Ok)]
    assert len(operations) >= 29
    # (the pytest plugin's lazy fixtures do not run under pytest 9; hypothesis directly does)
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Any) -> None:
            response = case.call(headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            case.validate_response(response, checks=[not_a_server_error])

        fuzz()
