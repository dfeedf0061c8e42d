"""(a) recommend latency: p50/p99 for 8/64/256/1,000 arms x 16 features, per policy.

Times ``Optimizer.recommend`` end to end (validate and featurize the context,
fingerprint it, apply the feasibility mask, score, floor, sample, compute the
exact propensity and confidence, log the decision to the in-memory store) and,
separately, the core ``decide`` call.  Compares with Vowpal Wabbit's
``predict`` for ``--cb_explore_adf --squarecb -q sa`` on the same shapes when
vowpalwabbit is installed.

    python bench/bench_recommend.py [--calls 5000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from _common import CONTEXT, SHAPES, markdown_table, space_task, time_calls
from paramloop.core.policies import POLICIES, decide
from paramloop.engine import Optimizer
from paramloop.types import Outcome


def bench_paramloop(policy: str, n_arms: int, calls: int) -> dict[str, Any]:
    config = space_task(n_arms, policy)
    optimizer = Optimizer([config])
    rng = np.random.default_rng(0)
    # Train a little so the state is not the prior.
    for _ in range(200):
        d = optimizer.recommend("bench", CONTEXT)
        optimizer.record_outcome(d.request_id, Outcome(reward=float(rng.random())))
    recommend = time_calls(lambda i: optimizer.recommend("bench", CONTEXT), calls)
    policy_obj = optimizer.policy("bench")
    _, x, _ = config.featurizer.featurize(CONTEXT)
    arms = config.space.feasible_arms
    core = time_calls(
        lambda i: decide(policy_obj, x, arms, i * 2654435761, config.effective_exploration), calls
    )
    return {
        "learner": f"paramloop {policy}",
        "arms": n_arms,
        "recommend_p50_us": float(np.percentile(recommend, 50)),
        "recommend_p99_us": float(np.percentile(recommend, 99)),
        "decide_p50_us": float(np.percentile(core, 50)),
        "decide_p99_us": float(np.percentile(core, 99)),
    }


def bench_vw(n_arms: int, calls: int) -> dict[str, Any] | None:
    try:
        import vowpalwabbit
    except ImportError:
        return None
    config = space_task(n_arms, "baseline")
    _, x, _ = config.featurizer.featurize(CONTEXT)
    shared = "shared |s " + " ".join(f"c{i}:{v:.6g}" for i, v in enumerate(x) if v)
    names = config.space.feature_names
    actions = [
        "|a " + " ".join(f"{names[j]}:{v:.6g}" for j, v in enumerate(row) if v)
        for row in config.space.features[config.space.feasible_arms]
    ]
    example = [shared, *actions]
    vw = vowpalwabbit.Workspace("--cb_explore_adf --squarecb -q sa --quiet")
    rng = np.random.default_rng(0)
    for _ in range(200):
        pmf = vw.predict(example)
        chosen = int(rng.choice(len(pmf), p=np.asarray(pmf) / np.sum(pmf)))
        lines = list(example)
        lines[chosen + 1] = f"0:{-rng.random():.4f}:{pmf[chosen]:.6f} " + actions[chosen]
        vw.learn(lines)
    timings = time_calls(lambda i: vw.predict(example), calls)
    vw.finish()
    return {
        "learner": "vowpal wabbit squarecb (predict only, pre-built example)",
        "arms": n_arms,
        "recommend_p50_us": float(np.percentile(timings, 50)),
        "recommend_p99_us": float(np.percentile(timings, 99)),
        "decide_p50_us": float("nan"),
        "decide_p99_us": float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5_000)
    parser.add_argument("--policies", default=",".join(sorted(POLICIES)))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = []
    for n_arms in SHAPES:
        for policy in args.policies.split(","):
            results.append(bench_paramloop(policy, n_arms, args.calls))
            print(_row(results[-1]), flush=True)
        vw = bench_vw(n_arms, args.calls)
        if vw is None:
            print("vowpalwabbit not installed (pip install -e '.[bench]'): no comparison")
        else:
            results.append(vw)
            print(_row(vw), flush=True)
    print()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _row(r: dict[str, Any]) -> str:
    return (
        f"{r['learner']:<58} arms={r['arms']:<5} recommend p50 {r['recommend_p50_us']:7.1f} µs "
        f"p99 {r['recommend_p99_us']:7.1f} µs | decide p50 {r['decide_p50_us']:7.1f} p99 {r['decide_p99_us']:7.1f}"
    )


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        [
            r["learner"],
            r["arms"],
            f"{r['recommend_p50_us']:.1f}",
            f"{r['recommend_p99_us']:.1f}",
            "-" if np.isnan(r["decide_p50_us"]) else f"{r['decide_p50_us']:.1f}",
            "-" if np.isnan(r["decide_p99_us"]) else f"{r['decide_p99_us']:.1f}",
        ]
        for r in results
    ]
    header = [
        "learner",
        "arms",
        "recommend p50 µs",
        "recommend p99 µs",
        "decide p50 µs",
        "decide p99 µs",
    ]
    return markdown_table(header, rows)


if __name__ == "__main__":
    main()
