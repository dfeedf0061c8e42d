"""The rollout over HTTP: traffic split, status routes, admin actions and their audit trail.

Task types come from a TOML document with short plans (no minimum durations, no
confidence thresholds, SLO rules decided after a handful of outcomes), so a whole
rollout runs in a few hundred in-process requests.  The auth matrix of these
routes is in ``tests/test_server.py`` with every other route's.
"""

from __future__ import annotations

import hashlib
import json
import threading
import tomllib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from paramloop.core.rollout import Phase
from paramloop.errors import ConfigError
from paramloop.server.app import create_app
from paramloop.server.settings import Settings
from paramloop.store.base import Store
from paramloop.types import GateReportRecord

T0 = 1_700_000_000.0
KEYS = {"read": "r-key", "write": "w-key", "admin": "a-key"}
API = "/api/optimization"
TOML = """
[tasks.qa]
preset = "published"
baseline = { model = "small", temperature = 0.4, max_tokens = 32 }
space = { temperature = [0.0, 0.4, 0.8], max_tokens = [16, 32] }
reward_wait_s = 120

[tasks.qa.rollout]
shadow_min_s = 0
canary_min_s = 0
guarded_min_s = 0
canary_confidence = 0
guarded_confidence = 0
general_confidence = 0

[tasks.qa.slo]
min_samples = 5
error_rate_max = 0.05

[tasks.qa.drift]
enabled = false

[tasks.qa.budget]
tokens_per_day = 100000
max_waiver_percent = 20

[tasks.chat]
preset = "published"
baseline = { model = "small", temperature = 0.7 }
space = { temperature = [0.5, 0.7] }

[service]
upstreams = { "*" = { base_url = "http://upstream.test/v1" } }
"""
Reply = Any


class Upstream:
    """A stub OpenAI upstream that records the bodies it received."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.received.append(json.loads(request.content))
        message = {"role": "assistant", "content": "ok"}
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return httpx.Response(200, json={"choices": [choice], "usage": usage})


class Harness:
    def __init__(self, app: FastAPI, client: TestClient, upstream: Upstream) -> None:
        self.app, self.client, self.upstream = app, client, upstream

    @property
    def store(self) -> Store:
        store: Store = self.app.state.ctx.loop.optimizer.store
        return store

    def post(self, path: str, body: Any, role: str = "admin", **headers: str) -> Reply:
        return self.client.post(
            path, json=body, headers={"Authorization": f"Bearer {KEYS[role]}", **headers}
        )

    def get(self, path: str) -> Reply:
        return self.get_as(path, "read")

    def get_as(self, path: str, role: str) -> Reply:
        """``GET path`` with the key of ``role``."""
        return self.client.get(path, headers={"Authorization": f"Bearer {KEYS[role]}"})

    def act(self, action: str, task_type: str = "qa", **fields: Any) -> Reply:
        body = {"task_type": task_type, "reason": f"{action} for the test", **fields}
        return self.post(f"{API}/{action}", body)

    def rollout(self, task_type: str = "qa") -> dict[str, Any]:
        tasks = self.get(f"{API}/rollout-status?task_type={task_type}").json()["tasks"]
        assert len(tasks) == 1
        state: dict[str, Any] = tasks[0]["state"]
        return state

    def recommend(self, unit: str | None = None, task_type: str = "qa") -> dict[str, Any]:
        body: dict[str, Any] = {"task_type": task_type}
        if unit is not None:
            body["unit_id"] = unit
        response = self.post("/v1/recommend", body, "write")
        assert response.status_code == 200, response.text
        decision: dict[str, Any] = response.json()
        return decision

    def audit(self, kind: str | None = None) -> list[dict[str, Any]]:
        query = f"?kind={kind}" if kind else ""
        records: list[dict[str, Any]] = self.get(f"{API}/audit-logs{query}").json()["records"]
        return records


def settings_for(db: Path, **service: Any) -> Settings:
    document = tomllib.loads(TOML)
    document["service"].update(
        database_url=f"sqlite:///{db}",
        api_keys=[
            {"name": f"{role}-bot", "role": role, "sha256": hashlib.sha256(k.encode()).hexdigest()}
            for role, k in KEYS.items()
        ],
        **service,
    )
    return Settings.from_mapping(document, env={})


Make = Callable[..., Harness]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    clients: list[TestClient] = []

    def build(**service: Any) -> Harness:
        stub = Upstream()
        app = create_app(
            settings_for(tmp_path / "svc.db", **service),
            transport=httpx.MockTransport(stub),
            clock=lambda: T0,
        )
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return Harness(app, client, stub)

    yield build
    for client in clients:
        client.__exit__(None, None, None)


def assert_error(response: Reply, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    for word in words:
        assert word in error["message"] or word == error.get("param"), error
    return error


# -- where a rollout starts, and the split --------------------------------------------------


def test_the_mode_places_new_rollouts_and_the_stored_state_wins_afterwards(make: Make) -> None:
    first = make(mode="canary")
    assert first.rollout("qa")["phase"] == "canary"
    assert first.rollout("qa")["traffic_percent"] == 5.0  # the plan's canary share
    created = first.audit("phase_change")
    assert [(r["task_type"], r["actor"]) for r in created] == [("chat", "config"), ("qa", "config")]
    assert first.act("pause").status_code == 200
    again = make(mode="general")  # a restart with another mode: the stored rollout stands
    assert (again.rollout("qa")["phase"], again.rollout("chat")["phase"]) == ("paused", "canary")


def test_a_new_task_type_starts_in_shadow_unless_the_configuration_says_otherwise(
    make: Make,
) -> None:
    h = make()  # no mode, no LLM_OPTIMIZATION_MODE
    assert (h.rollout("qa")["phase"], h.rollout("qa")["traffic_percent"]) == ("shadow", 0.0)
    assert h.rollout("chat")["phase"] == "shadow"
    decision = h.recommend()
    assert (decision["phase"], decision["origin"]) == ("shadow", "baseline")
    assert h.audit("phase_change") == []  # shadow is where every rollout begins: no record


def test_shadow_logs_the_baseline_with_the_policys_choice(make: Make) -> None:
    h = make(mode="shadow")
    for _ in range(5):
        decision = h.recommend()
        assert (decision["phase"], decision["logged"], decision["origin"]) == (
            "shadow",
            True,
            "baseline",
        )
        assert decision["request"] == {"model": "small", "temperature": 0.4, "max_tokens": 32}
        assert decision["propensity"] == 1.0 and decision["intended_arm"] is not None
        stored = h.store.get_decision(decision["request_id"])
        assert stored is not None and stored.intended_arm == decision["intended_arm"]


def test_a_canary_split_logs_mixture_propensities(make: Make) -> None:
    h = make(mode="canary")  # 5 % treatment
    baseline_arm = h.app.state.ctx.loop.optimizer.config("chat").space.baseline_arm
    groups: dict[str, set[str]] = {}
    for i in range(240):
        unit = f"user-{i // 2}"  # each unit asks twice: in the body, then in the header
        if i % 2 == 0:
            decision = h.recommend(unit, "chat")
        else:
            headers = {"X-Paramloop-Unit-Id": unit}
            decision = h.post("/v1/recommend", {"task_type": "chat"}, "write", **headers).json()
        stored = h.store.get_decision(decision["request_id"])
        assert stored is not None and stored.propensity == decision["propensity"]
        treated = decision["origin"].startswith("bandit:")
        groups.setdefault(unit, set()).add("treatment" if treated else "control")
        if not treated:  # 0.05·π(b|x) + 0.95
            assert stored.arm == baseline_arm and stored.intended_arm == decision["intended_arm"]
            assert stored.intended_arm is not None and 0.95 <= stored.propensity <= 1.0
        elif stored.arm != baseline_arm:  # 0.05·π(a|x)
            assert stored.propensity <= 0.05 and stored.intended_arm is None
        else:  # 0.05·π(b|x) + 0.95
            assert stored.propensity >= 0.95
    assert all(len(seen) == 1 for seen in groups.values())  # a unit keeps its group
    treated_units = sum(seen == {"treatment"} for seen in groups.values())
    assert 0 < treated_units < 20  # ~6 of 120


def test_the_proxy_takes_the_unit_from_the_header_metadata_or_user(make: Make) -> None:
    h = make(mode="guarded", traffic_percentage=50)

    def chat(**fields: Any) -> Reply:
        headers = fields.pop("headers", {})
        body = {
            "model": "small",
            "messages": [{"role": "user", "content": "hi"}],
            "metadata": {"paramloop_task_type": "qa", **fields.pop("metadata", {})},
            **fields,
        }
        return h.post("/v1/chat/completions", body, "write", **headers)

    def ask(where: str, unit: str) -> Reply:
        if where == "user":
            return chat(user=unit)
        if where == "metadata":
            return chat(metadata={"paramloop_unit_id": unit})
        return chat(headers={"X-Paramloop-Unit-Id": unit})

    for where in ("user", "metadata", "header"):
        modes = {}
        for unit in (f"u{i}" for i in range(12)):
            seen = {ask(where, unit).headers["x-paramloop-mode"] for _ in range(3)}
            assert len(seen) == 1  # one unit, one group
            modes[unit] = seen.pop()
        assert set(modes.values()) == {"optimized", "control"}
    assert all("metadata" not in body for body in h.upstream.received)  # paramloop's keys only
    assert {body["user"] for body in h.upstream.received if "user" in body} == {
        f"u{i}" for i in range(12)
    }  # OpenAI's own field goes upstream as sent
    assert_error(chat(headers={"X-Paramloop-Unit-Id": "x" * 201}), 422, "X-Paramloop-Unit-Id")
    assert_error(chat(metadata={"paramloop_unit_id": ""}), 422, "metadata.paramloop_unit_id")


# -- status routes ------------------------------------------------------------------------------


def test_status_routes_read_the_controller_and_the_budgets(make: Make) -> None:
    h = make(mode="canary")
    for i in range(20):
        h.recommend(f"u{i}")
    rollouts = h.get(f"{API}/rollout-status").json()["tasks"]
    assert [(r["task_type"], r["state"]["phase"]) for r in rollouts] == [
        ("qa", "canary"),
        ("chat", "canary"),
    ]
    qa = rollouts[0]
    assert {"slo", "windows", "promotion", "confidence", "drift"} <= set(qa)
    assert not qa["promotion"]["ready"]  # no gate report yet

    slo = h.get(f"{API}/slo-status?task_type=qa").json()["tasks"]
    assert [s["task_type"] for s in slo] == ["qa"]
    assert slo[0]["verdict"] == "inconclusive" and set(slo[0]["windows"]) == {
        "treatment",
        "control",
    }
    assert {r["metric"] for r in slo[0]["rules"]} >= {"error_rate_max"}

    compliance = h.get(f"{API}/compliance-status").json()
    budgets = {t["task_type"]: t["budget"] for t in compliance["tasks"]}
    assert budgets["qa"]["budget"] is True and budgets["qa"]["level"] == "ok"
    assert budgets["qa"]["reserved"]["tokens"] > 0  # the open reservations of the calls
    assert budgets["chat"]["budget"] is False
    constraints = compliance["tasks"][0]["constraints"]
    assert (constraints["decisions"], constraints["violations"]) == (20, 0)
    assert compliance["alerts"]["total"] == len(h.get(f"{API}/alerts").json()["alerts"])

    text = h.get("/metrics").text
    assert 'paramloop_phase{phase="canary",task_type="qa"} 1.0' in text
    assert 'paramloop_treatment_traffic_percent{task_type="qa"} 5.0' in text
    assert 'paramloop_budget_used_fraction{resource="tokens",task_type="qa"}' in text


# -- automatic rollback ---------------------------------------------------------------------


def test_an_slo_breach_rolls_back_and_leaves_its_trail(make: Make) -> None:
    h = make(mode="guarded", traffic_percentage=50)
    for i in range(100):
        decision = h.recommend(f"user-{i % 40}")
        failed = decision["origin"].startswith("bandit:")  # the treatment errs, control does not
        outcome = {"error": failed, "latency_ms": 100, "quality": 0.9}
        response = h.post(
            "/v1/outcomes", {"request_id": decision["request_id"], "outcome": outcome}, "write"
        )
        assert response.status_code == 200, response.text
        if h.rollout()["phase"] == "rolled_back":
            break
    state = h.rollout()
    assert state["phase"] == "rolled_back" and state["traffic_percent"] == 0.0
    assert state["frozen"] and "error_rate_max" in state["frozen_reason"]
    rollback = h.audit("rollback")
    assert [(r["actor"], r["evidence"]["from"]) for r in rollback] == [("rule:slo", "guarded")]
    assert rollback[0]["evidence"]["verdict"] == "breach"
    alerts = h.get(f"{API}/alerts?task_type=qa").json()["alerts"]
    assert any(a["kind"] == "rollback" and a["severity"] == "critical" for a in alerts)
    assert h.get(f"{API}/compliance-status").json()["alerts"]["by_kind"]["rollback"] == 1
    text = h.get("/metrics").text
    assert 'paramloop_rollbacks_total{task_type="qa"} 1.0' in text
    assert 'paramloop_alerts_total{kind="rollback",severity="critical",task_type="qa"} 1.0' in text
    assert h.recommend("user-1")["origin"] == "baseline"  # everyone gets the baseline now

    # What the runbooks read after an automatic rollback.
    (status,) = h.get(f"{API}/rollback-status?task_type=qa").json()["tasks"]
    assert status["rolled_back"] is True and status["previous_phase"] == "guarded"
    assert status["last_rollback"]["actor"] == "rule:slo" and len(status["rollbacks"]) == 1
    assert "error_rate_max" in status["frozen"]
    health = h.get(f"{API}/health")
    assert health.status_code == 200 and health.json()["ready"] is True
    assert health.json()["attention"] == ["qa"] and health.json()["critical_alerts_last_hour"] == 1

    assert h.act("restart").status_code == 200
    assert h.rollout()["phase"] == "shadow"
    assert h.audit("phase_change")[0]["actor"] == "admin-bot"


# -- admin actions --------------------------------------------------------------------------


def test_advance_is_refused_with_the_failed_requirements_then_allowed(make: Make) -> None:
    h = make(mode="shadow")
    error = assert_error(h.act("advance"), 409, "cannot leave shadow")
    assert [r["name"] for r in error["requirements"]] == ["confidence"]  # no decision yet
    assert h.rollout()["phase"] == "shadow" and h.audit("promotion") == []
    h.recommend()
    response = h.act("advance")
    assert response.status_code == 200, response.text
    assert response.json()["state"]["phase"] == "canary"
    (promotion,) = h.audit("promotion")
    assert (promotion["actor"], promotion["reason"]) == ("admin-bot", "advance for the test")
    assert promotion["evidence"]["from"] == "shadow" and promotion["evidence"]["to"] == "canary"

    h.recommend()  # canary needs passed gates too
    error = assert_error(h.act("advance"), 409, "cannot leave canary")
    assert {r["name"] for r in error["requirements"]} >= {"gates"}
    h.store.save_gate_report(GateReportRecord("qa", "linucb@1", "baseline@1", "pass", {}, T0))
    assert {r["name"] for r in assert_error(h.act("advance"), 409)["requirements"]} == {"slo"}


def test_every_admin_action_changes_the_rollout_and_leaves_its_record(make: Make) -> None:
    h = make(mode="canary")
    steps: list[tuple[str, dict[str, Any], str, str]] = [
        ("traffic", {"percent": 3}, "canary", "traffic_change"),
        ("pause", {}, "paused", "phase_change"),
        ("resume", {}, "canary", "phase_change"),
        ("rollback", {"to": "previous"}, "shadow", "rollback"),
        ("unfreeze", {}, "shadow", "unfreeze"),
        ("rollback", {"to": "baseline"}, "rolled_back", "rollback"),
        ("restart", {}, "shadow", "phase_change"),
    ]
    for action, fields, phase, kind in steps:
        response = h.act(action, **fields)
        assert response.status_code == 200, (action, response.text)
        assert response.json()["state"]["phase"] == phase == h.rollout()["phase"]
        record = h.audit()[0]
        assert (record["kind"], record["actor"], record["reason"], record["task_type"]) == (
            kind,
            "admin-bot",
            f"{action} for the test",
            "qa",
        )
    assert h.rollout()["traffic_percent"] == 0.0


@pytest.mark.parametrize(
    ("action", "fields", "status", "word"),
    [
        ("traffic", {"percent": 50}, 422, "canary traffic must be in (0, 5]"),
        ("traffic", {"percent": 101}, 422, "percent"),
        ("resume", {}, 409, "not allowed from phase 'canary'"),
        ("restart", {}, 409, "not allowed from phase 'canary'"),
        ("unfreeze", {}, 422, "not frozen"),
        ("rollback", {"to": "sideways"}, 422, "to"),
        ("rollback", {"reason": ""}, 422, "reason"),
        ("pause", {"task_type": "poetry"}, 404, "poetry"),
        ("budget-waiver", {"task_type": "poetry", "percent": 5}, 404, "poetry"),
        ("advance", {"extra": 1}, 422, "extra"),
    ],
)
def test_refused_actions_change_nothing(
    make: Make, action: str, fields: dict[str, Any], status: int, word: str
) -> None:
    h = make(mode="canary")
    before, records = h.rollout(), h.audit()
    assert_error(h.act(action, **fields), status, word)
    assert h.rollout() == before and h.audit() == records


def test_a_change_racing_another_replica_is_a_409_and_nothing_changes(make: Make) -> None:
    one, other = make(mode="canary"), make(mode="canary")  # two replicas, one database
    assert other.act("pause").status_code == 200
    assert_error(one.act("traffic", percent=3), 409, "changed meanwhile", "retry")
    assert one.rollout()["phase"] == "paused"  # the replica re-read the stored rollout
    assert [r["kind"] for r in one.audit()][:1] == ["phase_change"]
    assert one.act("resume").status_code == 200


def test_a_waiver_beyond_the_threshold_is_refused_and_changes_nothing(make: Make) -> None:
    h = make()
    before = h.get(f"{API}/compliance-status?task_type=qa").json()["tasks"][0]["budget"]
    assert before["limits"]["tokens"] == 100_000 and before["max_waiver_percent"] == 20
    assert_error(h.act("budget-waiver", percent=50), 422, "waiver")
    after = h.get(f"{API}/compliance-status?task_type=qa").json()["tasks"][0]["budget"]
    assert after == before and h.audit("budget_waiver") == []
    assert_error(h.act("budget-waiver", task_type="chat", percent=5), 422, "no budget")

    granted = h.act("budget-waiver", percent=10)
    assert granted.status_code == 200, granted.text
    assert granted.json()["budget"]["limits"]["tokens"] == pytest.approx(110_000)
    (record,) = h.audit("budget_waiver")
    assert (record["actor"], record["evidence"]["percent"]) == ("admin-bot", 10.0)


# -- alerts to a webhook --------------------------------------------------------------------


class Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        Hook.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    Hook.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", Hook.received
    server.shutdown()
    server.server_close()


def test_alerts_go_to_the_webhook(
    tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = webhook
    app = create_app(settings_for(tmp_path / "hook.db", mode="canary", alert_webhook_url=url))
    with TestClient(app) as client:
        body = {"task_type": "qa", "reason": "bad canary", "to": "baseline"}
        response = client.post(
            f"{API}/rollback", json=body, headers={"Authorization": f"Bearer {KEYS['admin']}"}
        )
        assert response.status_code == 200
    # shutting down delivered the queued alert
    assert [(a["kind"], a["severity"], a["task_type"]) for a in received] == [
        ("rollback", "critical", "qa")
    ]


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "where", "word"),
    [
        (
            {"LLM_OPTIMIZATION_TRAFFIC_PERCENTAGE": "0.5"},  # without a mode: shadow's share
            "LLM_OPTIMIZATION_TRAFFIC_PERCENTAGE",
            "shadow traffic",
        ),
        (
            {"LLM_OPTIMIZATION_MODE": "canary", "LLM_OPTIMIZATION_TRAFFIC_PERCENTAGE": "0.3"},
            "LLM_OPTIMIZATION_TRAFFIC_PERCENTAGE",
            "canary traffic",
        ),
        (
            {"LLM_OPTIMIZATION_MODE": "shadow", "LLM_OPTIMIZATION_TRAFFIC_PERCENTAGE": "0.1"},
            "LLM_OPTIMIZATION_TRAFFIC_PERCENTAGE",
            "shadow traffic",
        ),
        ({"PARAMLOOP_ALERT_WEBHOOK_URL": "slack"}, "PARAMLOOP_ALERT_WEBHOOK_URL", "http"),
        ({"SLO_QUALITY_MIN": "0"}, "SLO_QUALITY_MIN", "(0, 1]"),
        ({"SLO_ERROR_RATE_MAX": "1"}, "SLO_ERROR_RATE_MAX", "[0, 1)"),
        ({"BUDGET_DAILY_TOKENS": "0"}, "BUDGET_DAILY_TOKENS", "(0, inf)"),
    ],
)
def test_settings_refuse_what_the_loop_could_not_take(
    env: dict[str, str], where: str, word: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_mapping(tomllib.loads(TOML) | {"service": {"auth": "disabled"}}, env=env)
    assert where in str(caught.value) and word in str(caught.value)


def test_settings_map_the_mode_and_the_service_limits_onto_every_task_type() -> None:
    env = {
        "LLM_OPTIMIZATION_MODE": "guarded",
        "SLO_ERROR_RATE_MAX": "0.02",
        "SLO_QUALITY_MIN": "0.9",
        "BUDGET_DAILY_COST": "5",
    }
    settings = Settings.from_mapping(
        tomllib.loads(TOML) | {"service": {"auth": "disabled"}}, env=env
    )
    assert settings.initial_rollouts() == {
        "qa": (Phase.GUARDED, 25.0),
        "chat": (Phase.GUARDED, 25.0),
    }
    configs = settings.task_configs
    for name in ("qa", "chat"):
        slo = configs[name].rollout.slo
        assert slo.error_rate_max == 0.02 and slo.quality_min == 0.9  # an absolute floor
        budget = configs[name].budget
        assert budget is not None and budget.cost_per_day == 5.0
    assert configs["qa"].budget is not None and configs["qa"].budget.tokens_per_day == 100_000
    assert configs["qa"].rollout.slo.min_samples == 5  # the task type's own, untouched


# -- the runbooks' endpoints ----------------------------------------------------------------


def test_the_decision_routes_answer_under_the_runbooks_paths_too(make: Make) -> None:
    h = make()
    response = h.post(f"{API}/recommend", {"task_type": "qa", "request_id": "alias-1"}, "write")
    assert response.status_code == 200, response.text
    assert response.json()["request_id"] == "alias-1"
    outcome = {"request_id": "alias-1", "outcome": {"quality": 0.8}}
    recorded = h.post(f"{API}/record-outcome", outcome, "write")
    assert recorded.status_code == 200, recorded.text
    stored = h.store.get_outcome("alias-1")
    assert stored is not None and stored.outcome.quality == 0.8
    assert_error(
        h.post(f"{API}/record-outcome", {"request_id": "ghost", "outcome": {}}, "write"), 404
    )


def test_performance_compares_treatment_with_control_over_the_window(make: Make) -> None:
    h = make(mode="guarded", traffic_percentage=50)
    groups = {"treatment": 0, "control": 0}
    for i in range(40):
        decision = h.recommend(f"user-{i}")
        treated = decision["origin"].startswith("bandit:")
        groups["treatment" if treated else "control"] += 1
        outcome = {"latency_ms": 100, "quality": 0.9 if treated else 0.7, "cost": 0.002}
        body = {"request_id": decision["request_id"], "outcome": outcome}
        assert h.post("/v1/outcomes", body, "write").status_code == 200
    assert min(groups.values()) > 0
    (perf,) = h.get(f"{API}/performance?task_type=qa").json()["tasks"]
    assert (perf["phase"], perf["traffic_percent"], perf["decisions_logged"]) == ("guarded", 50, 40)
    assert (
        perf["treatment"]["n"] == groups["treatment"] and perf["control"]["n"] == groups["control"]
    )
    assert perf["difference"]["quality_mean"] == pytest.approx(0.2)
    assert perf["difference"]["error_rate"] == 0.0
    assert perf["difference"]["cost_per_request"] == pytest.approx(0.0)


def test_caws_and_security_status_say_what_is_in_force_and_never_a_digest(make: Make) -> None:
    h = make()
    assert h.act("budget-waiver", percent=10).status_code == 200
    caws = h.get(f"{API}/caws-status").json()
    assert caws["enabled"] is True
    by_task = {row["task_type"]: row for row in caws["tasks"]}
    assert by_task["qa"]["waiver_percent"] == 10 and by_task["qa"]["max_waiver_percent"] == 20
    assert [w["actor"] for w in by_task["qa"]["waivers"]] == ["admin-bot"]
    assert by_task["chat"]["budget"] is False and by_task["chat"]["waivers"] == []

    security = h.get_as(f"{API}/security-status", "admin")
    assert security.status_code == 200, security.text
    body = security.json()
    assert body["auth"] == "api_keys" and body["keys_by_role"] == {
        "read": 1,
        "write": 1,
        "admin": 1,
    }
    assert {"name": "read-bot", "role": "read"} in body["keys"]
    for key in KEYS.values():
        assert hashlib.sha256(key.encode()).hexdigest() not in security.text
    assert h.get(f"{API}/security-status").status_code == 403  # the keys are an admin's business


def test_test_shadow_replays_recent_traffic_through_the_candidate_without_side_effects(
    make: Make,
) -> None:
    """In shadow every request was served the baseline; the candidate's own distribution
    (not the shadow split, which gives the baseline all of it) is what is compared."""
    h = make()
    assert h.rollout()["phase"] == "shadow"
    served = [h.recommend(f"user-{i}") for i in range(30)]
    baseline = {d["arm"] for d in served}
    assert len(baseline) == 1  # the baseline, every time
    decisions_before = h.store.count_decisions("qa")
    response = h.post(f"{API}/test-shadow", {"task_type": "qa", "sample": 20})
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["sampled"], report["compared"], report["skipped"]) == (20, 20, 0)
    assert report["served"] == [
        {"arm": served[0]["arm"], "params": served[0]["params"], "count": 20}
    ]
    preferred = {row["arm"]: row["count"] for row in report["candidate_prefers"]}
    assert sum(preferred.values()) == 20
    assert report["agreement"] == preferred.get(served[0]["arm"], 0) / 20
    # The candidate explores (a floor on every arm): it never gives the baseline all of it.
    assert 0.0 < report["expected_agreement"] < 1.0
    assert h.store.count_decisions("qa") == decisions_before  # nothing logged

    nothing = h.post(f"{API}/test-shadow", {"task_type": "chat"}).json()
    assert (nothing["sampled"], nothing["agreement"]) == (0, None)
    assert_error(h.post(f"{API}/test-shadow", {"task_type": "qa", "sample": 0}), 422, "sample")
    assert_error(h.post(f"{API}/test-shadow", {"task_type": "nope"}), 404, "nope")
    assert h.post(f"{API}/test-shadow", {"task_type": "qa"}, "write").status_code == 403
