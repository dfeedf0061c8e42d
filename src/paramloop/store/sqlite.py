"""The embedded decision log: one SQLite file, one writer.

The database runs in WAL mode, so readers in other processes never block the
writer.  Inside a process every statement goes through one connection guarded
by a lock: SQLite allows one writer at a time anyway, and a single connection
is also the only way ``:memory:`` databases can be shared between threads.
Write transactions start with ``BEGIN IMMEDIATE``, which takes the write lock
up front: a deferred transaction that reads and then writes can fail at once
with "database is locked" when another process wrote in between, whereas an
immediate one waits up to the busy timeout.

Durability:

``"process"`` (``synchronous=NORMAL``)
    A transaction that has committed survives the crash or ``kill -9`` of the
    process: the WAL is written before the commit returns.  A power failure or
    an operating-system crash may lose the last transactions (never corrupt the
    file).
``"power"`` (``synchronous=FULL``)
    The WAL is also synced to disk on every commit, so committed transactions
    survive power loss too, at the cost of one fsync per write.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

from paramloop.errors import ConfigError, StoreError
from paramloop.store.migrate import upgrade
from paramloop.store.sql import SQLDecisionLog

#: How much a committed transaction survives: the crash of the process, or power loss.
Durability = Literal["process", "power"]

_SYNCHRONOUS: dict[str, str] = {"process": "NORMAL", "power": "FULL"}

#: How long a writer waits for another process's write lock before failing.
BUSY_TIMEOUT_MS = 5_000

# Key in the DBAPI connection's ``info`` under which a read asks for a
# deferred BEGIN; everything else (writes, migrations) begins IMMEDIATE.
_BEGIN_KEY = "paramloop.sqlite.begin"

MEMORY = ":memory:"


class SQLiteDecisionLog(SQLDecisionLog):
    """The decision log in a SQLite file (or in memory, for tests and benchmarks).

    ``path`` is a file path (created with its schema if missing; its directory
    must exist) or ``":memory:"``.  ``durability`` is ``"process"`` or
    ``"power"`` (see the module documentation).  Raises
    :class:`~paramloop.errors.ConfigError` for an unknown durability and
    :class:`~paramloop.errors.StoreError` when the file cannot be opened or
    migrated.
    """

    backend = "SQLite"

    def __init__(self, path: str | Path, *, durability: Durability = "process") -> None:
        if durability not in _SYNCHRONOUS:
            raise ConfigError(
                "durability",
                f"must be one of {', '.join(repr(d) for d in _SYNCHRONOUS)}, got {durability!r}",
            )
        memory = str(path) == MEMORY
        super().__init__(MEMORY if memory else str(path))
        self._durability: Durability = durability
        self._lock = threading.Lock()
        self._engine = create_engine(
            URL.create("sqlite+pysqlite", database=None if memory else str(path)),
            # One connection for the life of the store: the lock serializes its users.
            poolclass=StaticPool,
            connect_args={"check_same_thread": False},
        )
        event.listen(self._engine, "connect", self._configure_connection)
        event.listen(self._engine, "begin", _begin_transaction)
        try:
            self._connection = self._engine.connect()
        except SQLAlchemyError as exc:
            self._engine.dispose()
            raise self._store_error("open", exc) from exc
        try:
            upgrade(self._connection)
        except (SQLAlchemyError, StoreError) as exc:
            self._connection.close()
            self._engine.dispose()
            if isinstance(exc, SQLAlchemyError):
                raise self._store_error("migrate", exc) from exc
            raise

    @property
    def durability(self) -> Durability:
        """What a committed transaction survives: ``"process"`` or ``"power"``."""
        return self._durability

    def _configure_connection(self, dbapi_connection: sqlite3.Connection, _record: object) -> None:
        # sqlite3 would otherwise BEGIN on its own, and not before DDL, which
        # would make migrations non-transactional; _begin_transaction emits BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if self._location != MEMORY and str(mode).lower() != "wal":
                raise StoreError(
                    f"cannot switch the SQLite database at {self._location} to WAL journal "
                    f"mode (it stays in {mode!r} mode); is it on a network file system?"
                )
            cursor.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[self._durability]}")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @contextmanager
    def _begin(self, *, write: bool) -> Iterator[Connection]:
        with self._lock:
            self._check_open("transaction")
            if not write:
                self._connection.info[_BEGIN_KEY] = "BEGIN"
            with self._connection.begin():
                yield self._connection

    def _serialize_outcomes(self, connection: Connection, task_type: str) -> None:
        # BEGIN IMMEDIATE already admits one writer at a time, across processes.
        return

    def _release(self) -> None:
        with self._lock:
            self._connection.close()
            self._engine.dispose()


def _begin_transaction(connection: Connection) -> None:
    connection.exec_driver_sql(connection.info.pop(_BEGIN_KEY, "BEGIN IMMEDIATE"))
