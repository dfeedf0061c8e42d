"""Decide + learn per round at 10 label arms × 64 numeric features (target: ≤ 1 ms).

One round = ``Optimizer.recommend`` + ``Optimizer.record_outcome`` in memory, on a
task type whose arms are a generic choice dimension (10 labels: per-arm ridge
models) and whose context is 64 numbers in their natural scale, for each linear
policy; and the core alone (``decide`` + ``Policy.update`` on a prepared vector).

    python bench/bench_label_arms.py [--rounds 5000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import markdown_table
from paramloop import NumericFeature, Optimizer, Outcome, Params, task
from paramloop.core.policies import decide

ARMS, FEATURES = 10, 64
POLICIES = ("squarecb", "linucb", "lints")


def measure(policy: str, rounds: int) -> dict[str, Any]:
    labels = [f"a{i}" for i in range(ARMS)]
    config = task(
        "bench",
        baseline=Params("m", choices={"route": labels[0]}),
        choices={"route": labels},
        features=[NumericFeature(f"x{j}") for j in range(FEATURES)],
        policy=policy,
    )
    optimizer = Optimizer([config])
    rng = np.random.default_rng(0)
    contexts = [
        dict(zip((f"x{j}" for j in range(FEATURES)), row.tolist(), strict=True))
        for row in rng.normal(size=(rounds + 200, FEATURES)) * 10
    ]
    rewards = rng.random(rounds + 200)
    for i in range(200):  # warm up
        d = optimizer.recommend("bench", contexts[i])
        optimizer.record_outcome(d.request_id, Outcome(reward=float(rewards[i])))
    started = time.perf_counter()
    for i in range(200, rounds + 200):
        d = optimizer.recommend("bench", contexts[i])
        optimizer.record_outcome(d.request_id, Outcome(reward=float(rewards[i])))
    loop = (time.perf_counter() - started) / rounds
    policy_ = optimizer.policy("bench")
    X = np.column_stack([np.ones(rounds), rng.normal(size=(rounds, FEATURES)) * 10])
    arms = config.space.feasible_arms
    started = time.perf_counter()
    for i, x in enumerate(X):
        choice = decide(policy_, x, arms, i, config.effective_exploration)
        policy_.update(x, choice.arm, float(rewards[i]))
    core = (time.perf_counter() - started) / rounds
    return {
        "policy": policy,
        "rounds": rounds,
        "optimizer_ms_per_round": loop * 1e3,
        "optimizer_rounds_per_s": 1 / loop,
        "core_ms_per_round": core * 1e3,
    }


def table(results: list[dict[str, Any]]) -> str:
    return markdown_table(
        [
            "policy",
            "rounds",
            "recommend + record_outcome, ms/round",
            "rounds/s",
            "core decide + update, ms/round",
        ],
        [
            [
                r["policy"],
                f"{r['rounds']:,}",
                f"{r['optimizer_ms_per_round']:.3f}",
                f"{r['optimizer_rounds_per_s']:,.0f}",
                f"{r['core_ms_per_round']:.3f}",
            ]
            for r in results
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = [measure(policy, args.rounds) for policy in POLICIES]
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
