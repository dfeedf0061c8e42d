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

Checkpoints (copying the WAL back into the database file, with an fsync) run
on a background thread every :data:`CHECKPOINT_INTERVAL_S` seconds instead of
inside whichever commit happens to cross SQLite's threshold: measured here,
those in-line checkpoints were 80 % of the writer's commit time and its whole
p99.  The in-line threshold stays, raised to :data:`AUTOCHECKPOINT_PAGES`, as a
bound on the WAL's size should the background thread fall behind.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Literal

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

from paramloop.errors import ConfigError, StoreError, StoreUnavailableError, UnknownRequestError
from paramloop.store.base import EvaluationRow
from paramloop.store.migrate import upgrade
from paramloop.store.records import dumps, same_outcome
from paramloop.store.sql import (
    SQLDecisionLog,
    decision_row,
    outcome_row,
    task_type_mismatch,
)
from paramloop.types import Decision, RecordedOutcome

#: How much a committed transaction survives: the crash of the process, or power loss.
Durability = Literal["process", "power"]

_SYNCHRONOUS: dict[str, str] = {"process": "NORMAL", "power": "FULL"}

#: How long a writer waits for another process's write lock before failing.
BUSY_TIMEOUT_MS = 5_000
#: Seconds between background WAL checkpoints.
CHECKPOINT_INTERVAL_S = 0.5
#: WAL size (pages of 4 KiB) at which a commit checkpoints in line after all.
AUTOCHECKPOINT_PAGES = 16_000

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
        self._checkpointer = None if memory else _Checkpointer(str(path))

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
            cursor.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")
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

    # -- the per-request writes, on the driver connection ------------------------------
    #
    # append_decision and attach_outcome run on every request.  Through SQLAlchemy's
    # execution machinery each statement costs ~25 µs of Python; on the sqlite3
    # connection it costs ~3 µs, which is what makes >5,000 durable rounds/s possible.
    # Same transactions, same checks, same errors as the shared implementation; the
    # contract suite runs against both.

    def append_decision(self, decision: Decision) -> None:
        row = decision_row(decision)
        with self._lock:
            self._check_open("append_decision")
            try:
                self._write(_insert_sql("logged_decisions", row), row)
            except sqlite3.IntegrityError:
                duplicate = True
            except sqlite3.Error as exc:
                raise driver_error("append_decision", self._location, exc) from exc
            else:
                return
        if duplicate:
            super().append_decision(decision)  # reports the precise integrity error

    def attach_outcome(self, recorded: RecordedOutcome) -> tuple[RecordedOutcome, bool]:
        row = outcome_row(recorded)
        with self._lock:
            self._check_open("attach_outcome")
            raw = self._raw
            try:
                raw.execute("BEGIN IMMEDIATE")
                try:
                    found = raw.execute(_FIND_OUTCOME, (recorded.request_id,)).fetchone()
                    if found is None:
                        raise UnknownRequestError(recorded.request_id)
                    if found[0] != recorded.task_type:
                        raise task_type_mismatch(recorded, found[0])
                    if found[1] is None:
                        seq = raw.execute(_insert_sql("outcomes", row), row).lastrowid
                        raw.execute(
                            _MARK_DECIDED,
                            (
                                dumps(recorded.outcome.to_dict()),
                                recorded.reward,
                                recorded.request_id,
                            ),
                        )
                        raw.execute("COMMIT")
                        return replace(recorded, seq=int(seq or 0)), True
                finally:
                    if raw.in_transaction:
                        raw.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise driver_error("attach_outcome", self._location, exc) from exc
        existing = self.get_outcome(recorded.request_id)
        if existing is not None and same_outcome(existing, recorded):
            return existing, False
        return super().attach_outcome(recorded)  # raises the conflict with the shared checks

    def _iter_evaluation_chunks(
        self, task_type: str, start: float | None, end: float | None, chunk_size: int
    ) -> Iterator[list[EvaluationRow]]:
        # On the driver connection: SQLAlchemy's row objects cost more than SQLite
        # takes to read a row, and evaluation reads millions of them.
        where = ["d.task_type = ?", "d.applied", "d.reward IS NOT NULL"]
        window: list[object] = [task_type]
        if start is not None:
            where.append("d.timestamp >= ?")
            window.append(start)
        if end is not None:
            where.append("d.timestamp < ?")
            window.append(end)
        first = _EVALUATION_SQL.format(where=" AND ".join(where))
        following = _EVALUATION_SQL.format(
            where=" AND ".join([*where, "(d.timestamp, d.id) > (?, ?)"])
        )
        after: tuple[object, ...] = ()
        while True:
            with self._lock:
                self._check_open("iter_evaluation_rows")
                raw = self._raw
                try:
                    raw.execute("BEGIN")
                    try:
                        rows = raw.execute(
                            following if after else first, (*window, *after, chunk_size)
                        ).fetchall()
                    finally:
                        raw.execute("COMMIT")
                except sqlite3.Error as exc:
                    raise StoreError(
                        f"iter_evaluation_rows failed on the SQLite store at {self._location}: {exc}"
                    ) from exc
            if not rows:
                return
            after = (rows[-1][0], rows[-1][-1])
            yield [row[:-1] for row in rows]
            if len(rows) < chunk_size:
                return

    def _write(self, sql: str, row: dict[str, object]) -> None:
        raw = self._raw
        raw.execute("BEGIN IMMEDIATE")
        try:
            raw.execute(sql, row)
            raw.execute("COMMIT")
        finally:
            if raw.in_transaction:
                raw.execute("ROLLBACK")

    @property
    def _raw(self) -> sqlite3.Connection:
        driver = self._connection.connection.driver_connection
        if not isinstance(driver, sqlite3.Connection):
            raise StoreError("the SQLite store lost its driver connection")
        return driver

    def _serialize_outcomes(self, connection: Connection, task_type: str) -> None:
        # BEGIN IMMEDIATE already admits one writer at a time, across processes.
        return

    def _release(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        with self._lock:
            self._connection.close()
            self._engine.dispose()


_FIND_OUTCOME = (
    "SELECT d.task_type, o.seq FROM logged_decisions AS d "
    "LEFT OUTER JOIN outcomes AS o ON o.request_id = d.request_id WHERE d.request_id = ?"
)
_EVALUATION_SQL = (
    "SELECT d.timestamp, d.arm, d.log_propensity, d.context_features, d.reward, "
    "d.chosen_params, d.policy_version, d.id "
    "FROM logged_decisions AS d WHERE {where} ORDER BY d.timestamp, d.id LIMIT ?"
)
_MARK_DECIDED = "UPDATE logged_decisions SET outcome = ?, reward = ? WHERE request_id = ?"
_INSERTS: dict[tuple[str, tuple[str, ...]], str] = {}


def _insert_sql(table: str, row: dict[str, object]) -> str:
    """``INSERT INTO table (cols) VALUES (:cols)`` for the row's keys, built once per shape."""
    key = (table, tuple(row))
    sql = _INSERTS.get(key)
    if sql is None:
        columns = ", ".join(row)
        values = ", ".join(f":{name}" for name in row)
        sql = _INSERTS[key] = f"INSERT INTO {table} ({columns}) VALUES ({values})"
    return sql


class _Checkpointer(threading.Thread):
    """Checkpoints the WAL every :data:`CHECKPOINT_INTERVAL_S`, off the writer's path.

    PASSIVE checkpoints never wait for (or block) readers and writers; they
    copy what they can and leave the rest to the next round.
    """

    def __init__(self, path: str) -> None:
        super().__init__(name=f"paramloop-sqlite-checkpoint:{path}", daemon=True)
        self._path = path
        self._stopped = threading.Event()
        self.start()

    def run(self) -> None:
        connection = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        try:
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            while not self._stopped.wait(CHECKPOINT_INTERVAL_S):
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    continue  # busy or locked: the next round (or the in-line threshold) catches up
        finally:
            connection.close()

    def stop(self) -> None:
        self._stopped.set()
        self.join()


def driver_error(operation: str, location: str, exc: sqlite3.Error) -> StoreError:
    """The store error for a sqlite3 failure: unavailable when retrying later can succeed.

    A locked or busy database, a full disk or an I/O error is
    :class:`StoreUnavailableError`; anything else (a constraint, a malformed
    value) is a plain :class:`StoreError`.
    """
    kind = StoreUnavailableError if isinstance(exc, sqlite3.OperationalError) else StoreError
    return kind(f"{operation} failed on the SQLite store at {location}: {exc}")


def _begin_transaction(connection: Connection) -> None:
    connection.exec_driver_sql(connection.info.pop(_BEGIN_KEY, "BEGIN IMMEDIATE"))
