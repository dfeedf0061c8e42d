"""Benchmark (c): regret on one simulated stream against Vowpal Wabbit and MABWiser.

Every learner faces the same stream per (task type, seed): the same contexts,
the same feasible arms, and the same noise (round ``t`` draws its outcome from a
generator seeded by ``(seed, t)`` alone, so two learners that pick the same arm
in the same round see the same reward).  Regret is exact, not estimated:
``Σ_t max_a E[r | x_t, a] - E[r | x_t, a_t]`` from the world's oracle
(:meth:`World.expected_reward`), computed once per stream as a rounds × arms
matrix and shared by every learner.

Learners:

* paramloop through the real :class:`~paramloop.engine.Optimizer` with the
  defaults a user gets (``linucb``; ``lints`` as a second row), in-memory store;
* Vowpal Wabbit ``--cb_explore_adf --squarecb -q sa`` (shared namespace ``s`` =
  paramloop's context vector, action namespace ``a`` = the arm's features),
  cost = -reward, its PMF sampled with a seeded generator;
* MABWiser ``LinUCB`` (disjoint per-arm ridge on the context vector), warm-started
  on uniformly random rounds, then ``partial_fit`` per round.  Its update touches
  every arm, so it runs fewer rounds by default; the table says so, and every
  learner's regret at that horizon is printed next to it.

Two references need no learning and come straight from the oracle: always serving
the baseline arm, and picking uniformly at random (its expected regret).

Usage::

    python bench/bench_regret.py [--rounds 50000] [--seeds 2]
        [--task-types code_review,summarization,qa] [--json out.json]

The oracle is most of the cost (one ``expected_reward`` per arm and round, about
20 µs each), so its matrices are cached on disk keyed by everything they depend
on, and spot-checked against the world on load.  Two seeds keep a cold default
run near ten minutes on two cores; ``--seeds 3`` takes about fifteen.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import inspect
import math
import os
import statistics
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

import paramloop
from _common import run_jobs, write_results
from paramloop.engine import Optimizer, TaskConfig
from paramloop.sim import world as world_module
from paramloop.sim.run import Oracle
from paramloop.sim.tasks import default_tasks
from paramloop.sim.world import World
from paramloop.types import Decision, FeatureValue, Outcome

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

DEFAULT_TASK_TYPES = ("code_review", "summarization", "qa")
VW_ARGS = "--cb_explore_adf --squarecb -q sa --quiet"
MABWISER_ALPHA = 1.0
INSTALL_HINT = "not installed (pip install -e '.[bench]')"
PARAMLOOP_POLICIES = ("linucb", "squarecb", "lints")
VW = "vw-squarecb"
MABWISER = "mabwiser-linucb"
ALL_LEARNERS = (*(f"paramloop-{policy}" for policy in PARAMLOOP_POLICIES), VW, MABWISER)
BASELINE = "baseline arm"
UNIFORM = "uniform random"
# Distinct first words keep the context, noise and learner generators independent.
_CONTEXTS, _NOISE, _VW_DRAWS, _MAB_DRAWS = 1, 2, 3, 4
_BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Rows of a cached oracle matrix recomputed on load: a stale cache fails loudly.
_SPOT_CHECKS = 3


# -- the stream ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    """The contexts of one (task type, seed): raw as the caller sends them, validated, encoded."""

    task_type: str
    seed: int
    raw: tuple[dict[str, FeatureValue], ...]
    contexts: tuple[dict[str, FeatureValue], ...]
    X: FloatArray


def make_stream(world: World, config: TaskConfig, rounds: int, seed: int) -> Stream:
    rng = np.random.default_rng([_CONTEXTS, seed, zlib.crc32(config.name.encode())])
    raw = tuple(world.sample_context(config.name, rng) for _ in range(rounds))
    featurized = [config.featurizer.featurize(context) for context in raw]
    return Stream(
        task_type=config.name,
        seed=seed,
        raw=raw,
        contexts=tuple(context for context, _, _ in featurized),
        X=np.stack([x for _, x, _ in featurized]),
    )


def noise(seed: int, t: int) -> np.random.Generator:
    """The generator of round ``t``'s outcome: the same for every learner."""
    return np.random.default_rng([_NOISE, seed, t])


# -- learners -----------------------------------------------------------------------------


class Learner(Protocol):
    def choose(self, t: int) -> int:
        """The arm (an index into ``space.arms``) served in round ``t``."""
        ...

    def learn(self, t: int, arm: int, outcome: Outcome, reward: float) -> None: ...

    def close(self) -> str:
        """Release resources; return a note for the table ('' when there is none)."""
        ...


class ParamloopLearner:
    """The real decision loop: recommend, then record the outcome under its request id."""

    def __init__(self, config: TaskConfig, stream: Stream) -> None:
        self.optimizer = Optimizer([config])
        self.stream = stream
        self.name = config.name
        self._pending: Decision | None = None

    def choose(self, t: int) -> int:
        self._pending = self.optimizer.recommend(self.name, self.stream.raw[t], request_id=str(t))
        return self._pending.arm

    def learn(self, t: int, arm: int, outcome: Outcome, reward: float) -> None:
        if self._pending is None:
            raise RuntimeError("learn() before choose()")
        self.optimizer.record_outcome(self._pending.request_id, outcome)

    def close(self) -> str:
        fallbacks = self.optimizer.stats.fallbacks
        return f"{fallbacks} fallbacks: {self.optimizer.stats.last_error}" if fallbacks else ""


def _vw_name(name: str) -> str:
    # VW's text format reserves ':', '|' and whitespace; keep names readable and safe.
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in name)


def _vw_features(names: Sequence[str], values: FloatArray) -> str:
    return " ".join(
        f"{name}:{value:.6g}" for name, value in zip(names, values, strict=True) if value != 0.0
    )


class VowpalWabbitLearner:
    """``--cb_explore_adf``: one shared line (the context) and one line per feasible arm."""

    def __init__(
        self, vw: ModuleType, args: str, config: TaskConfig, stream: Stream, seed: int
    ) -> None:
        self.workspace = vw.Workspace(args)
        self.arms = config.space.feasible_arms
        arm_names = [_vw_name(name) for name in config.space.feature_names]
        self.actions = [
            "|a " + _vw_features(arm_names, row) for row in config.space.features[self.arms]
        ]
        self.context_names = [_vw_name(name) for name in config.featurizer.columns]
        self.stream = stream
        self.rng = np.random.default_rng([_VW_DRAWS, seed])
        self._lines: list[str] = []
        self._index = 0
        self._probability = 1.0

    def choose(self, t: int) -> int:
        shared = "shared |s " + _vw_features(self.context_names, self.stream.X[t])
        self._lines = [shared, *self.actions]
        pmf = np.asarray(self.workspace.predict(self._lines), dtype=np.float64)
        cumulative = np.cumsum(pmf)
        u = self.rng.random() * cumulative[-1]
        self._index = min(int(np.searchsorted(cumulative, u, side="right")), len(pmf) - 1)
        self._probability = float(pmf[self._index] / cumulative[-1])
        return int(self.arms[self._index])

    def learn(self, t: int, arm: int, outcome: Outcome, reward: float) -> None:
        lines = list(self._lines)
        position = 1 + self._index
        # VW minimizes cost; the action index of an ADF label is ignored.
        lines[position] = f"0:{-reward:.6g}:{self._probability:.6g} {lines[position]}"
        self.workspace.learn(lines)

    def close(self) -> str:
        self.workspace.finish()
        return ""


class MabwiserLearner:
    """Disjoint LinUCB per arm: ``warm`` uniformly random rounds, ``fit``, then ``partial_fit``."""

    def __init__(self, mab: ModuleType, config: TaskConfig, stream: Stream, seed: int, warm: int):
        self.arms = config.space.feasible_arms
        self.model = mab.MAB(
            [int(arm) for arm in self.arms],
            mab.LearningPolicy.LinUCB(alpha=MABWISER_ALPHA),
            seed=seed,
        )
        self.stream = stream
        self.warm = warm
        self.rng = np.random.default_rng([_MAB_DRAWS, seed])
        self._decisions: list[int] = []
        self._rewards: list[float] = []

    def choose(self, t: int) -> int:
        if t < self.warm:
            return int(self.arms[self.rng.integers(len(self.arms))])
        return int(self.model.predict(self.stream.X[t : t + 1]))

    def learn(self, t: int, arm: int, outcome: Outcome, reward: float) -> None:
        if t < self.warm:
            self._decisions.append(arm)
            self._rewards.append(reward)
            if t == self.warm - 1:
                self.model.fit(self._decisions, self._rewards, self.stream.X[: self.warm])
        else:
            self.model.partial_fit([arm], [reward], self.stream.X[t : t + 1])

    def close(self) -> str:
        return ""


def play(
    learner: Learner, world: World, config: TaskConfig, stream: Stream, rounds: int
) -> tuple[IntArray, float]:
    """Serve ``rounds`` rounds; return the arms served and the seconds spent inside the learner."""
    space, name = config.space, config.name
    chosen = np.empty(rounds, dtype=np.intp)
    busy = 0.0
    for t in range(rounds):
        started = time.perf_counter()
        arm = learner.choose(t)
        busy += time.perf_counter() - started
        outcome = world.outcome(name, stream.contexts[t], space.arms[arm], noise(stream.seed, t))
        reward = config.reward(outcome)
        started = time.perf_counter()
        learner.learn(t, arm, outcome, reward)
        busy += time.perf_counter() - started
        chosen[t] = arm
    return chosen, busy


# -- the oracle ---------------------------------------------------------------------------


def _oracle_key(config: TaskConfig, rounds: int, seed: int) -> str:
    """Everything the matrix depends on: world code and profiles, reward, arms, numpy's streams."""
    h = hashlib.blake2b(digest_size=10)
    for part in (
        inspect.getsource(world_module),
        repr(world_module.DEFAULT_TASKS[config.name]),
        repr(world_module.DEFAULT_MODELS),
        repr(config.reward),
        repr([config.space.arms[a] for a in config.space.feasible_arms]),
        repr(config.featurizer.features),
        np.__version__,
        f"{rounds}:{seed}:{_CONTEXTS}",
    ):
        h.update(part.encode())
    return h.hexdigest()


def oracle_values(
    world: World, config: TaskConfig, stream: Stream, cache_dir: Path | None
) -> tuple[FloatArray, bool]:
    """E[r | x_t, a] for every round t and feasible arm a; whether it came from the cache."""
    oracle = Oracle(world, config)
    rounds = len(stream.contexts)
    path = None
    if cache_dir is not None:
        key = _oracle_key(config, rounds, stream.seed)
        path = cache_dir / f"{config.name}-seed{stream.seed}-r{rounds}-{key}.npy"
        if path.exists():
            values = np.load(path)
            checks = np.random.default_rng(rounds).choice(rounds, min(_SPOT_CHECKS, rounds))
            if values.shape == (rounds, len(oracle.arms)) and all(
                np.allclose(values[t], oracle.values(stream.contexts[t]), rtol=0, atol=1e-12)
                for t in checks
            ):
                return np.asarray(values, dtype=np.float64), True
            print(f"warning: stale oracle cache {path}; recomputing", file=sys.stderr)
    values = np.stack([oracle.values(context) for context in stream.contexts])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(partial, values)
        partial.replace(path)
    return values, False


# -- one job: one (task type, seed) -------------------------------------------------------


@dataclass(frozen=True)
class Job:
    task_type: str
    seed: int
    rounds: int
    mabwiser_rounds: int
    mabwiser_warm: int
    vw_args: str
    learners: tuple[str, ...]
    cache_dir: str | None


@dataclass(frozen=True)
class Run:
    """One learner on one stream.  ``curve`` maps a round count to the cumulative regret then."""

    learner: str
    task_type: str
    seed: int
    rounds: int
    regret: float
    curve: dict[int, float]
    seconds: float
    note: str = ""

    @property
    def decisions_per_s(self) -> float:
        return self.rounds / self.seconds if self.seconds > 0 else math.nan


@dataclass(frozen=True)
class JobResult:
    task_type: str
    seed: int
    arms: int
    runs: tuple[Run, ...]
    oracle_seconds: float
    oracle_cached: bool
    mean_best: float
    seconds: float


def checkpoints(rounds: int, extra: Sequence[int] = ()) -> list[int]:
    points = {rounds * i // 10 for i in range(1, 11)} | {n for n in extra if 0 < n <= rounds}
    return sorted(p for p in points if p > 0)


def run_job(job: Job) -> JobResult:
    started = time.perf_counter()
    world = World()
    configs = {
        policy: default_tasks(policy=policy, task_types=[job.task_type])[0]
        for policy in PARAMLOOP_POLICIES
    }
    reference = configs["linucb"]
    stream = make_stream(world, reference, job.rounds, job.seed)
    served: dict[str, tuple[IntArray, float, str]] = {}
    for name in job.learners:
        learner: Learner
        rounds = job.rounds
        if name.startswith("paramloop-"):
            config = configs[name.removeprefix("paramloop-")]
            learner = ParamloopLearner(config, stream)
        elif name == VW:
            vw = importlib.import_module("vowpalwabbit")
            learner = VowpalWabbitLearner(vw, job.vw_args, reference, stream, job.seed)
        elif name == MABWISER:
            mab = importlib.import_module("mabwiser.mab")
            rounds = min(job.rounds, job.mabwiser_rounds)
            warm = min(job.mabwiser_warm, rounds)
            learner = MabwiserLearner(mab, reference, stream, job.seed, warm)
        else:
            raise ValueError(f"unknown learner {name!r}")
        chosen, busy = play(learner, world, reference, stream, rounds)
        served[name] = (chosen, busy, learner.close())

    oracle_started = time.process_time()
    cache = Path(job.cache_dir) if job.cache_dir is not None else None
    values, cached = oracle_values(world, reference, stream, cache)
    oracle_seconds = time.process_time() - oracle_started

    arms = reference.space.feasible_arms
    best = values.max(axis=1)
    points = checkpoints(job.rounds, [job.mabwiser_rounds])

    def run(name: str, gaps: FloatArray, seconds: float, note: str = "") -> Run:
        cumulative = np.cumsum(gaps)
        curve = {p: float(cumulative[p - 1]) for p in points if p <= len(gaps)}
        return Run(
            name, job.task_type, job.seed, len(gaps), float(cumulative[-1]), curve, seconds, note
        )

    runs = []
    for name, (chosen, busy, note) in served.items():
        columns = np.minimum(np.searchsorted(arms, chosen), len(arms) - 1)
        if not np.array_equal(arms[columns], chosen):
            raise RuntimeError(f"{name} served an arm outside the feasible set")
        gaps = best[: len(chosen)] - values[np.arange(len(chosen)), columns]
        runs.append(run(name, gaps, busy, note))
    baseline = int(np.searchsorted(arms, reference.space.baseline_arm))
    runs.append(run(BASELINE, best - values[:, baseline], 0.0))
    runs.append(run(UNIFORM, best - values.mean(axis=1), 0.0))
    return JobResult(
        task_type=job.task_type,
        seed=job.seed,
        arms=len(arms),
        runs=tuple(runs),
        oracle_seconds=oracle_seconds,
        oracle_cached=cached,
        mean_best=float(best.mean()),
        seconds=time.perf_counter() - started,
    )


# -- reporting ----------------------------------------------------------------------------


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(results: Sequence[JobResult], horizon: int) -> dict[str, Any]:
    """Mean ± sd over seeds per (task type, learner), and the paramloop/VW ratios."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for result in results:
        for run in result.runs:
            groups.setdefault((run.task_type, run.learner), []).append(run)
    rows: list[dict[str, Any]] = []
    for (task_type, learner), runs in groups.items():
        regret, sd = _mean_sd([r.regret for r in runs])
        at = [r.curve[horizon] for r in runs if horizon in r.curve]
        seconds = statistics.fmean(r.seconds for r in runs)
        rows.append(
            {
                "task_type": task_type,
                "learner": learner,
                "seeds": len(runs),
                "rounds": runs[0].rounds,
                "regret": regret,
                "regret_sd": sd,
                "regret_per_round": regret / runs[0].rounds,
                f"regret_at_{horizon}": statistics.fmean(at) if at else None,
                "seconds": seconds,
                "decisions_per_s": runs[0].rounds / seconds if seconds > 0 else None,
                "notes": sorted({r.note for r in runs if r.note}),
            }
        )
    by = {(row["task_type"], row["learner"]): row for row in rows}
    ratios: list[dict[str, Any]] = []
    for task_type in dict.fromkeys(row["task_type"] for row in rows):
        vw = by.get((task_type, VW))
        for policy in PARAMLOOP_POLICIES:
            ours = by.get((task_type, f"paramloop-{policy}"))
            if vw is None or ours is None:
                continue
            per_seed = _paired_ratios(results, task_type, f"paramloop-{policy}")
            ratios.append(
                {
                    "task_type": task_type,
                    "learner": f"paramloop-{policy}",
                    "ratio": ours["regret"] / vw["regret"],
                    "per_seed": per_seed,
                    "at_most_vw": ours["regret"] <= vw["regret"],
                }
            )
    return {"rows": rows, "ratios": ratios}


def _paired_ratios(results: Sequence[JobResult], task_type: str, learner: str) -> list[float]:
    out = []
    for result in results:
        if result.task_type != task_type:
            continue
        regrets = {run.learner: run.regret for run in result.runs}
        if learner in regrets and VW in regrets:
            out.append(regrets[learner] / regrets[VW])
    return out


def render(summary: Mapping[str, Any], horizon: int, rounds: int) -> str:
    at = f"regret@{horizon:,}"
    header = (
        f"{'task type':<14} {'learner':<17} {'rounds':>7} {'cum. regret (mean ± sd)':>25} "
        f"{'regret/round':>12} {at:>15} {'learner s':>10} {'decisions/s':>11}"
    )
    lines = [header, "-" * len(header)]
    previous = None
    for row in summary["rows"]:
        if previous is not None and row["task_type"] != previous:
            lines.append("")
        previous = row["task_type"]
        reference = row["learner"] in (BASELINE, UNIFORM)
        seconds = "-" if reference else f"{row['seconds']:.1f}"
        rate = (
            "-" if reference or row["decisions_per_s"] is None else f"{row['decisions_per_s']:,.0f}"
        )
        regret_at = row[f"regret_at_{horizon}"]
        lines.append(
            f"{row['task_type']:<14} {row['learner']:<17} {row['rounds']:>7,} "
            f"{row['regret']:>14.1f} ± {row['regret_sd']:>8.1f} {row['regret_per_round']:>12.5f} "
            f"{'-' if regret_at is None else f'{regret_at:.1f}':>15} {seconds:>10} {rate:>11}"
        )
        for note in row["notes"]:
            lines.append(f"{'':<14} note: {note}")
    if summary["ratios"]:
        lines += [
            "",
            f"paramloop / VW cumulative regret over {rounds:,} rounds (≤ 1 meets the target):",
        ]
        for ratio in summary["ratios"]:
            seeds = ", ".join(f"{r:.2f}" for r in ratio["per_seed"])
            verdict = "≤ VW" if ratio["at_most_vw"] else "> VW"
            lines.append(
                f"  {ratio['task_type']:<14} {ratio['learner']:<17} {ratio['ratio']:6.3f}  "
                f"({verdict}; per seed: {seeds})"
            )
    return "\n".join(lines)


# -- command line -------------------------------------------------------------------------


def _default_cache() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "paramloop" / "bench_regret"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=50_000, help="rounds per stream")
    parser.add_argument("--seeds", type=int, default=2, help="streams per task type (seeds 0..n-1)")
    parser.add_argument(
        "--task-types", default=",".join(DEFAULT_TASK_TYPES), help="comma-separated task types"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--vw-args", default=VW_ARGS, help="Vowpal Wabbit arguments")
    parser.add_argument(
        "--mabwiser-rounds",
        type=int,
        default=1_000,
        help="rounds for MABWiser (its per-round partial_fit touches every arm)",
    )
    parser.add_argument(
        "--mabwiser-warm",
        type=int,
        default=50,
        help="uniformly random rounds before MABWiser's fit",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes, one (task type, seed) stream each",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=_default_cache(), help="where oracle matrices are kept"
    )
    parser.add_argument("--no-cache", action="store_true", help="recompute the oracle matrices")
    parser.add_argument(
        "--learners",
        default=",".join(ALL_LEARNERS),
        help="comma-separated subset of the learners to run",
    )
    return parser


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: present in sys.modules without a spec
        return False


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    task_types = [name.strip() for name in args.task_types.split(",") if name.strip()]
    unknown = sorted(set(task_types) - set(World().task_types))
    if unknown:
        print(f"unknown task types: {', '.join(unknown)}", file=sys.stderr)
        return 2
    if args.rounds < 1 or args.seeds < 1 or args.jobs < 1 or args.mabwiser_rounds < 1:
        print("--rounds, --seeds, --jobs and --mabwiser-rounds must be >= 1", file=sys.stderr)
        return 2

    wanted = [name.strip() for name in args.learners.split(",") if name.strip()]
    if not wanted or sorted(set(wanted) - set(ALL_LEARNERS)):
        print(f"--learners: choose among {', '.join(ALL_LEARNERS)}", file=sys.stderr)
        return 2
    learners = [name for name in ALL_LEARNERS if name in wanted]
    missing = {}
    for name, module in ((VW, "vowpalwabbit"), (MABWISER, "mabwiser")):
        if name in learners and not _installed(module):
            learners.remove(name)
            missing[name] = INSTALL_HINT
    horizon = min(args.rounds, args.mabwiser_rounds)
    # One BLAS thread per worker: the workers already use every core, and threaded BLAS on
    # these small matrices oversubscribes them (paramloop ran 5x slower per round with two).
    for variable in _BLAS_THREADS:
        os.environ.setdefault(variable, "1")
    cache_dir = None if args.no_cache else args.cache_dir

    configs = {name: default_tasks(task_types=[name])[0] for name in task_types}
    policy = configs[task_types[0]].new_policy()
    settings = {
        "rounds": args.rounds,
        "seeds": list(range(args.seeds)),
        "task_types": {name: len(c.space.feasible_arms) for name, c in configs.items()},
        "paramloop": f"{paramloop.__version__}, defaults: linucb {policy.hyperparameters()}, "
        f"squarecb and lints defaults, exploration floor {configs[task_types[0]].effective_exploration}",
        "vw_args": args.vw_args if VW in learners else missing.get(VW, "not run"),
        "mabwiser": (
            f"LinUCB(alpha={MABWISER_ALPHA}), {args.mabwiser_warm} uniform warm-up rounds, "
            f"partial_fit per round, first {horizon:,} rounds only"
            if MABWISER in learners
            else missing.get(MABWISER, "not run")
        ),
        "jobs": args.jobs,
        "blas_threads_per_worker": {v: os.environ[v] for v in _BLAS_THREADS},
        "oracle_cache": str(cache_dir) if cache_dir is not None else "off",
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    print("bench_regret settings:")
    for key, value in settings.items():
        print(f"  {key}: {value}")
    if VW in learners:
        vw = importlib.import_module("vowpalwabbit")
        workspace = vw.Workspace(args.vw_args)
        print(f"  vw effective arguments: {workspace.get_arguments()}")
        workspace.finish()
    for name, hint in missing.items():
        print(f"  {name}: {hint} — skipped")
    sys.stdout.flush()

    jobs = [
        Job(
            task_type=name,
            seed=seed,
            rounds=args.rounds,
            mabwiser_rounds=args.mabwiser_rounds,
            mabwiser_warm=args.mabwiser_warm,
            vw_args=args.vw_args,
            learners=tuple(learners),
            cache_dir=None if cache_dir is None else str(cache_dir),
        )
        for name in task_types
        for seed in range(args.seeds)
    ]
    # Longest first (the oracle's cost grows with the arms), so the workers finish together.
    jobs.sort(key=lambda job: -len(configs[job.task_type].space.feasible_arms))
    started = time.perf_counter()
    results = run_jobs(run_job, jobs, args.jobs, _progress)
    wall = time.perf_counter() - started
    order = {name: i for i, name in enumerate(task_types)}
    results.sort(key=lambda r: (order[r.task_type], r.seed))

    summary = summarize(results, horizon)
    learner_order = [*learners, BASELINE, UNIFORM]
    summary["rows"].sort(
        key=lambda row: (order[row["task_type"]], learner_order.index(row["learner"]))
    )
    print()
    print(render(summary, horizon, args.rounds))
    oracle = sum(r.oracle_seconds for r in results)
    cached = sum(r.oracle_cached for r in results)
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    print()
    print(
        f"wall time {wall:.0f} s with {args.jobs} worker(s) (load average now {load}); "
        f"oracle {oracle:.0f} CPU-s "
        f"({cached}/{len(results)} matrices from the cache). 'learner s' is the time spent inside "
        "each learner per stream (choose + learn), mean over seeds."
    )
    if args.json is not None:
        head = {"settings": settings, "wall_seconds": wall, "summary": summary}
        write_results(args.json, head, results)
    return 0


def _progress(result: JobResult, done: int, total: int, started: float) -> None:
    parts = ", ".join(
        f"{run.learner} {run.regret:.1f}" for run in result.runs if run.learner not in (UNIFORM,)
    )
    print(
        f"[{done}/{total} {time.perf_counter() - started:5.0f}s] {result.task_type} seed "
        f"{result.seed}: {parts} (job {result.seconds:.0f}s, oracle {result.oracle_seconds:.0f}s"
        f"{' cached' if result.oracle_cached else ''})",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())


def table(results: Mapping[str, Any]) -> str:
    """The summary as markdown, for bench/run_all.py (``results`` is this script's ``--json``)."""
    rows = results["summary"]["rows"]
    vw = {r["task_type"]: r["regret"] for r in rows if r["learner"] == "vw-squarecb"}
    lines = [
        "| task type | learner | rounds | cumulative regret (mean ± sd) | regret @1,000 | decisions/s | ÷ VW |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = ""
        if (
            r["learner"].startswith("paramloop")
            and r["task_type"] in vw
            and r["rounds"] == max(x["rounds"] for x in rows)
        ):
            ratio = f"{r['regret'] / vw[r['task_type']]:.2f}"
        speed = "-" if r.get("decisions_per_s") is None else f"{r['decisions_per_s']:,.0f}"
        lines.append(
            f"| {r['task_type']} | {r['learner']} | {r['rounds']:,} | {r['regret']:.1f} ± {r['regret_sd']:.1f} "
            f"| {r['regret_at_1000']:.1f} | {speed} | {ratio} |"
        )
    return "\n".join(lines)
