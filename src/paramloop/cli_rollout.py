"""``paramloop rollout …``, ``budget …``, ``audit``, ``alerts`` and ``simulate --rollout``.

Thin shims: each command opens the store, builds the loop for one task type
(:func:`paramloop.engine.loop.build_loop`, as the service does), calls the
rollout controller or the budget manager, and renders the answer.  Every
refusal (a promotion requirement that fails, a transition the table does not
allow, a traffic share outside the phase's bounds, a waiver beyond its
threshold, an unknown task type) exits with status 2 and the engine's message,
and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.progress import Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from paramloop.cli_common import (
    configured_task,
    console,
    deployment,
    errors,
    plain,
    reported,
    when,
    write_json,
)
from paramloop.errors import InputError, ParamloopError

if TYPE_CHECKING:
    from paramloop.engine import TaskConfig
    from paramloop.engine.budgets import BudgetManager
    from paramloop.engine.loop import Loop
    from paramloop.sim.rollout import RolloutSimulation
    from paramloop.sim.world import World
    from paramloop.store.base import Store
    from paramloop.types import ProvenanceRecord

rollout_app = typer.Typer(
    help="Safe rollout of a task type's policy: status, advance, rollback, pause, traffic.",
    no_args_is_help=True,
)
budget_app = typer.Typer(
    help="Daily token and cost budgets: status, and waivers with provenance.",
    no_args_is_help=True,
)

Db = Annotated[
    str | None,
    typer.Option(
        help="The store: sqlite:///path.db or postgresql://… (default: DATABASE_URL, else the "
        "configuration's service.database_url, else sqlite:///paramloop.db)."
    ),
]
TaskType = Annotated[str, typer.Option("--task-type", "-t", help="Task type.")]
Config = Annotated[
    Path | None,
    typer.Option(
        help="The deployment's TOML file, the one paramloop serve reads (default: "
        "PARAMLOOP_CONFIG, else the embedded default)."
    ),
]
Actor = Annotated[str, typer.Option(help="Who makes the change (recorded in the audit trail).")]
Reason = Annotated[str, typer.Option(help="Why (recorded in the audit trail).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@contextmanager
def _loop(db: str | None, config: Path | None, task_type: str) -> Iterator[Loop]:
    """The loop of one task type whose rollout the store at ``db`` holds (alerts: stored, not sent).

    The commands do not start rollouts: the service does, where its configuration
    says (``LLM_OPTIMIZATION_MODE``), and a rollout started here in shadow would
    override that.  The policy is not restored (only its version is needed) and
    the loop is never closed, so nothing snapshots it.
    """
    from paramloop.engine.loop import build_loop
    from paramloop.engine.rollout import STATE_KIND
    from paramloop.store import open_store

    found = deployment(config, db)
    task = configured_task(found, task_type)
    store = open_store(found.database_url)
    try:
        if store.get_state(STATE_KIND, task_type) is None:
            raise ParamloopError(
                f"the store holds no rollout of {task_type!r} yet: it begins when the service "
                "(or paramloop.engine.loop.build_loop) first loads the task type"
            )
        yield build_loop([task], store, sinks=(), restore=False)
    finally:
        store.close()


@contextmanager
def _budgets(db: str | None, config: Path | None, task_type: str) -> Iterator[BudgetManager]:
    """The budget manager of one task type on the deployment's store."""
    from paramloop.engine.budgets import BudgetManager
    from paramloop.store import open_store

    found = deployment(config, db)
    task = configured_task(found, task_type)
    store = open_store(found.database_url)
    try:
        yield BudgetManager(store, {task_type: task.budget})
    finally:
        store.close()


# -- rollout -------------------------------------------------------------------------------


@rollout_app.command(name="status")
def rollout_status(
    task_type: TaskType, db: Db = None, config: Config = None, as_json: AsJson = False
) -> None:
    """Phase, traffic, freezes, SLO verdicts, promotion requirements, confidence, drift."""
    with reported(), _loop(db, config, task_type) as loop:
        status = loop.rollout.status(task_type)
    if as_json:
        write_json(status)
    else:
        _render_status(status)


def _act(
    db: str | None,
    config: Path | None,
    task_type: str,
    what: str,
    change: Callable[[Loop], object],
) -> None:
    """Apply one operator action and report the phase it leaves the rollout in."""
    with reported(), _loop(db, config, task_type) as loop:
        before = loop.rollout.state(task_type)
        change(loop)
        after = loop.rollout.state(task_type)
        [record] = loop.rollout.store.list_provenance(task_type, limit=1)
    moved = (
        f"{before.phase} → {after.phase}" if after.phase is not before.phase else str(after.phase)
    )
    frozen = f"; frozen: {after.frozen_reason}" if after.frozen else ""
    console.print(
        f"{task_type}: {what}: {moved}, treatment traffic {after.traffic_percent:g}%{frozen} "
        f"(audit record {record.id}, actor {record.actor}).",
        soft_wrap=True,
    )


@rollout_app.command(name="advance")
def rollout_advance(
    task_type: TaskType, actor: Actor, reason: Reason, db: Db = None, config: Config = None
) -> None:
    """Promote to the next phase; refused, listing the failed requirements, unless all hold."""
    _act(
        db,
        config,
        task_type,
        "advanced",
        lambda loop: loop.rollout.advance(task_type, actor=actor, reason=reason),
    )


@rollout_app.command(name="rollback")
def rollout_rollback(
    task_type: TaskType,
    actor: Actor,
    reason: Reason,
    to: Annotated[
        str | None,
        typer.Option(help="previous (one phase down) or baseline (stop); default: the plan's."),
    ] = None,
    db: Db = None,
    config: Config = None,
) -> None:
    """Roll back now: one phase down or to the baseline; either way the rollout freezes."""
    _act(
        db,
        config,
        task_type,
        "rolled back",
        lambda loop: loop.rollout.rollback(task_type, actor=actor, reason=reason, to=_target(to)),
    )


def _target(to: str | None) -> Literal["previous", "baseline"] | None:
    if to is None:
        return None
    if to == "previous":
        return "previous"
    if to == "baseline":
        return "baseline"
    raise InputError("--to", f"must be previous or baseline, got {to!r}")


@rollout_app.command(name="pause")
def rollout_pause(
    task_type: TaskType, actor: Actor, reason: Reason, db: Db = None, config: Config = None
) -> None:
    """Hold the rollout where it is (traffic unchanged, nothing advances) until resumed."""
    _act(
        db,
        config,
        task_type,
        "paused",
        lambda loop: loop.rollout.pause(task_type, actor=actor, reason=reason),
    )


@rollout_app.command(name="resume")
def rollout_resume(
    task_type: TaskType, actor: Actor, reason: Reason, db: Db = None, config: Config = None
) -> None:
    """Resume the paused phase (its minimum duration starts again)."""
    _act(
        db,
        config,
        task_type,
        "resumed",
        lambda loop: loop.rollout.resume(task_type, actor=actor, reason=reason),
    )


@rollout_app.command(name="restart")
def rollout_restart(
    task_type: TaskType, actor: Actor, reason: Reason, db: Db = None, config: Config = None
) -> None:
    """Start again in shadow after a rollback to the baseline."""
    _act(
        db,
        config,
        task_type,
        "restarted",
        lambda loop: loop.rollout.restart(task_type, actor=actor, reason=reason),
    )


@rollout_app.command(name="unfreeze")
def rollout_unfreeze(
    task_type: TaskType, actor: Actor, reason: Reason, db: Db = None, config: Config = None
) -> None:
    """Lift a freeze (drift, inconclusive SLOs, a step back) after review."""
    _act(
        db,
        config,
        task_type,
        "unfrozen",
        lambda loop: loop.rollout.unfreeze(task_type, actor=actor, reason=reason),
    )


@rollout_app.command(name="traffic")
def rollout_traffic(
    task_type: TaskType,
    percent: Annotated[float, typer.Option(help="Treatment share, within the phase's bounds.")],
    actor: Actor,
    reason: Reason,
    db: Db = None,
    config: Config = None,
) -> None:
    """Set the treatment traffic share within the current phase's bounds."""
    _act(
        db,
        config,
        task_type,
        "traffic set",
        lambda loop: loop.rollout.set_traffic(task_type, percent, actor=actor, reason=reason),
    )


def _render_status(status: Mapping[str, Any]) -> None:
    state = status["state"]
    phase = state["phase"]
    if state["phase"] == "paused":
        phase = f"paused ({state['previous']})"
    console.print(
        f"[bold]{status['task_type']}[/bold]: {phase}, treatment traffic "
        f"{state['traffic_percent']:g}%, {status['in_phase_s']:.0f} s in phase "
        f"(state version {state['version']})"
    )
    if state["frozen"]:
        console.print(f"[yellow]frozen:[/yellow] {state['frozen_reason']}")
    if status["recommendations_frozen"]:
        console.print(
            f"[red]recommendations frozen (baseline for everyone):[/red] {status['recommendations_frozen']}"
        )
    slo = Table(title=f"SLOs since the phase began: {status['slo']['verdict']}")
    for column in ("rule", "verdict", "treatment", "control", "n (t / c)", "reason"):
        slo.add_column(column, justify="right" if column == "n (t / c)" else "left")
    for rule in status["slo"]["rules"]:
        slo.add_row(
            rule["metric"],
            _verdict(rule["verdict"]),
            _interval(rule["treatment"]),
            _interval(rule["control"]),
            f"{rule['n_treatment']} / {rule['n_control']}",
            rule["reason"],
        )
    console.print(slo)
    promotion = status["promotion"]
    target = promotion["target"] or "nowhere"
    ready = "[green]ready[/green]" if promotion["ready"] else "[red]not ready[/red]"
    requirements = Table(title=f"promotion {promotion['phase']} → {target}: {ready}")
    for column in ("requirement", "verdict", "reason"):
        requirements.add_column(column)
    for requirement in promotion["requirements"]:
        passed = requirement["passed"]
        requirements.add_row(
            requirement["name"],
            "[green]pass[/green]" if passed else "[red]fail[/red]",
            requirement["reason"],
        )
    console.print(requirements)
    confidence = status["confidence"]
    agreement = status["shadow_agreement"]
    console.print(
        "confidence: "
        + ("-" if confidence is None else f"{confidence:.3f}")
        + " · shadow agreement: "
        + ("-" if agreement is None else f"{agreement:.1%} of {status['shadow_decisions']}")
    )
    drift = status["drift"]
    drifted = [f["feature"] for f in drift["features"] if f.get("drifted")]
    console.print(
        f"drift: {len(drift['features'])} features watched against {drift['reference']} reference contexts"
        + (f", drifted: {', '.join(drifted)}" if drifted else "")
    )
    if status["note"]:
        console.print(f"note: {status['note']}")


def _verdict(verdict: str) -> str:
    colour = {"ok": "green", "breach": "red"}.get(verdict, "yellow")
    return f"[{colour}]{verdict}[/]"


def _interval(interval: Mapping[str, Any] | None) -> str:
    if interval is None or interval.get("estimate") is None:
        return "-"
    estimate, low, high = (plain(interval.get(k)) for k in ("estimate", "lower", "upper"))
    shown = "-" if estimate is None else f"{estimate:.4g}"
    bounds = f"[{'-' if low is None else f'{low:.4g}'}, {'-' if high is None else f'{high:.4g}'}]"
    return f"{shown} {bounds}"


# -- budget --------------------------------------------------------------------------------


@budget_app.command(name="status")
def budget_status(
    task_type: TaskType, db: Db = None, config: Config = None, as_json: AsJson = False
) -> None:
    """Today's budget: limits (waiver included), spent, reserved, remaining, level."""
    with reported(), _budgets(db, config, task_type) as budgets:
        status = budgets.status(task_type)
    if as_json:
        write_json(status)
        return
    if not status["budget"]:
        console.print(f"{task_type}: no budget configured (day {status['day']}).")
        return
    table = Table(
        title=f"{task_type} · budget of {status['day']} (UTC) · {_level(status['level'])}"
    )
    for column in ("resource", "limit", "spent", "reserved", "remaining"):
        table.add_column(column, justify="left" if column == "resource" else "right")
    for resource in ("tokens", "cost"):
        table.add_row(
            resource,
            *(
                _amount(status[part][resource] if status[part] else None, resource)
                for part in ("limits", "spent", "reserved", "remaining")
            ),
        )
    console.print(table)
    console.print(
        f"waiver {status['waiver_percent']:g}% (at most {status['max_waiver_percent']:g}%) · "
        f"{status['open_reservations']} open reservations · over budget: {status['over_budget_action']}"
    )


@budget_app.command(name="waive")
def budget_waive(
    task_type: TaskType,
    percent: Annotated[
        float, typer.Option(help="Raise today's limits by this many percent (up to the maximum).")
    ],
    actor: Annotated[str, typer.Option(help="Who approves the waiver.")],
    reason: Reason,
    db: Db = None,
    config: Config = None,
) -> None:
    """Raise today's limits by a percentage; the waiver is recorded in the audit trail."""
    with reported(), _budgets(db, config, task_type) as budgets:
        budgets.waive(task_type, percent, actor=actor, reason=reason)
        status = budgets.status(task_type)
        [record] = budgets.store.list_provenance(task_type, "budget_waiver", limit=1)
    limits = status["limits"] or {}
    console.print(
        f"{task_type}: today's limits raised by {status['waiver_percent']:g}% to "
        f"{_amount(limits.get('tokens'), 'tokens')} tokens and {_amount(limits.get('cost'), 'cost')} "
        f"cost, approved by {actor} (audit record {record.id}).",
        soft_wrap=True,
    )


def _level(level: str) -> str:
    colour = {"ok": "green", "warning": "yellow"}.get(level, "red")
    return f"[{colour}]{level}[/]"


def _amount(value: float | None, resource: str) -> str:
    if value is None:
        return "unlimited"
    return f"{value:,.0f}" if resource == "tokens" else f"{value:,.4f}"


# -- audit trail and alerts ----------------------------------------------------------------


def audit_command(
    db: Db = None,
    config: Config = None,
    task_type: Annotated[
        str | None, typer.Option("--task-type", "-t", help="Only this task type.")
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(help="Only this kind: promotion, rollback, phase_change, gate_approval, …"),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many records.")] = 50,
    as_json: AsJson = False,
) -> None:
    """The audit trail of production changes, newest first: who, when, why, from which evidence."""
    from paramloop.sim.rollout import provenance_to_dict
    from paramloop.store import open_store

    with reported():
        store = open_store(deployment(config, db).database_url)
        try:
            records = store.list_provenance(task_type, kind, limit)
        finally:
            store.close()
    if as_json:
        write_json([provenance_to_dict(r) for r in records])
        return
    _render_audit(records, "audit trail, newest first")


def _render_audit(records: Sequence[ProvenanceRecord], title: str) -> None:
    task_types = sorted({r.task_type for r in records})
    several = len(task_types) > 1
    table = Table(title=title if several else f"{title} · {', '.join(task_types) or 'empty'}")
    columns = ["id", "time (UTC)", "kind", *(["task type"] if several else []), "actor"]
    for column in (*columns, "reason", "evidence", "policy"):
        table.add_column(
            column,
            justify="right" if column == "id" else "left",
            no_wrap=column in ("id", "time (UTC)", "kind"),
        )
    for r in records:
        table.add_row(
            str(r.id),
            when(r.timestamp),
            r.kind,
            *([r.task_type] if several else []),
            r.actor,
            r.reason,
            evidence_summary(r.evidence),
            r.policy_versions.get("candidate") or ", ".join(r.policy_versions.values()) or "-",
        )
    console.print(table)
    if not records:
        console.print("no records.")


#: How evidence values read in a table (anything else: ``key=value``; nested values: see --json).
_EVIDENCE = {
    "traffic_percent": "traffic {:g}%",
    "gate_report_id": "gate report {}",
    "confidence": "confidence {:.3g}",
    "verdict": "verdict {}",
    "percent": "waiver {:g}%",
    "phase": "in {}",
}


def evidence_summary(evidence: Mapping[str, Any]) -> str:
    """A short line of the evidence: the transition, then its plain values.

    >>> evidence_summary({"from": "canary", "to": "guarded", "traffic_percent": 25.0, "event": "advance"})
    'canary → guarded, traffic 25%'
    """
    parts = []
    if "from" in evidence and "to" in evidence:
        parts.append(f"{evidence['from']} → {evidence['to']}")
    for key, value in evidence.items():
        if key in ("from", "to", "event") or isinstance(value, Mapping | list | tuple):
            continue
        if value is None:
            continue
        template = _EVIDENCE.get(key)
        parts.append(template.format(value) if template else f"{key}={_short(value)}")
    return ", ".join(parts)


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def alerts_command(
    db: Db = None,
    config: Config = None,
    task_type: Annotated[
        str | None, typer.Option("--task-type", "-t", help="Only this task type.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many alerts.")] = 50,
    as_json: AsJson = False,
) -> None:
    """The alerts raised (rollbacks, freezes, SLOs, budgets, drift), newest first."""
    from paramloop.store import open_store

    with reported():
        store = open_store(deployment(config, db).database_url)
        try:
            alerts = store.list_alerts(task_type, limit=limit)
        finally:
            store.close()
    if as_json:
        write_json(
            [
                {
                    "id": a.id,
                    "created_at": a.created_at,
                    "severity": a.severity,
                    "kind": a.kind,
                    "task_type": a.task_type,
                    "message": a.message,
                    "evidence": dict(a.evidence),
                    "dedup_key": a.dedup_key,
                }
                for a in alerts
            ]
        )
        return
    table = Table(title="alerts, newest first")
    for column in ("id", "time (UTC)", "severity", "kind", "task type", "message"):
        table.add_column(column, justify="right" if column == "id" else "left")
    for a in alerts:
        colour = {"critical": "red", "warning": "yellow"}.get(a.severity, "default")
        table.add_row(
            str(a.id),
            when(a.created_at),
            f"[{colour}]{a.severity}[/]",
            a.kind,
            a.task_type,
            a.message,
        )
    console.print(table)
    if not alerts:
        console.print("no alerts.")


# -- simulate --rollout --------------------------------------------------------------------


def simulate_rollout(
    tasks: Sequence[TaskConfig],
    world: World,
    *,
    only: Sequence[str] | None,
    db: str | None,
    seed: int,
    as_json: bool,
) -> None:
    """``paramloop simulate --rollout``: one task type through every phase, then a breach."""
    from paramloop.sim.rollout import simulate_rollout as walk
    from paramloop.store import open_store
    from paramloop.store.memory import MemoryDecisionLog

    if only and len(only) > 1:
        raise ParamloopError("--rollout walks one task type: give at most one --task-type")
    name = only[0] if only else "summarization"
    chosen = [t for t in tasks if t.name == name]
    if not chosen:
        raise ParamloopError(
            f"--task-type: no task type {name!r} to roll out; configured: {', '.join(t.name for t in tasks)}"
        )
    store: Store = open_store(db) if db is not None else MemoryDecisionLog()
    try:
        with Progress(
            TextColumn("[bold]rolling out[/bold] {task.completed:.0f} simulated requests"),
            TimeElapsedColumn(),
            console=errors,
            disable=as_json or not errors.is_terminal,
            transient=True,
        ) as bar:
            job = bar.add_task("requests", total=None)
            report = walk(
                chosen[0], world, store, seed=seed, progress=lambda n: bar.advance(job, n)
            )
    finally:
        store.close()
    if as_json:
        write_json(report.to_dict())
    else:
        _render_simulation(report, db)


def _render_simulation(report: RolloutSimulation, db: str | None) -> None:
    table = Table(title=f"safe rollout of {report.task_type} · seed {report.seed}")
    for column in (
        "phase",
        "from (s)",
        "requests",
        "treatment",
        "SLO",
        "event",
        "actor",
        "reason",
    ):
        table.add_column(
            column, justify="right" if column in ("from (s)", "requests", "treatment") else "left"
        )
    for span in report.timeline:
        table.add_row(
            span.phase,
            f"{span.started_s:.0f}",
            str(span.requests),
            f"{span.treatment_share:.1%}",
            _verdict(span.slo) if span.slo else "-",
            span.event or "-",
            span.actor or "-",
            span.reason or "-",
        )
    console.print(table)
    for span in report.timeline:
        for note in span.notes:
            console.print(f"{span.phase}: {note}")
    for gate in report.gates:
        why = "; ".join(gate["reasons"]) or "every gate passed"
        approved = f", approved (audit record {gate['approval']})" if gate["approval"] else ""
        console.print(
            f"gates on the {gate['phase']} log at request {gate['request']}: {gate['verdict']}{approved} — {why}"
        )
    if report.breach_caught_at is not None and report.breach_injected_at is not None:
        console.print(
            f"breach injected at request {report.breach_injected_at}, rolled back by the SLO monitor "
            f"{report.breach_caught_at - report.breach_injected_at} requests later."
        )
    alerts = ", ".join(f"{count} {kind}" for kind, count in report.alerts.items())
    console.print(f"alerts raised: {alerts or 'none'}.")
    console.print()
    _render_audit(report.audit, "audit trail, oldest first")
    where = (
        f"logged to {db}"
        if db
        else "logged in memory (add --db sqlite:///rollout.db to inspect it with paramloop rollout status, audit, alerts)"
    )
    console.print(
        f"{report.requests} simulated requests (one per simulated second) in {report.seconds:.1f}s, {where}."
    )


__all__: Sequence[str] = (
    "alerts_command",
    "audit_command",
    "budget_app",
    "evidence_summary",
    "rollout_app",
    "simulate_rollout",
)
