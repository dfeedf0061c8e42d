"""The ``paramloop`` command: thin shims over the library (parse, call, render)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from paramloop.cli_common import configured_task, console, deployment, errors
from paramloop.cli_common import reported as _reported
from paramloop.cli_rollout import (
    alerts_command,
    audit_command,
    budget_app,
    rollout_app,
    simulate_rollout,
)
from paramloop.cli_server import serve_command, upstream_app
from paramloop.core.policies import POLICIES
from paramloop.engine import Optimizer, TaskConfig, load_config
from paramloop.engine.config import DEFAULT_POLICY
from paramloop.errors import ParamloopError
from paramloop.sim.run import SimulationReport, simulate
from paramloop.sim.tasks import DEFAULTS, default_tasks
from paramloop.sim.world import World
from paramloop.store.base import DecisionLog
from paramloop.types import GateReportRecord

if TYPE_CHECKING:
    from paramloop.engine.evaluate import Target
    from paramloop.server.settings import Deployment

app = typer.Typer(
    name="paramloop",
    help="Tune the parameters of LLM calls while they run: decide, log, learn, evaluate, roll out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """paramloop: contextual bandits for LLM call parameters, with exact propensities."""


@app.command(name="simulate")
def simulate_command(
    rounds: Annotated[int, typer.Option(min=1, help="Rounds (decisions) per task type.")] = 600,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the simulated traffic.")] = 0,
    policy: Annotated[
        str, typer.Option(help=f"Policy: {', '.join(sorted(POLICIES))}.")
    ] = DEFAULT_POLICY,
    task_type: Annotated[
        list[str] | None,
        typer.Option("--task-type", "-t", help="Simulate only these task types (repeatable)."),
    ] = None,
    exploration: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=1.0, help="Uniform exploration floor (default: the policy's own rule)."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="TOML task configuration (task types must exist in the simulator)."),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            help="Log decisions durably: sqlite:///path.db or postgresql://… (default: memory)."
        ),
    ] = None,
    holdout: Annotated[
        int, typer.Option(min=2, help="Held-out contexts for the lift interval.")
    ] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    rollout: Annotated[
        bool,
        typer.Option(
            "--rollout",
            help="Walk one task type (default summarization) through every rollout phase, then "
            "break it (--rounds and --holdout do not apply).",
        ),
    ] = False,
) -> None:
    """Run the whole loop on simulated LLM traffic and report what it learned, per task type."""
    world = World()
    with _reported():
        tasks = _tasks(config, policy, exploration, task_type, world)
        if rollout:
            simulate_rollout(tasks, world, only=task_type, db=db, seed=seed, as_json=as_json)
            _config_note(db, config, as_json)
            return
        store = _store(db)
        optimizer = Optimizer(tasks, store)
        total = rounds * len(tasks)
        with Progress(
            TextColumn("[bold]simulating"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=errors,
            disable=as_json or not errors.is_terminal,
            transient=True,
        ) as bar:
            job = bar.add_task("rounds", total=total)
            report = simulate(
                optimizer,
                world,
                rounds=rounds,
                seed=seed,
                holdout=holdout,
                progress=lambda n: bar.advance(job, n),
            )
        optimizer.close()
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        _render(report, rounds, db)
    _config_note(db, config, as_json)


def _config_note(db: str | None, config: Path | None, as_json: bool) -> None:
    """Say how to inspect a simulated log: the other commands never see the simulator's tasks."""
    if db is not None and config is None and not as_json:
        errors.print(
            "note: the simulator's built-in task types exist only in simulate; to inspect this "
            "log with evaluate, gates, rollout or budget, simulate with --config FILE (e.g. "
            "examples/paramloop.toml) and give them the same --config FILE (or PARAMLOOP_CONFIG).",
            soft_wrap=True,
            highlight=False,
        )


def _tasks(
    config: Path | None,
    policy: str,
    exploration: float | None,
    only: list[str] | None,
    world: World,
) -> list[TaskConfig]:
    if config is not None:
        tasks = list(load_config(config).values())
        unknown = [t.name for t in tasks if t.name not in world.task_types]
        if unknown:
            raise ParamloopError(
                f"the simulator has no task type {unknown[0]!r}; it simulates: {', '.join(world.task_types)}"
            )
        return [t for t in tasks if not only or t.name in only]
    if policy not in POLICIES:
        raise ParamloopError(
            f"--policy: unknown policy {policy!r}; available: {', '.join(sorted(POLICIES))}"
        )
    for name in only or ():
        if name not in DEFAULTS:
            raise ParamloopError(
                f"--task-type: unknown task type {name!r}; available: {', '.join(DEFAULTS)}"
            )
    return default_tasks(policy=policy, exploration=exploration, task_types=only or None)


def _store(db: str | None) -> DecisionLog | None:
    if db is None:
        return None
    from paramloop.store import open_store

    return open_store(db)


def _render(report: SimulationReport, rounds: int, db: str | None) -> None:
    table = Table(title=f"{report.policy} · {rounds} rounds per task type · seed {report.seed}")
    for column in ("task type", "baseline", "learned", "best", "lift", "95% CI", "regret"):
        table.add_column(column, justify="left" if column == "task type" else "right")
    for t in report.tasks:
        colour = "green" if t.lift_low > 0 else ("red" if t.lift_high < 0 else "yellow")
        table.add_row(
            t.task_type,
            f"{t.baseline_reward:.3f}",
            f"{t.learned_reward:.3f}",
            f"{t.oracle_reward:.3f}",
            f"[{colour}]{t.lift:+.3f}[/]",
            f"[{t.lift_low:+.3f}, {t.lift_high:+.3f}]",
            f"{t.regret:.1f}",
        )
    console.print(table)
    console.print(
        "Rewards are the simulator's exact expected rewards on held-out contexts: the baseline arm, "
        "the learned policy's greedy arm, and the best arm in the trust region. Lift = learned - baseline "
        "(paired 95% CI); regret is cumulative over the run against the best arm.\n"
    )
    chosen = Table(
        title="chosen parameters (the learned policy's most frequent choice on held-out contexts)"
    )
    for column in ("task type", "model", "temperature", "max_tokens", "top_p", "variant", "share"):
        chosen.add_column(
            column, justify="left" if column in ("task type", "model", "variant") else "right"
        )
    for t in report.tasks:
        c = t.chosen
        chosen.add_row(
            t.task_type,
            str(c.get("model")),
            str(c.get("temperature", "-")),
            str(c.get("max_tokens", "-")),
            str(c.get("top_p", "-")),
            str(c.get("prompt_variant", "-")),
            f"{t.chosen_share:.0%}",
        )
    console.print(chosen)
    where = (
        f"logged to {db}"
        if db
        else "logged in memory (add --db sqlite:///paramloop.db to keep them)"
    )
    console.print(
        f"{sum(t.rounds for t in report.tasks)} decisions in {report.seconds:.1f}s, {where}."
    )


@app.command(name="evaluate")
def evaluate_command(
    task_type: Annotated[str, typer.Option("--task-type", "-t", help="Task type to evaluate.")],
    candidate: Annotated[
        str,
        typer.Option(
            help="snapshot (latest in the store), learned (train on the older half), or baseline."
        ),
    ] = "snapshot",
    estimators: Annotated[
        str, typer.Option(help="Comma-separated: ips, snips, dm, dr, sndr, switch-dr[:tau].")
    ] = ("ips,snips,dm,dr,sndr,switch-dr"),
    config: Annotated[
        Path | None,
        typer.Option(
            help="The deployment's TOML file, the one paramloop serve reads (default: "
            "PARAMLOOP_CONFIG, else the embedded default)."
        ),
    ] = None,
    since: Annotated[float | None, typer.Option(help="Window start, epoch seconds.")] = None,
    until: Annotated[
        float | None, typer.Option(help="Window end (exclusive), epoch seconds.")
    ] = None,
    resamples: Annotated[
        int, typer.Option(min=100, help="Bootstrap resamples per interval.")
    ] = 10_000,
    min_ess: Annotated[
        float, typer.Option(min=0.0, help="Effective sample size below which no number is given.")
    ] = 100.0,
    seed: Annotated[
        int, typer.Option(min=0, help="Seed of the bootstrap and the outcome model's folds.")
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the evaluation as JSON.")] = False,
    db: Annotated[
        str | None,
        typer.Option(
            help="The store: sqlite:///path.db or postgresql://… (default: DATABASE_URL, else "
            "the configuration's service.database_url, else sqlite:///paramloop.db)."
        ),
    ] = None,
    from_file: Annotated[
        Path | None,
        typer.Option(
            help="Read the log from a `paramloop export` file (.jsonl or .parquet) instead of --db."
        ),
    ] = None,
) -> None:
    """Estimate a candidate policy's value against the baseline's, from the decision log alone."""
    from paramloop.engine.evaluate import evaluate
    from paramloop.engine.export import read_export
    from paramloop.store import open_store
    from paramloop.store.memory import MemoryDecisionLog

    with _reported():
        found = deployment(config, db)
        task = _evaluated_task(found, task_type, candidate)
        if db is not None and from_file is not None:
            raise ParamloopError("give exactly one of --db and --from-file")
        if from_file is not None and candidate == "snapshot":
            raise ParamloopError(
                "--from-file holds no policy snapshot: use --candidate learned or baseline"
            )
        store = open_store(found.database_url) if from_file is None else MemoryDecisionLog()
        rows = read_export(from_file, task_type) if from_file is not None else None
        try:
            with Progress(
                TextColumn("[bold]reading the log"),
                BarColumn(),
                MofNCompleteColumn(),
                console=errors,
                disable=as_json or not errors.is_terminal,
                transient=True,
            ) as bar:
                job = bar.add_task(
                    "rows", total=store.count_decisions(task_type) if rows is None else None
                )
                result = evaluate(
                    store,
                    task,
                    target=cast("Target", candidate),
                    estimators=[e.strip() for e in estimators.split(",") if e.strip()],
                    start=since,
                    end=until,
                    resamples=resamples,
                    min_ess=min_ess,
                    seed=seed,
                    progress=lambda n: bar.advance(job, n),
                    rows=rows,
                )
        finally:
            store.close()
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        return
    table = Table(
        title=f"{task_type}: {result.candidate} ({candidate}) vs baseline · {result.n} logged rounds"
    )
    for column in (
        "estimator",
        "candidate",
        "95% CI",
        "baseline",
        "difference",
        "lower bound",
        "ESS",
        "verdict",
    ):
        table.add_column(column, justify="left" if column in ("estimator", "verdict") else "right")
    for est, base, comp in zip(result.estimates, result.baseline, result.comparisons, strict=True):
        table.add_row(
            est.estimator,
            _num(est.value),
            "-" if est.low is None else f"[{est.low:.4f}, {est.high:.4f}]",
            _num(base.value),
            _num(comp.difference, signed=True),
            _num(comp.lower_bound, signed=True),
            f"{est.ess:.0f}",
            comp.verdict if est.support == "ok" else f"insufficient support: {est.reason}",
        )
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}")
    unsupported = [b for b in result.baseline if b.support != "ok"]
    if unsupported:
        console.print(f"baseline: no estimate ({unsupported[0].reason}).")


@app.command(name="export")
def export_command(
    task_type: Annotated[str, typer.Option("--task-type", "-t", help="Task type to export.")],
    out: Annotated[
        Path, typer.Option(help="The file to write: .parquet for Parquet, else JSON Lines.")
    ],
    db: Annotated[
        str | None,
        typer.Option(
            help="The store: sqlite:///path.db or postgresql://… (default: DATABASE_URL, else "
            "the configuration's service.database_url, else sqlite:///paramloop.db)."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="The deployment's TOML file, the one paramloop serve reads (default: "
            "PARAMLOOP_CONFIG, else the embedded default)."
        ),
    ] = None,
    since: Annotated[float | None, typer.Option(help="Window start, epoch seconds.")] = None,
    until: Annotated[
        float | None, typer.Option(help="Window end (exclusive), epoch seconds.")
    ] = None,
) -> None:
    """Export a task type's logged decisions and outcomes as JSON Lines or Parquet (for evaluate --from-file)."""
    from paramloop.engine.export import export_jsonl, export_parquet
    from paramloop.store import open_store

    with _reported():
        store = open_store(deployment(config, db).database_url)
        write = export_parquet if out.suffix == ".parquet" else export_jsonl
        try:
            count = write(store, task_type, out, start=since, end=until)
        finally:
            store.close()
    console.print(f"exported {count} decisions of {task_type!r} to {out}.")


@app.command(name="import")
def import_command(
    task_type: Annotated[str, typer.Option("--task-type", "-t", help="Task type to import into.")],
    source: Annotated[Path, typer.Argument(help="A Vowpal Wabbit DSJSON file (one event a line).")],
    db: Annotated[
        str | None,
        typer.Option(
            help="The store: sqlite:///path.db or postgresql://… (default: DATABASE_URL, else "
            "the configuration's service.database_url, else sqlite:///paramloop.db)."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="The deployment's TOML file, the one paramloop serve reads (default: "
            "PARAMLOOP_CONFIG, else the embedded default)."
        ),
    ] = None,
    policy: Annotated[
        str, typer.Option(help="Name of the system that made the decisions.")
    ] = "external",
) -> None:
    """Import decisions another system logged (DSJSON): warm-start the policy, evaluate on them.

    Every event is validated before anything is stored (context, arm, propensity in (0, 1],
    reward in the task type's range); the first bad one is named by its line.
    """
    from paramloop.engine.importers import dsjson_rows, import_rows
    from paramloop.store import open_store

    with _reported():
        found = deployment(config, db)
        config_ = configured_task(found, task_type)
        try:
            lines = source.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ParamloopError(f"cannot read {source}: {exc.strerror}") from None
        rows = dsjson_rows(lines)
        store = open_store(found.database_url)
        try:
            optimizer = Optimizer([config_], store)
            report = import_rows(optimizer, task_type, rows, policy=policy)
            optimizer.save_snapshots()
        finally:
            store.close()
    console.print(
        f"imported {report.decisions} decisions ({report.outcomes} with an outcome) of "
        f"{task_type!r} from {source}; the policy learned from them."
    )


gates_app = typer.Typer(
    help="Quality gates: run them on an evaluation, show a report, approve it.",
    no_args_is_help=True,
)
app.add_typer(gates_app, name="gates")
app.add_typer(upstream_app, name="upstream")
app.command(name="serve")(serve_command)
app.add_typer(rollout_app, name="rollout")
app.add_typer(budget_app, name="budget")
app.command(name="audit")(audit_command)
app.command(name="alerts")(alerts_command)


@gates_app.command(name="run")
def gates_run(
    task_type: Annotated[str, typer.Option("--task-type", "-t", help="Task type.")],
    candidate: Annotated[str, typer.Option(help="snapshot, learned or baseline.")] = "snapshot",
    db: Annotated[
        str | None,
        typer.Option(
            help="The store: sqlite:///path.db or postgresql://… (default: DATABASE_URL, else "
            "the configuration's service.database_url, else sqlite:///paramloop.db)."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="The deployment's TOML file, the one paramloop serve reads (default: "
            "PARAMLOOP_CONFIG, else the embedded default)."
        ),
    ] = None,
    resamples: Annotated[
        int, typer.Option(min=100, help="Bootstrap resamples per interval.")
    ] = 10_000,
    min_decisions: Annotated[int, typer.Option(min=0, help="Logged decisions required.")] = 1_000,
    min_ess: Annotated[
        float, typer.Option(min=0.0, help="Effective sample size required.")
    ] = 100.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Evaluate the candidate offline, check every gate, and store the report."""
    from paramloop.core.gates import GateThresholds
    from paramloop.engine.evaluate import evaluate
    from paramloop.engine.gates import run_gates
    from paramloop.store import open_store

    with _reported():
        found = deployment(config, db)
        task = _evaluated_task(found, task_type, candidate)
        store = open_store(found.database_url)
        try:
            result = evaluate(
                store,
                task,
                target=cast("Target", candidate),
                resamples=resamples,
                min_ess=min_ess,
            )
            report = run_gates(
                store,
                result,
                thresholds=GateThresholds(min_decisions=min_decisions, min_ess=min_ess),
            )
        finally:
            store.close()
    _show_report(report, as_json)


@gates_app.command(name="show")
def gates_show(
    db: Annotated[
        str | None,
        typer.Option(
            help="The store: sqlite:///path.db or postgresql://… (default: DATABASE_URL, else "
            "the configuration's service.database_url, else sqlite:///paramloop.db)."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="The deployment's TOML file, the one paramloop serve reads (default: "
            "PARAMLOOP_CONFIG, else the embedded default)."
        ),
    ] = None,
    task_type: Annotated[
        str | None, typer.Option("--task-type", "-t", help="Latest report of this task type.")
    ] = None,
    report_id: Annotated[int | None, typer.Option("--id", help="A report by id.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Show a stored gate report (by id, or the latest of a task type)."""
    from paramloop.store import open_store

    with _reported():
        if (task_type is None) == (report_id is None):
            raise ParamloopError("give exactly one of --task-type and --id")
        store = open_store(deployment(config, db).database_url)
        try:
            report = (
                store.get_gate_report(report_id)
                if report_id is not None
                else store.latest_gate_report(str(task_type))
            )
        finally:
            store.close()
        if report is None:
            raise ParamloopError(
                "no such gate report"
                + (f" (id {report_id})" if report_id is not None else f" for {task_type!r}")
            )
    _show_report(report, as_json)


@gates_app.command(name="approve")
def gates_approve(
    report_id: Annotated[int, typer.Option("--id", help="The gate report to approve.")],
    actor: Annotated[str, typer.Option(help="Who approves.")],
    reason: Annotated[str, typer.Option(help="Why.")],
    db: Annotated[
        str | None,
        typer.Option(
            help="The store: sqlite:///path.db or postgresql://… (default: DATABASE_URL, else "
            "the configuration's service.database_url, else sqlite:///paramloop.db)."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="The deployment's TOML file, the one paramloop serve reads (default: "
            "PARAMLOOP_CONFIG, else the embedded default)."
        ),
    ] = None,
) -> None:
    """Approve a passed gate report; writes an append-only provenance record."""
    from paramloop.engine.gates import approve
    from paramloop.store import open_store

    with _reported():
        store = open_store(deployment(config, db).database_url)
        try:
            record = approve(store, report_id, actor=actor, reason=reason)
        finally:
            store.close()
    console.print(
        f"approved gate report {report_id} as provenance record {record.id} by {record.actor}."
    )


def _show_report(report: GateReportRecord, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "id": report.id,
                    "task_type": report.task_type,
                    "verdict": report.verdict,
                    **report.report,
                },
                indent=2,
            )
            + "\n"
        )
        return
    colour = {"pass": "green", "fail": "red"}.get(report.verdict, "yellow")
    table = Table(
        title=f"gate report {report.id} · {report.task_type} · {report.candidate} vs {report.baseline}"
    )
    for column in ("gate", "verdict", "reason"):
        table.add_column(column)
    for gate in report.report.get("gates", []):
        shade = {"pass": "green", "fail": "red"}.get(gate["verdict"], "yellow")
        table.add_row(gate["name"], f"[{shade}]{gate['verdict']}[/]", gate["reason"])
    console.print(table)
    console.print(f"verdict: [{colour}]{report.verdict}[/]")


def _evaluated_task(found: Deployment, task_type: str, candidate: str) -> TaskConfig:
    """The task configuration to evaluate, after checking the task type and the candidate kind."""
    task = configured_task(found, task_type)
    if candidate not in ("snapshot", "learned", "baseline"):
        raise ParamloopError(
            f"--candidate: must be snapshot, learned or baseline; got {candidate!r}"
        )
    return task


def _num(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def main() -> None:
    app()


if __name__ == "__main__":
    main()
