"""(d) memory per task type: policy state size and the RSS of 1,000 task types.

Policy state is the snapshot a policy writes to the store (its full learned
state); RSS is measured in a fresh subprocess before and after building an
optimizer with N task types (64 arms x 16 features each) and serving one
decision + outcome per task type.

    python bench/bench_memory.py [--task-types 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from _common import CONTEXT, markdown_table, space_task
from paramloop.core.policies import POLICIES
from paramloop.engine import Optimizer
from paramloop.types import Outcome

CHILD = """
import resource, sys
sys.path.insert(0, {bench!r})
from _common import CONTEXT, space_task
from paramloop.engine import Optimizer
from paramloop.types import Outcome

def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

before = rss_kib()
tasks = [space_task(64, {policy!r}, name=f"task_{{i}}") for i in range({n})]
optimizer = Optimizer(tasks)
for config in tasks:
    d = optimizer.recommend(config.name, CONTEXT)
    optimizer.record_outcome(d.request_id, Outcome(reward=0.5))
after = rss_kib()
print(before, after)
"""


def policy_state_bytes(policy: str) -> int:
    optimizer = Optimizer([space_task(64, policy)])
    for _ in range(50):
        d = optimizer.recommend("bench", CONTEXT)
        optimizer.record_outcome(d.request_id, Outcome(reward=0.5))
    return len(optimizer.policy("bench").snapshot())


def rss_for(n: int, policy: str) -> tuple[float, float]:
    code = CHILD.format(bench=str(Path(__file__).parent), policy=policy, n=n)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    before, after = (int(v) for v in out.split())
    return before / 1024, after / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task-types", type=int, default=1_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    for policy in sorted(POLICIES):
        state = policy_state_bytes(policy)
        before, after = (
            rss_for(args.task_types, policy)
            if policy in ("linucb", "lints")
            else (float("nan"),) * 2
        )
        results.append(
            {
                "policy": policy,
                "state_kb_64x16": state / 1024,
                "task_types": args.task_types,
                "rss_before_mb": before,
                "rss_after_mb": after,
            }
        )
        print(
            f"{policy:<18} policy state (64 arms x 16 features) {state / 1024:6.1f} KB"
            + (
                ""
                if after != after
                else f" | RSS {args.task_types} task types: {after:.0f} MB (was {before:.0f} MB after imports)"
            ),
            flush=True,
        )
    print()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        [
            r["policy"],
            f"{r['state_kb_64x16']:.1f}",
            "-"
            if r["rss_after_mb"] != r["rss_after_mb"]
            else f"{r['rss_after_mb']:.0f} MB ({r['rss_after_mb'] - r['rss_before_mb']:.0f} MB for the task types)",
        ]
        for r in results
    ]
    return markdown_table(
        ["policy", "state per task type, KB (64 arms x 16 features)", "RSS with 1,000 task types"],
        rows,
    )


if __name__ == "__main__":
    main()
