"""The proxy tuning temperature and max_tokens for real tasks, on a real local model.

    python examples/proxy_demo.py [--rounds 150] [--seed 0] [--window 30] [--db paramloop-demo.db]

Starts the local upstream (SmolLM2-135M on llama.cpp: `make install` builds it) and the
paramloop proxy in front of it, each under uvicorn on a free loopback port, then sends
``--rounds`` chat completions over three task types with automatic quality checks
(an exact sum, a JSON object with the right fields, a length bound; see
``paramloop.local.demo``).  Every reply is scored and the score sent to
``/v1/feedback``; the proxy joins it with the latency and tokens it measured.
Every ``--window`` rounds it prints, per task type, the mean temperature and
max_tokens paramloop chose, the mean quality and the mean reward; at the end, the
first window against the last, and the commands to look further: the decision log
stays in ``--db`` (a SQLite file in the working directory, replaced at each run), the
same task types as ``paramloop serve``'s embedded default.  ``make demo`` runs this
with 200 rounds: about three minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from paramloop.local import demo
from paramloop.local.upstream import create_upstream_app
from paramloop.server.app import create_app
from paramloop.server.settings import Settings


@contextmanager
def serving(app: Any, lifespan: str) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan=lifespan, access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summary(rounds: list[demo.Round]) -> dict[str, tuple[float, float, float, float, int]]:
    by_task: dict[str, list[demo.Round]] = defaultdict(list)
    for r in rounds:
        by_task[r.task_type].append(r)
    return {
        task: (
            mean([r.temperature for r in rs if r.temperature is not None]),
            mean([float(r.max_tokens) for r in rs if r.max_tokens is not None]),
            mean([r.quality for r in rs]),
            mean([r.reward for r in rs]),
            len(rs),
        )
        for task, rs in sorted(by_task.items())
    }


def show(title: str, rounds: list[demo.Round]) -> None:
    print(f"\n{title}")
    print(
        f"  {'task type':<14} {'n':>3} {'temperature':>11} {'max_tokens':>10} {'quality':>8} {'reward':>7}"
    )
    for task, (t, m, q, r, n) in summary(rounds).items():
        print(f"  {task:<14} {n:>3} {t:>11.2f} {m:>10.1f} {q:>8.2f} {r:>7.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=30)
    parser.add_argument("--db", type=Path, default=Path("paramloop-demo.db"))
    args = parser.parse_args()
    if args.rounds < 2 * args.window:
        parser.error(f"--rounds must be at least twice --window ({2 * args.window})")
    for stale in (
        args.db,
        *(
            args.db.with_name(args.db.name + s)
            for s in ("-wal", "-shm", ".spool", ".spool-wal", ".spool-shm")
        ),
    ):
        stale.unlink(missing_ok=True)  # the demo's own log of an earlier run
    print("loading SmolLM2-135M ...", file=sys.stderr)
    upstream_app = create_upstream_app(n_threads=2, n_ctx=1024, seed=args.seed)
    with serving(upstream_app, "off") as upstream:
        db = f"sqlite:///{args.db.resolve()}"
        settings = Settings.from_mapping(demo.config(db, f"{upstream}/v1"), env={})
        with (
            serving(create_app(settings), "on") as proxy,
            httpx.Client(base_url=proxy, timeout=120) as client,
        ):
            baseline = settings.tasks["arithmetic"].space.baseline
            print(
                f"baseline (what production used): temperature {baseline.temperature}, "
                f"max_tokens {baseline.max_tokens}; the proxy explores around it and learns"
            )
            done: list[demo.Round] = []
            start = time.perf_counter()

            def progress(r: demo.Round) -> None:
                done.append(r)
                if len(done) % args.window == 0:
                    show(
                        f"rounds {len(done) - args.window + 1}-{len(done)} "
                        f"({time.perf_counter() - start:.0f} s)",
                        done[-args.window :],
                    )

            demo.run(client, args.rounds, seed=args.seed, on_round=progress)
            first, last = done[: args.window], done[-args.window :]
            show(f"first {args.window} rounds", first)
            show(f"last {args.window} rounds", last)
            before, after = summary(first), summary(last)
            print("\nreward, last window against the first (the lift learning found):")
            for task in after:
                print(
                    f"  {task:<14} {before[task][3]:.3f} -> {after[task][3]:.3f}  "
                    f"({after[task][3] - before[task][3]:+.3f})"
                )
            convergence = client.get("/api/optimization/convergence").json()["tasks"]
            print("\nwhat each policy settles on (most frequent arm in the latest half):")
            for c in convergence:
                print(
                    f"  {c['task_type']:<14} {c['top_arm_params']}  share {c['top_arm_share']:.2f}"
                )
    print(
        f"""
where to look next (the decision log is in {args.db}):
  paramloop evaluate --db {db} -t arithmetic
      the learned policy against the baseline, off-policy, with intervals (or why the
      log cannot support an estimate yet: a few hundred decisions per task type)
  paramloop rollout status --db {db} -t arithmetic
      the phase, SLO verdicts and promotion requirements of each task type
  paramloop serve
      the same task types as a service (embedded default; the API at http://127.0.0.1:8080/docs,
      GET /api/optimization/performance, POST /api/optimization/test-shadow)"""
    )


if __name__ == "__main__":
    main()
