"""The optimizer over durable stores: restarts, ``kill -9``, default rewards, repeated outcomes.

Every test runs on a SQLite file and on PostgreSQL (see ``conftest.py``) and
restarts by building a new :class:`Optimizer` on a newly opened store at the
same location, as a redeployed service would.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import paramloop
from paramloop.core.policies import LinUCB
from paramloop.engine import Optimizer, TaskConfig
from paramloop.errors import ConflictingOutcomeError
from paramloop.sim.tasks import default_tasks
from paramloop.sim.world import World
from paramloop.store.base import (
    DecisionLog,
    EvaluationRow,
    LoggedRow,
    LogSummary,
    MeasuredRow,
    OutcomeRow,
)
from paramloop.types import Decision, FeatureValue, Outcome, PolicySnapshot, RecordedOutcome

StoreSpec = tuple[str, str, str | None]
OpenStore = Callable[[], DecisionLog]

TASK = "summarization"
T0 = 1_700_000_000.0
ROUNDS = 317  # not a multiple of SNAPSHOT_EVERY: a restart restores a snapshot *and* replays
SNAPSHOT_EVERY = 50
ACKS_BEFORE_KILL = 200
TIMEOUT_S = 30.0
WAIT_S = 10.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def configs(**changes: Any) -> list[TaskConfig]:
    return [replace(config, **changes) for config in default_tasks(task_types=[TASK])]


def contexts(n: int, seed: int) -> list[dict[str, FeatureValue]]:
    rng = np.random.default_rng(seed)
    return [World().sample_context(TASK, rng) for _ in range(n)]


def play(optimizer: Optimizer, rounds: int, *, seed: int, clock: Clock) -> None:
    """Simulated traffic: recommend, call the simulated model, record the outcome."""
    world = World()
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        clock.now += 1.0
        decision = optimizer.recommend(TASK, world.sample_context(TASK, rng))
        outcome = world.outcome(TASK, decision.context, decision.params, rng)
        optimizer.record_outcome(decision.request_id, outcome)


def linucb(optimizer: Optimizer) -> LinUCB:
    policy = optimizer.policy(TASK)
    assert isinstance(policy, LinUCB)
    return policy


# -- restart -----------------------------------------------------------------------------


def test_a_restarted_optimizer_continues_with_the_same_policy(open_store_at: OpenStore) -> None:
    clock = Clock()
    tasks = configs(snapshot_every=SNAPSHOT_EVERY)
    old = Optimizer(tasks, open_store_at(), clock=clock)
    play(old, ROUNDS, seed=3, clock=clock)
    assert (old.stats.outcomes, old.stats.fallbacks) == (ROUNDS, 0)

    # The old optimizer is not closed: its last snapshot is the one taken at
    # SNAPSHOT_EVERY * 6 outcomes, and the rest must come from the log.
    new = Optimizer(tasks, open_store_at(), clock=clock)
    assert new.stats.replayed == {TASK: ROUNDS % SNAPSHOT_EVERY}
    assert linucb(new).revision == linucb(old).revision == ROUNDS
    np.testing.assert_allclose(linucb(new).theta, linucb(old).theta, rtol=0, atol=1e-12)
    for seed, context in enumerate(contexts(25, seed=4)):
        before = old.recommend(TASK, context, seed=seed)
        after = new.recommend(TASK, context, seed=seed)
        assert (after.arm, after.policy_revision) == (before.arm, before.policy_revision)
        assert after.propensity == pytest.approx(before.propensity, abs=1e-12)


def test_a_restart_learns_every_outcome_of_two_optimizers_sharing_a_store(
    open_store_at: OpenStore,
) -> None:
    clock = Clock()
    tasks = configs(snapshot_every=10)
    first = Optimizer(tasks, open_store_at(), clock=clock)
    second = Optimizer(tasks, open_store_at(), clock=clock)
    # Interleaved traffic: each optimizer's snapshots cover its own outcomes
    # but not the other's, whose seqs lie in between.
    for i in range(4):
        play(first, 5, seed=10 + i, clock=clock)
        play(second, 5, seed=20 + i, clock=clock)

    restarted = Optimizer(tasks, open_store_at(), clock=clock)
    assert restarted.policy(TASK).revision == 40


def test_a_snapshot_of_another_policy_configuration_is_not_restored(
    open_store_at: OpenStore,
) -> None:
    clock = Clock()
    old = Optimizer(
        configs(snapshot_every=10, policy_params={"alpha": 0.5}), open_store_at(), clock=clock
    )
    play(old, 25, seed=11, clock=clock)
    assert linucb(old).alpha == 0.5

    # The operator changed the policy's configuration: the snapshot of the old
    # one must not silently override it; the new policy learns from the log.
    retuned = Optimizer(configs(policy_params={"alpha": 2.0}), open_store_at(), clock=clock)
    assert linucb(retuned).alpha == 2.0
    assert retuned.policy(TASK).revision == 25
    replaced = Optimizer(configs(policy="thompson_gaussian"), open_store_at(), clock=clock)
    assert replaced.policy(TASK).name == "thompson_gaussian"
    assert replaced.policy(TASK).revision == 25


# -- kill -9 -------------------------------------------------------------------------------

# Drives the real loop on the store the test names and prints one line per
# outcome after record_outcome returned: the acknowledgement.
CHILD = """
import dataclasses, json, sys
import numpy as np
from paramloop.engine import Optimizer
from paramloop.sim.tasks import default_tasks
from paramloop.sim.world import World
from paramloop.store.postgres import PostgresDecisionLog
from paramloop.store.sqlite import SQLiteDecisionLog

backend, location, schema = sys.argv[1], sys.argv[2], sys.argv[3] or None
if backend == "sqlite":
    store = SQLiteDecisionLog(location)
else:
    store = PostgresDecisionLog(location, schema=schema)
tasks = [
    dataclasses.replace(config, snapshot_every=25)
    for config in default_tasks(task_types=["summarization"])
]
optimizer = Optimizer(tasks, store)
world = World()
rng = np.random.default_rng(9)
i = 0
while True:
    context = world.sample_context("summarization", rng)
    decision = optimizer.recommend("summarization", context, request_id=f"kill-{i}")
    outcome = world.outcome("summarization", decision.context, decision.params, rng)
    recorded = optimizer.record_outcome(decision.request_id, outcome)
    ack = {"request_id": recorded.request_id, "arm": decision.arm, "seq": recorded.seq}
    print(json.dumps(ack), flush=True)
    i += 1
"""


def run_and_kill(spec: StoreSpec, wanted: int, stderr_path: Path) -> list[dict[str, Any]]:
    """Start the child, SIGKILL it once ``wanted`` acks arrived, and return every ack it sent."""
    src = Path(paramloop.__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    backend, location, schema = spec
    with stderr_path.open("wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, backend, location, schema or ""],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
    assert child.stdout is not None
    buffer = b""
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(child.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + TIMEOUT_S
            while (acked := buffer.count(b"\n")) < wanted:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise AssertionError(f"only {acked} acks arrived in {TIMEOUT_S} s")
                data = os.read(child.stdout.fileno(), 65536)
                if not data:
                    raise AssertionError(f"the child exited early with status {child.wait()}")
                buffer += data
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        # Acks written before the kill are still in the pipe: they count too.
        buffer += child.stdout.read()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL, stderr_path.read_text()
    *complete, _torn = buffer.split(b"\n")
    return [json.loads(line) for line in complete]


def test_acknowledged_outcomes_survive_kill_9_and_are_learned_again(
    durable_store_spec: StoreSpec, open_store_at: OpenStore, tmp_path: Path
) -> None:
    open_store_at().close()  # the schema exists before the child starts, as in a deployment
    acks = run_and_kill(durable_store_spec, ACKS_BEFORE_KILL, tmp_path / "child.err")
    assert len(acks) >= ACKS_BEFORE_KILL

    store = open_store_at()
    for ack in acks:
        decision = store.get_decision(ack["request_id"])
        recorded = store.get_outcome(ack["request_id"])
        assert decision is not None and decision.arm == ack["arm"]
        assert recorded is not None and recorded.seq == ack["seq"]
    # At most the one request in flight at the kill landed without its ack.
    logged = store.outcomes_since(TASK, 0, 10 * len(acks))
    assert len(acks) <= len(logged) <= len(acks) + 1
    assert len(acks) <= store.count_decisions() <= len(acks) + 1

    restarted = Optimizer(configs(snapshot_every=25), store)
    snapshot = store.latest_snapshot(TASK)
    assert snapshot is not None
    after_snapshot = [o for _, o in logged if o.seq > snapshot.last_outcome_seq]
    assert restarted.stats.replayed == {TASK: len(after_snapshot)}
    assert restarted.policy(TASK).revision == len(logged) >= len(acks)


# -- default rewards -----------------------------------------------------------------------


def expiring(store: DecisionLog, clock: Clock) -> Optimizer:
    """An optimizer that gives 0.0 to decisions still without an outcome after ``WAIT_S``."""
    return Optimizer(configs(default_reward=0.0, reward_wait_s=WAIT_S), store, clock=clock)


def stored_default(request_id: str, store: DecisionLog) -> RecordedOutcome:
    """The outcome stored for ``request_id``, checked to be the default reward."""
    recorded = store.get_outcome(request_id)
    assert recorded is not None
    assert (recorded.source, recorded.reward, recorded.outcome) == (
        "default",
        0.0,
        Outcome(reward=0.0),
    )
    return recorded


def test_default_rewards_are_recorded_once_however_often_expire_runs(
    open_store_at: OpenStore,
) -> None:
    clock = Clock()
    first = expiring(open_store_at(), clock)
    second = expiring(open_store_at(), clock)
    logged = [
        first.recommend(TASK, context, request_id=f"wait-{i}")
        for i, context in enumerate(contexts(6, seed=5))
    ]
    first.record_outcome("wait-0", Outcome(quality=0.9, latency_ms=700.0))

    clock.now += WAIT_S  # the window is still open at exactly WAIT_S
    assert (first.expire(), second.expire()) == (0, 0)
    clock.now += 1.0
    assert first.expire() == 5
    assert (first.expire(), second.expire()) == (0, 0)
    assert first.stats.default_rewards == 5
    assert second.stats.default_rewards == 0

    store = open_store_at()
    stored = [stored_default(d.request_id, store) for d in logged[1:]]
    rows = store.outcomes_since(TASK, 0, 100)
    assert [o.source for _, o in rows] == ["observed"] + ["default"] * 5
    assert [o for _, o in rows][1:] == stored
    assert first.policy(TASK).revision == 6
    # After a restart the defaults are learned once more, not twice, and not given again.
    restarted = expiring(open_store_at(), clock)
    assert restarted.policy(TASK).revision == 6
    assert restarted.expire() == 0


class Interleaved:
    """A store that runs ``between`` right after each ``pending_decisions`` read.

    It makes a race deterministic: something happens between the moment
    ``expire()`` lists the decisions whose window closed and the moment it
    records their default rewards.
    """

    def __init__(self, inner: DecisionLog, between: Callable[[], object]) -> None:
        self.inner = inner
        self.between = between

    def pending_decisions(self, task_type: str, before: float, limit: int) -> list[Decision]:
        pending = self.inner.pending_decisions(task_type, before, limit)
        self.between()
        return pending

    def append_decision(self, decision: Decision) -> None:
        self.inner.append_decision(decision)

    def append_decisions(self, decisions: list[Decision]) -> None:
        self.inner.append_decisions(decisions)

    def get_decision(self, request_id: str) -> Decision | None:
        return self.inner.get_decision(request_id)

    def attach_outcome(self, recorded: RecordedOutcome) -> tuple[RecordedOutcome, bool]:
        return self.inner.attach_outcome(recorded)

    def get_outcome(self, request_id: str) -> RecordedOutcome | None:
        return self.inner.get_outcome(request_id)

    def iter_evaluation_rows(
        self,
        task_type: str,
        start: float | None = None,
        end: float | None = None,
        chunk_size: int = 50_000,
    ) -> Iterator[list[EvaluationRow]]:
        return self.inner.iter_evaluation_rows(task_type, start, end, chunk_size)

    def import_logged(self, rows: list[LoggedRow]) -> int:
        return self.inner.import_logged(rows)

    def summarize_log(
        self,
        task_type: str,
        start: float | None = None,
        end: float | None = None,
        *,
        max_latency_ms: float | None = None,
        max_tokens: float | None = None,
        max_cost: float | None = None,
    ) -> LogSummary:
        return self.inner.summarize_log(
            task_type,
            start,
            end,
            max_latency_ms=max_latency_ms,
            max_tokens=max_tokens,
            max_cost=max_cost,
        )

    def outcomes_since(self, task_type: str, after_seq: int, limit: int) -> list[OutcomeRow]:
        return self.inner.outcomes_since(task_type, after_seq, limit)

    def iter_logged(
        self,
        task_type: str,
        start: float | None = None,
        end: float | None = None,
        chunk_size: int = 10_000,
    ) -> Iterator[list[LoggedRow]]:
        return self.inner.iter_logged(task_type, start, end, chunk_size)

    def count_decisions(self, task_type: str | None = None) -> int:
        return self.inner.count_decisions(task_type)

    def last_outcome_seq(self, task_type: str) -> int:
        return self.inner.last_outcome_seq(task_type)

    def save_measurement(
        self, request_id: str, task_type: str, measured: Outcome, timestamp: float
    ) -> bool:
        return self.inner.save_measurement(request_id, task_type, measured, timestamp)

    def get_measurement(self, request_id: str) -> Outcome | None:
        return self.inner.get_measurement(request_id)

    def pending_measurements(self, task_type: str, before: float, limit: int) -> list[MeasuredRow]:
        return self.inner.pending_measurements(task_type, before, limit)

    def save_snapshot(self, snapshot: PolicySnapshot) -> None:
        self.inner.save_snapshot(snapshot)

    def latest_snapshot(self, task_type: str) -> PolicySnapshot | None:
        return self.inner.latest_snapshot(task_type)

    def close(self) -> None:
        self.inner.close()


def test_two_optimizers_expiring_at_once_record_and_count_each_default_once(
    open_store_at: OpenStore,
) -> None:
    clock = Clock()
    second = expiring(open_store_at(), clock)
    # ``first`` lists the expired decisions, then ``second`` expires them all,
    # then ``first`` records its (identical) defaults: the store keeps one each.
    first = expiring(Interleaved(open_store_at(), between=second.expire), clock)
    logged = [
        first.recommend(TASK, context, request_id=f"race-{i}")
        for i, context in enumerate(contexts(5, seed=6))
    ]
    clock.now += WAIT_S + 1.0
    counted = first.expire()

    store = open_store_at()
    assert len({stored_default(d.request_id, store).seq for d in logged}) == 5
    assert len(store.outcomes_since(TASK, 0, 100)) == 5
    assert second.stats.default_rewards == 5
    # ``expire`` returns how many default rewards *it* recorded: here none.
    assert (counted, first.stats.default_rewards) == (0, 0)


def test_an_outcome_recorded_while_expire_runs_wins_and_expire_carries_on(
    open_store_at: OpenStore,
) -> None:
    clock = Clock()
    # Another replica, whose clock is a second behind, still accepts the
    # outcome of a decision that ``ahead`` already lists as expired.
    replica = expiring(open_store_at(), clock)
    observed = Outcome(quality=0.9, latency_ms=700.0)
    ahead = expiring(
        Interleaved(open_store_at(), between=lambda: replica.record_outcome("late-0", observed)),
        clock,
    )
    logged = [
        ahead.recommend(TASK, context, request_id=f"late-{i}")
        for i, context in enumerate(contexts(4, seed=7))
    ]
    clock.now += WAIT_S

    assert ahead.expire(now=clock.now + 1.0) == 3

    store = open_store_at()
    recorded = store.get_outcome("late-0")
    assert recorded is not None
    assert (recorded.source, recorded.outcome) == ("observed", observed)
    for decision in logged[1:]:
        stored_default(decision.request_id, store)


# -- repeated outcomes -----------------------------------------------------------------------


def test_a_repeated_outcome_after_a_restart_counts_once(open_store_at: OpenStore) -> None:
    clock = Clock()
    before = Optimizer(configs(), open_store_at(), clock=clock)
    (context,) = contexts(1, seed=8)
    before.recommend(TASK, context, request_id="once")
    outcome = Outcome(quality=0.8, latency_ms=900.0, prompt_tokens=700, completion_tokens=150)
    clock.now += 2.0
    stored = before.record_outcome("once", outcome)

    clock.now += 3.0
    after = Optimizer(configs(), open_store_at(), clock=clock)
    assert after.policy(TASK).revision == 1  # learned from the log
    assert after.record_outcome("once", outcome) == stored
    assert after.policy(TASK).revision == 1
    assert after.stats.duplicate_outcomes == 1
    with pytest.raises(ConflictingOutcomeError, match="'once'"):
        after.record_outcome("once", replace(outcome, quality=0.1))
    assert after.policy(TASK).revision == 1
    assert open_store_at().get_outcome("once") == stored
