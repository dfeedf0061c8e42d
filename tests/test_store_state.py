"""Contract suite of the StateStore: versioned engine state (compare and swap) and alerts.

Runs against the in-memory store, SQLite and PostgreSQL (the ``store`` fixture).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import pytest

from paramloop.errors import ConfigError, StaleStateError, StoreError
from paramloop.store import Store
from paramloop.types import AlertRecord, StateRecord

T0 = 1_700_000_000.0


def state(key: str = "summarize", **data: object) -> StateRecord:
    return StateRecord(kind="rollout", key=key, data=dict(data), updated_at=T0)


def alert(task_type: str = "summarize", created_at: float = T0, **changes: object) -> AlertRecord:
    fields: dict[str, object] = {
        "severity": "critical",
        "kind": "slo_breach",
        "task_type": task_type,
        "message": "p99 latency 30 % above control",
        "evidence": {"p99_ms": [812.5, 640.0]},
        "dedup_key": f"slo_breach:{task_type}",
        "created_at": created_at,
        **changes,
    }
    return AlertRecord(**fields)  # type: ignore[arg-type]


def test_state_is_written_by_compare_and_swap(store: Store) -> None:
    assert store.get_state("rollout", "summarize") is None
    first = store.put_state(state(phase="shadow"), expected_version=0)
    assert first.version == 1 and first.data == {"phase": "shadow"}
    assert store.get_state("rollout", "summarize") == first
    second = store.put_state(state(phase="canary", share=2.5), expected_version=1)
    assert second.version == 2
    assert store.get_state("rollout", "summarize") == second

    with pytest.raises(StaleStateError, match="expected version 1, found 2"):
        store.put_state(state(phase="general"), expected_version=1)
    with pytest.raises(StaleStateError, match="expected version 0, found 2"):
        store.put_state(state(phase="general"), expected_version=0)
    with pytest.raises(StaleStateError, match="expected version 4, found 0"):
        store.put_state(state(key="qa"), expected_version=4)
    assert store.get_state("rollout", "summarize") == second  # refused writes change nothing
    assert store.get_state("rollout", "qa") is None


def test_states_are_listed_by_kind_and_key(store: Store) -> None:
    store.put_state(state(key="qa", n=1), 0)
    store.put_state(state(key="code", n=2), 0)
    store.put_state(StateRecord("budget", "qa", {"spent": 3.0}, T0), 0)
    assert [s.key for s in store.list_states("rollout")] == ["code", "qa"]
    assert [s.data for s in store.list_states("budget")] == [{"spent": 3.0}]
    assert store.list_states("nothing") == []


def test_invalid_state_and_alerts_are_refused(store: Store) -> None:
    with pytest.raises(ConfigError, match=r"state\.kind"):
        store.put_state(StateRecord("", "k", {}, T0), 0)
    with pytest.raises(ConfigError, match="expected_version"):
        store.put_state(state(), -1)
    with pytest.raises(StoreError, match="NaN"):
        store.put_state(state(x=math.nan), 0)
    with pytest.raises(ConfigError, match=r"alert\.severity"):
        store.append_alert(alert(severity="loud"))
    with pytest.raises(ConfigError, match=r"alert\.id"):
        store.append_alert(alert(id=4))
    with pytest.raises(ConfigError, match="limit"):
        store.list_alerts(limit=-1)
    assert store.get_state("rollout", "summarize") is None
    assert store.list_alerts() == []


def test_alerts_read_back_newest_first_with_filters(store: Store) -> None:
    saved = [
        store.append_alert(alert("summarize", T0)),
        store.append_alert(alert("qa", T0 + 1, severity="warning", kind="budget")),
        store.append_alert(alert("summarize", T0 + 2)),
    ]
    assert [a.id for a in saved] == [1, 2, 3]
    assert store.list_alerts() == saved[::-1]
    assert store.list_alerts("summarize") == [saved[2], saved[0]]
    assert store.list_alerts(dedup_key="slo_breach:summarize", since=T0 + 1) == [saved[2]]
    assert store.list_alerts(limit=1) == [saved[2]]
    assert saved[1].evidence == {"p99_ms": [812.5, 640.0]} and saved[1].severity == "warning"


def test_racing_writers_never_lose_an_update(store: Store) -> None:
    """Eight threads increment one counter by compare and swap: every increment lands once."""
    store.put_state(StateRecord("counter", "c", {"n": 0}, T0), 0)
    errors: list[BaseException] = []

    def work(increments: int) -> None:
        try:
            for _ in range(increments):
                _retry(lambda: _increment(store))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(15,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    final = store.get_state("counter", "c")
    assert final is not None and final.data == {"n": 120} and final.version == 121


def _increment(store: Store) -> None:
    current = store.get_state("counter", "c")
    assert current is not None
    store.put_state(
        StateRecord("counter", "c", {"n": int(current.data["n"]) + 1}, T0), current.version
    )


def _retry(step: Callable[[], None]) -> None:
    while True:
        try:
            step()
            return
        except StaleStateError:
            continue
