"""paramloop as a :class:`~streams.learners.Learner`, through its public API.

A task type whose arms are the stream's labels (a generic choice dimension
``arm``), whose context is the stream's features declared as plain numbers
(no range, no scaling: the policy standardizes them online), and whose reward
range is the stream's.  ``distribution`` is :meth:`Optimizer.probabilities`;
the harness draws the arm from it and hands the decision back with
:meth:`Optimizer.log_decision` (a decision made elsewhere, with its propensity
and outcome), which logs it in the in-memory store and learns from it exactly
as ``record_outcome`` would.  The policy, its hyperparameters and its
exploration are paramloop's defaults unless given.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from paramloop import NumericFeature, Optimizer, Outcome, Params, RewardFunction, task
from streams.learners import FloatArray

TASK = "stream"


class ParamloopLearner:
    """paramloop's default policy (or ``policy`` with ``options``) over ``n_arms`` labels."""

    def __init__(
        self,
        n_arms: int,
        dim: int,
        reward_range: tuple[float, float],
        policy: str | None = None,
        **options: Any,
    ) -> None:
        labels = [str(a) for a in range(n_arms)]
        extra: dict[str, Any] = {} if policy is None else {"policy": policy}
        if options:
            extra["policy_params"] = options
        config = task(
            TASK,
            baseline=Params("model", choices={"arm": labels[0]}),
            choices={"arm": labels},
            features=[NumericFeature(f"x{j}") for j in range(dim)],
            reward=RewardFunction(low=reward_range[0], high=reward_range[1]),
            **extra,
        )
        self.optimizer = Optimizer([config])
        self.names = [f"x{j}" for j in range(dim)]
        self.n_arms = n_arms  # arm i of the space is label i: one choice dimension, in order
        self.t = 0

    def _context(self, x: FloatArray) -> dict[str, float]:
        return dict(zip(self.names, x.tolist(), strict=True))

    def distribution(self, x: FloatArray) -> FloatArray:
        found = self.optimizer.probabilities(TASK, self._context(x), request_id=f"r{self.t}")
        out = np.zeros(self.n_arms)
        out[list(found.arms)] = found.probabilities
        return out

    def learn(self, x: FloatArray, arm: int, reward: float, propensity: float) -> None:
        self.optimizer.log_decision(
            TASK,
            self._context(x),
            arm,
            propensity,
            request_id=f"r{self.t}",
            outcome=Outcome(reward=reward),
        )
        self.t += 1
