"""Request and response bodies of the service (pydantic), as the OpenAPI document shows them.

Unknown fields are refused (a typo must not be silently ignored); engine
objects become bodies through the ``of`` constructors.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt

from paramloop.engine.variants import PromptVariant
from paramloop.types import Decision, Outcome, RecordedOutcome

#: A context value as JSON carries it.
ContextValue = StrictBool | StrictInt | float | str | list[str] | None


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\x00)")
    return value


#: A name or id: 1 to 200 characters, no NUL (PostgreSQL text cannot hold it).
Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_no_nul)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RecommendRequest(_Body):
    """``POST /v1/recommend``: the task type, what is known of the request, optionally its id and seed."""

    task_type: Name
    context: dict[str, ContextValue] = Field(default_factory=dict, max_length=200)
    request_id: Name | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    unit_id: Name | None = Field(
        default=None,
        description="Who the rollout buckets into treatment or control (a user id keeps a user "
        "in one group); default the X-Paramloop-Unit-Id header, else the request id.",
    )


class VariantBody(BaseModel):
    """A declared prompt variant (see ``engine/variants.py``)."""

    name: str
    version: int
    system: str | None
    prefix: str
    suffix: str


class DecisionBody(BaseModel):
    """A decision: the parameters, the exact propensity, and the request id for the outcome."""

    request_id: str
    task_type: str
    params: dict[str, Any]
    request: dict[str, Any] = Field(
        description="The parameters as keyword arguments of an OpenAI chat completion call."
    )
    arm: int
    propensity: float
    confidence: float
    policy: str
    policy_revision: int
    origin: str
    phase: str
    intended_arm: int | None = Field(
        default=None,
        description="The policy's choice when the baseline was served instead (control, shadow).",
    )
    applied: bool
    logged: bool
    context_fingerprint: str = Field(description="Unsigned 64-bit, as a decimal string.")
    timestamp: float
    error: str | None = None
    variant: VariantBody | None = Field(
        default=None,
        description="The prompt variant ``params.prompt_variant`` names, as the task type "
        "declares it: apply it to the messages (a system message first; a prefix and a suffix "
        "of the last user message).",
    )

    @classmethod
    def of(cls, decision: Decision) -> DecisionBody:
        return cls(**decision_json(decision))


def decision_json(decision: Decision, variant: PromptVariant | None = None) -> dict[str, Any]:
    """The :class:`DecisionBody` of a decision, as plain JSON data (``logged`` is the truth);
    ``variant`` is the task type's declaration of the decision's prompt variant."""
    return {
        "request_id": decision.request_id,
        "task_type": decision.task_type,
        "params": decision.params.to_dict(),
        "request": decision.params.to_request(),
        "arm": decision.arm,
        "propensity": decision.propensity,
        "confidence": decision.confidence,
        "policy": decision.policy,
        "policy_revision": decision.policy_revision,
        "origin": decision.origin,
        "phase": decision.phase,
        "intended_arm": decision.intended_arm,
        "applied": decision.applied,
        "logged": decision.logged,
        "context_fingerprint": str(decision.context_fingerprint),
        "timestamp": decision.timestamp,
        "error": decision.error,
        "variant": None if variant is None else asdict(variant),
    }


class OutcomeFields(_Body):
    """What happened after a call; every field is optional."""

    quality: float | None = Field(default=None, ge=0, le=1)
    latency_ms: float | None = Field(default=None, ge=0)
    prompt_tokens: StrictInt | None = Field(default=None, ge=0, lt=2**63)
    completion_tokens: StrictInt | None = Field(default=None, ge=0, lt=2**63)
    cost: float | None = Field(default=None, ge=0)
    error: StrictBool = False
    feedback: float | None = Field(default=None, ge=0, le=1)
    reward: float | None = None

    def to_outcome(self) -> Outcome:
        return Outcome(**self.model_dump())


class OutcomeItem(_Body):
    request_id: Name
    outcome: OutcomeFields


class OutcomeBatch(_Body):
    """Many outcomes, recorded all or none."""

    outcomes: list[OutcomeItem] = Field(min_length=1, max_length=1000)


class RecordedBody(BaseModel):
    request_id: str
    task_type: str
    reward: float
    reward_version: str
    source: str
    outcome: dict[str, Any]

    @classmethod
    def of(cls, recorded: RecordedOutcome) -> RecordedBody:
        return cls(
            request_id=recorded.request_id,
            task_type=recorded.task_type,
            reward=recorded.reward,
            reward_version=recorded.reward_version,
            source=recorded.source,
            outcome=recorded.outcome.to_dict(),
        )


class RecordedBatch(BaseModel):
    recorded: list[RecordedBody]


class FeedbackRequest(_Body):
    """``POST /v1/feedback``: a quality score and/or user feedback for a proxied request."""

    request_id: Name
    quality: float | None = Field(default=None, ge=0, le=1)
    feedback: float | None = Field(default=None, ge=0, le=1)


class ApprovalRequest(_Body):
    """``POST /api/optimization/approvals``: approve a passed gate report."""

    report_id: int = Field(ge=1, lt=2**63)
    reason: str = Field(min_length=1, max_length=2000)


TaskType = Field(min_length=1, max_length=200)
Reason = Field(min_length=1, max_length=2000, description="Why: kept in the audit record.")


class RolloutAction(_Body):
    """``advance``, ``pause``, ``resume``, ``restart``, ``unfreeze``: a task type and why."""

    task_type: str = TaskType
    reason: str = Reason


class RollbackRequest(RolloutAction):
    """``rollback``: one phase down (``previous``) or to baseline-only; default the plan's choice."""

    to: Literal["previous", "baseline"] | None = None


class TrafficRequest(RolloutAction):
    """``traffic``: the treatment share within the current phase's bounds."""

    percent: float = Field(ge=0, le=100)


class ShadowTestRequest(_Body):
    """``test-shadow``: replay up to ``sample`` recent decisions of a task type through the
    candidate policy (no side effects) and report how often it agrees with what was served."""

    task_type: str = TaskType
    sample: int = Field(default=500, ge=1, le=10_000)
    window_s: float = Field(
        default=86_400.0, gt=0, le=30 * 86_400, description="How far back to look (seconds)."
    )


class WaiverRequest(RolloutAction):
    """``budget-waiver``: raise today's limits by ``percent`` (at most the task's threshold)."""

    percent: float = Field(ge=0, le=1000)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    requirements: list[dict[str, Any]] | None = Field(
        default=None, description="A refused promotion: the requirements that failed."
    )


class ErrorBody(BaseModel):
    """Every error: what was wrong, in OpenAI's shape."""

    error: ErrorDetail


ErrorKind = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "conflict_error",
    "request_too_large",
    "upstream_error",
    "server_error",
]
