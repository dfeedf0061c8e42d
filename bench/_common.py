"""Shared helpers of the benchmark scripts: spaces of a given size, percentiles, markdown."""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from paramloop.core.features import NumericFeature
from paramloop.core.space import TrustRegion
from paramloop.engine import TaskConfig, task
from paramloop.types import Params

J = TypeVar("J")
R = TypeVar("R")

#: (temperature, max_tokens, top_p) grid sizes giving each benchmarked arm count.
SHAPES = {8: (4, 2, 1), 64: (8, 8, 1), 256: (8, 8, 4), 1000: (10, 10, 10)}


def space_task(n_arms: int, policy: str, *, name: str = "bench", **options: object) -> TaskConfig:
    """A task with exactly ``n_arms`` feasible arms and a 16-dimensional context.

    The trust region is wide open so all arms are feasible; the feasibility mask is
    still applied on every decision, as in production.
    """
    n_t, n_m, n_p = SHAPES[n_arms]
    temps = [round(0.4 + 0.1 * i, 4) for i in range(n_t)]
    tokens = [256 + 64 * i for i in range(n_m)]
    grids: dict[str, Sequence[float | int | str | None]] = {
        "temperature": temps,
        "max_tokens": tokens,
    }
    top_p = None
    if n_p > 1:
        grids["top_p"] = [round(1.0 - 0.05 * i, 4) for i in range(n_p)]
        top_p = 1.0
    baseline = Params(
        "gpt-small", temperature=temps[n_t // 2], max_tokens=tokens[n_m // 2], top_p=top_p
    )
    config = task(
        name,
        preset="published",
        baseline=baseline,
        grids=grids,
        trust_region=TrustRegion(radius={}),
        features=[NumericFeature("user_score", lower=0.0, upper=1.0)],
        policy=policy,
        **options,  # type: ignore[arg-type]
    )
    feasible = len(config.space.feasible_arms)
    if feasible != n_arms or config.featurizer.dim != 16:
        raise RuntimeError(
            f"wanted {n_arms} arms x 16 features, built {feasible} x {config.featurizer.dim}"
        )
    return config


CONTEXT = {
    "risk_tier": "high",
    "title_length": 48,
    "description_length": 1_200,
    "acceptance_criteria_count": 4,
    "scope_files_count": 3,
    "max_files": 5,
    "max_loc": 400,
    "has_external_deps": True,
    "complexity_indicators": 2,
    "prompt_tokens": 1_800,
    "prior_failures": 1,
    "user_score": 0.4,
}


def time_calls(fn: Callable[[int], object], n: int, warmup: int = 200) -> np.ndarray:
    """Per-call wall times in microseconds (perf_counter_ns around each call)."""
    for i in range(warmup):
        fn(i)
    out = np.empty(n)
    clock = time.perf_counter_ns
    for i in range(n):
        start = clock()
        fn(warmup + i)
        out[i] = (clock() - start) / 1_000
    return out


def run_jobs(
    run: Callable[[J], R],
    jobs: Sequence[J],
    workers: int,
    progress: Callable[[R, int, int, float], None],
) -> list[R]:
    """``run`` every job in fresh (spawned) worker processes, reporting each as it finishes.

    Spawned workers read the BLAS thread limits of the environment when they import numpy.
    """
    started = time.perf_counter()
    results: list[R] = []
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
        futures = [pool.submit(run, job) for job in jobs]
        for future in as_completed(futures):
            results.append(future.result())
            progress(results[-1], len(results), len(jobs), started)
    return results


def write_results(path: Path, head: Mapping[str, Any], results: Sequence[Any]) -> None:
    """Write ``head`` and every job result (a dataclass whose ``runs`` are dataclasses) as JSON."""
    document = {
        **head,
        "jobs": [
            {
                **{k: v for k, v in asdict(r).items() if k != "runs"},
                "runs": [asdict(run) for run in r.runs],
            }
            for r in results
        ],
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"results written to {path}")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
