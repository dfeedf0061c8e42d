"""Assemble the whole loop for a service or a command: optimizer, rollout guardrails, budgets, alerts.

:func:`build_loop` is the public constructor of paramloop, and the one place that
wires the pieces together, so that library users, the HTTP service and the CLI get
the same behaviour and the same safe default: a task type's rollout starts in
**shadow** (the baseline serves, the policy's choice is only logged) until the
gates pass and the rollout advances; the optimizer routes every request through
the rollout controller (phase, split, drift freeze) and the budget manager
(infeasible arms, reservations), budget levels raise alerts, and every production
change lands in the audit trail.  A bare :class:`~paramloop.engine.Optimizer` is
the learner alone, without these guardrails (every request is treatment): the
simulator and the benchmarks use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from paramloop.core.alerts import Alert, Severity
from paramloop.core.budget import BudgetLevel
from paramloop.core.rollout import Phase
from paramloop.engine.alerts import AlertManager, AlertSink, log_sink
from paramloop.engine.budgets import BudgetManager
from paramloop.engine.config import TaskConfig
from paramloop.engine.optimizer import Optimizer, SpendCap
from paramloop.engine.rollout import RolloutController
from paramloop.store.base import Store
from paramloop.types import Decision, Outcome, RecordedOutcome


@dataclass
class Loop:
    """The assembled loop; ``optimizer.rollout`` and ``optimizer.budgets`` are the same objects."""

    optimizer: Optimizer
    rollout: RolloutController
    budgets: BudgetManager
    alerts: AlertManager

    def recommend(
        self,
        task_type: str,
        context: Mapping[str, object],
        *,
        request_id: str | None = None,
        seed: int | None = None,
        unit_id: str | None = None,
    ) -> Decision:
        """:meth:`Optimizer.recommend <paramloop.engine.Optimizer.recommend>`, guardrails included."""
        return self.optimizer.recommend(
            task_type, context, request_id=request_id, seed=seed, unit_id=unit_id
        )

    def record_outcome(self, request_id: str, outcome: Outcome) -> RecordedOutcome:
        """:meth:`Optimizer.record_outcome <paramloop.engine.Optimizer.record_outcome>`."""
        return self.optimizer.record_outcome(request_id, outcome)

    def close(self) -> None:
        """Snapshot the policies and close the store."""
        self.optimizer.close()


def build_loop(
    configs: Mapping[str, TaskConfig] | Sequence[TaskConfig],
    store: Store,
    *,
    clock: Callable[[], float] = time.time,
    sinks: Sequence[AlertSink] = (log_sink,),
    alert_cooldown_s: float = 300.0,
    spend_cap: SpendCap | None = None,
    restore: bool = True,
    initial: Mapping[str, tuple[Phase, float]] | None = None,
) -> Loop:
    """The whole loop on ``store``: the optimizer with its rollout controller, budget manager
    and alerts (to ``sinks``; default the log).

    ``initial`` sets where a task type's rollout starts when the store has none yet
    (phase and treatment traffic %; default **shadow**): a deployment's configuration
    (``LLM_OPTIMIZATION_MODE``), recorded in the audit trail with actor ``config``.
    A rollout the store already holds keeps its phase.
    """
    tasks = dict(configs) if isinstance(configs, Mapping) else {c.name: c for c in configs}
    alerts = AlertManager(store, sinks=sinks, cooldown_s=alert_cooldown_s, clock=clock)

    def on_level(task_type: str, level: BudgetLevel, status: Mapping[str, Any]) -> None:
        severity = Severity.CRITICAL if level is BudgetLevel.EXHAUSTED else Severity.WARNING
        alerts.raise_alert(
            Alert(
                severity,
                f"budget_{level}",
                task_type,
                f"daily budget {level}: spent {status.get('spent')} of {status.get('limits')}",
                dict(status),
            )
        )

    budgets = BudgetManager(
        store, {name: c.budget for name, c in tasks.items()}, clock=clock, on_level=on_level
    )
    optimizer_ref: list[Optimizer] = []

    def policy_version(task_type: str) -> str:
        # Before the optimizer exists (a rollout created at start-up): the configured policy.
        return (
            optimizer_ref[0].policy(task_type).label if optimizer_ref else tasks[task_type].policy
        )

    rollout = RolloutController(
        store,
        {name: c.rollout for name, c in tasks.items()},
        baseline_arm={name: c.space.baseline_arm for name, c in tasks.items()},
        policy_version=policy_version,
        alerts=alerts,
        clock=clock,
        initial=initial,
    )
    optimizer = Optimizer(
        list(tasks.values()),
        store,
        clock=clock,
        restore=restore,
        rollout=rollout,
        budgets=budgets,
        spend_cap=spend_cap,
    )
    optimizer_ref.append(optimizer)
    return Loop(optimizer, rollout, budgets, alerts)
