"""Open a store (decision log and audit log) from a database URL (``DATABASE_URL``)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from paramloop.errors import ConfigError
from paramloop.store.base import Store

if TYPE_CHECKING:
    from paramloop.store.sqlite import Durability

_ALLOWED = (
    "sqlite:///path/to/file.db, sqlite:///:memory:, a file path, "
    "postgresql://... or postgresql+psycopg://..."
)

_DURABILITIES: dict[str, Durability] = {"process": "process", "power": "power"}


def open_store(url: str) -> Store:
    """The store at ``url`` (decision log and audit log), migrated to the current schema.

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``,
    ``sqlite:///:memory:`` and a bare file path open a
    :class:`~paramloop.store.SQLiteDecisionLog`; a SQLite URL may end in
    ``?durability=power`` (default ``process``).  ``postgresql://`` and
    ``postgresql+psycopg://`` URLs open a
    :class:`~paramloop.store.PostgresDecisionLog`.  Anything else raises
    :class:`~paramloop.errors.ConfigError` (field ``database_url``).

    >>> store = open_store("sqlite:///:memory:")
    >>> store.count_decisions()
    0
    >>> store.close()
    """
    if not url.strip():
        raise ConfigError("database_url", f"is empty; use {_ALLOWED}")
    scheme, separator, rest = url.partition("://")
    if not separator:
        return _open_sqlite(url, durability="process")
    if scheme == "sqlite":
        return _open_sqlite_url(rest)
    if scheme in ("postgresql", "postgresql+psycopg"):
        from paramloop.store.postgres import PostgresDecisionLog

        return PostgresDecisionLog(url)
    # Only the scheme: the rest of the URL may hold a password.
    raise ConfigError("database_url", f"unsupported scheme {scheme!r}; use {_ALLOWED}")


def _open_sqlite_url(rest: str) -> Store:
    # "sqlite://" + "/path": three slashes then a relative path, four for an
    # absolute one; "sqlite://" alone is an in-memory database, as in SQLAlchemy.
    if rest and not rest.startswith("/"):
        raise ConfigError(
            "database_url",
            "a SQLite URL has no host: use sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db",
        )
    path, _, query = rest[1:].partition("?")
    durability: Durability = "process"
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != "durability":
            raise ConfigError(
                "database_url", f"unknown SQLite URL option {key!r}; the only option is durability"
            )
        if value not in _DURABILITIES:
            raise ConfigError(
                "database_url", f"durability must be 'process' or 'power', got {value!r}"
            )
        durability = _DURABILITIES[value]
    return _open_sqlite(path or ":memory:", durability=durability)


def _open_sqlite(path: str, *, durability: Durability) -> Store:
    # Imported here: SQLAlchemy loads only when a database is opened.
    from paramloop.store.sqlite import SQLiteDecisionLog

    return SQLiteDecisionLog(path, durability=durability)
