"""The HTTP service end to end, in process: every route, success and error paths, auth, proxy.

The proxy's upstream here is a stub (an ``httpx.MockTransport`` that answers like an
OpenAI server, streams included, and fails on request); the real model is in
``tests/test_proxy_openai.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from paramloop.engine import Optimizer
from paramloop.engine.loop import Loop, build_loop
from paramloop.errors import ConfigError
from paramloop.server.app import create_app
from paramloop.server.auth import digest, identify
from paramloop.server.settings import Settings
from paramloop.store import open_store
from paramloop.store.base import Store
from paramloop.types import Decision, GateReportRecord

KEYS = {"read": "r-key", "write": "w-key", "admin": "a-key"}
T0 = 1_700_000_000.0
WAIT_S = 120.0
CONFIG: dict[str, Any] = {
    "tasks": {
        "qa": {
            "preset": "published",
            "baseline": {"model": "small", "temperature": 0.4, "max_tokens": 32},
            "space": {"temperature": [0.0, 0.4, 0.8], "max_tokens": [16, 32]},
            "reward_wait_s": WAIT_S,
        },
        "rated": {
            "preset": "published",
            "baseline": {"model": "small", "temperature": 0.7, "max_tokens": 64},
            "space": {"temperature": [0.5, 0.7, 0.9]},
            "reward_wait_s": WAIT_S,
        },
    },
    "service": {
        "api_keys": [
            {
                "name": f"{role}-bot",
                "role": role,
                "sha256": hashlib.sha256(key.encode()).hexdigest(),
            }
            for role, key in KEYS.items()
        ],
        "upstreams": {"*": {"base_url": "http://upstream.test/v1", "timeout_s": 5}},
        "prices": {"small": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}},
        "tasks": {"rated": {"feedback": "await"}},
        "max_body_bytes": 20_000,
        # These tests exercise the policy's choices: every request in treatment, said so here
        # (a new task type starts in shadow by default).
        "mode": "general",
    },
}
MESSAGES = [{"role": "user", "content": "a secret prompt about 2 + 2"}]
#: What TestClient answers with (an httpx or httpx2 response, depending on what is installed).
Reply = Any


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Upstream:
    """A stub OpenAI upstream: records what it received; ``content`` of the last message steers it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/chat/completions"):  # a passed-through /v1 call
            return httpx.Response(200, json={"object": "echo", "path": request.url.path})
        body = json.loads(request.content)
        self.received.append(body)
        prompt = body["messages"][-1].get("content")
        if prompt == "timeout":
            raise httpx.ReadTimeout("slow", request=request)
        if prompt == "down":
            raise httpx.ConnectError("refused", request=request)
        if body.get("max_tokens", 0) > 1000:
            error = {"message": "max_tokens is too large", "type": "invalid_request_error"}
            return httpx.Response(400, json={"error": error})
        usage = {"prompt_tokens": 1_000, "completion_tokens": 500, "total_tokens": 1_500}
        if body.get("stream"):
            with_usage = (body.get("stream_options") or {}).get("include_usage")
            chunks: list[dict[str, Any]] = [
                {"choices": [{"index": 0, "delta": {"content": "4"}, "finish_reason": None}]},
                {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            ]
            if with_usage:
                chunks.append({"choices": [], "usage": usage})
            text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return httpx.Response(
                200, content=text.encode(), headers={"content-type": "text/event-stream"}
            )
        message = {"role": "assistant", "content": "4"}
        return httpx.Response(
            200,
            json={
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage,
            },
        )


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role]}"}


def settings_for(tmp_path: Path, **service: Any) -> Settings:
    config = json.loads(json.dumps(CONFIG))
    config["service"]["database_url"] = f"sqlite:///{tmp_path / 'svc.db'}"
    config["service"].update(service)
    return Settings.from_mapping(config, env={})


class Harness:
    def __init__(self, app: FastAPI, client: TestClient, upstream: Upstream, clock: Clock) -> None:
        self.app, self.client, self.upstream, self.clock = app, client, upstream, clock

    @property
    def store(self) -> Store:
        store: Store = self.app.state.ctx.service.optimizer.store
        return store

    def post(self, path: str, body: Any, role: str = "admin", **kw: Any) -> Reply:
        return self.client.post(path, json=body, headers={**auth(role), **kw.pop("headers", {})})

    def get(self, path: str, role: str = "admin", **kw: Any) -> Reply:
        return self.client.get(path, headers=auth(role), **kw)

    def chat(self, task_type: str = "qa", **fields: Any) -> Reply:
        body = {
            "model": "gpt-x",
            "messages": MESSAGES,
            "metadata": {"paramloop_task_type": task_type},
        }
        return self.post("/v1/chat/completions", {**body, **fields}, role="write")


Make = Callable[..., Harness]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    clients: list[TestClient] = []

    def build(loop: Loop | None = None, **service: Any) -> Harness:
        clock, upstream = Clock(), Upstream()
        settings = settings_for(tmp_path, **service)
        app = create_app(settings, loop=loop, transport=httpx.MockTransport(upstream), clock=clock)
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return Harness(app, client, upstream, clock)

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def h(make: Make) -> Harness:
    return make()


def assert_error(response: Reply, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert isinstance(error["message"], str) and error["type"]
    for word in words:
        assert word in error["message"] or word == error.get("param"), error
    return error


# -- decision API ----------------------------------------------------------------------------


def test_recommend_then_outcome(h: Harness) -> None:
    response = h.post(
        "/v1/recommend", {"task_type": "qa", "context": {"risk_tier": "low"}}, "write"
    )
    assert response.status_code == 200
    decision = response.json()
    assert 0 < decision["propensity"] <= 1 and decision["logged"]
    assert decision["request"]["model"] == "small"
    assert decision["request"]["temperature"] in (0.0, 0.4, 0.8)
    assert int(decision["context_fingerprint"]) >= 0
    rid = decision["request_id"]
    stored = h.store.get_decision(rid)
    assert stored is not None and stored.propensity == decision["propensity"]

    item = {"request_id": rid, "outcome": {"quality": 0.9, "latency_ms": 800}}
    first = h.post("/v1/outcomes", item, "write")
    assert first.status_code == 200 and first.json()["source"] == "observed"
    assert h.post("/v1/outcomes", item, "write").json() == first.json()  # idempotent
    changed = {"request_id": rid, "outcome": {"quality": 0.1}}
    assert_error(h.post("/v1/outcomes", changed, "write"), 409, "different outcome")


def test_recommend_with_request_id_and_seed_is_reproducible(h: Harness) -> None:
    body = {"task_type": "qa", "context": {"prompt_tokens": 300}, "seed": 7}
    a = h.post("/v1/recommend", {**body, "request_id": "seeded-1"}, "write").json()
    b = h.post("/v1/recommend", {**body, "request_id": "seeded-2"}, "write").json()
    assert a["request_id"] == "seeded-1" and a["arm"] == b["arm"]
    # the same body again is a retry (the answer was lost): the stored decision comes back
    assert h.post("/v1/recommend", {**body, "request_id": "seeded-1"}, "write").json() == a
    retried = h.post("/v1/recommend", {**body, "seed": 8, "request_id": "seeded-1"}, "write")
    assert_error(retried, 409, "different task type, context or seed")


@pytest.mark.parametrize(
    ("body", "status", "word"),
    [
        ({"task_type": "poetry"}, 404, "unknown task type 'poetry'"),
        ({"task_type": "qa", "context": {"colour": "red"}}, 422, "colour"),
        ({"task_type": "qa", "context": {"prompt_tokens": -3}}, 422, "prompt_tokens"),
        ({"task_type": "qa", "context": {"risk_tier": 5}}, 422, "risk_tier"),
        ({"task_type": 5}, 422, "task_type"),
        ({"task_type": "qa", "extra": 1}, 422, "extra"),
        ({"task_type": "qa", "seed": -1}, 422, "seed"),
        ({"task_type": "qa", "request_id": ""}, 422, "request_id"),
        ([1, 2], 422, "body"),
    ],
)
def test_recommend_refuses_bad_input_and_logs_nothing(
    h: Harness, body: Any, status: int, word: str
) -> None:
    assert_error(h.post("/v1/recommend", body, "write"), status, word)
    assert h.store.count_decisions() == 0


def test_malformed_json_is_a_400(h: Harness) -> None:
    for path in ("/v1/recommend", "/v1/outcomes", "/v1/feedback", "/v1/chat/completions"):
        response = h.client.post(
            path,
            content=b'{"task_type": ',
            headers={**auth("write"), "content-type": "application/json"},
        )
        assert_error(response, 400, "not valid JSON")


def test_oversized_bodies_are_a_413(h: Harness) -> None:
    big = {"task_type": "qa", "context": {"note": "x" * 30_000}}
    assert_error(h.post("/v1/recommend", big, "write"), 413, "larger than 20000 bytes")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"task_type": "qa", "context": {"note": "'
        for _ in range(30):
            yield b"x" * 1_000
        yield b'"}}'

    response = h.client.post(
        "/v1/recommend",
        content=chunks(),
        headers={**auth("write"), "content-type": "application/json"},
    )
    assert_error(response, 413)
    assert h.store.count_decisions() == 0


def test_a_batch_of_outcomes_is_all_or_none(h: Harness) -> None:
    rids = [
        h.post("/v1/recommend", {"task_type": "qa"}, "write").json()["request_id"] for _ in range(2)
    ]
    good = {"quality": 1.0}
    batch = {
        "outcomes": [
            {"request_id": rids[0], "outcome": good},
            {"request_id": "nope", "outcome": good},
        ]
    }
    error = assert_error(h.post("/v1/outcomes", batch, "write"), 404, "nope")
    assert error["param"] == "outcomes[1]"
    assert h.store.get_outcome(rids[0]) is None
    batch = {"outcomes": [{"request_id": r, "outcome": good} for r in rids]}
    response = h.post("/v1/outcomes", batch, "write")
    assert [r["request_id"] for r in response.json()["recorded"]] == rids
    bad = {"outcomes": [{"request_id": rids[0], "outcome": {"quality": 2}}]}
    assert_error(h.post("/v1/outcomes", bad, "write"), 422, "outcomes.0.outcome.quality")
    assert_error(h.post("/v1/outcomes", {"outcomes": []}, "write"), 422)
    unknown = {"request_id": "ghost", "outcome": good}
    assert_error(h.post("/v1/outcomes", unknown, "write"), 404, "ghost")


def test_late_outcomes_are_refused_after_the_wait_window(h: Harness) -> None:
    rid = h.post("/v1/recommend", {"task_type": "qa"}, "write").json()["request_id"]
    h.clock.now += WAIT_S - 1
    early = {"request_id": rid, "outcome": {"quality": 0.5}}
    assert h.post("/v1/outcomes", early, "write").status_code == 200
    other = h.post("/v1/recommend", {"task_type": "qa"}, "write").json()["request_id"]
    h.clock.now += WAIT_S + 1
    late = {"request_id": other, "outcome": {"quality": 0.5}}
    assert_error(h.post("/v1/outcomes", late, "write"), 409, "wait window")


# -- auth ------------------------------------------------------------------------------------

ROUTES: list[tuple[str, str, str, Any]] = [
    ("read", "GET", "/v1/models", None),
    ("read", "GET", "/metrics", None),
    ("read", "GET", "/api/optimization/status", None),
    ("read", "GET", "/api/optimization/metrics", None),
    ("read", "GET", "/api/optimization/dashboard", None),
    ("read", "GET", "/api/optimization/baseline-parameters", None),
    ("read", "GET", "/api/optimization/logs?task_type=qa", None),
    ("read", "GET", "/api/optimization/db-status", None),
    ("read", "GET", "/api/optimization/audit-logs", None),
    ("read", "GET", "/api/optimization/convergence", None),
    ("read", "GET", "/api/optimization/parameter-evolution?task_type=qa", None),
    ("read", "GET", "/api/optimization/slo-status", None),
    ("read", "GET", "/api/optimization/rollout-status", None),
    ("read", "GET", "/api/optimization/compliance-status", None),
    ("read", "GET", "/api/optimization/alerts", None),
    ("read", "GET", "/api/optimization/health", None),
    ("read", "GET", "/api/optimization/rollback-status", None),
    ("read", "GET", "/api/optimization/performance", None),
    ("read", "GET", "/api/optimization/caws-status", None),
    ("write", "POST", "/v1/recommend", {"task_type": "qa"}),
    ("write", "POST", "/v1/outcomes", {"request_id": "x", "outcome": {}}),
    ("write", "POST", "/v1/feedback", {"request_id": "x", "quality": 1}),
    ("write", "POST", "/v1/chat/completions", {"model": "m", "messages": MESSAGES}),
    ("write", "POST", "/v1/embeddings", {"model": "m", "input": "hi"}),
    ("write", "GET", "/v1/files", None),
    ("write", "POST", "/api/optimization/recommend", {"task_type": "qa"}),
    ("write", "POST", "/api/optimization/record-outcome", {"request_id": "x", "outcome": {}}),
    ("admin", "GET", "/api/optimization/security-status", None),
    ("admin", "POST", "/api/optimization/test-shadow", {"task_type": "qa"}),
    ("admin", "POST", "/api/optimization/approvals", {"report_id": 1, "reason": "ok"}),
    *[
        ("admin", "POST", f"/api/optimization/{action}", {"task_type": "qa", "reason": "r"})
        for action in ("advance", "rollback", "pause", "resume", "restart", "unfreeze")
    ],
    (
        "admin",
        "POST",
        "/api/optimization/traffic",
        {"task_type": "qa", "percent": 100, "reason": "r"},
    ),
    (
        "admin",
        "POST",
        "/api/optimization/budget-waiver",
        {"task_type": "qa", "percent": 5, "reason": "r"},
    ),
]


@pytest.mark.parametrize(("needs", "method", "path", "body"), ROUTES, ids=[r[2] for r in ROUTES])
def test_auth_matrix(h: Harness, needs: str, method: str, path: str, body: Any) -> None:
    rank = ("read", "write", "admin")
    for caller, headers in [
        ("none", {}),
        ("unknown", {"Authorization": "Bearer not-a-key"}),
        *[(role, auth(role)) for role in rank],
        *[(f"{role} via X-API-Key", {"X-API-Key": KEYS[role]}) for role in rank],
    ]:
        response = h.client.request(method, path, json=body, headers=headers)
        role = caller.split()[0]
        if role in ("none", "unknown"):
            assert_error(response, 401)
            assert response.headers["www-authenticate"] == "Bearer"
        elif rank.index(role) < rank.index(needs):
            assert_error(response, 403, f"needs the {needs!r} role")
        else:
            assert response.status_code not in (401, 403), (caller, response.text)


def test_health_is_public(h: Harness) -> None:
    response = h.client.get("/health")
    assert response.status_code == 200
    assert response.json()["ready"] is True and response.json()["store"]["ok"] is True


def test_keys_are_compared_by_digest() -> None:
    settings = Settings.from_mapping(
        CONFIG, env={"PARAMLOOP_API_KEYS": f"ops:admin:{digest('s3cret')}"}
    )
    key = identify(settings.api_keys, "s3cret")
    assert key is not None and (key.name, key.role) == ("ops", "admin")
    assert identify(settings.api_keys, "s3cret ") is None
    assert "s3cret" not in repr(settings) and digest("s3cret") not in repr(settings)


def test_auth_can_be_disabled_only_on_loopback(tmp_path: Path) -> None:
    open_ = settings_for(tmp_path, api_keys=[], auth="disabled")
    assert open_.auth_disabled and open_.host == "127.0.0.1"
    with pytest.raises(ConfigError, match="loopback"):
        settings_for(tmp_path, api_keys=[], auth="disabled", host="0.0.0.0")
    with pytest.raises(ConfigError, match="no API keys"):
        settings_for(tmp_path, api_keys=[])
    app = create_app(open_)
    with TestClient(app) as client:
        assert client.post("/v1/recommend", json={"task_type": "qa"}).status_code == 200


# -- the proxy -------------------------------------------------------------------------------


def test_the_proxy_optimizes_forwards_measures_and_logs(h: Harness) -> None:
    response = h.chat(top_p=0.5, user="u1", metadata={"paramloop_task_type": "qa", "team": "x"})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "4"
    rid = response.headers["x-paramloop-request-id"]
    assert response.headers["x-paramloop-mode"] == "optimized"
    decision = h.store.get_decision(rid)
    assert decision is not None
    sent = h.upstream.received[-1]
    assert sent["model"] == "small" and sent["messages"] == MESSAGES
    assert sent["temperature"] == decision.params.temperature
    assert sent["max_tokens"] == decision.params.max_tokens
    assert (sent["top_p"], sent["user"], sent["metadata"]) == (0.5, "u1", {"team": "x"})
    assert decision.context["model_name"] == "gpt-x"  # the model asked for is context
    recorded = h.store.get_outcome(rid)
    assert recorded is not None
    assert (recorded.outcome.prompt_tokens, recorded.outcome.completion_tokens) == (1_000, 500)
    assert recorded.outcome.cost == pytest.approx(0.002)
    assert recorded.outcome.latency_ms is not None and recorded.outcome.latency_ms >= 0
    assert_error(h.post("/v1/feedback", {"request_id": rid, "quality": 1.0}, "write"), 409)


def test_task_type_and_context_by_header(h: Harness) -> None:
    headers = {
        **auth("write"),
        "X-Paramloop-Task-Type": "qa",
        "X-Paramloop-Context": json.dumps({"risk_tier": "high"}),
        "X-Paramloop-Request-Id": "from-caller",
    }
    body = {"model": "m", "messages": MESSAGES}
    response = h.client.post("/v1/chat/completions", json=body, headers=headers)
    assert response.headers["x-paramloop-request-id"] == "from-caller"
    decision = h.store.get_decision("from-caller")
    assert decision is not None and decision.context["risk_tier"] == "high"
    assert "metadata" not in h.upstream.received[-1]
    ctx = {"paramloop_task_type": "qa", "paramloop_context": '{"risk_tier": "low"}'}
    assert h.chat(metadata=ctx).status_code == 200


@pytest.mark.parametrize(
    ("fields", "status", "word"),
    [
        ({"metadata": {"paramloop_task_type": "poetry"}}, 404, "poetry"),
        ({"metadata": {}}, 422, "name the task type"),
        (
            {"metadata": {"paramloop_task_type": "qa", "paramloop_context": "{"}},
            422,
            "not valid JSON",
        ),
        (
            {"metadata": {"paramloop_task_type": "qa", "paramloop_context": "[1]"}},
            422,
            "JSON object",
        ),
        ({"metadata": {"paramloop_task_type": "qa", "paramloop_context": {"x": 1}}}, 422, "'x'"),
        ({"messages": []}, 422, "messages"),
        ({"model": ""}, 422, "model"),
        ({"stream": "yes"}, 422, "stream"),
    ],
)
def test_the_proxy_refuses_bad_input_before_calling_upstream(
    h: Harness, fields: dict[str, Any], status: int, word: str
) -> None:
    assert_error(h.chat(**fields), status, word)
    assert h.upstream.received == []
    assert h.store.count_decisions() == 0


def test_pinned_parameters_are_respected(h: Harness) -> None:
    response = h.chat(temperature=1.7)
    assert response.headers["x-paramloop-mode"] == "pinned"
    assert h.upstream.received[-1]["temperature"] == 1.7
    assert h.upstream.received[-1]["model"] == "gpt-x"
    assert h.store.count_decisions() == 0


def test_the_proxy_streams_and_reads_the_usage(h: Harness) -> None:
    response = h.chat(stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.splitlines() if line]
    assert events[-1] == "data: [DONE]"
    assert all('"usage"' not in e for e in events)  # the caller did not ask for usage
    assert h.upstream.received[-1]["stream_options"] == {"include_usage": True}
    recorded = h.store.get_outcome(response.headers["x-paramloop-request-id"])
    assert recorded is not None and recorded.outcome.completion_tokens == 500

    asked = h.chat(stream=True, stream_options={"include_usage": True})
    assert any('"usage"' in line for line in asked.text.splitlines())


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"messages": [{"role": "user", "content": "timeout"}]}, 504),
        ({"messages": [{"role": "user", "content": "down"}]}, 502),
        ({"stream": True, "messages": [{"role": "user", "content": "down"}]}, 502),
    ],
)
def test_unreachable_and_slow_upstreams_are_error_outcomes(
    h: Harness, fields: dict[str, Any], status: int
) -> None:
    response = h.chat(**fields)
    assert_error(response, status, "upstream")
    recorded = h.store.get_outcome(response.headers["x-paramloop-request-id"])
    assert recorded is not None and recorded.outcome.error is True


def test_upstream_errors_pass_through_and_count_as_error_outcomes() -> None:
    # a task type whose arm asks for more tokens than the stub model accepts
    config = json.loads(json.dumps(CONFIG))
    config["tasks"]["qa"]["baseline"]["max_tokens"] = 2000
    config["tasks"]["qa"]["space"]["max_tokens"] = [2000]
    config["service"]["database_url"] = "sqlite:///:memory:"
    upstream, clock = Upstream(), Clock()
    app = create_app(
        Settings.from_mapping(config, env={}), transport=httpx.MockTransport(upstream), clock=clock
    )
    with TestClient(app) as client:
        body = {"model": "m", "messages": MESSAGES, "metadata": {"paramloop_task_type": "qa"}}
        response = client.post("/v1/chat/completions", json=body, headers=auth("write"))
        assert response.status_code == 400
        assert response.json()["error"]["message"] == "max_tokens is too large"
        store = app.state.ctx.service.optimizer.store
        recorded = store.get_outcome(response.headers["x-paramloop-request-id"])
        assert recorded is not None and recorded.outcome.error is True
        assert (
            'paramloop_errors_total{kind="upstream"}'
            not in client.get("/metrics", headers=auth("read")).text
        )  # an upstream answer, not an upstream failure


class Broken(Optimizer):
    def recommend(self, *args: Any, **kwargs: Any) -> Decision:
        raise RuntimeError("the policy exploded")


def test_fail_open_forwards_the_callers_request_and_counts_it(make: Make, tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    built = build_loop(settings.tasks, open_store(settings.database_url))
    broken = Broken(
        settings.tasks, built.optimizer.store, rollout=built.rollout, budgets=built.budgets
    )
    h = make(loop=Loop(broken, built.rollout, built.budgets, built.alerts))
    response = h.chat(temperature=None, top_p=0.3)
    assert response.status_code == 200
    assert response.headers["x-paramloop-mode"] == "fail_open"
    assert h.upstream.received[-1]["model"] == "gpt-x"
    assert h.upstream.received[-1]["top_p"] == 0.3
    assert "metadata" not in h.upstream.received[-1]
    text = h.get("/metrics", "read").text
    assert 'paramloop_errors_total{kind="proxy_fail_open"} 1.0' in text
    assert 'paramloop_proxy_requests_total{mode="fail_open",task_type="qa"} 1.0' in text


def test_feedback_joins_the_right_decision(h: Harness) -> None:
    first, second = h.chat("rated"), h.chat("rated")
    rids = [r.headers["x-paramloop-request-id"] for r in (first, second)]
    assert [h.store.get_outcome(r) for r in rids] == [None, None]  # awaiting feedback
    measured = [h.store.get_measurement(r) for r in rids]
    assert all(m is not None and m.prompt_tokens == 1_000 for m in measured)

    response = h.post(
        "/v1/feedback", {"request_id": rids[1], "quality": 0.25, "feedback": 1}, "write"
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == rids[1] and body["task_type"] == "rated"
    assert body["outcome"]["quality"] == 0.25 and body["outcome"]["feedback"] == 1
    assert body["outcome"]["latency_ms"] == measured[1].latency_ms  # type: ignore[union-attr]
    assert h.store.get_outcome(rids[0]) is None
    again = h.post("/v1/feedback", {"request_id": rids[1], "quality": 0.25, "feedback": 1}, "write")
    assert again.json() == body
    assert_error(h.post("/v1/feedback", {"request_id": rids[1], "quality": 0.9}, "write"), 409)
    assert_error(
        h.post("/v1/feedback", {"request_id": "ghost", "quality": 0.9}, "write"), 404, "ghost"
    )
    assert_error(h.post("/v1/feedback", {"request_id": rids[0]}, "write"), 422, "quality")
    assert_error(h.post("/v1/feedback", {"request_id": rids[0], "quality": 3}, "write"), 422)
    h.clock.now += WAIT_S + 1
    assert_error(
        h.post("/v1/feedback", {"request_id": rids[0], "quality": 1}, "write"), 409, "wait window"
    )


def test_disabled_optimization_serves_the_baseline(make: Make) -> None:
    h = make(enabled=False)
    decision = h.post("/v1/recommend", {"task_type": "qa"}, "write").json()
    assert (decision["logged"], decision["origin"]) == (False, "disabled:baseline")
    assert decision["request"] == {"model": "small", "temperature": 0.4, "max_tokens": 32}
    assert h.chat().headers["x-paramloop-mode"] == "disabled"
    assert h.store.count_decisions() == 0


# -- operations ------------------------------------------------------------------------------


def test_operations_endpoints(h: Harness) -> None:
    for _ in range(3):
        h.chat()
    status = h.get("/api/optimization/status", "read").json()
    assert status["store"]["ok"] and status["loop"]["decisions"] == 3
    assert {t["task_type"]: t["feedback"] for t in status["tasks"]} == {
        "qa": "none",
        "rated": "await",
    }
    metrics = h.get("/api/optimization/metrics?task_type=qa", "read").json()["tasks"][0]
    assert metrics["decisions_logged"] == 3 and metrics["proxied"] == {"optimized": 3.0}
    assert metrics["tokens"] == {"prompt": 3000.0, "completion": 1500.0}
    assert metrics["cost"] == pytest.approx(0.006)
    baseline = h.get("/api/optimization/baseline-parameters?task_type=qa", "read").json()
    assert baseline["tasks"][0]["request"] == {
        "model": "small",
        "temperature": 0.4,
        "max_tokens": 32,
    }
    logs = h.get("/api/optimization/logs?task_type=qa&limit=2", "read").json()["decisions"]
    assert len(logs) == 2 and all(row["reward"] is not None for row in logs)
    db = h.get("/api/optimization/db-status", "read").json()
    assert (
        db["ok"]
        and db["backend"] == "SQLiteDecisionLog"
        and db["decisions"] == {"qa": 3, "rated": 0}
    )
    converging = h.get("/api/optimization/convergence", "read").json()["tasks"]
    assert [c["decisions"] for c in converging] == [3, 0]
    evolution = h.get("/api/optimization/parameter-evolution?task_type=qa&buckets=3", "read").json()
    assert sum(b["decisions"] for b in evolution["buckets"]) == 3
    dashboard = h.get("/api/optimization/dashboard", "read").json()
    assert set(dashboard) >= {"status", "metrics", "convergence", "parameter_evolution"}
    assert [
        (r["task_type"], r["phase"], r["traffic_percent"], r["budget_level"])
        for r in dashboard["rollout"]
    ] == [("qa", "general", 100.0, "ok"), ("rated", "general", 100.0, "ok")]
    assert dashboard["rollout"][0]["slo_verdict"] in ("ok", "inconclusive", "breach")
    text = h.get("/metrics", "read").text
    for name in (
        "paramloop_decisions_total",
        "paramloop_outcomes_total",
        "paramloop_reward_bucket",
        "paramloop_http_request_duration_seconds_bucket",
        "paramloop_upstream_duration_seconds_bucket",
        'paramloop_phase{phase="general",task_type="qa"} 1.0',
        'paramloop_phase{phase="shadow",task_type="qa"} 0.0',
        'paramloop_treatment_traffic_percent{task_type="qa"} 100.0',
        "paramloop_tokens_total",
        "paramloop_cost_dollars_total",
    ):
        assert name in text
    models = h.get("/v1/models", "read").json()
    assert [m["id"] for m in models["data"]] == ["small"]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/optimization/metrics?task_type=poetry", 404),
        ("/api/optimization/logs", 422),
        ("/api/optimization/logs?task_type=qa&limit=0", 422),
        ("/api/optimization/parameter-evolution?task_type=qa&buckets=1000", 422),
        ("/api/optimization/convergence?task_type=poetry", 404),
        ("/api/optimization/slo-status?task_type=poetry", 404),
        ("/api/optimization/rollout-status?task_type=poetry", 404),
        ("/api/optimization/compliance-status?task_type=poetry", 404),
        ("/api/optimization/alerts?task_type=poetry", 404),
        ("/api/optimization/alerts?limit=0", 422),
        ("/api/optimization/nowhere", 404),
    ],
)
def test_operations_errors(h: Harness, path: str, status: int) -> None:
    assert_error(h.get(path, "read"), status)


def test_approvals_need_a_passed_report_and_name_the_caller(h: Harness) -> None:
    assert_error(
        h.post("/api/optimization/approvals", {"report_id": 5, "reason": "ok"}),
        422,
        "no gate report",
    )
    report = h.store.save_gate_report(
        GateReportRecord("qa", "learned@1", "baseline@1", "pass", {}, T0)
    )
    response = h.post(
        "/api/optimization/approvals", {"report_id": report.id, "reason": "lift holds"}
    )
    assert response.status_code == 201 and response.json()["actor"] == "admin-bot"
    records = h.get("/api/optimization/audit-logs?kind=gate_approval", "read").json()["records"]
    assert [(r["actor"], r["reason"]) for r in records] == [("admin-bot", "lift holds")]


def test_health_reports_an_unavailable_store(h: Harness) -> None:
    h.store.close()
    response = h.client.get("/health")
    assert response.status_code == 503
    assert response.json()["ready"] is False and "closed" in response.json()["store"]["error"]
    assert h.client.get("/health/ready").status_code == 503
    live = h.client.get("/health/live")  # the store is never asked
    assert live.status_code == 200 and live.json()["live"] is True
    served = h.post("/v1/recommend", {"task_type": "qa"}, "write").json()
    assert served["origin"] == "fallback:baseline" and served["logged"] is False
    assert h.chat().headers["x-paramloop-mode"] == "fallback"


def test_shutdown_snapshots_the_policies_and_closes_the_store(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    app = create_app(settings, transport=httpx.MockTransport(Upstream()))
    with TestClient(app) as client:
        for _ in range(3):
            rid = client.post(
                "/v1/recommend", json={"task_type": "qa"}, headers=auth("write")
            ).json()
            item = {"request_id": rid["request_id"], "outcome": {"quality": 1}}
            client.post("/v1/outcomes", json=item, headers=auth("write"))
    store = app.state.ctx.service.optimizer.store
    assert store.closed
    from paramloop.store import open_store

    reopened = open_store(settings.database_url)
    snapshot = reopened.latest_snapshot("qa")
    assert snapshot is not None and snapshot.last_outcome_seq == 3
    reopened.close()


def test_logs_are_json_lines_with_request_ids_and_no_prompt_text(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    from paramloop.server.jsonlog import JsonFormatter

    with caplog.at_level(logging.INFO, logger="paramloop"):
        rid = h.chat().headers["x-paramloop-request-id"]
    lines = [JsonFormatter().format(record) for record in caplog.records]
    parsed = [json.loads(line) for line in lines]
    assert any(p.get("request_id") == rid and p["message"] == "proxied" for p in parsed)
    assert any(p.get("request_id") == rid and p["message"] == "request" for p in parsed)
    proxied = next(p for p in parsed if p["message"] == "proxied")
    assert len(proxied["prompt_sha256"]) == 16
    assert all("secret prompt" not in line and KEYS["write"] not in line for line in lines)


def test_traces_join_the_callers_trace_and_follow_the_call_upstream(tmp_path: Path) -> None:
    """OpenTelemetry's FastAPI and httpx instrumentations: a server span per request named by
    its route template, in the caller's trace (``traceparent``); the upstream call is a GenAI
    ``chat {model}`` span whose client span carries ``traceparent`` upstream."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stub, sent_headers = Upstream(), []

    def upstream(request: httpx.Request) -> httpx.Response:
        sent_headers.append(dict(request.headers))
        return stub(request)

    app = create_app(
        settings_for(tmp_path, mode="general"),
        tracer_provider=provider,
        transport=httpx.MockTransport(upstream),
    )
    trace_id, caller_span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    traceparent = {"traceparent": f"00-{trace_id}-{caller_span}-01"}
    with TestClient(app) as client:
        decided = client.post(
            "/v1/recommend", json={"task_type": "qa"}, headers={**auth("write"), **traceparent}
        )
        assert decided.status_code == 200
        exporter.clear()
        chat = {"model": "small", "messages": MESSAGES, "metadata": {"paramloop_task_type": "qa"}}
        answered = client.post(
            "/v1/chat/completions", json=chat, headers={**auth("write"), **traceparent}
        )
        assert answered.status_code == 200, answered.text
    spans = {span.name: span for span in exporter.get_finished_spans()}
    server = spans["POST /v1/chat/completions"]  # the route template, not the path
    assert server.context is not None and server.parent is not None
    assert format(server.context.trace_id, "032x") == trace_id
    assert format(server.parent.span_id, "016x") == caller_span
    call = spans["chat small"]
    assert call.parent is not None and call.parent.span_id == server.context.span_id
    assert call.attributes is not None
    attributes = dict(call.attributes)
    sent = stub.received[-1]
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "small"
    assert attributes["gen_ai.request.temperature"] == sent["temperature"]
    assert attributes["gen_ai.request.max_tokens"] == sent["max_tokens"]
    assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == (
        1_000,
        500,
    )
    assert attributes["paramloop.mode"] == answered.headers["x-paramloop-mode"]
    client_spans = [
        s for s in spans.values() if s.parent and s.parent.span_id == call.context.span_id
    ]
    assert len(client_spans) == 1  # the httpx instrumentation's span of the request
    upstream_parent = sent_headers[-1]["traceparent"].split("-")
    assert upstream_parent[1] == trace_id
    assert upstream_parent[2] == format(client_spans[0].context.span_id, "016x")


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "service", "where"),
    [
        ({"LLM_OPTIMIZATION_TRAFFIC_PERCENTAGE": "150"}, {}, "LLM_OPTIMIZATION_TRAFFIC_PERCENTAGE"),
        (
            {"LLM_OPTIMIZATION_TRAFFIC_PERCENTAGE": "half"},
            {},
            "LLM_OPTIMIZATION_TRAFFIC_PERCENTAGE",
        ),
        ({"LLM_OPTIMIZATION_ENABLED": "maybe"}, {}, "LLM_OPTIMIZATION_ENABLED"),
        ({"LLM_OPTIMIZATION_MODE": "yolo"}, {}, "LLM_OPTIMIZATION_MODE"),
        ({"BANDIT_POLICY": "nope"}, {}, "BANDIT_POLICY"),
        ({"SLO_QUALITY_MIN": "1.5"}, {}, "SLO_QUALITY_MIN"),
        ({"BUDGET_DAILY_COST": "-1"}, {}, "BUDGET_DAILY_COST"),
        ({"PARAMLOOP_API_KEYS": "ops:admin"}, {}, "PARAMLOOP_API_KEYS"),
        ({"PARAMLOOP_API_KEYS": "ops:root:" + "0" * 64}, {}, "PARAMLOOP_API_KEYS[0].role"),
        ({"PARAMLOOP_PORT": "70000"}, {}, "PARAMLOOP_PORT"),
        ({}, {"colour": "red"}, "service.colour"),
        ({}, {"tasks": {"poetry": {}}}, "service.tasks.poetry"),
        ({}, {"tasks": {"qa": {"feedback": "later"}}}, "service.tasks.qa.feedback"),
        ({}, {"upstreams": {"*": {"base_url": "ftp://x"}}}, "service.upstreams.*.base_url"),
        (
            {},
            {"upstreams": {"*": {"base_url": "http://x", "api_key_env": "NO_SUCH_VAR"}}},
            "NO_SUCH_VAR",
        ),
        (
            {},
            {"upstreams": {"other": {"base_url": "http://x"}}},
            "no upstream serves model 'small'",
        ),
        ({}, {"prices": {"small": {"input_per_mtok": -1}}}, "service.prices.small.input_per_mtok"),
        ({}, {"api_keys": [{"name": "a", "role": "read", "sha256": "abc"}]}, "sha256"),
    ],
)
def test_settings_errors_name_the_variable_or_key(
    env: dict[str, str], service: dict[str, Any], where: str
) -> None:
    config = json.loads(json.dumps(CONFIG))
    config["service"].update(service)
    with pytest.raises(ConfigError) as caught:
        Settings.from_mapping(config, env=env)
    assert where in str(caught.value)


def test_settings_from_the_environment_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "paramloop.toml"
    path.write_text(
        """
[tasks.qa]
preset = "published"
baseline = { model = "small", temperature = 0.4, max_tokens = 32 }
space = { temperature = [0.0, 0.4, 0.8] }

[tasks.pinned_policy]
preset = "published"
policy = "epsilon_greedy"
baseline = { model = "small", temperature = 0.4 }

[service]
mode = "canary"
auth = "disabled"
"""
    )
    env = {
        "DATABASE_URL": "sqlite:///:memory:",
        "LLM_OPTIMIZATION_ENABLED": "false",
        "LLM_OPTIMIZATION_MODE": "guarded",
        "LLM_OPTIMIZATION_TRAFFIC_PERCENTAGE": "0.25",  # a fraction
        "BANDIT_POLICY": "thompson_gaussian",
        "SLO_LATENCY_P99_MS": "2000",
        "BUDGET_DAILY_TOKENS": "1000000",
        "PARAMLOOP_UPSTREAM_BASE_URL": "http://127.0.0.1:8081/v1",
        "UPSTREAM_KEY": "sk-test",
        "PARAMLOOP_UPSTREAM_API_KEY_ENV": "UPSTREAM_KEY",
    }
    settings = Settings.load(path, env=env, port=9999)
    assert (settings.database_url, settings.enabled, settings.mode) == (
        "sqlite:///:memory:",
        False,
        "guarded",
    )
    assert (settings.traffic_percentage, settings.port) == (25.0, 9999)
    assert settings.tasks["qa"].policy == "thompson_gaussian"
    assert settings.tasks["pinned_policy"].policy == "epsilon_greedy"
    assert settings.slo == {"latency_p99_ms": 2000.0} and settings.budget == {"daily_tokens": 1e6}
    upstream = settings.upstream_for("anything")
    assert (
        upstream is not None and upstream.api_key == "sk-test" and "sk-test" not in repr(upstream)
    )
    assert Settings.load(None, env={}).embedded  # no file: the embedded default (test_deployment)
    with pytest.raises(ConfigError, match="file not found"):
        Settings.load(tmp_path / "missing.toml", env={})


@pytest.mark.parametrize(
    ("database_url", "spool_path", "expected"),
    [
        ("sqlite:///data/paramloop.db", None, "data/paramloop.db.spool"),
        ("sqlite:///:memory:", None, None),
        ("postgresql://u@db/paramloop", None, "paramloop-spool.db"),
        ("postgresql://u@db/paramloop", "/var/lib/pl/spool.db", "/var/lib/pl/spool.db"),
        ("sqlite:///data/paramloop.db", "off", None),
    ],
)
def test_the_spool_sits_beside_the_store_unless_told(
    tmp_path: Path, database_url: str, spool_path: str | None, expected: str | None
) -> None:
    service = {"database_url": database_url}
    if spool_path is not None:
        service["spool_path"] = spool_path
    settings = settings_for(tmp_path, **service)
    location = settings.spool_location()
    assert (None if location is None else str(location)) == expected
    env = {"PARAMLOOP_SPOOL_PATH": "/tmp/elsewhere.db", "PARAMLOOP_STORE_TIMEOUT_S": "0.5"}
    from_env = Settings.from_mapping(CONFIG, env=env)
    assert str(from_env.spool_location()) == "/tmp/elsewhere.db"
    assert from_env.store_timeout_s == 0.5
    with pytest.raises(ConfigError, match="PARAMLOOP_STORE_TIMEOUT_S"):
        Settings.from_mapping(CONFIG, env={"PARAMLOOP_STORE_TIMEOUT_S": "0"})
