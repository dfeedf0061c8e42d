"""Store outages: nothing acknowledged is lost, and nothing stalls.

PostgreSQL is real; between it and paramloop sits ``FaultyLink`` (``conftest.py``),
which freezes the connection (a hung server: bytes go unanswered) or cuts it (a
stopped server).  A locked SQLite file is the embedded store's outage.  Each
test checks the store itself afterwards: every decision and outcome the caller
was told was kept is there, once.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from paramloop.errors import ConflictingOutcomeError, DuplicateRequestError
from paramloop.server.app import create_app
from paramloop.server.settings import Settings
from paramloop.store import open_store
from paramloop.store.postgres import PostgresDecisionLog, psycopg_url
from paramloop.store.spool import SpooledStore
from paramloop.types import Decision, Outcome, Params, RecordedOutcome

pytestmark = pytest.mark.postgres


POSTGRES_URL = os.environ.get(
    "PARAMLOOP_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
)
T0 = 1_700_000_000.0


def postgres_url() -> str:
    return POSTGRES_URL


def make_decision(request_id: str) -> Decision:
    return Decision(
        request_id=request_id,
        task_type="summarize",
        arm=1,
        params=Params("small", temperature=0.7, max_tokens=64),
        propensity=0.1 + 0.2,
        confidence=0.25,
        policy="linucb@2.0.0",
        policy_revision=3,
        origin="bandit:linucb@2.0.0",
        context={"prompt_tokens": 431.5, "tags": ("a", "b")},
        context_fingerprint=2**64 - 1,
        timestamp=T0,
    )


def make_outcome(decision: Decision, *, reward: float = 0.75) -> RecordedOutcome:
    return RecordedOutcome(
        request_id=decision.request_id,
        task_type=decision.task_type,
        outcome=Outcome(quality=0.8, latency_ms=812.25, prompt_tokens=431, completion_tokens=97),
        reward=reward,
        reward_version="weighted@1",
        source="observed",
        timestamp=T0 + 5,
    )


@pytest.fixture
def link(faulty_postgres: Any) -> Any:
    return faulty_postgres


def via(link: Any) -> str:
    """The test server's URL, through ``link``."""
    return (
        psycopg_url(postgres_url())
        .set(host="127.0.0.1", port=link.port)
        .render_as_string(hide_password=False)
    )


def wait_until(condition: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("fault", ["freeze", "cut"])
def test_writes_during_an_outage_are_spooled_then_replayed_exactly_once(
    link: Any, postgres_schema: str, tmp_path: Path, fault: str
) -> None:
    primary = PostgresDecisionLog(via(link), schema=postgres_schema, timeout_s=2)
    store = SpooledStore(primary, tmp_path / "spool.db", deadline_s=0.2, retry_s=0.2)
    before = make_decision("before")
    store.append_decision(before)
    getattr(link, fault)()

    spooled = [make_decision(f"during-{i}") for i in range(50)]
    seconds = []
    for decision in spooled:
        start = time.perf_counter()
        store.append_decision(decision)
        seconds.append(time.perf_counter() - start)
    assert not store.available
    assert max(seconds) < 0.2 + 0.1  # the first waits for the deadline, no one longer
    assert float(np.median(seconds)) < 0.02  # the rest go straight to the spool
    # outcomes for a decision in the store and for spooled ones
    recorded, new = store.attach_outcome(make_outcome(before))
    assert new and recorded.seq == 0  # not in the store's sequence yet
    for decision in spooled[:25]:
        store.attach_outcome(make_outcome(decision))
    # the spool answers reads, refuses duplicates and conflicts as the store would
    assert store.get_decision("during-3") == spooled[3]
    assert store.get_outcome("during-3") is not None
    with pytest.raises(DuplicateRequestError):
        store.append_decision(make_decision("during-3"))
    assert store.attach_outcome(make_outcome(spooled[3]))[1] is False
    with pytest.raises(ConflictingOutcomeError):
        store.attach_outcome(make_outcome(spooled[3], reward=0.1))

    link.restore()
    assert wait_until(lambda: store.available and len(store.spool) == 0)
    check = PostgresDecisionLog(postgres_url(), schema=postgres_schema)
    try:
        assert check.count_decisions() == 51
        for decision in [before, *spooled]:
            assert check.get_decision(decision.request_id) == decision
        for decision in [before, *spooled[:25]]:
            outcome = check.get_outcome(decision.request_id)
            assert outcome is not None and outcome.seq > 0
        assert check.get_outcome("during-30") is None
    finally:
        check.close()
        store.close()
    assert store.stats.refused == 0 and store.stats.replayed == 51 + 25


SPOOLER = """
import sys, time
from paramloop.store.postgres import PostgresDecisionLog, psycopg_url
from paramloop.store.spool import SpooledStore
from tests.test_store_contract import make_decision
url, schema, spool = sys.argv[1:4]
primary = PostgresDecisionLog(url, schema=schema, timeout_s=2)
store = SpooledStore(primary, spool, deadline_s=0.2, retry_s=60)
print("ready", flush=True)
sys.stdin.readline()  # the link is cut now
for i in range(200):
    store.append_decision(make_decision(f"crashed-{i}"))
    print(f"acked crashed-{i}", flush=True)
time.sleep(600)
"""


def test_a_replica_killed_during_an_outage_replays_its_spool_on_restart(
    link: Any, postgres_schema: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool.db"
    child = subprocess.Popen(
        [sys.executable, "-c", SPOOLER, via(link), postgres_schema, str(spool)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    assert child.stdin is not None and child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    link.cut()
    child.stdin.write("go\n")
    child.stdin.flush()
    acked: list[str] = []
    for line in child.stdout:
        acked.append(line.split()[1])
        if len(acked) == 120:
            break
    os.kill(child.pid, signal.SIGKILL)  # mid-stream: some writes are acknowledged, some not
    child.wait()
    child.stdin.close()
    child.stdout.close()
    link.restore()

    primary = PostgresDecisionLog(postgres_url(), schema=postgres_schema)
    restarted = SpooledStore(primary, spool, deadline_s=1, retry_s=0.1)
    try:
        assert wait_until(lambda: restarted.available and len(restarted.spool) == 0)
        for request_id in acked:
            assert primary.get_decision(request_id) is not None, request_id
    finally:
        restarted.close()


# -- the service under load through an outage --------------------------------------------

TASKS: dict[str, Any] = {
    "qa": {
        "preset": "published",
        "baseline": {"model": "small", "temperature": 0.4, "max_tokens": 32},
        "space": {"temperature": [0.0, 0.4, 0.8], "max_tokens": [16, 32]},
        "reward_wait_s": 3600,
    }
}


def service_settings(database_url: str, spool: Path, **service: Any) -> Settings:
    return Settings.from_mapping(
        {
            "tasks": TASKS,
            "service": {
                "database_url": database_url,
                "auth": "disabled",
                "spool_path": str(spool),
                "store_timeout_s": 0.25,
                "sync_interval_s": 0.5,
                **service,
            },
        },
        env={},
    )


class Load:
    """Callers that decide and record outcomes, keeping what was acknowledged.

    ``workers`` callers each start one decision every ``period_s`` (4 × 50/s: the
    200 requests/s of the soak benchmark), so the service, not this process's own
    threads, is what is measured.
    """

    def __init__(self, url: str, workers: int = 4, period_s: float = 0.02) -> None:
        self.period_s = period_s
        self.url = url
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.decisions: list[str] = []  # acknowledged with logged: true
        self.outcomes: list[str] = []  # acknowledged with 200
        self.latencies: list[tuple[float, float]] = []  # (when, seconds) of each recommend
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(workers)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _run(self, worker: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            n = 0
            due = time.monotonic()
            while not self.stop.is_set():
                due += self.period_s
                time.sleep(max(0.0, due - time.monotonic()))
                n += 1
                rid = f"w{worker}-{n}"
                start = time.perf_counter()
                response = http.post(
                    "/v1/recommend",
                    json={"task_type": "qa", "request_id": rid, "context": {"prompt_tokens": n}},
                )
                with self.lock:
                    self.latencies.append((time.monotonic(), time.perf_counter() - start))
                if response.status_code != 200:
                    self.failures.append(f"recommend {response.status_code}: {response.text}")
                    continue
                if not response.json()["logged"]:
                    continue  # told the truth: not kept, so no outcome can be recorded
                with self.lock:
                    self.decisions.append(rid)
                outcome = {"request_id": rid, "outcome": {"quality": 0.5, "latency_ms": 100}}
                recorded = http.post("/v1/outcomes", json=outcome)
                if recorded.status_code == 200:
                    with self.lock:
                        self.outcomes.append(rid)
                else:
                    self.failures.append(f"outcome {recorded.status_code}: {recorded.text}")

    def p99_ms(self, start: float, end: float) -> tuple[float, int]:
        window = [s for when, s in self.latencies if start <= when <= end]
        return float(np.percentile(window, 99)) * 1000, len(window)


CONFIG = """
[tasks.qa]
preset = "published"
baseline = {{ model = "small", temperature = 0.4, max_tokens = 32 }}
space = {{ temperature = [0.0, 0.4, 0.8], max_tokens = [16, 32] }}
reward_wait_s = 3600

[service]
database_url = "{database_url}"
auth = "disabled"
spool_path = "{spool}"
store_timeout_s = 0.25
sync_interval_s = 0.5
log_level = "warning"
"""


def answer_time(url: str) -> float:
    """Seconds until ``url`` answered 200, timed by curl (this process's threads are busy)."""
    done = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", url],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    code, seconds = done.stdout.split()
    assert code == "200", done.stdout
    return float(seconds)


def test_the_service_keeps_every_acknowledged_row_through_a_store_outage(
    link: Any, postgres_schema: str, tmp_path: Path, paramloop_process: Callable[..., Any]
) -> None:
    url = via(link) + f"?options=-csearch_path%3D{postgres_schema}"
    PostgresDecisionLog(postgres_url(), schema=postgres_schema).close()  # creates the schema
    config = tmp_path / "paramloop.toml"
    config.write_text(CONFIG.format(database_url=url, spool=tmp_path / "spool.db"))
    base = paramloop_process(config).url
    with (
        httpx.Client(base_url=base, timeout=5) as http,
        Load(base) as load,
    ):
        time.sleep(1.5)
        outages = []
        # A frozen store (packets dropped) for 6 s; a stopped one (connections cut) for the
        # 30 s the issue names, so the spool holds ~30 s of traffic and replays it.
        for fault, seconds in (("freeze", 6), ("cut", 30)):
            start = time.monotonic()
            getattr(link, fault)()
            health = []
            while time.monotonic() - start < seconds:
                health.append(answer_time(f"{base}/health/live"))
                time.sleep(0.2)
            ready = http.get("/health/ready").json()
            assert ready["status"] == "degraded" and ready["spool"]["pending"] > 0, ready
            assert max(health) < 0.1, health
            outages.append((start, time.monotonic()))
            link.restore()
            time.sleep(1.5)

        load.__exit__()  # the backlog drains behind live traffic; here, alone, for speed

        def drained() -> bool:
            ready = http.get("/health/ready").json()
            return bool(ready["status"] == "ok" and ready["spool"]["pending"] == 0)

        assert wait_until(drained, timeout_s=60), str(
            http.get("/api/optimization/db-status").json()["spool"]
        )
    assert not load.failures, load.failures[:5]
    for start, end in outages:
        p99, n = load.p99_ms(start, end)
        assert n > 500 and p99 <= 50, (p99, n)
    store = open_store(f"{postgres_url()}?options=-csearch_path%3D{postgres_schema}")
    try:
        assert store.count_decisions("qa") == len(load.decisions)
        missing = [r for r in load.decisions if store.get_decision(r) is None]
        unrecorded = [r for r in load.outcomes if store.get_outcome(r) is None]
        assert missing == [] and unrecorded == []
    finally:
        store.close()


def test_a_locked_sqlite_file_stalls_nothing(
    tmp_path: Path, serve_app: Callable[..., AbstractContextManager[str]]
) -> None:
    db = tmp_path / "svc.db"
    settings = service_settings(f"sqlite:///{db}", tmp_path / "spool.db")
    app = create_app(settings)
    with serve_app(app, lifespan="on") as base, httpx.Client(base_url=base, timeout=30) as http:
        assert http.post("/v1/recommend", json={"task_type": "qa"}).status_code == 200
        locker = sqlite3.connect(db, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        try:
            seconds, rids = [], []
            for i in range(30):
                start = time.perf_counter()
                body = http.post("/v1/recommend", json={"task_type": "qa", "request_id": f"l{i}"})
                seconds.append(time.perf_counter() - start)
                assert body.json()["logged"] is True
                rids.append(f"l{i}")
            t0 = time.perf_counter()
            assert http.get("/health/live").status_code == 200
            assert time.perf_counter() - t0 < 0.1
            assert max(seconds) < 0.25 + 0.2 and float(np.median(seconds)) < 0.05
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        spool = app.state.ctx.spool
        assert wait_until(lambda: spool.available and len(spool.spool) == 0)
        store = app.state.ctx.spool.primary
        assert all(store.get_decision(r) is not None for r in rids)
        assert store.count_decisions("qa") == 31
