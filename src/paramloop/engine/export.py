"""Export a task type's decision log to JSON Lines, and read it back for offline evaluation.

One line per logged decision: ``{"decision": {...}, "outcome": {...} | null}`` with the
same shapes as :meth:`Decision.to_dict` and the stored outcome.  Reading streams the
file in chunks and names the line of any malformed record.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from paramloop.errors import InputError, ParamloopError
from paramloop.store.base import DecisionLog, EvaluationRow, LoggedRow, evaluation_row
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


def evaluation_rows(chunks: Iterable[list[LoggedRow]]) -> Iterator[list[EvaluationRow]]:
    """Chunks of decision objects (e.g. from :func:`read_jsonl`) as the rows evaluation reads."""
    for chunk in chunks:
        yield [evaluation_row(decision, recorded) for decision, recorded in chunk]


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
