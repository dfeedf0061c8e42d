"""(j) service start-up on a long rollout phase: replaying the phase against a monitor snapshot.

    python bench/bench_startup.py [--decisions 1000000] [--db PATH [--keep]] [--repeat 3]

The rollout controller keeps an SLO monitor per task type.  A start either restores
the monitor's snapshot (engine state kind ``rollout_monitor``) and reads only the log
after it, or, without one, replays every decision of the current phase.  This script
builds a SQLite log of one task type in canary (``mode = "canary"`` in the service
configuration, so the rollout is created the way ``paramloop serve`` creates it, with
the phase entered ``--days`` ago), bulk-inserts ``--decisions`` decisions of that phase
(``import_logged``, 20,000 a transaction; about 90 % with an outcome: quality, latency,
tokens), then times starts of the service, each in a fresh process:

* first start: no monitor snapshot, and no policy snapshot unless the database was
  kept from an earlier run: the policy relearns every outcome.  It saves both
  snapshots at shutdown, so the optimizer's own catch-up is not in the figures below;
* replay: the ``rollout_monitor`` row deleted before each start;
* snapshot: the snapshot the previous start saved at shutdown.

Each start figure is ``create_app`` as ``paramloop serve`` calls it: open (and
migrate) the store and its spool, restore the policy snapshot and catch up after it,
load the rollout controller, build the app.  Interpreter start, imports and the TOML
parse are not in it; the process column (wall time of the whole child process,
shutdown included) has them.  The rollout and optimizer columns are the parts of it
spent constructing those two objects; rows read are the decisions (``iter_logged``)
and outcomes (``outcomes_since``) the start read from the log.  Decisions are
copies of 20,000 the real loop took (in memory, same configuration, canary split),
with new request ids and timestamps spread over the phase.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from _common import markdown_table

TASK_TYPE = "startup"
TASK: dict[str, Any] = {
    "preset": "published",
    "baseline": {"model": "gpt-small", "temperature": 0.5, "max_tokens": 256},
    "space": {"temperature": [0.1, 0.3, 0.5, 0.7, 0.9], "max_tokens": [128, 256, 512]},
    "trust_region": {"temperature": 1.0, "max_tokens": 400},
}
CHUNK = 20_000
SEED = 20_240_601
OUTCOME_SHARE = 0.9
MONITOR_KIND = "rollout_monitor"  # paramloop.engine.rollout.MONITOR_KIND


def settings_mapping(db: Path, phase: str) -> dict[str, Any]:
    """The service configuration (as a parsed TOML document) of the benchmarked service."""
    return {
        "tasks": {TASK_TYPE: TASK},
        "service": {
            "database_url": f"sqlite:///{db}",
            "mode": phase,
            "api_keys": [
                {
                    "name": "bench",
                    "role": "write",
                    "sha256": hashlib.sha256(b"bench-key").hexdigest(),
                }
            ],
        },
    }


# -- generation ------------------------------------------------------------------------


def raw_context(rng: np.random.Generator) -> dict[str, object]:
    """A context of the published task features, drawn from a fixed distribution."""
    return {
        "risk_tier": str(rng.choice(["low", "medium", "high"], p=[0.5, 0.35, 0.15])),
        "title_length": int(rng.integers(10, 120)),
        "description_length": int(rng.lognormal(6.5, 1.0)),
        "acceptance_criteria_count": int(rng.integers(0, 9)),
        "scope_files_count": int(rng.integers(1, 11)),
        "max_files": int(rng.integers(1, 21)),
        "max_loc": int(rng.integers(50, 2_000)),
        "has_external_deps": bool(rng.random() < 0.3),
        "complexity_indicators": int(rng.integers(0, 6)),
        "model_name": "gpt-small",
        "prompt_tokens": int(rng.lognormal(7.2, 0.6)),
        "prior_failures": int(rng.poisson(0.4)),
    }


def outcome_for(rng: np.random.Generator, temperature: float, max_tokens: int, prompt: int) -> Any:
    """Quality a little better near temperature 0.5, completions mostly under every cap:
    a canary whose SLOs hold (a breach would be rolled back at the first analysis)."""
    from paramloop.types import Outcome

    completion = int(min(max_tokens, rng.lognormal(4.3, 0.35)))
    quality = float(np.clip(rng.normal(0.8 - 0.02 * abs(temperature - 0.5), 0.08), 0.0, 1.0))
    return Outcome(
        quality=round(quality, 4),
        latency_ms=round(float(200.0 + 4.0 * completion + rng.lognormal(6.0, 0.3)), 1),
        prompt_tokens=prompt,
        completion_tokens=completion,
        error=bool(rng.random() < 0.002),
    )


def templates(db_dir: Path, phase: str, n: int) -> list[tuple[Any, Any]]:
    """``n`` decisions the real loop takes (in memory, canary split) with their outcomes."""
    from paramloop.engine.loop import build_loop
    from paramloop.server.settings import Settings
    from paramloop.store import open_store

    rng = np.random.default_rng(SEED)
    settings = Settings.from_mapping(settings_mapping(db_dir / "unused.db", phase), env={})
    config = settings.task_configs[TASK_TYPE]
    loop = build_loop(
        settings.task_configs,
        open_store("sqlite:///:memory:"),
        sinks=(),
        initial=settings.initial_rollouts(),
    )
    out: list[tuple[Any, Any]] = []
    for _ in range(n):
        raw = raw_context(rng)
        decision = loop.optimizer.recommend(TASK_TYPE, raw)
        params = decision.params
        prompt = raw["prompt_tokens"]
        assert isinstance(prompt, int)
        outcome = outcome_for(rng, params.temperature or 0.5, params.max_tokens or 256, prompt)
        recorded = loop.optimizer.record_outcome(decision.request_id, outcome)
        out.append((decision, (outcome, recorded.reward, config.reward.version)))
    loop.close()
    phases = {d.phase for d, _ in out}
    if phases != {phase}:
        raise RuntimeError(f"the template loop left {phase}: decisions in {sorted(phases)}")
    return out


def generate(db: Path, phase: str, n: int, days: float) -> None:
    """Create the rollout ``days`` ago in ``phase`` and log ``n`` decisions of it."""
    from paramloop.engine.loop import build_loop
    from paramloop.server.settings import Settings
    from paramloop.store import open_store
    from paramloop.types import RecordedOutcome

    started = time.perf_counter()
    pool = templates(db.parent, phase, CHUNK)
    treated = sum(d.origin.startswith("bandit:") for d, _ in pool)
    print(
        f"templates: {len(pool):,} decisions by the real loop in "
        f"{time.perf_counter() - started:.1f} s ({treated / len(pool):.1%} treatment)",
        flush=True,
    )
    settings = Settings.from_mapping(settings_mapping(db, phase), env={})
    now = time.time()
    entered = now - days * 86_400.0
    store = open_store(settings.database_url)
    build_loop(  # creates the rollout in ``phase``, entered at ``entered``
        settings.task_configs, store, clock=lambda: entered, initial=settings.initial_rollouts()
    )
    first, last = entered + 1.0, now - 60.0
    step = (last - first) / max(n, 1)
    rng = np.random.default_rng(SEED + 1)
    inserting = time.perf_counter()
    done = 0
    while done < n:
        size = min(CHUNK, n - done)
        order = rng.permutation(len(pool))[:size]
        present = rng.random(size) < OUTCOME_SHARE
        delays = rng.exponential(2.0, size)
        rows: list[tuple[Any, Any]] = []
        for j in range(size):
            i = done + j
            template, (outcome, reward, version) = pool[order[j]]
            at = first + i * step
            request_id = f"{SEED:08x}{i:024x}"
            decision = replace(template, request_id=request_id, timestamp=at)
            recorded = None
            if present[j]:
                recorded = RecordedOutcome(
                    request_id=request_id,
                    task_type=TASK_TYPE,
                    outcome=outcome,
                    reward=reward,
                    reward_version=version,
                    source="observed",
                    timestamp=at + (outcome.latency_ms or 0.0) / 1_000.0 + float(delays[j]),
                )
            rows.append((decision, recorded))
        store.import_logged(rows)
        done += size
        if done % 200_000 == 0 or done == n:
            rate = done / (time.perf_counter() - inserting)
            print(f"  {done:>10,} decisions logged ({rate:,.0f}/s)", flush=True)
    store.close()
    print(
        f"generation: {n:,} decisions in {time.perf_counter() - started:.1f} s "
        f"(import_logged {time.perf_counter() - inserting:.1f} s)",
        flush=True,
    )


# -- the database, directly ------------------------------------------------------------


def sql(db: Path, statement: str, *args: object) -> Any:
    connection = sqlite3.connect(db)
    try:
        with connection:
            return connection.execute(statement, args).fetchone()
    finally:
        connection.close()


def logged(db: Path) -> int:
    return int(sql(db, "SELECT count(*) FROM logged_decisions WHERE task_type = ?", TASK_TYPE)[0])


def drop_monitor_snapshot(db: Path) -> None:
    sql(db, "DELETE FROM engine_state WHERE kind = ? AND key = ?", MONITOR_KIND, TASK_TYPE)


def has_monitor_snapshot(db: Path) -> bool:
    found = sql(
        db, "SELECT 1 FROM engine_state WHERE kind = ? AND key = ?", MONITOR_KIND, TASK_TYPE
    )
    return found is not None


def has_policy_snapshot(db: Path) -> bool:
    return sql(db, "SELECT 1 FROM policy_snapshots WHERE task_type = ?", TASK_TYPE) is not None


# -- one start, in a fresh process -----------------------------------------------------


def _time_calls(module: ModuleType, name: str, spans: dict[str, float]) -> None:
    """Replace ``module.name`` by a wrapper adding its wall time to ``spans[name]``."""
    original = getattr(module, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spans[name] = spans.get(name, 0.0) + time.perf_counter() - started

    setattr(module, name, timed)


def _count_rows(cls: type, counts: dict[str, int]) -> None:
    """Count the rows ``iter_logged`` and ``outcomes_since`` return (per chunk, not per row)."""
    iter_logged, outcomes_since = cls.iter_logged, cls.outcomes_since  # type: ignore[attr-defined]

    def counted_iter(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        for chunk in iter_logged(self, *args, **kwargs):
            counts["decisions"] += len(chunk)
            yield chunk

    def counted_since(self: Any, *args: Any, **kwargs: Any) -> Any:
        rows = outcomes_since(self, *args, **kwargs)
        counts["outcomes"] += len(rows)
        return rows

    cls.iter_logged = counted_iter  # type: ignore[attr-defined]
    cls.outcomes_since = counted_since  # type: ignore[attr-defined]


def child(db: Path, phase: str, profile: bool) -> None:
    """Start the service as ``paramloop serve`` does; print the figures as one JSON line."""
    import paramloop.engine.loop as loop_module
    import paramloop.store as store_module
    from paramloop.server.app import create_app
    from paramloop.server.settings import Settings
    from paramloop.store.sqlite import SQLiteDecisionLog

    spans: dict[str, float] = {}
    counts = {"decisions": 0, "outcomes": 0}
    _time_calls(store_module, "open_store", spans)
    _time_calls(loop_module, "RolloutController", spans)
    _time_calls(loop_module, "Optimizer", spans)
    _count_rows(SQLiteDecisionLog, counts)
    settings = Settings.from_mapping(settings_mapping(db, phase), env={})
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started = time.perf_counter()
    app = create_app(settings)
    startup = time.perf_counter() - started
    if profiler is not None:
        import pstats

        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
    loop = app.state.ctx.loop
    status = loop.rollout.status(TASK_TYPE)
    result = {
        "startup_s": startup,
        "open_store_s": spans.get("open_store", 0.0),
        "rollout_s": spans.get("RolloutController", 0.0),
        "optimizer_s": spans.get("Optimizer", 0.0),
        "decisions_read": counts["decisions"],
        "outcomes_read": counts["outcomes"],
        "phase": status["state"]["phase"],
        "confidence": status["confidence"],
        "slo": status["slo"]["verdict"],
        "replayed_by_policy": loop.optimizer.stats.replayed.get(TASK_TYPE, 0),
    }
    started = time.perf_counter()
    app.state.ctx.service.close()  # what the service does at shutdown: save the snapshots
    result["shutdown_s"] = time.perf_counter() - started
    print(json.dumps(result), flush=True)


def start(db: Path, phase: str, label: str, *, profile: bool = False) -> dict[str, Any]:
    """One start of the service in a fresh process, with its figures."""
    command = [sys.executable, __file__, "--child", "--db", str(db), "--phase", phase]
    if profile:
        command.append("--profile")
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    result["path"] = label
    conf = result["confidence"]
    print(
        f"{label:<12} start {result['startup_s']:8.3f} s  (rollout {result['rollout_s']:.3f} s, "
        f"optimizer {result['optimizer_s']:.3f} s, store {result['open_store_s']:.3f} s; "
        f"read {result['decisions_read']:,} decisions, {result['outcomes_read']:,} outcomes; "
        f"process {result['process_s']:.2f} s; phase {result['phase']}, "
        f"confidence {'-' if conf is None else f'{conf:.4f}'}, SLO {result['slo']})",
        flush=True,
    )
    return result


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda r: float(r["startup_s"]))[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, help="the SQLite file (default: in a temp dir)")
    parser.add_argument("--keep", action="store_true", help="reuse --db if it exists; keep it")
    parser.add_argument("--phase", default="canary", choices=["canary", "guarded"])
    parser.add_argument("--days", type=float, default=7.0, help="how long the phase has run")
    parser.add_argument("--repeat", type=int, default=3, help="starts per path (median shown)")
    parser.add_argument("--replay-repeat", type=int, default=1, help="replay starts")
    parser.add_argument("--profile", action="store_true", help="cProfile each timed start")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.db, args.phase, args.profile)
        return
    tmp = None
    if args.db is None:
        tmp = Path(tempfile.mkdtemp(prefix="paramloop-startup-"))
        db = tmp / "startup.db"
    else:
        db = args.db.resolve()
    try:
        if args.keep and db.exists():
            print(f"reusing {db}: {logged(db):,} decisions of {TASK_TYPE!r}", flush=True)
        else:
            for path in db.parent.glob(db.name + "*"):  # the database, its WAL, its spool
                path.unlink()
            generate(db, args.phase, args.decisions, args.days)
        decisions = logged(db)

        drop_monitor_snapshot(db)
        policy = has_policy_snapshot(db)
        first = start(db, args.phase, "first start")
        print(
            f"  (policy snapshot {'present' if policy else 'absent: relearned'} "
            f"{first['replayed_by_policy']:,} outcomes; shutdown saved the snapshots in "
            f"{first['shutdown_s']:.2f} s)",
            flush=True,
        )
        if not has_monitor_snapshot(db):
            raise RuntimeError("the first start saved no monitor snapshot")
        replays = []
        for _ in range(args.replay_repeat):
            drop_monitor_snapshot(db)
            replays.append(start(db, args.phase, "replay", profile=args.profile))
        snapshots = []
        for _ in range(args.repeat):
            if not has_monitor_snapshot(db):
                raise RuntimeError("no monitor snapshot before a snapshot start")
            snapshots.append(start(db, args.phase, "snapshot", profile=args.profile))
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp is not None:
            print(f"kept {db}")
    results = {
        "decisions": decisions,
        "phase": args.phase,
        "first": first,
        "replay": median_run(replays),
        "snapshot": median_run(snapshots),
        "replay_runs": [r["startup_s"] for r in replays],
        "snapshot_runs": [r["startup_s"] for r in snapshots],
    }
    results["ratio"] = results["replay"]["startup_s"] / results["snapshot"]["startup_s"]
    spread = statistics.pstdev(results["snapshot_runs"]) if len(snapshots) > 1 else 0.0
    print(f"snapshot starts: {', '.join(f'{s:.3f}' for s in results['snapshot_runs'])} s "
          f"(sd {spread:.3f})")  # fmt: skip
    print()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def table(r: dict[str, Any]) -> str:
    rows = [
        [
            f"{r['decisions']:,}",
            label,
            f"{run['startup_s']:.3f}",
            f"{run['rollout_s']:.3f}",
            f"{run['optimizer_s']:.3f}",
            f"{run['decisions_read']:,}",
            f"{run['outcomes_read']:,}",
            f"{run['process_s']:.2f}",
        ]
        for label, run in (
            ("replay (no monitor snapshot)", r["replay"]),
            ("snapshot", r["snapshot"]),
        )
    ]
    rows.append(["", "ratio replay / snapshot", f"{r['ratio']:.1f}×", "", "", "", "", ""])
    return markdown_table(
        [
            f"decisions ({r['phase']})",
            "path",
            "start-up s",
            "rollout s",
            "optimizer s",
            "decisions read",
            "outcomes read",
            "process s",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
