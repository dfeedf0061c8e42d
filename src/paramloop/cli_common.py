"""What the ``paramloop`` commands share: the consoles, the error wrapper, task lookup, JSON output.

Kept apart from :mod:`paramloop.cli` so that the command modules it registers
(:mod:`paramloop.cli_server`, :mod:`paramloop.cli_rollout`) can use them without
importing the module that imports them.  The engine is imported inside the
functions: ``paramloop --help`` stays fast.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape

from paramloop.errors import ParamloopError

if TYPE_CHECKING:
    from paramloop.engine import TaskConfig
    from paramloop.server.settings import Deployment

# Tables need ~110 columns; when output is piped (no terminal to measure), use that width.
console = Console(width=None if sys.stdout.isatty() else 110)
errors = Console(stderr=True)


@contextmanager
def reported() -> Iterator[None]:
    """Turn a paramloop error into its message on stderr and exit status 2 (usage errors)."""
    try:
        yield
    except ParamloopError as exc:
        errors.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None


def deployment(config: Path | None, db: str | None = None) -> Deployment:
    """The deployment every operator command works on, read as ``paramloop serve`` reads it.

    The configuration is ``--config``, else ``PARAMLOOP_CONFIG``, else the embedded default
    (what ``serve`` runs without one, said on stderr); the store is ``--db``, else
    ``DATABASE_URL``, else the file's ``service.database_url``, else
    ``sqlite:///paramloop.db`` in the working directory.
    """
    import os

    from paramloop.server.settings import load_deployment

    found = load_deployment(config, database_url=db, env=os.environ)
    if found.embedded:
        errors.print(
            f"note: no --config or PARAMLOOP_CONFIG: the embedded default's task types "
            f"({', '.join(found.tasks)}), store {found.database_url}",
            soft_wrap=True,
            highlight=False,
        )
    return found


def configured_task(found: Deployment, task_type: str) -> TaskConfig:
    """One configured task type; :class:`~paramloop.errors.UnknownTaskTypeError` names the others."""
    from paramloop.errors import UnknownTaskTypeError

    if task_type not in found.tasks:
        raise UnknownTaskTypeError(task_type, sorted(found.tasks))
    return found.tasks[task_type]


def write_json(data: Any) -> None:
    """``data`` as indented JSON on stdout; NaN and infinities (open bounds) become ``null``."""
    sys.stdout.write(json.dumps(plain(data), indent=2) + "\n")


def plain(value: Any) -> Any:
    """``value`` as strict JSON data (non-finite floats become ``None``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def when(timestamp: float) -> str:
    """Epoch seconds as a UTC time, to the second."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")
