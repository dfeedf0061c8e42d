"""Group commit: decisions logged together are committed together, each caller gets its own answer."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest

from paramloop.errors import DuplicateRequestError
from paramloop.store.memory import MemoryDecisionLog
from paramloop.store.spool import GroupCommit
from paramloop.types import Decision, Params


def decision(request_id: str) -> Decision:
    return Decision(
        request_id=request_id,
        task_type="summarize",
        arm=1,
        params=Params("small", temperature=0.5),
        propensity=0.5,
        confidence=0.0,
        policy="linucb@2.0.0",
        policy_revision=1,
        origin="bandit:linucb",
        context={"risk_tier": 1},
        context_fingerprint=1,
        timestamp=1_700_000_000.0,
    )


class GatedLog(MemoryDecisionLog):
    """A store whose first append waits for ``gate``: the next decisions queue behind it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.batches: list[int] = []

    def append_decision(self, decision: Decision) -> None:
        self.gate.wait(5)
        self.batches.append(1)
        super().append_decision(decision)

    def append_decisions(self, decisions: list[Decision]) -> None:
        self.batches.append(len(decisions))
        super().append_decisions(decisions)


def test_decisions_waiting_together_are_committed_in_one_transaction() -> None:
    store = GatedLog()
    commits = GroupCommit(store)
    first = commits.submit(decision("r0"))  # taken alone; holds the committer at the gate
    while not first.running():
        threading.Event().wait(0.001)
    waiting = [commits.submit(decision(f"r{i}")) for i in range(1, 11)]
    store.gate.set()
    for future in [first, *waiting]:
        assert future.result(timeout=5) is None
    commits.close()
    assert store.batches == [1, 10]
    assert commits.commits == 2 and commits.committed == 11
    assert all(store.get_decision(f"r{i}") is not None for i in range(11))


def test_a_refused_row_fails_only_its_own_caller() -> None:
    store = GatedLog()
    store.gate.set()
    store.append_decision(decision("taken"))
    store.gate.clear()
    commits = GroupCommit(store)
    first = commits.submit(decision("a"))
    while not first.running():
        threading.Event().wait(0.001)
    batch = {rid: commits.submit(decision(rid)) for rid in ("b", "taken", "c")}
    store.gate.set()
    first.result(timeout=5)
    assert batch["b"].result(timeout=5) is None and batch["c"].result(timeout=5) is None
    with pytest.raises(DuplicateRequestError):
        batch["taken"].result(timeout=5)
    commits.close()
    assert store.get_decision("b") is not None and store.get_decision("c") is not None


def test_fail_waiting_releases_every_uncommitted_caller_at_once() -> None:
    store = GatedLog()
    commits = GroupCommit(store)
    stuck = commits.submit(decision("stuck"))
    while not stuck.running():
        threading.Event().wait(0.001)
    queued: Future[None] = commits.submit(decision("queued"))
    commits.fail_waiting(RuntimeError("down"))
    for future in (stuck, queued):
        with pytest.raises(RuntimeError, match="down"):
            future.result(timeout=0.5)
    store.gate.set()  # the stuck write lands afterwards, harmlessly
    commits.close()
    assert store.get_decision("stuck") is not None
    assert store.get_decision("queued") is None
