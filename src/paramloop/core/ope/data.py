"""Logged bandit feedback with a target policy: what every estimator reads.

:class:`LoggedBandit` validates everything once, at construction, and refuses
bad input with an :class:`~paramloop.errors.EvaluationError` that names the
field and the first offending rows.  Nothing is corrected silently: a
propensity of 0, a target row summing to 0.97 or a NaN reward is an error,
never a number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from paramloop.errors import EvaluationError, InputError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

#: How far a distribution's row sum may stray from 1.
SUM_TOLERANCE = 1e-6
#: Relative tolerance between a logged propensity and the logging distribution at the logged action.
PROPENSITY_TOLERANCE = 1e-6
#: How many offending rows an error message names.
_SHOWN = 5


@dataclass(frozen=True, slots=True, eq=False)
class LoggedBandit:
    """``n`` logged rounds over ``K`` actions, and the target policy to evaluate on them.

    ``rewards`` (n,)
        the reward observed in each round; finite.
    ``actions`` (n,)
        the logged action of each round, an integer index in ``[0, K)``.
    ``propensities`` (n,)
        the probability with which the logging policy chose the logged action,
        in ``(0, 1]``.
    ``target`` (n, K)
        the target policy's distribution over the ``K`` actions in each round:
        non-negative rows summing to 1 (within :data:`SUM_TOLERANCE`).
    ``logging`` (n, K) or ``None``
        the logging policy's full distribution when it is known.  It lets the
        support diagnostic see actions the logging policy could never choose;
        its value at the logged action must equal the propensity.
    ``support`` (n, K) bool or ``None``
        which actions the logging policy *could* choose in each round, when its
        full distribution is not known but its support is (a policy with an
        exploration floor over a known feasible set).  The logged action must
        be inside it.  Ignored when ``logging`` is given.

    ``weights`` (n,) is derived: the importance weight ``target[i, a_i] /
    propensities[i]`` of each round.  The arrays are read-only views.

    Raises :class:`~paramloop.errors.EvaluationError` for any invalid array.
    """

    rewards: FloatArray
    actions: IntArray
    propensities: FloatArray
    target: FloatArray
    logging: FloatArray | None = None
    support: npt.NDArray[np.bool_] | None = None
    weights: FloatArray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rewards = _floats("rewards", self.rewards, 1)
        n = rewards.shape[0]
        if n == 0:
            raise EvaluationError("window", "empty window: there are no logged rounds to evaluate")
        actions = _actions(self.actions)
        propensities = _floats("propensities", self.propensities, 1)
        target = _floats("target", self.target, 2)
        logging = None if self.logging is None else _floats("logging", self.logging, 2)
        for name, array in (
            ("actions", actions),
            ("propensities", propensities),
            ("target", target),
        ):
            if array.shape[0] != n:
                raise EvaluationError(
                    name,
                    f"has {array.shape[0]} rows but rewards has {n}; "
                    "every array needs exactly one row per logged round",
                )
        k = target.shape[1]
        if k == 0:
            raise EvaluationError("target", "covers no actions; it needs at least one column")
        if logging is not None and logging.shape != target.shape:
            raise EvaluationError(
                "logging",
                f"has shape {logging.shape} but target has {target.shape}; target and logging "
                "must be distributions over the same arm set in the same rounds",
            )

        _refuse_rows("rewards", ~np.isfinite(rewards), "not finite", _cell("rewards", rewards))
        _refuse_rows(
            "propensities",
            np.isnan(propensities),
            "missing (None or NaN)",
            _cell("propensities", propensities),
            "every logged decision needs its exact propensity",
        )
        _refuse_rows(
            "propensities",
            ~((propensities > 0.0) & (propensities <= 1.0)),
            "outside (0, 1]",
            _cell("propensities", propensities),
            "a propensity is the probability with which the logging policy chose the logged action",
        )
        _refuse_rows(
            "actions",
            (actions < 0) | (actions >= k),
            f"outside [0, {k})",
            _cell("actions", actions),
            f"target covers {k} actions",
        )
        _check_distribution("target", target)
        rows = np.arange(n)
        at_logged = target[rows, actions]
        if logging is not None:
            _check_distribution("logging", logging)
            logged = logging[rows, actions]
            _refuse_rows(
                "propensities",
                np.abs(propensities - logged) > PROPENSITY_TOLERANCE * logged,
                "different from the logging distribution at the logged action",
                lambda i: (
                    f"propensities[{i}] = {float(propensities[i])!r} but "
                    f"logging[{i}, {int(actions[i])}] = {float(logged[i])!r}"
                ),
                f"relative tolerance {PROPENSITY_TOLERANCE:g}",
            )

        object.__setattr__(self, "rewards", rewards)
        object.__setattr__(self, "actions", actions)
        object.__setattr__(self, "propensities", propensities)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "logging", logging)
        if self.support is not None:
            support = np.asarray(self.support)
            if support.dtype != np.bool_ or support.shape != target.shape:
                raise EvaluationError(
                    "support",
                    f"must be a boolean array of shape {target.shape}, got {support.dtype} {support.shape}",
                )
            outside = np.flatnonzero(~support[np.arange(n), actions])
            if outside.size:
                raise EvaluationError(
                    "support",
                    f"{outside.size} rows logged an action outside their declared support: "
                    + ", ".join(f"row {int(i)} action {int(actions[i])}" for i in outside[:5]),
                    tuple(int(i) for i in outside[:5]),
                )
            object.__setattr__(self, "support", _read_only(support))
        object.__setattr__(self, "weights", _read_only(at_logged / propensities))

    @property
    def n(self) -> int:
        """Number of logged rounds."""
        return int(self.rewards.shape[0])

    @property
    def n_actions(self) -> int:
        """Number of actions ``K`` the distributions cover."""
        return int(self.target.shape[1])

    def subset(self, rows: IntArray) -> LoggedBandit:
        """The same rounds restricted to ``rows`` (indices, repeats allowed), validated again."""
        index = np.asarray(rows)
        if index.ndim != 1 or index.dtype.kind not in "iu":
            raise InputError("rows", f"must be a 1-D array of integer row indices, got {index!r}")
        bad = (index < 0) | (index >= self.n)
        if bad.any():
            first = int(index[np.flatnonzero(bad)[0]])
            raise InputError("rows", f"row {first} is outside [0, {self.n})")
        return LoggedBandit(
            rewards=self.rewards[index],
            actions=self.actions[index],
            propensities=self.propensities[index],
            target=self.target[index],
            logging=None if self.logging is None else self.logging[index],
            support=None if self.support is None else self.support[index],
        )

    def with_target(self, target: FloatArray) -> LoggedBandit:
        """The same logged rounds with another target policy (validated like the first)."""
        return LoggedBandit(
            rewards=self.rewards,
            actions=self.actions,
            propensities=self.propensities,
            target=target,
            logging=self.logging,
            support=self.support,
        )


def _read_only(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    # A read-only view: the caller's own array keeps its flags.
    view = array.view()
    view.flags.writeable = False
    return view


def _floats(name: str, value: object, ndim: int) -> FloatArray:
    if value is None:
        raise EvaluationError(name, "missing (None); it is required")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise EvaluationError(name, f"must be numbers ({exc})") from None
    if array.ndim != ndim:
        shape = "(n,)" if ndim == 1 else "(n, K)"
        raise EvaluationError(name, f"must have shape {shape}, got shape {array.shape}")
    result: FloatArray = _read_only(array)
    return result


def _actions(value: object) -> IntArray:
    if value is None:
        raise EvaluationError("actions", "missing (None); it is required")
    array = np.asarray(value)
    if array.ndim != 1:
        raise EvaluationError("actions", f"must have shape (n,), got shape {array.shape}")
    if array.dtype.kind not in "iu":
        raise EvaluationError("actions", f"must be integer action indices, got dtype {array.dtype}")
    result: IntArray = _read_only(array.astype(np.intp, copy=False))
    return result


def _cell(name: str, array: npt.NDArray[Any]) -> Callable[[int], str]:
    def describe(i: int) -> str:
        return f"{name}[{i}] = {array[i].item()!r}"

    return describe


def _refuse_rows(
    name: str,
    bad: npt.NDArray[np.bool_],
    problem: str,
    describe: Callable[[int], str],
    why: str = "",
) -> None:
    """Raise naming the first offending rows when any row of ``bad`` is set."""
    if not bad.any():
        return
    rows = np.flatnonzero(bad)
    shown = tuple(int(i) for i in rows[:_SHOWN])
    listed = ", ".join(describe(i) for i in shown)
    more = f" and {len(rows) - len(shown)} more" if len(rows) > len(shown) else ""
    because = f"; {why}" if why else ""
    raise EvaluationError(
        name, f"{len(rows)} of {bad.shape[0]} rows {problem}: {listed}{more}{because}", rows=shown
    )


def _check_distribution(name: str, dist: FloatArray) -> None:
    finite = np.isfinite(dist)
    _refuse_rows(
        name,
        np.any(~finite, axis=1),
        "hold values that are not finite",
        lambda i: f"{name}[{i}] contains {dist[i][~finite[i]][0].item()!r}",
    )
    negative = dist < 0.0
    _refuse_rows(
        name,
        np.any(negative, axis=1),
        "hold negative probabilities",
        lambda i: (
            f"{name}[{i}, {int(np.argmax(negative[i]))}] = "
            f"{dist[i, int(np.argmax(negative[i]))].item()!r}"
        ),
    )
    sums = dist.sum(axis=1)
    _refuse_rows(
        name,
        np.abs(sums - 1.0) > SUM_TOLERANCE,
        f"do not sum to 1 (tolerance {SUM_TOLERANCE:g})",
        lambda i: f"{name}[{i}] sums to {sums[i].item()!r}",
    )
