"""(b) loop throughput: decide+learn rounds per second, in memory and with durable SQLite logging.

One round = ``Optimizer.recommend`` (decision logged) + ``Optimizer.record_outcome``
(outcome logged, reward computed, policy updated).  The outcome is prepared in
advance so the simulator's own cost is not counted.  The SQLite store is a file
in WAL mode with ``durability="process"`` (every acknowledged write survives
``kill -9``; ``"power"`` adds an fsync per commit and is measured too).

    python bench/bench_throughput.py [--rounds 20000] [--arms 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import CONTEXT, markdown_table, space_task
from paramloop.engine import Optimizer
from paramloop.store import SQLiteDecisionLog
from paramloop.store.base import DecisionLog
from paramloop.types import Outcome

OUTCOME = Outcome(
    quality=0.8, latency_ms=900.0, prompt_tokens=1_800, completion_tokens=240, cost=0.0021
)


def rounds_per_second(store: DecisionLog | None, rounds: int, arms: int, policy: str) -> float:
    optimizer = Optimizer([space_task(arms, policy)], store)
    for _ in range(200):  # warm up
        d = optimizer.recommend("bench", CONTEXT)
        optimizer.record_outcome(d.request_id, OUTCOME)
    started = time.perf_counter()
    for _ in range(rounds):
        d = optimizer.recommend("bench", CONTEXT)
        optimizer.record_outcome(d.request_id, OUTCOME)
    elapsed = time.perf_counter() - started
    optimizer.close()
    return rounds / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--arms", type=int, default=8, choices=[8, 64, 256, 1000])
    parser.add_argument("--policy", default="linucb")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        setups: list[tuple[str, DecisionLog | None, int]] = [
            ("in memory", None, args.rounds),
            ("SQLite file, durability=process", SQLiteDecisionLog(Path(tmp) / "p.db"), args.rounds),
            (
                "SQLite file, durability=power (fsync)",
                SQLiteDecisionLog(Path(tmp) / "f.db", durability="power"),
                args.rounds // 4,
            ),
        ]
        for label, store, rounds in setups:
            rate = rounds_per_second(store, rounds, args.arms, args.policy)
            results.append(
                {
                    "store": label,
                    "rounds": rounds,
                    "arms": args.arms,
                    "policy": args.policy,
                    "rounds_per_s": rate,
                }
            )
            print(
                f"{label:<40} {rate:10,.0f} rounds/s ({rounds} rounds, {args.arms} arms, {args.policy})",
                flush=True,
            )
    print()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        [r["store"], r["policy"], r["arms"], r["rounds"], f"{r['rounds_per_s']:,.0f}"]
        for r in results
    ]
    return markdown_table(["store", "policy", "arms", "rounds", "decide+learn rounds/s"], rows)


if __name__ == "__main__":
    main()
