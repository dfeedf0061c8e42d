"""Storage: the decision log, policy snapshots and the audit log, on SQLite or PostgreSQL.

:func:`open_store` turns a ``DATABASE_URL`` into a
:class:`~paramloop.store.base.Store`: one object that is both a
:class:`~paramloop.store.base.DecisionLog` and an
:class:`~paramloop.store.base.AuditLog`.  The SQLite and PostgreSQL stores
share :class:`~paramloop.store.sql.SQLDecisionLog` and pass one contract suite.

The SQL stores are imported on first use: the engine imports
:mod:`paramloop.store.base`, which runs this module, and ``import paramloop``
must not pay for SQLAlchemy and Alembic when it never opens a database.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from paramloop.store.base import AuditLog, DecisionLog, LoggedRow, OutcomeRow, Store

if TYPE_CHECKING:
    from paramloop.store.factory import open_store
    from paramloop.store.postgres import PostgresDecisionLog
    from paramloop.store.sqlite import Durability, SQLiteDecisionLog

_LAZY = {
    "open_store": "paramloop.store.factory",
    "PostgresDecisionLog": "paramloop.store.postgres",
    "SQLiteDecisionLog": "paramloop.store.sqlite",
    "Durability": "paramloop.store.sqlite",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = [
    "AuditLog",
    "DecisionLog",
    "Durability",
    "LoggedRow",
    "OutcomeRow",
    "PostgresDecisionLog",
    "SQLiteDecisionLog",
    "Store",
    "open_store",
]
