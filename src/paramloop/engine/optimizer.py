"""The decision loop: recommend, log, learn from late outcomes, snapshot, restore.

:class:`Optimizer` is the only place that wires the pure core (spaces,
featurizers, rewards, policies) to a store and a clock.  It is thread-safe:
each task type has its own lock around its policy, and the store serializes
its writes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from paramloop.core.assignment import Group, split_distribution
from paramloop.core.budget import Reservation, Spend
from paramloop.core.policies import Choice, Policy, decide, derive_seed, restore_policy
from paramloop.core.policies.base import FloatArray
from paramloop.engine.budgets import BudgetManager
from paramloop.engine.config import TaskConfig
from paramloop.engine.rollout import RolloutController
from paramloop.errors import (
    BudgetExhaustedError,
    ConflictingOutcomeError,
    DuplicateRequestError,
    InputError,
    LateOutcomeError,
    OutcomeError,
    SnapshotError,
    StoreUnavailableError,
    UnknownRequestError,
    UnknownTaskTypeError,
)
from paramloop.store.base import DecisionLog, MeasuredRow
from paramloop.store.memory import MemoryDecisionLog
from paramloop.types import (
    Decision,
    FeatureValue,
    Outcome,
    Params,
    PolicySnapshot,
    RecordedOutcome,
)

#: The most one call with these parameters can spend, given its context (for budget reservations).
SpendCap = Callable[[Params, Mapping[str, FeatureValue]], Spend]

#: ``max_tokens`` of a call when its parameters set none.
UNBOUNDED_COMPLETION_TOKENS = 4_096


def token_cap(params: Params, context: Mapping[str, FeatureValue]) -> Spend:
    """The default spend cap: prompt tokens (the context's ``prompt_tokens``) + ``max_tokens``.

    Costs nothing: give the Optimizer a ``spend_cap`` that prices tokens when a task
    type has a cost budget.
    """
    prompt = context.get("prompt_tokens", 0)
    prompt_tokens = float(prompt) if isinstance(prompt, int | float) else 0.0
    completion = params.max_tokens if params.max_tokens is not None else UNBOUNDED_COMPLETION_TOKENS
    return Spend(prompt_tokens + completion, 0.0)


log = logging.getLogger("paramloop.engine")

_MAX_REQUEST_ID = 200
_SEED_LIMIT = 2**63
#: A reservation expires this long after its wait window closes: an outcome accepted just
#: inside the window (on any replica) settles it before another replica's sweep charges it.
RESERVATION_GRACE_S = 1.0
#: Decisions kept in memory until their outcome is learned (then dropped), so recording it
#: needs no read of the store; past this many waiting, the oldest are read back instead.
#: (Kept for ever, 100,000 decisions cost ~200 MB and slowed every garbage collection.)
_CACHE_SIZE = 20_000
_REPLAY_CHUNK = 5_000


@dataclass(frozen=True, slots=True)
class ArmDistribution:
    """The probability of every feasible arm of a task type in one context."""

    task_type: str
    arms: tuple[int, ...]
    params: tuple[Params, ...]
    probabilities: tuple[float, ...]

    def of(self, arm: int) -> float:
        """The probability of ``arm`` (0 for an arm that is not feasible)."""
        try:
            return self.probabilities[self.arms.index(arm)]
        except ValueError:
            return 0.0


@dataclass
class LoopStats:
    """Counters of one optimizer, for status pages and metrics."""

    decisions: int = 0
    outcomes: int = 0
    duplicate_outcomes: int = 0
    default_rewards: int = 0
    measured_outcomes: int = 0
    fallbacks: int = 0
    last_error: str | None = None
    replayed: dict[str, int] = field(default_factory=dict)


@dataclass
class _TaskState:
    config: TaskConfig
    policy: Policy
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Every outcome with seq <= this watermark is in the policy.
    last_outcome_seq: int = 0
    #: Outcomes above the watermark this optimizer recorded (and learned) itself;
    #: other replicas' outcomes in between are learned when the watermark catches up.
    own_seqs: set[int] = field(default_factory=set)
    updates_since_snapshot: int = 0


class Optimizer:
    """Recommends parameters per request and learns from their outcomes.

    This is the learner; the whole loop, with the rollout guardrails (a new task
    type starts in shadow), budgets and alerts, is :func:`paramloop.build_loop`.
    Without a ``rollout`` controller every request gets the policy's choice.

    ``store`` defaults to an in-memory log; pass a SQLite or PostgreSQL store
    for durability.  On start the latest policy snapshot of each task type is
    restored and the outcomes logged after it are replayed, so an acknowledged
    outcome is never forgotten by the policy.  ``clock`` returns epoch seconds.

    >>> from paramloop.core.features import NumericFeature
    >>> from paramloop.engine.config import task
    >>> from paramloop.types import Params, Outcome
    >>> opt = Optimizer([task("summarize", baseline=Params("m", temperature=0.3, max_tokens=256),
    ...                       grids={"temperature": [0.1, 0.3, 0.5]},
    ...                       features=[NumericFeature("prompt_tokens", log=True)])])
    >>> d = opt.recommend("summarize", {"prompt_tokens": 900}, request_id="r1")
    >>> d.params.temperature in (0.1, 0.3, 0.5), 0 < d.propensity <= 1
    (True, True)
    >>> opt.record_outcome("r1", Outcome(quality=0.9, latency_ms=800)).source
    'observed'
    """

    def __init__(
        self,
        tasks: Iterable[TaskConfig] | Mapping[str, TaskConfig],
        store: DecisionLog | None = None,
        *,
        clock: Callable[[], float] = time.time,
        restore: bool = True,
        rollout: RolloutController | None = None,
        budgets: BudgetManager | None = None,
        spend_cap: SpendCap | None = None,
    ) -> None:
        configs = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
        names = [config.name for config in configs]
        if len(set(names)) != len(names):
            raise InputError("tasks", f"task type names must be unique, got {names}")
        self.store: DecisionLog = store if store is not None else MemoryDecisionLog()
        self.clock = clock
        self.rollout = rollout
        self.budgets = budgets
        self.spend_cap = spend_cap if spend_cap is not None else token_cap
        self.stats = LoopStats()
        self._tasks = {config.name: _TaskState(config, config.new_policy()) for config in configs}
        # Recent decisions with their context vectors, so an outcome needs no store read
        # and no re-encoding of its context.
        self._recent: OrderedDict[str, tuple[Decision, FloatArray]] = OrderedDict()
        self._recent_lock = threading.Lock()
        if restore:
            for state in self._tasks.values():
                self._restore(state)

    # -- public API ---------------------------------------------------------------------

    @property
    def task_types(self) -> tuple[str, ...]:
        return tuple(self._tasks)

    def config(self, task_type: str) -> TaskConfig:
        return self._state(task_type).config

    def policy(self, task_type: str) -> Policy:
        return self._state(task_type).policy

    def recommend(
        self,
        task_type: str,
        context: Mapping[str, object],
        *,
        request_id: str | None = None,
        seed: int | None = None,
        unit_id: str | None = None,
    ) -> Decision:
        """Choose the parameters of one call, log the decision, and return it.

        With a :class:`~paramloop.engine.rollout.RolloutController`, the unit
        (``unit_id``, default the request id: a user id keeps a user in one
        group) is bucketed into treatment (the policy's choice is served) or
        control (the baseline is served, the policy's choice is logged as
        ``intended_arm``), and the logged propensity is the split's mixture
        ``t·π(a|x) + (1 − t)·1[a = baseline]``.  Without one, every request is
        treatment (``t = 1``).

        Raises ``UnknownTaskTypeError``, ``FeatureError`` (a context feature is
        wrong), ``InputError`` (request id or seed) or ``DuplicateRequestError``.
        An internal failure (policy or store) does not raise: the baseline comes
        back with ``origin="fallback:baseline"`` and ``error`` set.
        """
        state = self._state(task_type)
        config = state.config
        features, x, fp = config.featurizer.featurize(context)
        request_id = self._request_id(request_id)
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < _SEED_LIMIT
        ):
            raise InputError("seed", f"must be an integer in [0, 2**63), got {seed!r}")
        if unit_id is not None and (not isinstance(unit_id, str) or not unit_id):
            raise InputError("unit_id", f"must be a non-empty string, got {unit_id!r}")
        now = self.clock()
        phase = "general"
        try:
            route = None
            if self.rollout is not None:
                route = self.rollout.route(task_type, unit_id or request_id)
                phase = str(route.phase)
            budgeted = self.budgets is not None and config.budget is not None
            caps, choice, policy, revision = self._choose(
                state, features, x, fp, seed if seed is not None else request_id
            )
            arm, propensity, intended = choice.arm, choice.propensity, None
            origin = "baseline" if policy.name == "baseline" else f"bandit:{policy.label}"
            if route is not None and route.share < 1.0:
                baseline = config.space.baseline_arm
                if route.group is Group.TREATMENT:
                    propensity = route.share * choice.propensity + (1.0 - route.share) * (
                        arm == baseline
                    )
                else:
                    arm, intended, origin = baseline, choice.arm, "baseline"
                    propensity = route.share * choice.probability_of(baseline) + (1.0 - route.share)
                propensity = min(1.0, propensity)  # t·π + (1 − t) can round a hair above 1
            decision = Decision(
                request_id=request_id,
                task_type=task_type,
                arm=arm,
                params=config.space.params(arm, seed=seed),
                propensity=propensity,
                confidence=choice.confidence,
                policy=policy.label,
                policy_revision=revision,
                origin=origin,
                context=features,
                context_fingerprint=fp,
                timestamp=now,
                seed=seed,
                phase=phase,
                intended_arm=intended,
            )
            reservation = None
            if budgeted:
                decision, reservation = self._reserve(config, decision, caps)  # type: ignore[arg-type]
        except Exception as exc:  # fail safe: any internal failure serves the baseline, visibly
            return self._fallback(config, request_id, features, fp, now, seed, exc, phase)
        try:
            self.store.append_decision(decision)
        except Exception as exc:
            if reservation is not None:  # the call will not happen as decided: free its spend
                self._release(config.name, reservation)
            if isinstance(exc, DuplicateRequestError):
                raise
            return self._fallback(config, request_id, features, fp, now, seed, exc, phase)
        self._remember(decision, x)
        self.stats.decisions += 1
        if self.rollout is not None:
            try:
                self.rollout.observe_decision(decision)
            except Exception as exc:  # the guardrails failing must not fail the request
                self._failed("rollout", exc)
        return decision

    def probabilities(
        self,
        task_type: str,
        context: Mapping[str, object],
        *,
        request_id: str | None = None,
        seed: int | None = None,
        unit_id: str | None = None,
        rollout_split: bool = True,
    ) -> ArmDistribution:
        """The distribution the next decision for this context would be drawn from; no side effects.

        It is the policy's distribution over the feasible arms (budgets applied),
        exploration floor included, mixed with the rollout's split as
        :meth:`recommend` logs it: the propensity a decision logs is this
        distribution's probability of its arm.  Monte Carlo policies (Thompson
        sampling) draw with a generator seeded from ``seed`` or ``request_id``, as
        :meth:`recommend` does; give the same one to get the same numbers.
        With ``rollout_split=False``, the policy's own distribution (what it would
        serve at 100 % treatment: the candidate a shadow test compares).
        """
        state = self._state(task_type)
        config = state.config
        features, x, fp = config.featurizer.featurize(context)
        key: str | int = seed if seed is not None else (request_id or "")
        _, choice, _, _ = self._choose(state, features, x, fp, key)
        assert choice.arms is not None and choice.weights is not None
        probs = choice.weights / choice.weights.sum()
        if self.rollout is not None and rollout_split:
            route = self.rollout.route(task_type, unit_id or request_id or "")
            if route.share < 1.0:
                baseline = choice.arms == config.space.baseline_arm
                probs = split_distribution(probs, baseline, route.share)
        arms = tuple(int(a) for a in choice.arms)
        return ArmDistribution(
            task_type=task_type,
            arms=arms,
            params=tuple(config.space.params(a) for a in arms),
            probabilities=tuple(float(p) for p in probs),
        )

    def log_decision(
        self,
        task_type: str,
        context: Mapping[str, object],
        arm: int | Params,
        propensity: float,
        *,
        request_id: str | None = None,
        outcome: Outcome | None = None,
        policy: str = "external",
        timestamp: float | None = None,
    ) -> Decision:
        """Log a decision another system made, with the probability it was made with.

        For warm-starting from an existing log and for learning and evaluating
        offline from it.  ``arm`` is an arm index or its parameters.  With an
        ``outcome``, it is joined at once (whatever the wait window) and the
        policy learns from it, as from any outcome; evaluation reads it like a
        logged decision of its own.  Raises ``InputError`` (propensity not
        in (0, 1], an arm the space does not have), ``FeatureError`` or
        ``OutcomeError``; nothing is stored then.
        """
        state = self._state(task_type)
        config = state.config
        features, x, fp = config.featurizer.featurize(context)
        index = self.arm_index(task_type, arm)
        if (
            isinstance(propensity, bool)
            or not isinstance(propensity, int | float)
            or not 0.0 < propensity <= 1.0
        ):
            raise InputError("propensity", f"must be in (0, 1], got {propensity!r}")
        if not isinstance(policy, str) or not policy:
            raise InputError("policy", "must be a non-empty string")
        request_id = self._request_id(request_id)
        now = self.clock() if timestamp is None else float(timestamp)
        # Built before anything is stored: a reward outside the range raises here.
        recorded = None if outcome is None else _observed(config, request_id, outcome, now)
        decision = Decision(
            request_id=request_id,
            task_type=task_type,
            arm=index,
            params=config.space.params(index),
            propensity=float(propensity),
            confidence=0.0,
            policy=policy,
            policy_revision=0,
            origin=f"external:{policy}",
            context=features,
            context_fingerprint=fp,
            timestamp=now,
        )
        self.store.append_decision(decision)
        self._remember(decision, x)
        self.stats.decisions += 1
        if recorded is not None:
            self._learn(state, decision, recorded)
        return decision

    def record_outcome(self, request_id: str, outcome: Outcome) -> RecordedOutcome:
        """Join ``outcome`` to its decision, turn it into a reward, and learn from it.

        Idempotent: recording the same outcome again returns the stored one and
        learns nothing.  Raises ``UnknownRequestError``, ``LateOutcomeError``
        (outside the wait window), ``ConflictingOutcomeError`` (a different
        outcome was recorded) or ``OutcomeError``; the store is unchanged then.
        """
        if not isinstance(outcome, Outcome):
            raise OutcomeError("(outcome)", f"must be an Outcome, got {type(outcome).__name__}")
        decision = self._decision(request_id)
        state = self._state(decision.task_type)
        config = state.config
        now = self.clock()
        waited = now - decision.timestamp
        recorded = _observed(config, request_id, outcome, now)
        if waited > config.reward_wait_s:
            existing = self.store.get_outcome(request_id)
            if existing is not None and existing.outcome == outcome:
                return existing
            raise LateOutcomeError(request_id, waited, config.reward_wait_s)
        return self._learn(state, decision, recorded)[0]

    def expire(self, now: float | None = None, *, limit: int = 10_000) -> int:
        """Record outcomes for decisions whose wait window closed without one.

        A decision with a stored measurement (``DecisionLog.save_measurement``:
        what a proxy measured of the call while it waited for feedback) gets
        that measurement as its outcome, without quality.  Any other gets the
        task type's ``default_reward``, or stays without an outcome when there
        is none.  Returns how many outcomes were recorded.
        """
        now = self.clock() if now is None else now
        count = 0
        for state in self._tasks.values():
            config = state.config
            measured = self.store.pending_measurements(
                config.name, now - config.reward_wait_s, limit
            )
            count += self._expire_measured(state, measured, now)
            if config.default_reward is None or len(measured) >= limit:
                continue  # a full batch of measurements: defaults wait for the next call
            for decision in self.store.pending_decisions(
                config.name, now - config.reward_wait_s, limit
            ):
                recorded = RecordedOutcome(
                    request_id=decision.request_id,
                    task_type=config.name,
                    outcome=Outcome(reward=config.default_reward),
                    reward=config.default_reward,
                    reward_version=config.reward.version,
                    source="default",
                    timestamp=now,
                )
                try:
                    _, new = self._learn(state, decision, recorded)
                except ConflictingOutcomeError:
                    continue  # the real outcome arrived meanwhile (another thread or replica): it wins
                count += new
                self.stats.default_rewards += new
        # Last: the measurements and defaults above settled what they could at their measured
        # spend; what is still reserved past its window is charged in full.
        self._expire_reservations()
        return count

    def _expire_measured(self, state: _TaskState, rows: list[MeasuredRow], now: float) -> int:
        config = state.config
        count = 0
        for decision, measured in rows:
            recorded = _observed(config, decision.request_id, measured, now)
            try:
                _, new = self._learn(state, decision, recorded)
            except ConflictingOutcomeError:
                continue  # the feedback arrived meanwhile: it wins
            count += new
        self.stats.measured_outcomes += count
        return count

    def sync(self) -> int:
        """Learn the outcomes other replicas (or a replayed spool) logged since the last sync.

        Replicas share one log: each learns its own outcomes as they come and
        everyone else's here, in log order, exactly once (policy state is
        sufficient statistics, so the order of additions does not matter).  The
        service calls this every ``sync_interval_s``.  Returns how many outcomes
        were learned.
        """
        learned = 0
        for state in self._tasks.values():
            with state.lock:
                new = self._catch_up(state)
                state.updates_since_snapshot += new
            learned += new
        if self.rollout is not None:
            try:  # the rollouts other replicas changed, and their outcomes for the SLO monitors
                self.rollout.refresh()
                self.rollout.sync()
            except Exception as exc:
                self._failed("rollout", exc)
        return learned

    def save_snapshots(self) -> None:
        """Snapshot every task type's policy (also done every ``snapshot_every`` updates) and
        the rollouts' SLO monitors now."""
        for state in self._tasks.values():
            with state.lock:
                self._snapshot(state)
        if self.rollout is not None:
            try:
                self.rollout.save_snapshots()
            except Exception as exc:
                self._failed("rollout", exc)

    def close(self) -> None:
        """Snapshot the policies and close the store."""
        self.save_snapshots()
        self.store.close()

    # -- internals ----------------------------------------------------------------------

    def _state(self, task_type: str) -> _TaskState:
        try:
            return self._tasks[task_type]
        except KeyError:
            raise UnknownTaskTypeError(str(task_type), sorted(self._tasks)) from None

    def _choose(
        self,
        state: _TaskState,
        features: Mapping[str, FeatureValue],
        x: FloatArray,
        fp: int,
        key: str | int,
    ) -> tuple[dict[int, Spend] | None, Choice, Policy, int]:
        """The feasible arms (budgets applied) and the policy's floored choice among them."""
        config = state.config
        arms, caps = config.space.feasible_arms, None
        if self.budgets is not None and config.budget is not None:
            caps = {int(a): self.spend_cap(config.space.arms[a], features) for a in arms}
            allowed = self.budgets.feasible(
                config.name, list(caps), caps, config.space.baseline_arm
            )
            arms = np.asarray(allowed.arms, dtype=np.intp)
        with state.lock:
            policy = state.policy
            revision = policy.revision
            choice = decide(
                policy, x, arms, derive_seed(key, fp, revision), config.effective_exploration
            )
        return caps, choice, policy, revision

    def arm_index(self, task_type: str, arm: int | Params) -> int:
        """The index of ``arm`` (an index or parameters) in the task type's space, validated."""
        config = self._state(task_type).config
        space = config.space
        if isinstance(arm, Params):
            try:
                return space.arms.index(replace(arm, seed=None))
            except ValueError:
                raise InputError("arm", f"{arm.to_dict()} is not an arm of {config.name}") from None
        if isinstance(arm, bool) or not isinstance(arm, int) or not 0 <= arm < space.n_arms:
            raise InputError(
                "arm", f"must be an arm index in [0, {space.n_arms}) or Params, got {arm!r}"
            )
        return arm

    def _request_id(self, request_id: str | None) -> str:
        if request_id is None:
            return os.urandom(16).hex()  # 128 random bits, like uuid4, at a quarter of the cost
        if (
            not isinstance(request_id, str)
            or not request_id
            or len(request_id) > _MAX_REQUEST_ID
            or "\x00" in request_id
        ):
            raise InputError(
                "request_id",
                f"must be a non-empty string of at most {_MAX_REQUEST_ID} characters, without NUL",
            )
        if request_id in self._recent:
            raise DuplicateRequestError(request_id)
        return request_id

    def decision(self, request_id: str) -> Decision:
        """The logged decision of ``request_id`` (``UnknownRequestError`` when there is none)."""
        return self._decision(request_id)

    def _decision(self, request_id: str) -> Decision:
        if not isinstance(request_id, str) or not request_id:
            raise InputError("request_id", "must be a non-empty string")
        cached = self._recent.get(request_id)
        decision = cached[0] if cached is not None else self.store.get_decision(request_id)
        if decision is None:
            raise UnknownRequestError(request_id)
        return decision

    def _remember(self, decision: Decision, x: FloatArray) -> None:
        with self._recent_lock:
            self._recent[decision.request_id] = (decision, x)
            if len(self._recent) > _CACHE_SIZE:
                self._recent.popitem(last=False)

    def _vector(self, config: TaskConfig, decision: Decision) -> FloatArray:
        cached = self._recent.get(decision.request_id)
        if cached is not None and cached[0] is decision:
            return cached[1]
        return config.featurizer.transform(decision.context)

    def _learn(
        self, state: _TaskState, decision: Decision, recorded: RecordedOutcome
    ) -> tuple[RecordedOutcome, bool]:
        x = self._vector(state.config, decision)
        # Store and update under the task's lock so outcome sequence order is update order,
        # which makes "replay everything after the snapshot's last seq" exact.
        with state.lock:
            stored, new = self.store.attach_outcome(recorded)
            if not new:
                self.stats.duplicate_outcomes += 1
                return stored, False
            # seq 0: the outcome waits in a spool (the store was down); it is learned when
            # it reaches the log, by sync(), like another replica's.
            if stored.seq:
                if decision.applied:
                    state.policy.update(x, decision.arm, state.config.reward.unit(stored.reward))
                state.own_seqs.add(stored.seq)
                state.updates_since_snapshot += 1
                if state.updates_since_snapshot >= state.config.snapshot_every:
                    self._snapshot(state)
        self.stats.outcomes += 1
        with self._recent_lock:  # learned: the decision need not stay in memory
            self._recent.pop(decision.request_id, None)
        if self.budgets is not None and state.config.budget is not None:
            outcome = stored.outcome
            # A default reward means nothing was measured: charge what was reserved.
            actual = None if stored.source == "default" else _spend_of(outcome)
            try:
                self.budgets.settle_request(decision.task_type, decision.request_id, actual)
            except Exception as exc:  # the outcome is recorded; the budget shows the failure
                self._failed("budget", exc)
        if self.rollout is not None:
            try:
                self.rollout.observe_outcome(decision, stored)
            except Exception as exc:  # an outcome is never refused because a guardrail failed
                self._failed("rollout", exc)
        return stored, True

    def _snapshot(self, state: _TaskState) -> None:
        if state.updates_since_snapshot == 0 and state.policy.revision == 0:
            return
        try:
            self._catch_up(state)
            self.store.save_snapshot(
                PolicySnapshot(
                    task_type=state.config.name,
                    policy=state.policy.label,
                    revision=state.policy.revision,
                    last_outcome_seq=state.last_outcome_seq,
                    state=state.policy.snapshot(),
                    timestamp=self.clock(),
                )
            )
            state.updates_since_snapshot = 0
        except Exception as exc:  # a failed snapshot is retried at the next interval
            self._failed("snapshot", exc)

    def _restore(self, state: _TaskState) -> None:
        config = state.config
        snapshot = self.store.latest_snapshot(config.name)
        if snapshot is not None:
            try:
                restored = restore_policy(snapshot.state, config.design)
                fresh = state.policy
                if (restored.label, restored.hyperparameters()) != (
                    fresh.label,
                    fresh.hyperparameters(),
                ):
                    raise SnapshotError(
                        f"the snapshot is {restored.label} {restored.hyperparameters()}, the configuration "
                        f"asks for {fresh.label} {fresh.hyperparameters()}"
                    )
                state.policy = restored
                state.last_outcome_seq = snapshot.last_outcome_seq
            except SnapshotError as exc:
                log.warning(
                    "task %s: snapshot not restored (%s); relearning from the log", config.name, exc
                )
                state.policy = config.new_policy()
                state.last_outcome_seq = 0
        self.stats.replayed[config.name] = self._catch_up(state)

    def _catch_up(self, state: _TaskState) -> int:
        """Advance the watermark over the log, learning every outcome not learned yet.

        Outcomes this optimizer recorded itself were learned when recorded; any
        other (another replica's, or every one after a restart) is learned now.
        Returns how many outcomes were learned.
        """
        config = state.config
        learned = 0
        while True:
            rows = self.store.outcomes_since(config.name, state.last_outcome_seq, _REPLAY_CHUNK)
            if not rows:
                break
            for decision, recorded in rows:
                if recorded.seq in state.own_seqs:
                    state.own_seqs.discard(recorded.seq)
                elif decision.applied:
                    x = config.featurizer.transform(decision.context)
                    state.policy.update(x, decision.arm, config.reward.unit(recorded.reward))
                    learned += 1
                state.last_outcome_seq = recorded.seq
        return learned

    def _expire_reservations(self) -> None:
        """Charge the reservations whose wait window closed unsettled (see
        :meth:`BudgetManager.expire`: the stored outcome's spend, else in full).

        They live in the shared budget state, so this charges every replica's,
        a crashed one's included.
        """
        if self.budgets is None:
            return
        for state in self._tasks.values():
            if state.config.budget is None:
                continue
            try:
                self.budgets.expire(state.config.name, measured=self._measured_spend)
            except Exception as exc:
                self._failed("budget", exc)

    def _measured_spend(self, request_id: str) -> Spend | None:
        """What a call spent by its stored observed outcome (``None``: none is stored)."""
        recorded = self.store.get_outcome(request_id)
        if recorded is None or recorded.source == "default":
            return None
        return _spend_of(recorded.outcome)

    def _release(self, task_type: str, reservation: Reservation) -> None:
        assert self.budgets is not None
        try:
            self.budgets.release(task_type, reservation)
        except Exception as exc:  # left open, it is charged when its window closes
            self._failed("budget", exc)

    def _reserve(
        self, config: TaskConfig, decision: Decision, caps: Mapping[int, Spend]
    ) -> tuple[Decision, Reservation | None]:
        """Reserve the call's maximum spend; when it no longer fits, serve the baseline.

        The baseline is served without a reservation: budgets limit what paramloop
        experiments with, not production traffic.
        """
        assert self.budgets is not None
        try:
            reservation = self.budgets.reserve(
                config.name,
                decision.arm,
                caps[decision.arm],
                request_id=decision.request_id,
                expires=decision.timestamp + config.reward_wait_s + RESERVATION_GRACE_S,
            )
        except BudgetExhaustedError as exc:
            baseline = config.space.baseline_arm
            served = replace(
                decision,
                arm=baseline,
                params=config.space.params(baseline, seed=decision.seed),
                propensity=1.0,
                origin="budget:baseline",
                intended_arm=decision.arm,
                error=str(exc),
            )
            return served, None
        return decision, reservation

    def _fallback(
        self,
        config: TaskConfig,
        request_id: str,
        features: dict[str, FeatureValue],
        fp: int,
        now: float,
        seed: int | None,
        exc: Exception,
        phase: str = "general",
    ) -> Decision:
        self._failed("recommend", exc)
        return Decision(
            request_id=request_id,
            task_type=config.name,
            arm=config.space.baseline_arm,
            params=config.space.params(config.space.baseline_arm, seed=seed),
            propensity=1.0,
            confidence=0.0,
            policy="baseline@fallback",
            policy_revision=0,
            origin="fallback:baseline",
            context=features,
            context_fingerprint=fp,
            timestamp=now,
            seed=seed,
            phase=phase,
            applied=True,
            error=f"{type(exc).__name__}: {exc}",
        )

    def _failed(self, where: str, exc: Exception) -> None:
        self.stats.fallbacks += where == "recommend"
        self.stats.last_error = f"{where}: {type(exc).__name__}: {exc}"
        # An unavailable store is an outage, not a bug: its message says all, once per call.
        trace = None if isinstance(exc, StoreUnavailableError) else exc
        log.error("paramloop %s failed: %s", where, exc, exc_info=trace)


def _observed(config: TaskConfig, request_id: str, outcome: Outcome, now: float) -> RecordedOutcome:
    """``outcome`` as observed for ``request_id``, with its reward (``OutcomeError`` if out of range)."""
    return RecordedOutcome(
        request_id=request_id,
        task_type=config.name,
        outcome=outcome,
        reward=config.reward(outcome),
        reward_version=config.reward.version,
        source="observed",
        timestamp=now,
    )


def _spend_of(outcome: Outcome) -> Spend:
    """What a call spent by its outcome (unmeasured tokens or cost count as 0)."""
    return Spend(float(outcome.total_tokens or 0), float(outcome.cost or 0.0))
