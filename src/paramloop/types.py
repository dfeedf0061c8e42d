"""The values that cross layers: parameters, decisions and outcomes.

They are frozen dataclasses with ``to_dict``/``from_dict`` so that the store,
the HTTP edge and the CLI share one JSON shape.  Nothing here does math or I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from paramloop.errors import ConfigError, OutcomeError

#: A raw context value as a caller gives it.
FeatureValue = float | int | bool | str | tuple[str, ...]
#: A validated context: feature name -> value, in the featurizer's order.
Context = Mapping[str, FeatureValue]

#: Version of the JSON shape of :class:`Decision` (bumped on incompatible change).
SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class Params:
    """The generation parameters of one LLM call: one arm, made concrete.

    A field is ``None`` when the model does not accept it (a reasoning model has
    no temperature); ``max_tokens_field`` names the request field that carries
    ``max_tokens`` for this model (``max_tokens`` or ``max_completion_tokens``).
    ``choices`` holds the arm's levels of generic categorical dimensions (a route,
    a tool, a retrieval strategy, a plain label): given as a mapping, kept as
    sorted pairs; they are the caller's to apply and never enter the request.

    >>> Params("m", choices={"route": "rag"}).choice("route")
    'rag'
    """

    model: str
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    prompt_variant: str | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    max_tokens_field: str = "max_tokens"
    #: Given as a mapping or pairs; always sorted pairs once constructed.
    choices: tuple[tuple[str, str], ...] | Mapping[str, str] = ()

    def __post_init__(self) -> None:
        choices: Any = self.choices
        if isinstance(choices, Mapping):
            choices = tuple(sorted(choices.items()))
        elif not isinstance(choices, tuple):
            choices = tuple(tuple(pair) for pair in choices)
        for pair in choices:
            if (
                len(pair) != 2
                or not isinstance(pair[0], str)
                or not isinstance(pair[1], str)
                or not pair[0]
            ):
                raise ConfigError("params.choices", f"must map names to strings, got {pair!r}")
        if choices is not self.choices:
            object.__setattr__(self, "choices", choices)

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """``choices`` as sorted (name, level) pairs."""
        return cast(tuple[tuple[str, str], ...], self.choices)

    def choice(self, name: str) -> str:
        """This arm's level of the generic dimension ``name`` (KeyError if it has none)."""
        for key, value in self.pairs:
            if key == name:
                return value
        raise KeyError(name)

    def to_request(self) -> dict[str, Any]:
        """The keyword arguments of an OpenAI-compatible chat completion call.

        >>> Params("o3-mini", max_tokens=512, max_tokens_field="max_completion_tokens").to_request()
        {'model': 'o3-mini', 'max_completion_tokens': 512}
        """
        out: dict[str, Any] = {"model": self.model}
        for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.max_tokens is not None:
            out[self.max_tokens_field] = self.max_tokens
        if self.stop:
            out["stop"] = list(self.stop)
        if self.seed is not None:
            out["seed"] = self.seed
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "prompt_variant": self.prompt_variant,
            "stop": list(self.stop),
            "seed": self.seed,
            "max_tokens_field": self.max_tokens_field,
            "choices": dict(self.pairs),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Params:
        return cls(
            model=str(data["model"]),
            temperature=data.get("temperature"),
            top_p=data.get("top_p"),
            max_tokens=data.get("max_tokens"),
            frequency_penalty=data.get("frequency_penalty"),
            presence_penalty=data.get("presence_penalty"),
            prompt_variant=data.get("prompt_variant"),
            stop=tuple(data.get("stop") or ()),
            seed=data.get("seed"),
            max_tokens_field=str(data.get("max_tokens_field", "max_tokens")),
            choices=tuple(sorted((data.get("choices") or {}).items())),
        )


#: The origins of decisions that are served but not logged: an internal failure
#: (the store refused the write) and optimization switched off.
UNLOGGED_ORIGINS = ("fallback:baseline", "disabled:baseline")


@dataclass(frozen=True, slots=True)
class Decision:
    """One choice of parameters for one request, with its exact propensity.

    ``propensity`` is the probability with which the serving policy chose
    ``arm`` for this request, exploration floor included.  ``confidence`` is the
    policy's estimate (in [0, 1]) that ``arm`` is the best feasible arm.
    ``origin`` says where the parameters came from: ``bandit:<policy>``,
    ``baseline``, ``fallback:baseline`` (an internal failure, not logged; see
    :attr:`error`) or ``disabled:baseline`` (optimization off, not logged).  ``intended_arm`` is the arm the policy chose when another
    was served (the baseline, in shadow mode or for the control group of a
    rollout), ``None`` when the policy's choice was served.
    """

    request_id: str
    task_type: str
    arm: int
    params: Params
    propensity: float
    confidence: float
    policy: str
    policy_revision: int
    origin: str
    context: Context
    context_fingerprint: int
    timestamp: float
    seed: int | None = None
    phase: str = "general"
    applied: bool = True
    error: str | None = None
    schema_version: int = SCHEMA_VERSION
    intended_arm: int | None = None

    @property
    def model_name(self) -> str:
        return self.params.model

    @property
    def logged(self) -> bool:
        """Whether the decision is in the decision log (an outcome can be recorded for it)."""
        return self.origin not in UNLOGGED_ORIGINS

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "task_type": self.task_type,
            "arm": self.arm,
            "params": self.params.to_dict(),
            "propensity": self.propensity,
            "confidence": self.confidence,
            "policy": self.policy,
            "policy_revision": self.policy_revision,
            "origin": self.origin,
            "context": {k: list(v) if isinstance(v, tuple) else v for k, v in self.context.items()},
            "context_fingerprint": self.context_fingerprint,
            "timestamp": self.timestamp,
            "seed": self.seed,
            "phase": self.phase,
            "applied": self.applied,
            "error": self.error,
            "schema_version": self.schema_version,
            "intended_arm": self.intended_arm,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        context = {k: tuple(v) if isinstance(v, list) else v for k, v in data["context"].items()}
        return cls(
            request_id=str(data["request_id"]),
            task_type=str(data["task_type"]),
            arm=int(data["arm"]),
            params=Params.from_dict(data["params"]),
            propensity=float(data["propensity"]),
            confidence=float(data["confidence"]),
            policy=str(data["policy"]),
            policy_revision=int(data["policy_revision"]),
            origin=str(data["origin"]),
            context=context,
            context_fingerprint=int(data["context_fingerprint"]),
            timestamp=float(data["timestamp"]),
            seed=data.get("seed"),
            phase=str(data.get("phase", "general")),
            applied=bool(data.get("applied", True)),
            error=data.get("error"),
            schema_version=int(data.get("schema_version", SCHEMA_VERSION)),
            intended_arm=None if data.get("intended_arm") is None else int(data["intended_arm"]),
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened after a call.  Every field is optional; it may arrive late.

    ``quality`` and ``feedback`` are in [0, 1].  ``reward``, when given, is used
    as the reward directly (it must lie in the reward function's range) instead
    of being computed from the other fields.
    """

    quality: float | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    error: bool = False
    feedback: float | None = None
    reward: float | None = None

    def __post_init__(self) -> None:
        for name in ("quality", "feedback"):
            value = getattr(self, name)
            if value is not None:
                _check_number(name, value)
                if not 0.0 <= value <= 1.0:
                    raise OutcomeError(name, f"must be in [0, 1], got {value!r}")
        for name in ("latency_ms", "cost", "prompt_tokens", "completion_tokens"):
            value = getattr(self, name)
            if value is not None:
                _check_number(name, value)
                if value < 0:
                    raise OutcomeError(name, f"must be >= 0, got {value!r}")
                if name.endswith("tokens") and int(value) != value:
                    raise OutcomeError(name, f"must be a whole number, got {value!r}")
        if not isinstance(self.error, bool):
            raise OutcomeError("error", f"must be true or false, got {self.error!r}")
        if self.reward is not None:
            _check_number("reward", self.reward)

    @property
    def total_tokens(self) -> int | None:
        if self.prompt_tokens is None and self.completion_tokens is None:
            return None
        return int(self.prompt_tokens or 0) + int(self.completion_tokens or 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "quality": self.quality,
            "latency_ms": self.latency_ms,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost": self.cost,
            "error": self.error,
            "feedback": self.feedback,
            "reward": self.reward,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Outcome:
        allowed = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise OutcomeError(unknown[0], f"unknown field; allowed: {', '.join(sorted(allowed))}")
        return cls(**dict(data))


@dataclass(frozen=True, slots=True)
class RecordedOutcome:
    """An outcome as stored: joined to its decision and turned into a reward.

    ``source`` is ``observed`` for an outcome a caller recorded and ``default``
    for the default reward given when the wait window closed without one.
    ``seq`` is the store's monotonically increasing sequence number.
    """

    request_id: str
    task_type: str
    outcome: Outcome
    reward: float
    reward_version: str
    source: str
    timestamp: float
    seq: int = 0


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """A policy's serialized state, with the last outcome sequence it has learned from."""

    task_type: str
    policy: str
    revision: int
    last_outcome_seq: int
    state: bytes
    timestamp: float = field(default=0.0)


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OutcomeError(name, f"must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise OutcomeError(name, f"must be finite, got {value!r}")


@dataclass(frozen=True, slots=True)
class GateReportRecord:
    """A persisted gate report: the verdict and the full report as JSON-compatible data.

    ``verdict`` is ``pass``, ``fail`` or ``inconclusive``; ``report`` holds every
    gate's verdict, reason and evidence.  ``id`` is assigned by the store.
    """

    task_type: str
    candidate: str
    baseline: str
    verdict: str
    report: Mapping[str, Any]
    created_at: float
    id: int = 0


@dataclass(frozen=True, slots=True)
class ProvenanceRecord:
    """An append-only audit record of something that changed (or approved a change to) production.

    ``kind`` names the event (``gate_approval``, later ``phase_change``,
    ``rollback``, ``budget_waiver``, …); ``actor`` is a person or ``rule:<name>``;
    ``evidence`` is JSON-compatible (a gate report id, SLO figures, …);
    ``policy_versions`` names the policies involved (e.g. candidate and baseline).
    """

    kind: str
    task_type: str
    actor: str
    reason: str
    evidence: Mapping[str, Any]
    policy_versions: Mapping[str, str]
    timestamp: float
    id: int = 0


@dataclass(frozen=True, slots=True)
class StateRecord:
    """A small piece of engine state kept in the store: a rollout's phase, a day's budget.

    ``kind`` and ``key`` name it (``rollout`` / ``summarize``); ``data`` is
    JSON-compatible; ``version`` counts the writes, so a write based on a stale
    read is refused (compare and swap).  The store assigns ``version``.
    """

    kind: str
    key: str
    data: Mapping[str, Any]
    updated_at: float
    version: int = 0


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """A raised alert as stored: severity, what and why, and when.  ``id`` is assigned by the store."""

    severity: str
    kind: str
    task_type: str
    message: str
    evidence: Mapping[str, Any]
    dedup_key: str
    created_at: float
    id: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The alert as JSON data (what sinks send and the service returns)."""
        return {
            "id": self.id,
            "severity": self.severity,
            "kind": self.kind,
            "task_type": self.task_type,
            "message": self.message,
            "evidence": dict(self.evidence),
            "created_at": self.created_at,
        }
