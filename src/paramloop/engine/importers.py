"""Import decisions another system logged: Open Bandit Pipeline arrays and Vowpal Wabbit DSJSON.

Both paths validate every row first (context, arm, propensity, reward) and
store nothing when one row is wrong: the error names the row and the field.
Then each row becomes a logged decision with its propensity and outcome
(:meth:`Optimizer.log_decision`): the policy learns from it (warm start), and
``evaluate`` reads it like any logged decision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson

from paramloop.engine.optimizer import Optimizer
from paramloop.errors import InputError, ParamloopError
from paramloop.types import Outcome, Params

#: Maps an external action (its index, or for DSJSON its feature object) to an arm.
ArmOf = Callable[[Any], int | Params]


@dataclass(frozen=True, slots=True)
class ExternalRow:
    """One decision another system made: its context, arm, propensity and reward."""

    request_id: str
    context: Mapping[str, object]
    arm: int | Params
    propensity: float
    reward: float | None
    timestamp: float | None = None


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import stored."""

    task_type: str
    decisions: int
    outcomes: int
    policy: str


def import_rows(
    optimizer: Optimizer, task_type: str, rows: Iterable[ExternalRow], *, policy: str
) -> ImportReport:
    """Validate every row, then log each with its outcome (all or nothing at validation)."""
    config = optimizer.config(task_type)
    checked = list(rows)
    seen: set[str] = set()
    for i, row in enumerate(checked):
        where = f"row {i} ({row.request_id})"
        try:
            config.featurizer.featurize(row.context)
            optimizer.arm_index(task_type, row.arm)
            _check_propensity(row.propensity)
            if row.reward is not None:
                config.reward(Outcome(reward=row.reward))
        except ParamloopError as exc:
            raise InputError(where, str(exc)) from None
        if row.request_id in seen:
            raise InputError(where, "request id appears twice in the log")
        seen.add(row.request_id)
    outcomes = 0
    for row in checked:
        outcome = None if row.reward is None else Outcome(reward=row.reward)
        optimizer.log_decision(
            task_type,
            row.context,
            row.arm,
            row.propensity,
            request_id=row.request_id,
            outcome=outcome,
            policy=policy,
            timestamp=row.timestamp,
        )
        outcomes += outcome is not None
    return ImportReport(task_type, len(checked), outcomes, policy)


def obp_rows(
    feedback: Mapping[str, Any],
    *,
    context_names: Sequence[str] | None = None,
    arm_of: ArmOf | None = None,
    prefix: str = "obp",
) -> list[ExternalRow]:
    """Rows of an Open Bandit Pipeline ``bandit_feedback`` dict.

    Reads ``context`` (n, d), ``action``, ``reward`` and ``pscore``; the context
    columns become features named ``context_names`` (default ``x0``, ``x1``, …);
    action ``i`` is arm ``i`` unless ``arm_of`` says otherwise.  Rows with a
    ``position`` other than 0 are left out (one slot per decision).
    """
    try:
        context = np.asarray(feedback["context"], dtype=np.float64)
        action = np.asarray(feedback["action"])
        reward = np.asarray(feedback["reward"], dtype=np.float64)
        pscore = np.asarray(feedback["pscore"], dtype=np.float64)
    except KeyError as exc:
        raise InputError("feedback", f"an OBP bandit_feedback needs {exc.args[0]!r}") from None
    n = len(action)
    if context.ndim != 2 or context.shape[0] != n or reward.shape != (n,) or pscore.shape != (n,):
        raise InputError("feedback", "context (n, d), action, reward and pscore must have n rows")
    names = list(context_names or (f"x{j}" for j in range(context.shape[1])))
    if len(names) != context.shape[1]:
        raise InputError("context_names", f"needs {context.shape[1]} names, got {len(names)}")
    position = feedback.get("position")
    keep = np.ones(n, dtype=bool) if position is None else np.asarray(position) == 0
    mapper: ArmOf = arm_of if arm_of is not None else _identity
    return [
        ExternalRow(
            request_id=f"{prefix}-{i}",
            context=dict(zip(names, context[i].tolist(), strict=True)),
            arm=mapper(int(action[i])),
            propensity=float(pscore[i]),
            reward=float(reward[i]),
        )
        for i in np.flatnonzero(keep)
    ]


def dsjson_rows(lines: Iterable[str | bytes], *, arm_of: ArmOf | None = None) -> list[ExternalRow]:
    """Rows of Vowpal Wabbit's decision-service JSON (one event per line).

    The context is the event's ``c`` object without ``_multi``, namespaces
    flattened to ``namespace.feature``; the reward is −``_label_cost``; the
    propensity is ``_label_probability``; the arm is ``_labelIndex`` (the
    action's position in ``_multi``) unless ``arm_of`` maps the chosen action's
    feature object to an arm.  An event without a label is a decision without
    an outcome.
    """
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InputError(where, f"is not JSON: {exc}") from None
        if not isinstance(event, dict) or not isinstance(event.get("c"), dict):
            raise InputError(where, "a DSJSON event needs a `c` object (its context)")
        shared = {k: v for k, v in event["c"].items() if k != "_multi"}
        actions = event["c"].get("_multi") or []
        index = event.get("_labelIndex")
        if index is None and "_label_Action" in event:
            index = int(event["_label_Action"]) - 1  # _label_Action is 1-based
        if isinstance(index, bool) or not isinstance(index, int):
            raise InputError(f"{where}._labelIndex", f"must be an action index, got {index!r}")
        if arm_of is not None:
            if not 0 <= index < len(actions):
                raise InputError(f"{where}._labelIndex", f"{index} is not one of the actions")
            arm = arm_of(actions[index])
        else:
            arm = index
        cost = event.get("_label_cost")
        probability = event.get("_label_probability")
        if probability is None and isinstance(event.get("p"), list) and event["p"]:
            probability = event["p"][0]  # the chosen action comes first in `a` and `p`
        rows.append(
            ExternalRow(
                request_id=str(event.get("EventId") or f"dsjson-{number}"),
                context=_flatten(shared),
                arm=arm,
                propensity=probability if isinstance(probability, int | float) else math.nan,
                reward=None if cost is None else -float(cost),
                timestamp=_timestamp(event.get("Timestamp"), where),
            )
        )
    return rows


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _timestamp(value: object, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise InputError(f"{where}.Timestamp", f"must be ISO 8601 or epoch seconds, got {value!r}")


def _check_propensity(value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 < value <= 1.0):
        raise InputError("propensity", f"must be in (0, 1], got {value!r}")


def _identity(action: int) -> int:
    return action
