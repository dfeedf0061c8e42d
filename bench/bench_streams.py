"""Public bandit streams: paramloop's default policy against well-known learners, paired by seed.

Streams (``bench/streams/data.py`` says how each is built): scikit-learn's
iris, wine, breast_cancer and digits, River's bundled Phishing, Bananas and
ImageSegments, three ``make_classification`` streams (20 arms; a label mapping
that rotates halfway; model routing with costs on digits), and the Open Bandit
Dataset.  Features are raw; every learner gets the same rows.

Learners (``bench/streams/learners.py``, ``paramloop_learner.py``), each with its
library's defaults or the standard hyperparameters, the same on every stream:

* ``paramloop`` — the engine's default policy through ``decide`` (floor 0.05),
  context squeezed into [0, 1] by the stream's min–max (the current API);
* ``linucb`` — disjoint per-arm LinUCB, α = 1, ridge 1, argmax played;
* ``greedy`` — per-arm ridge, argmax of the mean;
* ``vw-squarecb`` — Vowpal Wabbit ``--cb_explore_adf --squarecb -q sa``;
* ``vw-epsilon`` — Vowpal Wabbit ``--cb_explore_adf --epsilon 0.05 -q sa``.

**Online streams.**  Round t: ``p = learner.distribution(x_t)``; the arm is drawn
from ``p`` with the round's uniform number ``u_t`` (the same ``u_t`` for every
learner of a (stream, seed): common random numbers, which tighten the paired
differences); the learner learns ``(x_t, arm, r_t[arm], p[arm])``.  The score is
the mean reward per round.  References: ``best`` (the best arm of every round,
mean) and ``uniform`` (the mean reward of uniform play, exact).

**The Open Bandit Dataset** (uniform logging, known propensities).  Every
learner learns off-policy from the first half of the shuffled log, in order:
``learn(x_i, a_i, r_i, p_i)`` on the logged arm (VW uses the propensity in its
``a:cost:p`` label; the numpy learners and paramloop make plain, unweighted
updates — under uniform logging an importance weight would be the same
constant 1/p for every row).  Its action distributions on the second half are
then scored by IPS (``mean r_i π(a_i|x_i)/p_i``) and SNIPS, with
:mod:`paramloop.core.ope`.  ``uniform`` is the logging policy's own click rate
on that half.

**Paired differences.**  For paramloop − VW SquareCB and paramloop − LinUCB the
per-seed difference of scores, its mean and a 95 % Student-t interval over the
seeds.  Verdict: ``>`` the interval lies above 0, ``≥`` it contains 0 (both
mean "not below"), ``<`` it lies below 0.

Usage::

    python bench/bench_streams.py [--seeds 5] [--rounds 5000] [--streams iris,digits,...]
        [--learners paramloop,linucb,...] [--quick] [--jobs 2] [--json out.json]

``--quick`` (a smoke check, about 10 s): 500 rounds and 2 seeds unless
``--seeds`` is given.  The default run (5 seeds × 11 streams × 5 learners)
takes about 40 s on two idle cores.  A learner that raises is reported (and
the exit status is 1); the other learners still run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats  # type: ignore[import-untyped, unused-ignore]

import paramloop
from _common import markdown_table, run_jobs, write_results
from paramloop.core.ope import IPS, SNIPS, LoggedBandit
from paramloop.engine.config import DEFAULT_POLICY
from streams import (
    RIVER_STREAMS,
    STREAMS,
    GreedyRidge,
    Learner,
    LoggedStream,
    ParamloopLearner,
    PerArmLinUCB,
    Stream,
    VWEpsilonGreedy,
    VWSquareCB,
)
from streams.learners import VW_EPSILON, VW_SQUARECB

PARAMLOOP, LINUCB, GREEDY, VW, VW_EPS = "paramloop", "linucb", "greedy", "vw-squarecb", "vw-epsilon"
ALL_LEARNERS = (PARAMLOOP, LINUCB, GREEDY, VW, VW_EPS)
#: The paired comparisons of the table: paramloop − each of these.
RIVALS = (VW, LINUCB)
DEFAULT_ROUNDS = 5_000
QUICK_ROUNDS, QUICK_SEEDS, DEFAULT_SEEDS = 500, 2, 5
_BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_DRAWS = 1  # first word of the draw generator's seed, apart from the streams' own


def make_learner(
    name: str, stream: Stream | LoggedStream, options: Mapping[str, Any] | None = None
) -> Learner:
    """A fresh learner for ``stream``; paramloop is told the features' min–max over the stream."""
    if name == PARAMLOOP:
        return ParamloopLearner(stream.n_arms, stream.dim, stream.reward_range, **(options or {}))
    factories: dict[str, Callable[[], Learner]] = {
        LINUCB: lambda: PerArmLinUCB(stream.n_arms, stream.dim),
        GREEDY: lambda: GreedyRidge(stream.n_arms, stream.dim),
        VW: lambda: VWSquareCB(stream.n_arms),
        VW_EPS: lambda: VWEpsilonGreedy(stream.n_arms),
    }
    return factories[name]()


# -- playing ------------------------------------------------------------------------------


def play(stream: Stream, learner: Learner, draws: np.ndarray) -> tuple[float, float]:
    """Online: (mean reward per round, seconds spent inside the learner)."""
    total = 0.0
    busy = 0.0
    clock = time.perf_counter
    last = stream.n_arms - 1
    for t in range(stream.n_rounds):
        x = stream.X[t]
        started = clock()
        p = learner.distribution(x)
        busy += clock() - started
        cumulative = np.cumsum(p)
        arm = min(int(np.searchsorted(cumulative, draws[t] * cumulative[-1], side="right")), last)
        reward = float(stream.rewards[t, arm])
        total += reward
        started = clock()
        learner.learn(x, arm, reward, float(p[arm] / cumulative[-1]))
        busy += clock() - started
    return total / stream.n_rounds, busy


def replay(stream: LoggedStream, learner: Learner) -> tuple[float, float, float]:
    """Off-policy: learn from the first ``n_train`` logged rows, score the rest; (IPS, SNIPS, s)."""
    clock = time.perf_counter
    started = clock()
    for i in range(stream.n_train):
        learner.learn(
            stream.X[i],
            int(stream.actions[i]),
            float(stream.rewards[i]),
            float(stream.propensities[i]),
        )
    held = slice(stream.n_train, stream.n_rounds)
    target = np.stack([learner.distribution(x) for x in stream.X[held]])
    busy = clock() - started
    data = LoggedBandit(
        rewards=stream.rewards[held],
        actions=stream.actions[held],
        propensities=stream.propensities[held],
        target=target,
    )
    return IPS().value(data), SNIPS().value(data), busy


# -- one job: one (stream, seed), every learner -------------------------------------------


@dataclass(frozen=True)
class Job:
    stream: str
    seed: int
    rounds: int
    learners: tuple[str, ...]
    #: Overrides of paramloop's defaults (``--paramloop policy=squarecb,gamma=20``).
    paramloop: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Run:
    """One learner on one (stream, seed).

    ``value`` is the mean reward (IPS for a logged stream); ``None`` with ``error`` when it raised.
    """

    stream: str
    learner: str
    seed: int
    rounds: int
    value: float | None
    snips: float | None
    seconds: float
    error: str = ""


@dataclass(frozen=True)
class JobResult:
    stream: str
    seed: int
    rounds: int
    arms: int
    features: int
    logged: bool
    best: float | None
    uniform: float
    runs: tuple[Run, ...]
    seconds: float


def run_job(job: Job) -> JobResult:
    started = time.perf_counter()
    stream = STREAMS[job.stream](job.seed, job.rounds)
    # The same uniform numbers for every learner: common random numbers for paired differences.
    draws = np.random.default_rng([_DRAWS, job.seed, zlib.crc32(job.stream.encode())]).random(
        stream.n_rounds
    )
    runs = []
    for name in job.learners:
        snips: float | None = None
        try:
            learner = make_learner(name, stream, dict(job.paramloop))
            if isinstance(stream, LoggedStream):
                value, snips, seconds = replay(stream, learner)
            else:
                value, seconds = play(stream, learner, draws)
        except Exception as exc:  # reported in the table; the other learners still run
            error = f"{type(exc).__name__}: {exc}"
            runs.append(Run(job.stream, name, job.seed, 0, None, None, 0.0, error))
            continue
        runs.append(Run(job.stream, name, job.seed, stream.n_rounds, value, snips, seconds))
    if isinstance(stream, LoggedStream):
        best, uniform = None, float(stream.rewards[stream.n_train :].mean())
    else:
        best, uniform = float(stream.rewards.max(axis=1).mean()), float(stream.rewards.mean())
    return JobResult(
        stream=job.stream,
        seed=job.seed,
        rounds=stream.n_rounds,
        arms=stream.n_arms,
        features=stream.dim,
        logged=isinstance(stream, LoggedStream),
        best=best,
        uniform=uniform,
        runs=tuple(runs),
        seconds=time.perf_counter() - started,
    )


# -- statistics ---------------------------------------------------------------------------


def t_interval(
    values: Sequence[float], level: float = 0.95
) -> tuple[float, float | None, float | None]:
    """(mean, low, high): the Student-t interval of the mean; no bounds with fewer than 2 values."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1)) * statistics.stdev(values)
    half /= math.sqrt(len(values))
    return mean, mean - half, mean + half


def verdict(low: float | None, high: float | None) -> str:
    if low is None or high is None:
        return "?"
    return ">" if low > 0 else ("<" if high < 0 else "≥")


def summarize(results: Sequence[JobResult], learners: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (stream, score): mean score of each learner and the paired differences."""
    rows = []
    for stream in dict.fromkeys(r.stream for r in results):
        jobs = [r for r in results if r.stream == stream]
        scores = ("ips", "snips") if jobs[0].logged else ("mean reward",)
        for score in scores:
            per_seed: dict[str, dict[int, float]] = {name: {} for name in learners}
            for job in jobs:
                for run in job.runs:
                    value = run.snips if score == "snips" else run.value
                    if not run.error and value is not None:
                        per_seed[run.learner][job.seed] = value
            bests = [job.best for job in jobs if job.best is not None]
            row: dict[str, Any] = {
                "stream": stream,
                "score": score,
                "seeds": len(jobs),
                "rounds": jobs[0].rounds,
                "arms": jobs[0].arms,
                "features": jobs[0].features,
                "logged": jobs[0].logged,
                "best": statistics.fmean(bests) if bests else None,
                "uniform": statistics.fmean(j.uniform for j in jobs),
                "means": {
                    name: statistics.fmean(values.values()) if values else None
                    for name, values in per_seed.items()
                },
                "differences": {},
            }
            ours = per_seed.get(PARAMLOOP, {})
            for rival in RIVALS:
                theirs = per_seed.get(rival, {})
                seeds = sorted(set(ours) & set(theirs))
                if not seeds:
                    continue
                diffs = [ours[s] - theirs[s] for s in seeds]
                mean, low, high = t_interval(diffs)
                row["differences"][rival] = {
                    "mean": mean,
                    "low": low,
                    "high": high,
                    "seeds": len(seeds),
                    "per_seed": diffs,
                    "verdict": verdict(low, high),
                }
            rows.append(row)
    return rows


def speeds(results: Sequence[JobResult], learners: Sequence[str]) -> dict[str, dict[str, float]]:
    """Rounds (online rounds, or logged rows learned + scored) per second inside each learner."""
    out = {}
    for name in learners:
        runs = [run for r in results for run in r.runs if run.learner == name and not run.error]
        rounds = sum(run.rounds for run in runs)
        seconds = sum(run.seconds for run in runs)
        if runs:
            out[name] = {
                "rounds": rounds,
                "seconds": seconds,
                "rounds_per_s": rounds / seconds if seconds > 0 else math.inf,
            }
    return out


# -- rendering ----------------------------------------------------------------------------


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _difference(d: Mapping[str, Any] | None, digits: int) -> str:
    if d is None:
        return "-"
    if d["low"] is None:
        return f"{d['mean']:+.{digits}f}"
    return f"{d['mean']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"


def render(rows: Sequence[Mapping[str, Any]], learners: Sequence[str]) -> str:
    rivals = [r for r in RIVALS if r in learners and PARAMLOOP in learners]
    header = [
        "stream",
        "rounds",
        "arms × features",
        "best",
        "uniform",
        *learners,
        *(f"{PARAMLOOP} − {r} (95 % CI)" for r in rivals),
        "verdict",
    ]
    table = []
    for row in rows:
        digits = 4 if row["logged"] else 3
        name = f"{row['stream']} ({row['score']})" if row["logged"] else row["stream"]
        rounds = f"{row['rounds']:,}"
        if row["logged"]:
            rounds = f"{row['rounds'] // 2:,} + {row['rounds'] - row['rounds'] // 2:,}"
        diffs = [row["differences"].get(r) for r in rivals]
        verdicts = [f"{d['verdict']} {r}" for r, d in zip(rivals, diffs, strict=True) if d]
        table.append(
            [
                name,
                rounds,
                f"{row['arms']} × {row['features']}",
                _number(row["best"], digits),
                _number(row["uniform"], digits),
                *(_number(row["means"].get(name), digits) for name in learners),
                *(_difference(d, digits) for d in diffs),
                ", ".join(verdicts) or "-",
            ]
        )
    return markdown_table(header, table)


def render_speeds(speed: Mapping[str, Mapping[str, float]]) -> str:
    rows = [
        [name, f"{s['rounds_per_s']:,.0f}", f"{s['rounds']:,}", f"{s['seconds']:.1f}"]
        for name, s in speed.items()
    ]
    return markdown_table(["learner", "rounds/s", "rounds", "seconds inside learner"], rows)


# -- command line -------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--seeds",
        type=int,
        help=f"seeds 0..N-1 (default {DEFAULT_SEEDS}; {QUICK_SEEDS} with --quick)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help=f"rounds per online stream (default {DEFAULT_ROUNDS:,}; {QUICK_ROUNDS} with --quick)",
    )
    parser.add_argument("--streams", default=",".join(STREAMS), help="comma-separated streams")
    parser.add_argument(
        "--learners", default=",".join(ALL_LEARNERS), help="comma-separated learners"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke check: short streams")
    parser.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--paramloop",
        default="",
        help="override paramloop's defaults: policy=squarecb,gamma=20 (default: none)",
    )
    return parser


def _value(text: str) -> Any:
    """A number, true/false or a string, from ``--paramloop``'s ``key=value``."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _choose(option: str, given: str, known: Sequence[str]) -> list[str]:
    """The names of ``given`` (comma-separated) in the order of ``known``; ValueError if unknown."""
    wanted = [name.strip() for name in given.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(known))
    if not wanted or unknown:
        raise ValueError(
            f"{option}: unknown {', '.join(unknown) or '(none given)'}; "
            f"choose among {', '.join(known)}"
        )
    return [name for name in known if name in wanted]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    seeds = args.seeds if args.seeds is not None else (QUICK_SEEDS if args.quick else DEFAULT_SEEDS)
    rounds = (
        args.rounds if args.rounds is not None else (QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS)
    )
    try:
        streams = _choose("--streams", args.streams, list(STREAMS))
        learners = _choose("--learners", args.learners, ALL_LEARNERS)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if seeds < 1 or rounds < 1 or args.jobs < 1:
        print("--seeds, --rounds and --jobs must be >= 1", file=sys.stderr)
        return 2
    skipped = {}
    if not _installed("vowpalwabbit"):
        skipped.update(
            {name: "vowpalwabbit not installed" for name in (VW, VW_EPS) if name in learners}
        )
        learners = [name for name in learners if name not in skipped]
    if not _installed("river"):
        skipped.update({name: "river not installed" for name in streams if name in RIVER_STREAMS})
        streams = [name for name in streams if name not in skipped]
    # One BLAS thread per worker: the workers already use every core.  Spawned workers read
    # these when they import numpy.
    for variable in _BLAS_THREADS:
        os.environ.setdefault(variable, "1")

    settings = _settings(seeds, rounds, streams, learners, args.jobs)
    settings["paramloop overrides"] = args.paramloop or "none (defaults)"
    print("bench_streams settings:")
    for key, value in settings.items():
        print(f"  {key}: {value}")
    for name, reason in skipped.items():
        print(f"  {name}: skipped ({reason}; pip install -e '.[bench]')")
    sys.stdout.flush()

    overrides = tuple(
        (key, _value(value))
        for key, _, value in (item.partition("=") for item in args.paramloop.split(",") if item)
    )
    jobs = [
        Job(stream, seed, rounds, tuple(learners), overrides)
        for stream in streams
        for seed in range(seeds)
    ]
    started = time.perf_counter()
    results = run_jobs(run_job, jobs, args.jobs, _progress)
    wall = time.perf_counter() - started
    order = {name: i for i, name in enumerate(streams)}
    results.sort(key=lambda r: (order[r.stream], r.seed))

    rows = summarize(results, learners)
    speed = speeds(results, learners)
    errors = [run for r in results for run in r.runs if run.error]
    print()
    print(render(rows, learners))
    print()
    print(render_speeds(speed))
    print()
    print(
        f"wall time {wall:.0f} s, {len(jobs)} jobs ({len(streams)} streams × {seeds} seeds) on "
        f"{args.jobs} worker(s). Scores are means over seeds: mean reward per round, and for "
        "obd the IPS / SNIPS value of the learned policy on the held-out half (rounds = learned "
        "+ evaluated rows). best = the best arm of every round; uniform = uniform play (obd: "
        "the logging policy's click rate). Verdict: > interval above 0, ≥ contains 0, < below 0."
    )
    for run in errors:
        print(f"error: {run.learner} on {run.stream} seed {run.seed}: {run.error}", file=sys.stderr)
    if args.json is not None:
        head = {"settings": settings, "wall_seconds": wall, "rows": rows, "speeds": speed}
        write_results(args.json, head, results)
    return 1 if errors else 0


def _settings(
    seeds: int, rounds: int, streams: Sequence[str], learners: Sequence[str], jobs: int
) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "seeds": list(range(seeds)),
        "rounds": rounds,
        "streams": list(streams),
        "learners": list(learners),
        "paramloop": f"{paramloop.__version__}, policy {DEFAULT_POLICY} with its defaults, through the public API",
        "linucb": "per-arm, alpha 1, ridge 1; greedy: per-arm ridge 1",
        "jobs": jobs,
        "blas_threads_per_worker": {v: os.environ.get(v) for v in _BLAS_THREADS},
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    if VW in learners or VW_EPS in learners:
        version = importlib.metadata.version("vowpalwabbit")
        settings["vw"] = f"{version}: {VW_SQUARECB!r}; {VW_EPSILON!r}"
    if any(name in RIVER_STREAMS for name in streams):
        settings["river"] = importlib.metadata.version("river")
    return settings


def _progress(result: JobResult, done: int, total: int, started: float) -> None:
    parts = ", ".join(
        f"{run.learner} {f'{run.value:.4f}' if run.value is not None else 'ERROR'}"
        for run in result.runs
    )
    print(
        f"[{done}/{total} {time.perf_counter() - started:5.0f}s] {result.stream} seed "
        f"{result.seed}: {parts} (job {result.seconds:.1f}s)",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())


def table(results: Mapping[str, Any]) -> str:
    """The summary as markdown, for bench/run_all.py (``results`` is this script's ``--json``)."""
    return render(results["rows"], results["settings"]["learners"])
