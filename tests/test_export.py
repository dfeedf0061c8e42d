"""JSON Lines and Parquet exports of the decision log, and offline evaluation from them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from paramloop.engine import Optimizer
from paramloop.engine.evaluate import evaluate
from paramloop.engine.export import (
    export_jsonl,
    export_parquet,
    read_export,
    read_jsonl,
    read_parquet,
)
from paramloop.errors import InputError
from paramloop.sim.run import simulate
from paramloop.sim.tasks import default_tasks
from paramloop.sim.world import World
from paramloop.store.memory import MemoryDecisionLog
from paramloop.types import Outcome

TASK = "summarization"


@pytest.fixture(scope="module")
def store() -> MemoryDecisionLog:
    log = MemoryDecisionLog()
    optimizer = Optimizer(default_tasks(task_types=[TASK, "qa"], exploration=0.5), log)
    simulate(optimizer, World(), rounds=300, seed=2, holdout=2)
    optimizer.recommend(TASK, {"prompt_tokens": 10}, request_id="no-outcome-yet")
    optimizer.record_outcome(
        optimizer.recommend(TASK, {}, request_id="explicit").request_id, Outcome(reward=0.25)
    )
    return log


def test_round_trip_is_exact(store: MemoryDecisionLog, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    assert export_jsonl(store, TASK, path) == store.count_decisions(TASK) == 302
    original = [row for chunk in store.iter_logged(TASK) for row in chunk]
    again = [row for chunk in read_jsonl(path, TASK, chunk_size=7) for row in chunk]
    assert again == original
    assert any(recorded is None for _, recorded in again)
    assert [
        row for chunk in read_jsonl(path, "qa") for row in chunk
    ] == []  # only the exported task type


def test_evaluation_from_the_export_equals_evaluation_from_the_store(
    store: MemoryDecisionLog, tmp_path: Path
) -> None:
    path = tmp_path / "log.jsonl"
    export_jsonl(store, TASK, path)
    config = default_tasks(task_types=[TASK], exploration=0.5)[0]
    direct = evaluate(store, config, target="learned", resamples=300)
    from_file = evaluate(None, config, target="learned", resamples=300, rows=read_jsonl(path, TASK))
    assert from_file.to_dict() == direct.to_dict()
    assert any("without an outcome" in note for note in from_file.notes)


def test_parquet_round_trip_is_exact_and_evaluates_alike(
    store: MemoryDecisionLog, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq  # type: ignore[import-untyped, unused-ignore]

    path = tmp_path / "log.parquet"
    assert export_parquet(store, TASK, path, chunk_size=100) == 302
    original = [row for chunk in store.iter_logged(TASK) for row in chunk]
    assert [row for chunk in read_parquet(path, TASK, chunk_size=7) for row in chunk] == original
    assert [row for chunk in read_export(path, "qa") for row in chunk] == []
    table = pq.read_table(path)
    assert table.num_rows == 302 and table.schema.field("context_fingerprint").type == "uint64"
    assert table.column("source").null_count == 1  # the decision still waiting for its outcome
    config = default_tasks(task_types=[TASK], exploration=0.5)[0]
    direct = evaluate(store, config, target="learned", resamples=300)
    from_file = evaluate(
        None, config, target="learned", resamples=300, rows=read_export(path, TASK)
    )
    assert from_file.to_dict() == direct.to_dict()


def test_a_file_that_is_not_an_export_is_refused(tmp_path: Path) -> None:
    import pyarrow as pa  # type: ignore[import-untyped, unused-ignore]
    import pyarrow.parquet as pq  # type: ignore[import-untyped, unused-ignore]

    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"request_id": ["a"]}), other)
    with pytest.raises(InputError, match="columns task_type, timestamp"):
        list(read_parquet(other, TASK))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_text("not parquet")
    with pytest.raises(InputError, match="not a Parquet file"):
        list(read_parquet(garbage, TASK))
    with pytest.raises(InputError, match="no such file"):
        list(read_parquet(tmp_path / "missing.parquet", TASK))


def test_malformed_lines_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"decision": {"request_id": "x"}, "outcome": null}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:1: not a logged decision record"):
        list(read_jsonl(path, TASK))
    with pytest.raises(InputError, match="no such file"):
        list(read_jsonl(tmp_path / "missing.jsonl", TASK))
    with pytest.raises(InputError, match="give a store or rows"):
        evaluate(None, default_tasks(task_types=[TASK])[0], target="learned")


#: The simulated task type as a configuration file: the operator commands read their task
#: types from one (the simulator's built-in ones exist only in ``simulate``).
SIM_CONFIG = """
[tasks.summarization]
preset = "published"
exploration = 0.5
baseline = { model = "gpt-large", temperature = 0.5, max_tokens = 512, top_p = 0.9 }
space = { model = ["gpt-small", "gpt-large"], temperature = [0.3, 0.5, 0.7], max_tokens = [256, 512] }
"""


def test_cli_export_then_evaluate(tmp_path: Path) -> None:
    exe = shutil.which("paramloop", path=str(Path(sys.executable).parent)) or "paramloop"
    config = tmp_path / "sim.toml"
    config.write_text(SIM_CONFIG)
    env = {**os.environ, "PARAMLOOP_CONFIG": str(config)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [exe, *args], capture_output=True, text=True, check=False, timeout=300, env=env
        )

    db = f"sqlite:///{tmp_path / 'log.db'}"
    out = tmp_path / "log.jsonl"
    assert (
        run(
            "simulate",
            "--rounds",
            "200",
            "--config",
            str(config),
            "--holdout",
            "3",
            "--db",
            db,
        ).returncode
        == 0
    )
    exported = run("export", "--db", db, "-t", TASK, "--out", str(out))
    assert exported.returncode == 0 and "exported 200 decisions" in exported.stdout
    parquet = tmp_path / "log.parquet"
    assert run("export", "--db", db, "-t", TASK, "--out", str(parquet)).returncode == 0
    result = run(
        "evaluate",
        "--from-file",
        str(out),
        "-t",
        TASK,
        "--candidate",
        "learned",
        "--resamples",
        "200",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    from_parquet = run(
        "evaluate",
        "--from-file",
        str(parquet),
        "-t",
        TASK,
        "--candidate",
        "learned",
        "--resamples",
        "200",
        "--json",
    )
    assert from_parquet.returncode == 0, from_parquet.stderr
    assert from_parquet.stdout == result.stdout
    refused = run("evaluate", "--from-file", str(out), "-t", TASK)
    assert refused.returncode == 2 and "holds no policy snapshot" in " ".join(
        refused.stderr.split()
    )
    both = run("evaluate", "--from-file", str(out), "--db", db, "-t", TASK)
    assert both.returncode == 2 and "exactly one of --db and --from-file" in " ".join(
        both.stderr.split()
    )
