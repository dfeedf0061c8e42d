"""Every error paramloop raises on purpose.

Each subclass names the field that was wrong and what is allowed, so a caller
(or an HTTP edge) can show the message as it is.  Errors about input that a
user can fix derive from :class:`ValueError` or :class:`LookupError` as well,
so ``except ValueError`` keeps working for code that does not know paramloop.
"""

from __future__ import annotations


class ParamloopError(Exception):
    """Base class of every error raised by paramloop on purpose."""


class ConfigError(ParamloopError, ValueError):
    """A configuration value (space, reward, task, store URL) is invalid.

    ``field`` is the dotted path of the offending value, e.g.
    ``tasks.summarize.space.temperature.values[3]``.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class FeatureError(ParamloopError, ValueError):
    """A context feature is missing, of the wrong type, or not finite."""

    def __init__(self, feature: str, problem: str) -> None:
        self.feature = feature
        self.problem = problem
        super().__init__(f"context feature {feature!r}: {problem}")


class OutcomeError(ParamloopError, ValueError):
    """An outcome field (or the reward it maps to) is outside what is allowed."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"outcome field {field!r}: {problem}")


class UnknownTaskTypeError(ParamloopError, LookupError):
    """The task type has no configuration."""

    def __init__(self, task_type: str, known: list[str]) -> None:
        self.task_type = task_type
        self.known = known
        super().__init__(
            f"unknown task type {task_type!r}; configured task types: {', '.join(known) or '(none)'}"
        )

    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0])


class UnknownRequestError(ParamloopError, LookupError):
    """No decision was logged under this request id."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(f"no decision was logged with request_id {request_id!r}")

    def __str__(self) -> str:
        return str(self.args[0])


class DuplicateRequestError(ParamloopError, ValueError):
    """A decision with this request id was already logged."""

    def __init__(self, request_id: str, *, different_body: bool = False) -> None:
        self.request_id = request_id
        why = (
            " with a different task type, context or seed; a retry must send the same body"
            if different_body
            else "; request ids must be unique"
        )
        super().__init__(f"request_id {request_id!r} was already used for a logged decision{why}")


class ConflictingOutcomeError(ParamloopError, ValueError):
    """A different outcome was already recorded for this request id."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(
            f"a different outcome was already recorded for request_id {request_id!r}; "
            "outcomes are write-once (repeating the same outcome is a no-op)"
        )


class LateOutcomeError(ParamloopError, ValueError):
    """The outcome arrived after the task type's reward wait window closed."""

    def __init__(self, request_id: str, waited_s: float, window_s: float) -> None:
        self.request_id = request_id
        super().__init__(
            f"outcome for request_id {request_id!r} arrived {waited_s:.1f}s after the decision; "
            f"the reward wait window of this task type is {window_s:.1f}s"
        )


class SnapshotError(ParamloopError, ValueError):
    """A policy snapshot cannot be restored (corrupt, wrong policy, wrong shape)."""


class StoreError(ParamloopError):
    """The store could not complete an operation (connection, migration, schema)."""


class StoreUnavailableError(StoreError):
    """The store did not answer: unreachable, timed out, locked, out of connections.

    Unlike a :class:`StoreError` about the data, retrying the same write later
    can succeed, so a write that meets this may be spooled and replayed
    (:class:`~paramloop.store.spool.SpooledStore`).
    """


class InputError(ParamloopError, ValueError):
    """An argument of a call (request id, seed, …) is invalid."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class EvaluationError(ParamloopError, ValueError):
    """Logged data given to off-policy evaluation is invalid or cannot give a number.

    ``field`` names the array or argument (``propensities``, ``target``,
    ``predicted``, …); ``rows`` holds the first offending row indices when rows
    are at fault, so a caller can map them back to request ids.
    """

    def __init__(self, field: str, problem: str, rows: tuple[int, ...] = ()) -> None:
        self.field = field
        self.problem = problem
        self.rows = rows
        super().__init__(f"{field}: {problem}")


class TransitionError(ParamloopError, ValueError):
    """A rollout transition that the transition table does not allow.

    ``phase`` and ``event`` name the refused pair; ``allowed`` lists the events
    the table accepts from that phase, so the message says what would work.
    """

    def __init__(self, phase: str, event: str, allowed: tuple[str, ...], why: str = "") -> None:
        self.phase = phase
        self.event = event
        self.allowed = allowed
        detail = f" ({why})" if why else ""
        super().__init__(
            f"rollout event {event!r} is not allowed from phase {phase!r}{detail}; "
            f"allowed from {phase!r}: {', '.join(allowed) or '(none)'}"
        )


class BudgetExhaustedError(ParamloopError):
    """A reservation would take a budget past its hard limit.

    Not a ``ValueError``: the input is fine, the budget is spent.  ``resource``
    is ``tokens`` or ``cost``.
    """

    def __init__(self, task_type: str, resource: str, requested: float, remaining: float) -> None:
        self.task_type = task_type
        self.resource = resource
        self.requested = requested
        self.remaining = remaining
        super().__init__(
            f"budget of task type {task_type!r}: reserving {requested:g} {resource} "
            f"exceeds the {remaining:g} {resource} left today"
        )


class StaleStateError(ParamloopError):
    """A state write was based on a version that another writer has since replaced.

    Re-read the state and decide again: the other writer's change may have
    made this one wrong (a rollback racing a promotion).
    """

    def __init__(self, kind: str, key: str, expected: int, found: int) -> None:
        self.kind = kind
        self.key = key
        self.expected = expected
        self.found = found
        super().__init__(
            f"{kind} state of {key!r} changed meanwhile: expected version {expected}, found {found}"
        )
