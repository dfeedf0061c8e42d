"""Offline evaluation of a candidate policy from the decision log.

Reads a task type's logged decisions from the store in chunks (memory holds
per-round numbers, never rows), builds the candidate's and the baseline's
target distributions on the logged contexts, fits the outcome model with
cross-fitting, and hands everything to the pure estimators in
:mod:`paramloop.core.ope`.  Decisions without an outcome are excluded; a task
type with a ``default_reward`` has them rewarded by :meth:`Optimizer.expire`,
so they arrive here as ordinary outcomes with ``source="default"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson

from paramloop.core.ope import (
    Comparison,
    Estimate,
    Estimator,
    LoggedBandit,
    compare_all,
    make_estimator,
)
from paramloop.core.ope.diagnostics import UNSUPPORTED_MASS
from paramloop.core.ope.evaluate import IntervalMethod
from paramloop.core.policies import Policy, decide, derive_seed, make_policy, restore_policy
from paramloop.core.policies.base import FloatArray, IntArray
from paramloop.engine.config import TaskConfig
from paramloop.engine.outcome_model import CrossFitted, fit_outcome_model
from paramloop.errors import EvaluationError, FeatureError, InputError
from paramloop.store.base import (
    DecisionLog,
    EvaluationRow,
    LoggedRow,
    LogSummary,
    evaluation_row,
    summarize_rows,
)
from paramloop.store.records import dumps
from paramloop.types import Params

#: The estimators evaluated when none are named.
DEFAULT_ESTIMATORS = ("ips", "snips", "dm", "dr", "sndr", "switch-dr")
#: The estimator whose paired lower bound decides the improvement gate.
PRIMARY_ESTIMATOR = "sndr"

Target = Literal["snapshot", "baseline", "learned"]
IntervalChoice = Literal["auto", "bootstrap", "clt"]
#: ``interval="auto"`` bootstraps while rows × resamples stays within this many draws
#: (about 10 s of resampling on one core), and uses the CLT interval beyond.
AUTO_BOOTSTRAP_DRAWS = 2e9


@dataclass(frozen=True)
class LoggedTask:
    """A task type's logged rounds as arrays (one row per decision with an outcome)."""

    task_type: str
    contexts: FloatArray
    actions: IntArray
    propensities: FloatArray
    rewards: FloatArray
    timestamps: FloatArray
    explored: npt.NDArray[np.bool_]
    logged: int
    without_outcome: int
    defaulted: int
    violations: int
    policies: tuple[str, ...]

    @property
    def n(self) -> int:
        return int(self.rewards.shape[0])

    def rows(self, index: IntArray) -> LoggedTask:
        return LoggedTask(
            task_type=self.task_type,
            contexts=self.contexts[index],
            actions=self.actions[index],
            propensities=self.propensities[index],
            rewards=self.rewards[index],
            timestamps=self.timestamps[index],
            explored=self.explored[index],
            logged=len(index),
            without_outcome=0,
            defaulted=0,
            violations=self.violations,
            policies=self.policies,
        )


def read_log(
    store: DecisionLog | None,
    config: TaskConfig,
    *,
    start: float | None = None,
    end: float | None = None,
    chunk_size: int = 50_000,
    progress: Callable[[int], None] | None = None,
    rows: Iterable[list[LoggedRow]] | None = None,
) -> LoggedTask:
    """The logged rounds of ``config``'s task type in ``[start, end)``, streamed in chunks.

    ``rows`` reads decision objects from elsewhere (an export:
    :func:`paramloop.engine.export.read_export`) instead of ``store``; the window
    still applies.  From a store, the rows arrive as plain tuples of the applied
    decisions with an outcome, and each chunk becomes columns at once (a context
    logged many times is parsed and featurized once); the counts, the served arms
    and the policies come from one summary query (:meth:`DecisionLog.summarize_log`).
    """
    reward = config.reward
    limits = (reward.max_latency_ms, reward.max_tokens, reward.max_cost)
    if rows is None:
        if store is None:
            raise InputError("store", "give a store or rows to read the log from")
        summary = store.summarize_log(
            config.name,
            start,
            end,
            max_latency_ms=limits[0],
            max_tokens=limits[1],
            max_cost=limits[2],
        )
        chunks: Iterable[list[EvaluationRow]] = store.iter_evaluation_rows(
            config.name, start, end, chunk_size
        )
    else:
        summaries: list[LogSummary] = []
        chunks = _summarized(rows, start, end, limits, summaries)
    parts: list[_Chunk] = []
    arms = _ArmCheck(config)
    for chunk in chunks:
        if chunk:
            parts.append(_read_chunk(config, chunk, arms))
        if progress is not None:
            progress(len(chunk))
    if rows is not None:
        summary = _merged(summaries)
    if arms.wrong:
        count = sum(arms.wrong.values())
        shown = "; ".join(f"arm {arm} logged as {text}" for arm, text in list(arms.wrong)[:3])
        raise EvaluationError(
            "arms",
            f"{count} logged decisions name an arm the configured space of {config.name!r} does "
            f"not have (the space changed since they were logged): {shown}",
        )
    if not parts:
        raise EvaluationError(
            "window",
            f"no logged decision of task type {config.name!r} with an outcome in the window "
            f"({summary.decisions} decisions, {summary.decisions - summary.outcomes} without an outcome)",
        )
    return LoggedTask(
        task_type=config.name,
        contexts=np.vstack([part.contexts for part in parts]),
        actions=np.concatenate([part.actions for part in parts]),
        propensities=np.concatenate([part.propensities for part in parts]),
        rewards=np.concatenate([part.rewards for part in parts]),
        timestamps=np.concatenate([part.timestamps for part in parts]),
        explored=np.concatenate([part.explored for part in parts]),
        logged=summary.decisions,
        without_outcome=summary.decisions - summary.outcomes,
        defaulted=summary.defaulted,
        violations=summary.violations,
        policies=tuple(sorted({name for part in parts for name in part.policies})),
    )


def _summarized(
    rows: Iterable[list[LoggedRow]],
    start: float | None,
    end: float | None,
    limits: tuple[float | None, float | None, float | None],
    summaries: list[LogSummary],
) -> Iterator[list[EvaluationRow]]:
    """Decision objects as evaluation rows, chunk by chunk, summarizing each chunk on the way."""
    for chunk in rows:
        window = [
            (d, o)
            for d, o in chunk
            if (start is None or d.timestamp >= start) and (end is None or d.timestamp < end)
        ]
        summaries.append(summarize_rows(window, *limits))
        yield [evaluation_row(d, o) for d, o in window if o is not None and d.applied]


def _merged(summaries: Sequence[LogSummary]) -> LogSummary:
    return LogSummary(
        decisions=sum(p.decisions for p in summaries),
        outcomes=sum(p.outcomes for p in summaries),
        defaulted=sum(p.defaulted for p in summaries),
        violations=sum(p.violations for p in summaries),
    )


class _ArmCheck:
    """Whether each logged arm index still means the parameters it was logged with.

    Decisions of one arm differ only in their seed, and the stored JSON puts the
    seed between the same two parts for every decision of an arm: with the seed
    blanked, a chunk holds a handful of distinct texts, each compared once with
    today's text for its arm, and parsed and compared as :class:`Params` when it
    differs (so another serialization of the same parameters still matches).
    """

    def __init__(self, config: TaskConfig) -> None:
        self.space = config.space.arms
        self.parts: dict[int, tuple[str, str]] = {}
        for arm, params in enumerate(self.space):
            text = dumps(replace(params, seed=0).to_dict())
            head, _, tail = text.partition('"seed":0')
            self.parts[arm] = (head + '"seed":', tail)
        self.wrong: dict[tuple[int, str], int] = {}
        self._parsed: dict[tuple[int, str], bool] = {}

    def check(self, arms: Sequence[int], texts: Sequence[str]) -> None:
        # Blank every seed in one regular-expression pass over the chunk (stored JSON never
        # holds a raw newline), then look at each distinct (arm, text) once.
        blanked = _SEED.sub('"seed":_', "\n".join(texts)).split("\n")
        counts: dict[tuple[int, str], int] = {}
        for key in zip(arms, blanked, strict=True):
            counts[key] = counts.get(key, 0) + 1
        for (arm, text), n in counts.items():
            key = (arm, text)
            matches = self._parsed.get(key)
            if matches is None:
                matches = self._parsed[key] = self._matches(arm, text)
            if not matches:
                self.wrong[key] = self.wrong.get(key, 0) + n

    def _matches(self, arm: int, blanked: str) -> bool:
        expected = self.parts.get(arm)
        if expected is not None and blanked == expected[0] + "_" + expected[1]:
            return True
        if not 0 <= arm < len(self.space):
            return False
        data = orjson.loads(blanked.replace('"seed":_', '"seed":null'))
        return bool(replace(Params.from_dict(data), seed=None) == self.space[arm])


#: A seed in stored parameters' JSON: an integer or null after the ``seed`` key.
_SEED = re.compile(r'"seed":(?:-?\d+|null)')


@dataclass(frozen=True)
class _Chunk:
    """One chunk of the log, as the columns evaluation keeps."""

    contexts: FloatArray
    actions: IntArray
    propensities: FloatArray
    rewards: FloatArray
    timestamps: FloatArray
    explored: npt.NDArray[np.bool_]
    policies: frozenset[str]


def _read_chunk(config: TaskConfig, chunk: list[EvaluationRow], check: _ArmCheck) -> _Chunk:
    timestamps, arms, propensities, contexts, rewards, params, policies = zip(*chunk, strict=True)
    check.check(arms, params)
    # Parse and featurize each distinct context once: logs repeat contexts.
    distinct = list(dict.fromkeys(contexts))
    parsed = list(map(orjson.loads, distinct))
    try:
        vectors = config.featurizer.transform_many(parsed)
    except FeatureError as exc:
        raise EvaluationError(
            "context", f"logged contexts do not fit the featurizer: {exc}"
        ) from None
    if len(distinct) < len(contexts):
        index = {text: i for i, text in enumerate(distinct)}
        vectors = vectors[np.fromiter(map(index.__getitem__, contexts), np.intp, len(contexts))]
    propensity = np.array(propensities, dtype=np.float64)
    return _Chunk(
        contexts=vectors,
        actions=np.array(arms, dtype=np.intp),
        propensities=propensity,
        rewards=np.array(rewards, dtype=np.float64),
        timestamps=np.array(timestamps, dtype=np.float64),
        # A logged propensity below 1 comes from a distribution over every feasible arm
        # (a bandit's exploration floor, or a rollout split mixing it in); a baseline or
        # fallback decision has propensity 1.
        explored=propensity < 1.0,
        policies=frozenset(policies),
    )


def target_distribution(
    policy: Policy, config: TaskConfig, contexts: FloatArray, offset: int = 0
) -> FloatArray:
    """(n, K): the distribution the policy would serve each logged context with, floor included.

    Monte Carlo policies draw round ``offset + i`` from a generator seeded per
    round, as :func:`decide` does.
    """
    arms = config.space.feasible_arms
    exploration = 0.0 if policy.name == "baseline" else config.effective_exploration
    revision = policy.revision

    def rng(i: int) -> np.random.Generator:
        return np.random.Generator(np.random.SFC64(derive_seed(offset + i, 0, revision)))

    out = np.zeros((contexts.shape[0], config.space.n_arms))
    probs = policy.probabilities_many(contexts, arms, rng if policy.stochastic else None)
    out[:, arms] = (1.0 - exploration) * probs + exploration / len(arms)
    return out


#: Training rows per cross-fitting fold of the outcome model: beyond a few hundred thousand
#: rows a linear model over (arm, context) has long converged, and the fit would dominate.
OUTCOME_MODEL_ROWS = 250_000

#: Rows scored at a time by :func:`collapse`: bounds its (rows, K) intermediates.
COLLAPSE_CHUNK = 16_384


def collapse(
    policy: Policy, config: TaskConfig, log: LoggedTask, model: CrossFitted
) -> tuple[LoggedBandit, FloatArray, FloatArray, FloatArray]:
    """The log with the candidate and the baseline as targets, in three columns instead of K.

    Every estimator reads a round through four numbers per target: its
    probability of the logged arm (the weight), ``Σ_a π(a|x) q̂(x, a)`` (the
    direct part), ``q̂`` of the logged arm (the residual) and the probability it
    puts on arms the logger could not choose (support).  So each round becomes
    three columns, scored ``COLLAPSE_CHUNK`` rows at a time over the feasible
    arms only and never stored at full width: the logged arm, the candidate's
    other arms and the baseline's other arms.  The candidate puts
    ``[π(aᵢ), 1 − π(aᵢ), 0]`` on them, the baseline ``[π₀(aᵢ), 0, 1 − π₀(aᵢ)]``;
    the predicted reward of an "other" column is its target's mean prediction
    over those arms, and it is supported exactly when all of them are.  Every
    estimate, interval and diagnostic is the one the full (n, K) arrays give;
    memory is O(n) instead of O(n·K).

    Support is as in :func:`logging_support`: an exploring bandit decision
    could choose any feasible arm, any other decision only its own.

    Returns the log (target: the candidate), both targets and the predictions.
    """
    n = log.n
    arms = config.space.feasible_arms
    column = np.full(config.space.n_arms, -1, dtype=np.intp)
    column[arms] = np.arange(len(arms))
    base_arm = config.space.baseline_arm
    base_feasible = column[base_arm] >= 0
    exploration = 0.0 if policy.name == "baseline" else config.effective_exploration
    explored = log.explored if config.keeps_support else np.zeros(n, dtype=bool)
    revision = policy.revision
    cand_logged, cand_other = np.empty(n), np.empty(n)
    base_other, q_logged = np.empty(n), np.empty(n)
    for start in range(0, n, COLLAPSE_CHUNK):
        rows = np.arange(start, min(n, start + COLLAPSE_CHUNK))
        X, a = log.contexts[rows], log.actions[rows]

        def rng(i: int, offset: int = start) -> np.random.Generator:
            return np.random.Generator(np.random.SFC64(derive_seed(offset + i, 0, revision)))

        probs = policy.probabilities_many(X, arms, rng if policy.stochastic else None)
        target = (1.0 - exploration) * probs + exploration / len(arms)
        j = column[a]
        here = np.arange(len(rows))
        p = np.where(j >= 0, target[here, np.maximum(j, 0)], 0.0)
        q = model.predict(X, rows, arms)
        direct = np.einsum("ij,ij->i", target, q)
        # q̂ of the logged arm: read from the feasible arms' predictions; an arm that is
        # no longer feasible (the trust region moved) is predicted on its own.
        q_a = q[here, np.maximum(j, 0)]
        gone = np.flatnonzero(j < 0)
        if gone.size:
            q_a[gone] = _logged_predictions(model, X[gone], rows[gone], a[gone])
        cand_logged[rows], q_logged[rows] = p, q_a
        cand_other[rows] = _other(direct, p, q_a)
        p0 = (a == base_arm).astype(np.float64)
        base_other[rows] = _other(model.predict(X, rows, np.array([base_arm]))[:, 0], p0, q_a)
    base_logged = (log.actions == base_arm).astype(np.float64)
    # Off the logged arm, an exploring round supports every feasible arm; another round none.
    cand_supported = explored | (cand_logged >= 1.0 - UNSUPPORTED_MASS)
    base_supported = (explored & base_feasible) | (base_logged == 1.0)
    zeros = np.zeros(n)
    candidate = np.column_stack([cand_logged, 1.0 - cand_logged, zeros])
    baseline = np.column_stack([base_logged, zeros, 1.0 - base_logged])
    predicted = np.column_stack([q_logged, cand_other, base_other])
    support = np.column_stack([np.ones(n, dtype=bool), cand_supported, base_supported])
    data = LoggedBandit(
        log.rewards, np.zeros(n, dtype=np.intp), log.propensities, candidate, support=support
    )
    return data, candidate, baseline, predicted


def _logged_predictions(
    model: CrossFitted, X: FloatArray, rows: IntArray, a: IntArray
) -> FloatArray:
    """q̂ of each row's own logged arm."""
    out = np.empty(len(rows))
    for arm in np.unique(a):
        here = a == arm
        out[here] = model.predict(X[here], rows[here], np.array([arm]))[:, 0]
    return out


def _other(direct: FloatArray, p: FloatArray, q_a: FloatArray) -> FloatArray:
    """The mean prediction over the arms other than the logged one, weighted by the target."""
    rest = 1.0 - p
    out = np.zeros_like(direct)
    np.divide(direct - p * q_a, rest, out=out, where=rest > 0.0)
    return out


def logging_support(config: TaskConfig, log: LoggedTask) -> npt.NDArray[np.bool_]:
    """(n, K): the arms the logging policy could have chosen in each logged round.

    A bandit decision mixes ``exploration / k`` into every feasible arm, so its
    support is the feasible set (taken from the *current* configuration: a window
    spanning a change of the space or trust region is judged by today's); a
    decision with propensity 1 (baseline, fallback) supports only its own arm.
    """
    support = np.zeros((log.n, config.space.n_arms), dtype=bool)
    if config.keeps_support:
        support[np.ix_(np.flatnonzero(log.explored), config.space.feasible_arms)] = True
    support[np.arange(log.n), log.actions] = True
    return support


def baseline_distribution(config: TaskConfig, n: int) -> FloatArray:
    out = np.zeros((n, config.space.n_arms))
    out[:, config.space.baseline_arm] = 1.0
    return out


@dataclass(frozen=True)
class Evaluation:
    """The candidate's and the baseline's estimates and their paired differences."""

    task_type: str
    candidate: str
    target: Target
    n: int
    logged: int
    without_outcome: int
    defaulted: int
    train_rows: int
    logged_violations: int
    candidate_violations: int
    reproducible: tuple[int, int]
    logging_policies: tuple[str, ...]
    estimates: tuple[Estimate, ...]
    baseline: tuple[Estimate, ...]
    comparisons: tuple[Comparison, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def comparison(self, estimator: str) -> Comparison | None:
        for comparison in self.comparisons:
            if comparison.candidate.estimator == estimator:
                return comparison
        return None

    def to_dict(self) -> dict[str, Any]:
        def estimate(e: Estimate) -> dict[str, Any]:
            return {k: getattr(e, k) for k in e.__dataclass_fields__}

        return {
            "task_type": self.task_type,
            "candidate": self.candidate,
            "target": self.target,
            "n": self.n,
            "logged": self.logged,
            "without_outcome": self.without_outcome,
            "defaulted": self.defaulted,
            "train_rows": self.train_rows,
            "logged_violations": self.logged_violations,
            "candidate_violations": self.candidate_violations,
            "reproducible": list(self.reproducible),
            "logging_policies": list(self.logging_policies),
            "estimates": [estimate(e) for e in self.estimates],
            "baseline": [estimate(e) for e in self.baseline],
            "comparisons": [
                {
                    "estimator": c.candidate.estimator,
                    "difference": c.difference,
                    "low": c.low,
                    "high": c.high,
                    "lower_bound": c.lower_bound,
                    "upper_bound": c.upper_bound,
                    "verdict": c.verdict,
                }
                for c in self.comparisons
            ],
            "notes": list(self.notes),
        }


def evaluate(
    store: DecisionLog | None,
    config: TaskConfig,
    *,
    target: Target = "snapshot",
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    start: float | None = None,
    end: float | None = None,
    train_share: float = 0.5,
    resamples: int = 10_000,
    interval: IntervalChoice = "auto",
    alpha: float = 0.05,
    min_ess: float = 100.0,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    rows: Iterable[list[LoggedRow]] | None = None,
) -> Evaluation:
    """Estimate a candidate's value against the baseline's from the log of one task type.

    ``target``: ``snapshot`` (the latest policy snapshot in the store),
    ``baseline`` (the baseline evaluated against itself: a sanity check), or
    ``learned`` (a fresh policy of the configured kind trained on the oldest
    ``train_share`` of the window and evaluated on the rest).

    ``interval``: ``bootstrap`` (percentile, ``resamples`` row resamples),
    ``clt`` (analytic, delta method for the self-normalized estimators), or
    ``auto``: the bootstrap while ``n × resamples`` stays within
    :data:`AUTO_BOOTSTRAP_DRAWS`, the CLT beyond (a note says which).  At that
    size the bootstrap distribution of these means is normal to well within
    the Monte Carlo error of the resamples themselves.
    """
    if target not in ("snapshot", "baseline", "learned"):
        raise InputError("target", f"must be snapshot, baseline or learned; got {target!r}")
    if not 0.0 < train_share < 1.0:
        raise InputError("train_share", f"must be in (0, 1), got {train_share!r}")
    if interval not in ("auto", "bootstrap", "clt"):
        raise InputError("interval", f"must be auto, bootstrap or clt; got {interval!r}")
    chosen = [_estimator(name) for name in estimators]
    log = read_log(store, config, start=start, end=end, progress=progress, rows=rows)
    notes: list[str] = []
    if log.without_outcome:
        notes.append(f"{log.without_outcome} decisions without an outcome were excluded")
    if log.defaulted:
        notes.append(
            f"{log.defaulted} decisions carry the task's default reward (no outcome arrived in time)"
        )
    train_rows = 0
    if target == "snapshot":
        snapshot = None if store is None else store.latest_snapshot(config.name)
        if snapshot is None:
            raise EvaluationError(
                "candidate", f"the store holds no policy snapshot of task type {config.name!r}"
            )
        policy = restore_policy(snapshot.state, config.design)
    elif target == "baseline":
        policy = _baseline_policy(config)
    else:
        order = np.argsort(log.timestamps, kind="stable")
        cut = int(len(order) * train_share)
        if cut < 1 or cut >= log.n:
            raise EvaluationError(
                "train_share", f"leaves no rows to train or to evaluate among {log.n}"
            )
        policy = config.new_policy()
        train = log.rows(order[:cut])
        for x, arm, reward in zip(train.contexts, train.actions, train.rewards, strict=True):
            policy.update(x, int(arm), float(reward))
        log = log.rows(order[cut:])
        train_rows = cut
        notes.append(f"trained on the oldest {cut} rounds, evaluated on the newest {log.n}")
    method: IntervalMethod = (
        ("bootstrap" if log.n * resamples <= AUTO_BOOTSTRAP_DRAWS else "clt")
        if interval == "auto"
        else interval
    )
    if interval == "auto" and method == "clt":
        notes.append(
            f"CLT intervals: {log.n:,} rows x {resamples:,} resamples is beyond the bootstrap's "
            f"budget of {AUTO_BOOTSTRAP_DRAWS:,.0f} draws"
        )
    model = fit_outcome_model(log.contexts, log.actions, log.rewards, config.space.n_arms, rng=seed)
    data, candidate, baseline, predicted = collapse(policy, config, log, model)
    rng = np.random.default_rng(seed)
    # One paired bootstrap gives both sides' estimates and their difference.
    comparisons = compare_all(
        data,
        candidate,
        baseline,
        chosen,
        predicted,
        rng=rng,
        resamples=resamples,
        interval=method,
        alpha=alpha,
        min_ess=min_ess,
    )
    return Evaluation(
        task_type=config.name,
        candidate=policy.label,
        target=target,
        n=log.n,
        logged=log.logged,
        without_outcome=log.without_outcome,
        defaulted=log.defaulted,
        train_rows=train_rows,
        logged_violations=log.violations,
        candidate_violations=_candidate_violations(policy, config, log.contexts),
        reproducible=_replay(policy, config, log.contexts),
        logging_policies=log.policies,
        estimates=tuple(c.candidate for c in comparisons),
        baseline=tuple(c.baseline for c in comparisons),
        comparisons=comparisons,
        notes=tuple(notes),
    )


#: Switch-DR's weight threshold when none is given: above it, a round uses the outcome model alone.
SWITCH_TAU = 10.0


def _estimator(name: str) -> Estimator:
    """An estimator by name; ``switch-dr`` takes ``:tau`` (``switch-dr:25``), default :data:`SWITCH_TAU`."""
    base, _, argument = name.partition(":")
    if base == "switch-dr":
        try:
            tau = float(argument) if argument else SWITCH_TAU
        except ValueError:
            raise InputError(
                "estimators", f"switch-dr:<tau> needs a number, got {argument!r}"
            ) from None
        return make_estimator(base, tau=tau)
    if argument:
        raise InputError("estimators", f"{base} takes no argument, got {name!r}")
    return make_estimator(base)


def _baseline_policy(config: TaskConfig) -> Policy:
    return make_policy("baseline", config.design)


def _candidate_violations(
    policy: Policy, config: TaskConfig, contexts: FloatArray, sample: int = 200
) -> int:
    """Recommendations of the candidate on logged contexts that break the space's constraints."""
    arms = config.space.feasible_arms
    bad = 0
    for i, x in enumerate(contexts[:sample]):
        choice = decide(
            policy, x, arms, derive_seed(i, 1, policy.revision), config.effective_exploration
        )
        bad += not config.space.satisfies(config.space.params(choice.arm))
    return bad


def _replay(
    policy: Policy, config: TaskConfig, contexts: FloatArray, sample: int = 100
) -> tuple[int, int]:
    """Same seed, context and revision twice: how many of ``sample`` decisions agree."""
    arms = config.space.feasible_arms
    matches = 0
    rows = contexts[:sample]
    for i, x in enumerate(rows):
        seed = derive_seed(i, 2, policy.revision)
        first = decide(policy, x, arms, seed, config.effective_exploration)
        again = decide(policy, x, arms, seed, config.effective_exploration)
        matches += first == again
    return matches, len(rows)
