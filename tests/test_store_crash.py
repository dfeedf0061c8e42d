"""Durability: what a store acknowledged survives ``kill -9`` of its process.

A child process logs decisions and outcomes and prints each one after the
call returned (the acknowledgement).  The test kills it with SIGKILL in the
middle of its writes, reopens the database and checks that every
acknowledged row is there and equal to what was acknowledged.  For SQLite
this is the promise of ``durability="process"`` (WAL, ``synchronous=NORMAL``).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import paramloop.store
from paramloop.store.base import DecisionLog
from paramloop.types import Decision, Outcome, RecordedOutcome

StoreSpec = tuple[str, str, str | None]

ACKS_BEFORE_KILL = 300
TIMEOUT_S = 30.0

# Every decision varies its floats, fingerprint and context, so a torn or
# stale row could not pass for the acknowledged one.
CHILD = """
import json, sys
from paramloop.store.postgres import PostgresDecisionLog
from paramloop.store.sqlite import SQLiteDecisionLog
from paramloop.types import Decision, Outcome, Params, RecordedOutcome

backend, location, schema = sys.argv[1], sys.argv[2], sys.argv[3] or None
if backend == "sqlite":
    store = SQLiteDecisionLog(location)
else:
    store = PostgresDecisionLog(location, schema=schema)
i = 0
while True:
    decision = Decision(
        request_id=f"crash-{i}",
        task_type="summarize",
        arm=i % 17,
        params=Params("gpt-4o-mini", temperature=(i % 10) / 7, max_tokens=256 + i),
        propensity=1 / (i + 2),
        confidence=(i % 3) / 3,
        policy="linucb@2.0.0",
        policy_revision=i,
        origin="bandit:linucb",
        context={"i": i, "x": i / 3, "tags": ("a", str(i))},
        context_fingerprint=(i * 0x9E3779B97F4A7C15) % 2**64,
        timestamp=1.7e9 + i / 7,
        seed=i,
    )
    store.append_decision(decision)
    print("D", json.dumps(decision.to_dict()), flush=True)
    if i % 2 == 0:
        recorded = RecordedOutcome(
            request_id=decision.request_id,
            task_type="summarize",
            outcome=Outcome(quality=(i % 11) / 11, latency_ms=100 + i / 9, prompt_tokens=i),
            reward=(i % 13) / 13,
            reward_version="weighted@1",
            source="observed",
            timestamp=1.7e9 + i / 7 + 0.5,
        )
        stored, _ = store.attach_outcome(recorded)
        ack = {
            "request_id": stored.request_id,
            "task_type": stored.task_type,
            "outcome": stored.outcome.to_dict(),
            "reward": stored.reward,
            "reward_version": stored.reward_version,
            "source": stored.source,
            "timestamp": stored.timestamp,
            "seq": stored.seq,
        }
        print("O", json.dumps(ack), flush=True)
    i += 1
"""


def read_acks(child: subprocess.Popen[bytes], wanted: int) -> tuple[list[str], bytes]:
    """Complete ack lines from ``child`` until ``wanted`` decisions were acknowledged,
    and the start of the next line, already read."""
    assert child.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(child.stdout, selectors.EVENT_READ)
    lines: list[str] = []
    buffer = b""
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while sum(line.startswith("D ") for line in lines) < wanted:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise AssertionError(f"the child acknowledged only {len(lines)} writes in time")
            data = os.read(child.stdout.fileno(), 65536)
            if not data:
                raise AssertionError(f"the child exited early with status {child.wait()}")
            buffer += data
            *complete, buffer = buffer.split(b"\n")
            lines.extend(line.decode() for line in complete)
    finally:
        selector.close()
    return lines, buffer


def test_acknowledged_writes_survive_kill_9(
    store_spec: StoreSpec, open_store_at: Callable[[], DecisionLog], tmp_path: Path
) -> None:
    # The schema exists before the child starts, as in a deployment; the
    # child then only appends.
    open_store_at().close()
    src = Path(paramloop.store.__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    backend, location, schema = store_spec
    with (tmp_path / "child.err").open("wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, backend, location, schema or ""],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
        partial = b""
        try:
            acks, partial = read_acks(child, ACKS_BEFORE_KILL)
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            assert child.stdout is not None
            # Acks the child wrote before it died but we had not read yet are
            # acknowledged writes too (a cut-off last line is not).
            rest = partial + child.stdout.read()
            child.stdout.close()
        *complete, _cut_off = rest.split(b"\n")
        acks += [line.decode() for line in complete]
    assert child.returncode == -signal.SIGKILL, (tmp_path / "child.err").read_text()

    decisions = [Decision.from_dict(json.loads(a[2:])) for a in acks if a.startswith("D ")]
    outcomes = [_recorded(json.loads(a[2:])) for a in acks if a.startswith("O ")]
    assert len(decisions) >= ACKS_BEFORE_KILL
    assert len(outcomes) >= ACKS_BEFORE_KILL // 2

    store = open_store_at()
    for decision in decisions:
        assert store.get_decision(decision.request_id) == decision
    for recorded in outcomes:
        assert store.get_outcome(recorded.request_id) == recorded
    # Unacknowledged writes may or may not have landed, but nothing else did.
    assert len(decisions) <= store.count_decisions() <= len(decisions) + 1
    rows = store.outcomes_since("summarize", 0, 10 * ACKS_BEFORE_KILL)
    assert [o for _, o in rows][: len(outcomes)] == outcomes

    # The store works on after the crash.
    survivor = replace(decisions[0], request_id="after-crash")
    store.append_decision(survivor)
    assert store.get_decision("after-crash") == survivor
    store.close()
    if backend == "sqlite":
        with sqlite3.connect(location) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        conn.close()


def _recorded(ack: dict[str, Any]) -> RecordedOutcome:
    return RecordedOutcome(
        request_id=ack["request_id"],
        task_type=ack["task_type"],
        outcome=Outcome.from_dict(ack["outcome"]),
        reward=ack["reward"],
        reward_version=ack["reward_version"],
        source=ack["source"],
        timestamp=ack["timestamp"],
        seq=ack["seq"],
    )
