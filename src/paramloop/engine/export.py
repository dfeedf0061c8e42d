"""Export a task type's decision log to JSON Lines or Parquet, and read it back for evaluation.

JSON Lines: one line per logged decision, ``{"decision": {...}, "outcome": {...} | null}``
with the same shapes as :meth:`Decision.to_dict` and the stored outcome.

Parquet (needs ``pyarrow``: ``pip install 'paramloop[parquet]'``): one row per logged
decision with typed columns (:data:`PARQUET_SCHEMA`) that analysts can query as they
are — the parameters and the context as JSON text, the outcome's fields as nullable
columns.  Both round-trip exactly (floats bit for bit, the fingerprint as uint64).

Reading streams the file in chunks and names the line (or row) of any malformed record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from paramloop.errors import InputError, ParamloopError
from paramloop.store.base import DecisionLog, LoggedRow
from paramloop.types import Decision, Outcome, RecordedOutcome


def export_jsonl(
    store: DecisionLog,
    task_type: str,
    path: str | Path,
    *,
    start: float | None = None,
    end: float | None = None,
    chunk_size: int = 10_000,
) -> int:
    """Write the task type's logged decisions in ``[start, end)`` to ``path``; returns the count."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as out:
        for chunk in store.iter_logged(task_type, start, end, chunk_size):
            for decision, recorded in chunk:
                out.write(
                    json.dumps({"decision": decision.to_dict(), "outcome": _outcome(recorded)})
                    + "\n"
                )
                count += 1
    return count


def read_jsonl(
    path: str | Path, task_type: str, *, chunk_size: int = 10_000
) -> Iterator[list[LoggedRow]]:
    """Stream the rows of ``task_type`` from a file written by :func:`export_jsonl`, in chunks."""
    file = Path(path)
    if not file.exists():
        raise InputError("path", f"no such file: {file}")
    chunk: list[LoggedRow] = []
    with file.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                decision = Decision.from_dict(record["decision"])
                recorded = (
                    None if record["outcome"] is None else _recorded(decision, record["outcome"])
                )
            except (ValueError, KeyError, TypeError, ParamloopError) as exc:
                raise InputError(
                    f"{file.name}:{number}", f"not a logged decision record: {exc}"
                ) from None
            if decision.task_type != task_type:
                continue
            chunk.append((decision, recorded))
            if len(chunk) >= chunk_size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


#: Columns of a Parquet export, in order: (name, pyarrow type name, nullable).
PARQUET_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("request_id", "string", False),
    ("task_type", "string", False),
    ("timestamp", "float64", False),
    ("arm", "int64", False),
    ("params", "string", False),
    ("propensity", "float64", False),
    ("confidence", "float64", False),
    ("policy", "string", False),
    ("policy_revision", "int64", False),
    ("origin", "string", False),
    ("phase", "string", False),
    ("applied", "bool_", False),
    ("seed", "int64", True),
    ("error", "string", True),
    ("schema_version", "int64", False),
    ("context", "string", False),
    ("context_fingerprint", "uint64", False),
    ("outcome", "string", True),
    ("reward", "float64", True),
    ("reward_version", "string", True),
    ("source", "string", True),
    ("outcome_timestamp", "float64", True),
    ("seq", "int64", True),
)


def export_parquet(
    store: DecisionLog,
    task_type: str,
    path: str | Path,
    *,
    start: float | None = None,
    end: float | None = None,
    chunk_size: int = 50_000,
) -> int:
    """Write the task type's logged decisions in ``[start, end)`` to a Parquet file; returns the count.

    One row group per chunk, so memory holds one chunk at a time.
    """
    pa, pq = _pyarrow()
    schema = pa.schema(
        [pa.field(name, getattr(pa, kind)(), nullable=null) for name, kind, null in PARQUET_COLUMNS]
    )
    count = 0
    with pq.ParquetWriter(str(path), schema, compression="zstd") as writer:
        for chunk in store.iter_logged(task_type, start, end, chunk_size):
            columns: dict[str, list[Any]] = {name: [] for name, _, _ in PARQUET_COLUMNS}
            for decision, recorded in chunk:
                data = decision.to_dict()
                outcome = _outcome(recorded)
                row = {
                    **{k: data[k] for k in data if k not in ("params", "context")},
                    "params": json.dumps(data["params"]),
                    "context": json.dumps(data["context"]),
                    "outcome": None if outcome is None else json.dumps(outcome["outcome"]),
                    "reward": None if outcome is None else outcome["reward"],
                    "reward_version": None if outcome is None else outcome["reward_version"],
                    "source": None if outcome is None else outcome["source"],
                    "outcome_timestamp": None if outcome is None else outcome["timestamp"],
                    "seq": None if outcome is None else outcome["seq"],
                }
                for name in columns:
                    columns[name].append(row[name])
            writer.write_table(pa.table(columns, schema=schema))
            count += len(chunk)
    return count


def read_parquet(
    path: str | Path, task_type: str, *, chunk_size: int = 50_000
) -> Iterator[list[LoggedRow]]:
    """Stream the rows of ``task_type`` from a file written by :func:`export_parquet`, in chunks."""
    _, pq = _pyarrow()
    file = Path(path)
    if not file.exists():
        raise InputError("path", f"no such file: {file}")
    try:
        reader = pq.ParquetFile(str(file))
    except Exception as exc:  # pyarrow raises its own ArrowInvalid for a file that is not Parquet
        raise InputError(str(file), f"not a Parquet file: {exc}") from None
    names = [name for name, _, _ in PARQUET_COLUMNS]
    missing = [name for name in names if name not in reader.schema_arrow.names]
    if missing:
        raise InputError(
            str(file), f"not a paramloop export: columns {', '.join(missing)} are missing"
        )
    number = 0
    for batch in reader.iter_batches(batch_size=chunk_size, columns=names):
        chunk: list[LoggedRow] = []
        for row in batch.to_pylist():
            number += 1
            if row["task_type"] != task_type:
                continue
            try:
                chunk.append(_parquet_row(row))
            except (ValueError, KeyError, TypeError, ParamloopError) as exc:
                raise InputError(
                    f"{file.name}:row {number}", f"not a logged decision record: {exc}"
                ) from None
        if chunk:
            yield chunk


def _parquet_row(row: dict[str, Any]) -> LoggedRow:
    data = {k: v for k, v in row.items() if k in _DECISION_FIELDS}
    data["params"] = json.loads(row["params"])
    data["context"] = json.loads(row["context"])
    decision = Decision.from_dict(data)
    if row["outcome"] is None:
        return decision, None
    outcome = {
        "outcome": json.loads(row["outcome"]),
        "reward": row["reward"],
        "reward_version": row["reward_version"],
        "source": row["source"],
        "timestamp": row["outcome_timestamp"],
        "seq": row["seq"],
    }
    return decision, _recorded(decision, outcome)


_DECISION_FIELDS = frozenset(
    (
        "request_id",
        "task_type",
        "timestamp",
        "arm",
        "propensity",
        "confidence",
        "policy",
        "policy_revision",
        "origin",
        "phase",
        "applied",
        "seed",
        "error",
        "schema_version",
        "context_fingerprint",
    )
)


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa  # type: ignore[import-untyped, unused-ignore]
        import pyarrow.parquet as pq  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        raise InputError(
            "format", "Parquet needs pyarrow: pip install 'paramloop[parquet]'"
        ) from None
    return pa, pq


def read_export(
    path: str | Path, task_type: str, *, chunk_size: int = 10_000
) -> Iterator[list[LoggedRow]]:
    """:func:`read_parquet` for a ``.parquet`` file, :func:`read_jsonl` for any other."""
    if Path(path).suffix == ".parquet":
        return read_parquet(path, task_type, chunk_size=chunk_size)
    return read_jsonl(path, task_type, chunk_size=chunk_size)


def _outcome(recorded: RecordedOutcome | None) -> dict[str, Any] | None:
    if recorded is None:
        return None
    return {
        "outcome": recorded.outcome.to_dict(),
        "reward": recorded.reward,
        "reward_version": recorded.reward_version,
        "source": recorded.source,
        "timestamp": recorded.timestamp,
        "seq": recorded.seq,
    }


def _recorded(decision: Decision, data: dict[str, Any]) -> RecordedOutcome:
    return RecordedOutcome(
        request_id=decision.request_id,
        task_type=decision.task_type,
        outcome=Outcome.from_dict(data["outcome"]),
        reward=float(data["reward"]),
        reward_version=str(data["reward_version"]),
        source=str(data["source"]),
        timestamp=float(data["timestamp"]),
        seq=int(data["seq"]),
    )
