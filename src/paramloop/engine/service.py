"""The service's logic, without HTTP: decisions for proxied calls, cost, measurements, feedback.

:class:`Service` wraps an :class:`~paramloop.engine.Optimizer` with what an
OpenAI-compatible proxy needs and a plain library call does not:

* :meth:`Service.plan` turns a caller's chat-completion body into the body sent
  upstream: the optimizer's decision for the task type (per-model rules
  applied), or the caller's own parameters when the caller pinned one
  paramloop manages and the task type respects pins (:class:`ProxyOptions`).
  Which units get the policy's choice and which the baseline is the rollout
  controller's business (phase and traffic split, inside
  :meth:`Optimizer.recommend`), so every logged propensity is the optimizer's.
* :meth:`Service.measure` and :meth:`Service.finish` turn what was measured of
  the call (latency, tokens, cost from a :class:`PriceTable`, error) into the
  outcome, at once (``feedback = "none"``) or, for task types that await
  feedback, into a stored measurement that :meth:`Service.feedback` joins with
  the quality later, or that :meth:`Optimizer.expire` records alone when the
  reward wait window closes.
* :meth:`Service.record_outcomes` records a batch all or nothing: every item is
  checked before the first is written.
* :class:`Activity` keeps the recent decisions and rewards of this process for
  the status pages (convergence, parameter evolution, logs).

Nothing here imports a web framework; the HTTP edge parses, calls, renders.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import orjson

from paramloop.core.budget import Spend
from paramloop.core.space import NUMERIC_DIMS
from paramloop.engine.optimizer import Optimizer, token_cap
from paramloop.engine.variants import PromptVariant
from paramloop.errors import (
    ConfigError,
    ConflictingOutcomeError,
    DuplicateRequestError,
    InputError,
    LateOutcomeError,
    StoreUnavailableError,
)
from paramloop.types import Decision, FeatureValue, Outcome, Params, RecordedOutcome

FeedbackMode = Literal["none", "await"]
PinnedMode = Literal["respect", "override"]
FEEDBACK_MODES: tuple[FeedbackMode, ...] = ("none", "await")
PINNED_MODES: tuple[PinnedMode, ...] = ("respect", "override")

#: Request fields that carry a parameter paramloop may tune (``max_completion_tokens``
#: is ``max_tokens`` under another name).
TUNED_FIELDS: Mapping[str, str] = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}
#: How a proxied request ended up being served: ``optimized`` (the policy's choice,
#: logged), ``control`` (the baseline in place of the policy's choice, logged with it
#: as ``intended_arm``: a control unit, shadow, a rolled-back or frozen rollout, a
#: budget that refused the choice), ``pinned`` and ``disabled`` (as sent, unlogged),
#: ``fallback`` (the baseline, unlogged: the decision could not be logged) and
#: ``fail_open`` (as sent: paramloop failed).
ProxyMode = Literal["optimized", "control", "pinned", "disabled", "fallback", "fail_open"]

_RECENT = 2_000  # decisions kept per task type for the status pages


@dataclass(frozen=True, slots=True)
class ProxyOptions:
    """How the proxy treats one task type.

    ``feedback``: ``"none"`` records the measured outcome as soon as the call
    ends; ``"await"`` stores it as a measurement and records the outcome when
    feedback arrives (``POST /v1/feedback``) or the reward wait window closes.
    ``pinned``: when the caller sets a parameter paramloop manages for this task
    type, ``"respect"`` forwards the request as the caller sent it (no decision
    is logged: an arm restricted to the caller's values would need its own
    exact propensity), ``"override"`` serves paramloop's parameters instead.
    """

    feedback: FeedbackMode = "none"
    pinned: PinnedMode = "respect"

    def __post_init__(self) -> None:
        if self.feedback not in FEEDBACK_MODES:
            raise ConfigError("feedback", f"must be one of {FEEDBACK_MODES}, got {self.feedback!r}")
        if self.pinned not in PINNED_MODES:
            raise ConfigError("pinned", f"must be one of {PINNED_MODES}, got {self.pinned!r}")


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million prompt (input) and completion (output) tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def __post_init__(self) -> None:
        for name in ("input_per_mtok", "output_per_mtok"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigError(name, f"must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Prices per model; a model without a price has no cost (``None``), not a cost of 0.

    >>> PriceTable({"m": Price(0.15, 0.60)}).cost("m", 1_000, 500)
    0.00045
    >>> PriceTable({}).cost("m", 1_000, 500) is None
    True
    """

    prices: Mapping[str, Price] = field(default_factory=dict)

    def cost(
        self, model: str, prompt_tokens: int | None, completion_tokens: int | None
    ) -> float | None:
        price = self.prices.get(model)
        if price is None or (prompt_tokens is None and completion_tokens is None):
            return None
        dollars = (prompt_tokens or 0) * price.input_per_mtok + (
            completion_tokens or 0
        ) * price.output_per_mtok
        return round(dollars / 1e6, 12)

    def spend_cap(self, params: Params, context: Mapping[str, FeatureValue]) -> Spend:
        """The most one call can spend: prompt tokens + ``max_tokens``, priced (for budgets).

        >>> PriceTable({"m": Price(1.0, 2.0)}).spend_cap(Params("m", max_tokens=500), {"prompt_tokens": 1000})
        Spend(tokens=1500.0, cost=0.002)
        """
        tokens = token_cap(params, context)
        prompt = context.get("prompt_tokens", 0)
        prompt_tokens = int(prompt) if isinstance(prompt, int | float) else 0
        cost = self.cost(params.model, prompt_tokens, int(tokens.tokens) - prompt_tokens)
        return Spend(tokens.tokens, cost or 0.0)


@dataclass(frozen=True, slots=True)
class ProxyPlan:
    """What to send upstream for one proxied request, and why.

    ``decision`` is ``None`` when the request goes out as the caller sent it
    (``mode`` says why); ``pinned`` lists the managed fields the caller set.
    """

    request_id: str
    task_type: str
    body: dict[str, Any]
    mode: ProxyMode
    decision: Decision | None = None
    pinned: tuple[str, ...] = ()

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))


@dataclass(slots=True)
class _Served:
    request_id: str
    timestamp: float
    arm: int
    params: Params
    propensity: float
    confidence: float
    origin: str
    phase: str
    intended_arm: int | None
    reward: float | None = None


class Activity:
    """The recent decisions of this process and their rewards, per task type (bounded)."""

    def __init__(self, size: int = _RECENT) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._recent: dict[str, deque[_Served]] = {}
        self._by_id: OrderedDict[str, _Served] = OrderedDict()

    def decided(self, decision: Decision) -> None:
        served = _Served(
            decision.request_id,
            decision.timestamp,
            decision.arm,
            decision.params,
            decision.propensity,
            decision.confidence,
            decision.origin,
            decision.phase,
            decision.intended_arm,
        )
        with self._lock:
            self._recent.setdefault(decision.task_type, deque(maxlen=self._size)).append(served)
            self._by_id[decision.request_id] = served
            while len(self._by_id) > self._size * max(len(self._recent), 1):
                self._by_id.popitem(last=False)

    def rewarded(self, request_id: str, reward: float) -> None:
        with self._lock:
            served = self._by_id.get(request_id)
            if served is not None:
                served.reward = reward

    def recent(self, task_type: str) -> list[_Served]:
        with self._lock:
            return list(self._recent.get(task_type, ()))


class Service:
    """The optimizer behind the HTTP service (decision API and proxy).

    ``proxy`` holds per-task-type :class:`ProxyOptions` (default: none awaited,
    pins respected); with ``enabled`` false every proxied request goes out as
    the caller sent it and nothing is logged.  The traffic split is the
    optimizer's rollout controller's (give the optimizer one: :func:`~paramloop.engine.loop.build_loop`).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        proxy: Mapping[str, ProxyOptions] | None = None,
        prices: PriceTable | None = None,
        enabled: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        options = dict(proxy or {})
        unknown = sorted(set(options) - set(optimizer.task_types))
        if unknown:
            raise ConfigError(
                f"service.tasks.{unknown[0]}",
                f"no such task type; configured: {', '.join(optimizer.task_types)}",
            )
        self.optimizer = optimizer
        self.options = {name: options.get(name, ProxyOptions()) for name in optimizer.task_types}
        self.prices = prices if prices is not None else PriceTable()
        self.enabled = enabled
        self.clock = clock
        self.activity = Activity()
        self._managed = {name: _managed_fields(optimizer, name) for name in optimizer.task_types}

    # -- the decision API --------------------------------------------------------------

    def recommend(
        self,
        task_type: str,
        context: Mapping[str, object],
        *,
        request_id: str | None = None,
        seed: int | None = None,
        unit_id: str | None = None,
    ) -> Decision:
        """As :meth:`Optimizer.recommend`, remembered for the status pages.

        A retry is answered, not refused: when ``request_id`` was decided before
        for the same task type, context and seed (the caller lost the answer),
        the stored decision comes back.  With anything different it is a
        ``DuplicateRequestError``.
        """
        try:
            decision = self.optimizer.recommend(
                task_type, context, request_id=request_id, seed=seed, unit_id=unit_id
            )
        except DuplicateRequestError:
            assert request_id is not None
            stored = self.optimizer.decision(request_id)
            _, _, fingerprint = self.optimizer.config(task_type).featurizer.featurize(context)
            if (stored.task_type, stored.context_fingerprint, stored.seed) != (
                task_type,
                fingerprint,
                seed,
            ):
                raise DuplicateRequestError(request_id, different_body=True) from None
            return stored
        self.activity.decided(decision)
        return decision

    def baseline(
        self, task_type: str, context: Mapping[str, object], *, request_id: str | None = None
    ) -> Decision:
        """The baseline as an unlogged decision: what is served while optimization is off.

        The context is validated as for :meth:`recommend`; nothing is written, so
        no outcome can be recorded for it.
        """
        config = self.optimizer.config(task_type)
        features, _, fp = config.featurizer.featurize(context)
        arm = config.space.baseline_arm
        return Decision(
            request_id=request_id or os.urandom(16).hex(),
            task_type=task_type,
            arm=arm,
            params=config.space.params(arm),
            propensity=1.0,
            confidence=0.0,
            policy="baseline@disabled",
            policy_revision=0,
            origin="disabled:baseline",
            context=features,
            context_fingerprint=fp,
            timestamp=self.clock(),
        )

    def check_outcome(self, request_id: str, outcome: Outcome) -> None:
        """Raise what :meth:`Optimizer.record_outcome` would, without writing anything.

        While the store is unavailable (outcomes are spooled), an outcome that
        conflicts with one recorded before the outage is found at replay, where
        the first one recorded wins.
        """
        decision = self.optimizer.decision(request_id)
        config = self.optimizer.config(decision.task_type)
        config.reward(outcome)  # an explicit reward out of range
        try:
            existing = self.optimizer.store.get_outcome(request_id)
        except StoreUnavailableError:
            existing = None
        if existing is not None:
            if existing.outcome != outcome:
                raise ConflictingOutcomeError(request_id)
            return
        waited = self.clock() - decision.timestamp
        if waited > config.reward_wait_s:
            raise LateOutcomeError(request_id, waited, config.reward_wait_s)

    def record_outcomes(self, items: Sequence[tuple[str, Outcome]]) -> list[RecordedOutcome]:
        """Record outcomes, all or none: every item is checked before the first is written.

        Two items for one request id must carry the same outcome.  Raises what
        :meth:`Optimizer.record_outcome` raises, with ``index`` set on the error
        when the batch has more than one item.
        """
        first: dict[str, Outcome] = {}
        for index, (request_id, outcome) in enumerate(items):
            try:
                if request_id in first:
                    if first[request_id] != outcome:
                        raise ConflictingOutcomeError(request_id)
                    continue
                first[request_id] = outcome
                self.check_outcome(request_id, outcome)
            except Exception as exc:
                if len(items) > 1:
                    exc.add_note(f"outcomes[{index}]")
                raise
        recorded = [self.optimizer.record_outcome(rid, outcome) for rid, outcome in items]
        for stored in recorded:
            self.activity.rewarded(stored.request_id, stored.reward)
        return recorded

    # -- the proxy ---------------------------------------------------------------------

    def plan(
        self,
        task_type: str,
        context: Mapping[str, object],
        body: Mapping[str, Any],
        *,
        request_id: str,
        unit_id: str | None = None,
    ) -> ProxyPlan:
        """The upstream body of a proxied chat completion, with its decision.

        ``body`` is the caller's request without paramloop's own fields;
        ``unit_id`` (default: the request id) is what the rollout buckets into
        treatment or control.  Input errors (unknown task type, a bad context)
        raise; so does anything that fails inside, which the caller answers by
        forwarding ``body`` as it is (fail-open).
        """
        self.optimizer.config(task_type)  # raises UnknownTaskTypeError
        options, managed = self.options[task_type], self._managed[task_type]
        pinned = tuple(
            name
            for name, dimension in TUNED_FIELDS.items()
            if dimension in managed and body.get(name) is not None
        )
        as_sent = dict(body)
        if not self.enabled:
            return ProxyPlan(request_id, task_type, as_sent, "disabled", pinned=pinned)
        if pinned and options.pinned == "respect":
            return ProxyPlan(request_id, task_type, as_sent, "pinned", pinned=pinned)
        full = self.context_of(task_type, context, body)
        decision = self.recommend(task_type, full, request_id=request_id, unit_id=unit_id)
        variant = self.optimizer.config(task_type).variant(decision.params.prompt_variant)
        if not decision.logged:  # nothing to record an outcome against
            body = upstream_body(body, decision.params, managed, variant)
            return ProxyPlan(request_id, task_type, body, "fallback", pinned=pinned)
        return ProxyPlan(
            request_id,
            task_type,
            upstream_body(body, decision.params, managed, variant),
            "optimized" if decision.intended_arm is None else "control",
            decision=decision,
            pinned=pinned,
        )

    def context_of(
        self, task_type: str, context: Mapping[str, object], body: Mapping[str, Any]
    ) -> dict[str, object]:
        """The caller's context, plus what the request itself says when the task declares it.

        ``model_name`` is the model the caller asked for, and ``prompt_tokens`` an
        estimate (characters / 4) of the messages, unless the caller gave them.
        """
        declared = {f.name for f in self.optimizer.config(task_type).featurizer.features}
        full = dict(context)
        if "model_name" in declared and "model_name" not in full and body.get("model"):
            full["model_name"] = str(body["model"])
        if "prompt_tokens" in declared and "prompt_tokens" not in full:
            full["prompt_tokens"] = prompt_characters(body.get("messages")) // 4
        return full

    def measure(
        self,
        model: str,
        *,
        latency_ms: float,
        usage: Mapping[str, Any] | None,
        error: bool,
    ) -> Outcome:
        """What was measured of one upstream call, priced."""
        prompt = _tokens(usage, "prompt_tokens")
        completion = _tokens(usage, "completion_tokens")
        return Outcome(
            latency_ms=max(0.0, float(latency_ms)),
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost=self.prices.cost(model, prompt, completion),
            error=error,
        )

    def finish(self, plan: ProxyPlan, measured: Outcome) -> RecordedOutcome | None:
        """Record the measured outcome (``feedback = "none"``) or keep it for the feedback.

        Returns the recorded outcome, or ``None`` when the measurement waits.
        """
        decision = plan.decision
        if decision is None:
            return None
        if self.options[plan.task_type].feedback == "await":
            self.optimizer.store.save_measurement(
                decision.request_id, decision.task_type, measured, self.clock()
            )
            return None
        recorded = self.optimizer.record_outcome(decision.request_id, measured)
        self.activity.rewarded(recorded.request_id, recorded.reward)
        return recorded

    def feedback(
        self, request_id: str, *, quality: float | None = None, feedback: float | None = None
    ) -> RecordedOutcome:
        """Join a quality score or user feedback with the measurement of ``request_id``.

        Without a measurement (a decision taken through the decision API) the
        outcome is the feedback alone.  Raises ``InputError`` when neither is
        given, ``UnknownRequestError``, ``LateOutcomeError`` (the window closed:
        the measurement was recorded alone) and ``ConflictingOutcomeError`` (the
        outcome was already recorded: the task type does not await feedback, or
        a different feedback came first).
        """
        if quality is None and feedback is None:
            raise InputError("quality", "give a quality score, user feedback, or both")
        self.optimizer.decision(request_id)  # UnknownRequestError
        measured = self.optimizer.store.get_measurement(request_id) or Outcome()
        outcome = replace(measured, quality=quality, feedback=feedback)
        recorded = self.optimizer.record_outcome(request_id, outcome)
        self.activity.rewarded(request_id, recorded.reward)
        return recorded

    def expire(self) -> int:
        """Record the outcomes whose wait window closed (see :meth:`Optimizer.expire`)."""
        return self.optimizer.expire()

    def close(self) -> None:
        """Snapshot the policies and close the store."""
        self.optimizer.close()


def upstream_body(
    body: Mapping[str, Any],
    params: Params,
    managed: Iterable[str] = NUMERIC_DIMS,
    variant: PromptVariant | None = None,
) -> dict[str, Any]:
    """The caller's body with the ``managed`` parameters (and the model) taken from ``params``.

    The caller's values of managed parameters are dropped first, so a parameter
    the model rejects (``None`` in ``params``) is not sent at all; the model's
    own field for ``max_tokens`` (``max_completion_tokens`` for some) is used.
    ``variant`` (the task type's declaration of ``params.prompt_variant``) is
    applied to the messages.

    >>> upstream_body({"model": "a", "temperature": 1.5, "top_p": 0.5, "messages": []},
    ...               Params("b", temperature=0.2, max_tokens=64), {"temperature", "max_tokens"})
    {'model': 'b', 'top_p': 0.5, 'messages': [], 'temperature': 0.2, 'max_tokens': 64}
    """
    managed = frozenset(managed)
    out = {k: v for k, v in body.items() if TUNED_FIELDS.get(k) not in managed}
    request = params.to_request()
    if body.get("stop") is not None:
        request.pop("stop", None)  # the caller's stop sequences win
    if body.get("seed") is not None:
        request.pop("seed", None)
    for name, dimension in TUNED_FIELDS.items():
        if dimension not in managed:
            request.pop(name, None)
    out.update(request)
    if variant is not None and isinstance(out.get("messages"), list):
        out["messages"] = variant.apply(out["messages"])  # the variant the decision names
    return out


def prompt_characters(messages: object) -> int:
    """Characters of text in chat messages (string or text-part content)."""
    if not isinstance(messages, list):
        return 0
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    total += len(part["text"])
    return total


def prompt_hash(messages: object) -> str:
    """A short SHA-256 of the messages, for logs that must not hold prompt text."""
    try:
        data = orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        data = repr(messages).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def convergence(activity: Activity, task_types: Iterable[str]) -> list[dict[str, Any]]:
    """Per task type, from the recent decisions of this process: is the policy settling?

    ``top_arm_share`` is the share of the latest half of the window that chose
    the most frequent arm there; rewards compare the two halves.
    """
    out = []
    for task_type in task_types:
        recent = activity.recent(task_type)
        half = len(recent) // 2
        early, late = recent[:half], recent[half:]
        arms = [s.arm for s in late]
        top = max(set(arms), key=arms.count) if arms else None
        out.append(
            {
                "task_type": task_type,
                "decisions": len(recent),
                "top_arm": top,
                "top_arm_params": None if top is None else _params_of(late, top),
                "top_arm_share": None if top is None else arms.count(top) / len(arms),
                "mean_confidence_recent": _mean([s.confidence for s in late]),
                "reward_mean_earlier": _mean([s.reward for s in early if s.reward is not None]),
                "reward_mean_recent": _mean([s.reward for s in late if s.reward is not None]),
            }
        )
    return out


def parameter_evolution(activity: Activity, task_type: str, buckets: int) -> list[dict[str, Any]]:
    """The recent decisions of a task type in ``buckets`` equal slices: mean parameters and reward."""
    recent = activity.recent(task_type)
    if not recent:
        return []
    size = max(1, math.ceil(len(recent) / buckets))
    out = []
    for start in range(0, len(recent), size):
        chunk = recent[start : start + size]
        row: dict[str, Any] = {
            "from": chunk[0].timestamp,
            "to": chunk[-1].timestamp,
            "decisions": len(chunk),
            "rewarded": sum(s.reward is not None for s in chunk),
            "reward_mean": _mean([s.reward for s in chunk if s.reward is not None]),
        }
        for name in NUMERIC_DIMS:
            values = [getattr(s.params, name) for s in chunk]
            present = [float(v) for v in values if v is not None]
            if present:
                row[f"{name}_mean"] = sum(present) / len(present)
        models = [s.params.model for s in chunk]
        row["models"] = {m: models.count(m) for m in sorted(set(models))}
        out.append(row)
    return out


def served_rows(activity: Activity, task_type: str, limit: int) -> list[dict[str, Any]]:
    """The latest ``limit`` decisions of a task type, newest first."""
    recent = activity.recent(task_type)[-limit:] if limit > 0 else []
    return [
        {
            "request_id": s.request_id,
            "timestamp": s.timestamp,
            "arm": s.arm,
            "params": s.params.to_dict(),
            "propensity": s.propensity,
            "origin": s.origin,
            "phase": s.phase,
            "intended_arm": s.intended_arm,
            "reward": s.reward,
        }
        for s in reversed(recent)
    ]


def _params_of(rows: list[_Served], arm: int) -> dict[str, Any]:
    return next(s.params.to_request() for s in rows if s.arm == arm)


def _managed_fields(optimizer: Optimizer, task_type: str) -> frozenset[str]:
    """The numeric parameters paramloop sets for a task type (some arm has a value)."""
    space = optimizer.config(task_type).space
    return frozenset(
        name for name in NUMERIC_DIMS if any(getattr(arm, name) is not None for arm in space.arms)
    )


def _tokens(usage: Mapping[str, Any] | None, name: str) -> int | None:
    if not isinstance(usage, Mapping):
        return None
    value = usage.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


__all__ = [
    "FEEDBACK_MODES",
    "PINNED_MODES",
    "TUNED_FIELDS",
    "Activity",
    "FeedbackMode",
    "PinnedMode",
    "Price",
    "PriceTable",
    "ProxyMode",
    "ProxyOptions",
    "ProxyPlan",
    "Service",
    "convergence",
    "parameter_evolution",
    "prompt_hash",
    "served_rows",
    "upstream_body",
]
