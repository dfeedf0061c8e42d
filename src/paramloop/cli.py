"""The ``paramloop`` command: thin shims over the library (parse, call, render)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from paramloop.core.policies import POLICIES
from paramloop.engine import Optimizer, TaskConfig, load_config
from paramloop.errors import ParamloopError
from paramloop.sim.run import SimulationReport, simulate
from paramloop.sim.tasks import DEFAULTS, default_tasks
from paramloop.sim.world import World
from paramloop.store.base import DecisionLog

app = typer.Typer(
    name="paramloop",
    help="Tune the parameters of LLM calls while they run: decide, log, learn, evaluate, roll out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Tables need ~110 columns; when output is piped (no terminal to measure), use that width.
console = Console(width=None if sys.stdout.isatty() else 110)
errors = Console(stderr=True)


@app.callback()
def _root() -> None:
    """paramloop: contextual bandits for LLM call parameters, with exact propensities."""


@app.command(name="simulate")
def simulate_command(
    rounds: Annotated[int, typer.Option(min=1, help="Rounds (decisions) per task type.")] = 600,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the simulated traffic.")] = 0,
    policy: Annotated[str, typer.Option(help=f"Policy: {', '.join(sorted(POLICIES))}.")] = "linucb",
    task_type: Annotated[
        list[str] | None,
        typer.Option("--task-type", "-t", help="Simulate only these task types (repeatable)."),
    ] = None,
    exploration: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Uniform exploration share.")
    ] = 0.05,
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
) -> None:
    """Run the whole loop on simulated LLM traffic and report what it learned, per task type."""
    world = World()
    try:
        tasks = _tasks(config, policy, exploration, task_type, world)
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
    except ParamloopError as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        _render(report, rounds, db)


def _tasks(
    config: Path | None, policy: str, exploration: float, only: list[str] | None, world: World
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
