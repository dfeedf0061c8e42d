"""(f) offline evaluation at scale: a million logged decisions in SQLite, IPS, SNIPS and DR with intervals.

The log: the simulator's ``summarization`` task served by LinUCB (5 % exploration
floor) for ``--rows`` rounds through the real ``Optimizer``, with every outcome,
then copied into a SQLite file with ``import_logged`` together with the
policy's last snapshot.  Built once and cached under ``~/.cache/paramloop``
(a few minutes for a million rows).

Timed, in a fresh process per repeat so that its peak RSS is the evaluation's
own: open the store, stream the task type's rows in chunks, featurize the
contexts, score the candidate (the latest snapshot) and the baseline on every
logged context, fit the cross-fitted outcome model, and estimate IPS, SNIPS and
DR for both with 95 % CLT intervals and the paired candidate − baseline
difference with its one-sided lower bound.  ``--interval bootstrap`` times the
row bootstrap instead (``--resamples`` resamples).

    python bench/bench_ope_scale.py [--rows 1000000] [--repeats 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import markdown_table

CACHE = Path(os.environ.get("PARAMLOOP_BENCH_CACHE", Path.home() / ".cache" / "paramloop"))
TASK = "summarization"
#: Bump when the fixture's recipe changes, so a stale cached log is rebuilt.
FIXTURE_VERSION = 1


def fixture(rows: int, seed: int = 0) -> Path:
    """The cached SQLite log of ``rows`` decisions with outcomes (built when missing)."""
    from paramloop.engine import Optimizer
    from paramloop.sim.tasks import default_tasks
    from paramloop.sim.world import World
    from paramloop.store import SQLiteDecisionLog
    from paramloop.store.memory import MemoryDecisionLog

    path = CACHE / f"bench_ope_{rows}_v{FIXTURE_VERSION}_s{seed}.sqlite"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    for stale in CACHE.glob(partial.name + "*"):
        stale.unlink()
    print(f"building the {rows:,}-row log (once) at {path}", file=sys.stderr)
    world = World()
    config = default_tasks(task_types=[TASK])[0]
    memory = MemoryDecisionLog()
    ticks = iter(range(4 * rows + 100))

    def clock() -> float:
        return 1_700_000_000.0 + 0.01 * next(ticks)

    optimizer = Optimizer([config], memory, clock=clock)
    rng = np.random.default_rng(seed)
    gc.freeze()  # a million live decisions: the collector would rescan them all
    for step in range(rows):
        decision = optimizer.recommend(TASK, world.sample_context(TASK, rng), seed=step)
        outcome = world.outcome(TASK, decision.context, decision.params, rng)
        optimizer.record_outcome(decision.request_id, outcome)
    snapshot = optimizer.policy(TASK).snapshot()
    sqlite = SQLiteDecisionLog(partial)
    for chunk in memory.iter_logged(TASK, chunk_size=20_000):
        sqlite.import_logged(chunk)
    from paramloop.types import PolicySnapshot

    sqlite.save_snapshot(
        PolicySnapshot(
            task_type=TASK,
            policy=optimizer.policy(TASK).label,
            revision=optimizer.policy(TASK).revision,
            last_outcome_seq=rows,
            state=snapshot,
            timestamp=1_700_000_000.0 + 0.02 * rows,
        )
    )
    sqlite.close()
    for suffix in ("", "-wal", "-shm"):
        source = Path(str(partial) + suffix)
        if source.exists() and suffix == "":
            source.rename(path)
        elif source.exists():
            source.unlink()
    return path


def evaluate_once(path: Path, interval: str, resamples: int) -> dict[str, Any]:
    """One timed evaluation (run in a fresh process by :func:`main`)."""
    started = time.perf_counter()
    from paramloop.engine.evaluate import evaluate
    from paramloop.sim.tasks import default_tasks
    from paramloop.store import SQLiteDecisionLog

    imported = time.perf_counter()
    cpu_before = time.process_time()
    config = default_tasks(task_types=[TASK])[0]
    store = SQLiteDecisionLog(path)
    result = evaluate(
        store,
        config,
        target="snapshot",
        estimators=("ips", "snips", "dr"),
        interval=interval,  # type: ignore[arg-type]
        resamples=resamples,
    )
    store.close()
    seconds = time.perf_counter() - imported
    cpu_seconds = time.process_time() - cpu_before
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "rows": result.n,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "import_seconds": imported - started,
        "peak_rss_mb": peak_kib / 1024,
        "interval": interval,
        "estimates": {
            c.candidate.estimator: {
                "candidate": c.candidate.value,
                "low": c.candidate.low,
                "high": c.candidate.high,
                "baseline": c.baseline.value,
                "difference": c.difference,
                "lower_bound": c.lower_bound,
                "ess": c.candidate.ess,
            }
            for c in result.comparisons
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--interval", choices=["clt", "bootstrap"], default="clt")
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--once", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.once is not None:
        print(json.dumps(evaluate_once(args.once, args.interval, args.resamples)))
        return
    path = fixture(args.rows)
    runs = []
    for _ in range(args.repeats):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--once",
                str(path),
                "--interval",
                args.interval,
                "--resamples",
                str(args.resamples),
            ],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
        )
        runs.append(json.loads(out.stdout))
    result = {
        "rows": runs[0]["rows"],
        "file_mb": path.stat().st_size / 2**20,
        "interval": args.interval,
        "seconds": [r["seconds"] for r in runs],
        "median_seconds": statistics.median(r["seconds"] for r in runs),
        "median_cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
        "load_average": os.getloadavg()[0],
        "import_seconds": statistics.median(r["import_seconds"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "estimates": runs[0]["estimates"],
    }
    print(table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


def table(result: dict[str, Any]) -> str:
    head = markdown_table(
        [
            "rows",
            "SQLite file",
            "interval",
            "wall (median)",
            "CPU (median)",
            "runs (wall)",
            "peak RSS",
            "load avg",
        ],
        [
            [
                f"{result['rows']:,}",
                f"{result['file_mb']:.0f} MB",
                result["interval"],
                f"{result['median_seconds']:.2f} s",
                f"{result['median_cpu_seconds']:.2f} s",
                ", ".join(f"{s:.2f} s" for s in result["seconds"]),
                f"{result['peak_rss_mb']:.0f} MB",
                f"{result['load_average']:.1f}",
            ]
        ],
    )
    rows = [
        [
            name,
            f"{e['candidate']:.4f} [{e['low']:.4f}, {e['high']:.4f}]",
            f"{e['baseline']:.4f}",
            f"{e['difference']:+.4f}",
            f"{e['lower_bound']:+.4f}",
            f"{e['ess']:,.0f}",
        ]
        for name, e in result["estimates"].items()
    ]
    body = markdown_table(
        ["estimator", "candidate [95 % CI]", "baseline", "difference", "one-sided LB", "ESS"], rows
    )
    return f"{head}\n\n{body}\n\n(import of paramloop, not timed above: {result['import_seconds']:.2f} s)"


if __name__ == "__main__":
    main()
