"""The production decision log: PostgreSQL through psycopg 3.

Many service replicas may share one database.  Every call runs in one
transaction on a pooled connection; duplicate request ids and repeated
outcomes are decided by unique constraints, so racing replicas cannot log a
request twice or record two different outcomes for it.

psycopg is imported only when a store is opened (by SQLAlchemy's dialect), so
``import paramloop.store`` works without it.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from paramloop.errors import ConfigError, StoreError
from paramloop.store.migrate import upgrade
from paramloop.store.sql import SQLDecisionLog

#: The SQLAlchemy driver paramloop talks to PostgreSQL with.
DRIVER = "postgresql+psycopg"

# Lower case only: PostgreSQL folds unquoted names to lower case, and the
# name is used both quoted (CREATE SCHEMA) and unquoted (search_path).
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# Advisory locks are shared by everything in the database; paramloop's take
# this first key ("pl" + 1) so they cannot collide with another program's.
_LOCK_NAMESPACE = 0x706C0001
_MIGRATION_LOCK = 0
_CONNECT_TIMEOUT_S = 10
#: How long one statement, lock wait or connection attempt may take (seconds).
DEFAULT_TIMEOUT_S = 5.0


class PostgresDecisionLog(SQLDecisionLog):
    """The decision log in a PostgreSQL database.

    ``url`` is ``postgresql://…`` or ``postgresql+psycopg://…`` (the former is
    read as the latter).  ``schema``, when given, is created if missing and
    holds every table (it is the connections' ``search_path``); it must be a
    lower-case SQL identifier.  Opening migrates the database to the current
    schema revision, one process at a time.  Raises
    :class:`~paramloop.errors.ConfigError` for a malformed URL or schema name
    and :class:`~paramloop.errors.StoreError` when the server cannot be reached
    or the database cannot be migrated.
    """

    backend = "PostgreSQL"

    def __init__(
        self, url: str, *, schema: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        parsed = psycopg_url(url)
        if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
            raise ConfigError(
                "schema",
                "must be a lower-case SQL identifier (a-z, 0-9 and _, not starting with "
                f"a digit, at most 63 characters), got {schema!r}",
            )
        location = parsed.render_as_string(hide_password=True)
        super().__init__(location if schema is None else f"{location} (schema {schema})")
        if (
            isinstance(timeout_s, bool)
            or not isinstance(timeout_s, int | float)
            or not 0 < timeout_s <= 3600
        ):
            raise ConfigError("timeout_s", f"must be in (0, 3600] seconds, got {timeout_s!r}")
        timeout_ms = max(1, round(timeout_s * 1000))
        # Every statement, lock wait and connection attempt ends within the timeout
        # (a StoreUnavailableError), so a stuck server cannot hold a request for ever;
        # TCP keepalives find a connection whose server vanished.
        options = f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}"
        given = parsed.query.get("options")  # the URL's own libpq options come after: they win
        if given:
            options += " " + " ".join([given] if isinstance(given, str) else given)
        if schema is not None:
            options += f" -c search_path={schema}"
        connect_args: dict[str, Any] = {
            "connect_timeout": max(2, math.ceil(timeout_s)),
            "application_name": "paramloop",
            "options": options,
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 2,
            "tcp_user_timeout": timeout_ms,
        }
        # pool_pre_ping replaces connections that died while idle in the pool
        # (server restart, failover) instead of failing the next call.
        self._engine = create_engine(
            parsed, pool_pre_ping=True, pool_timeout=timeout_s, connect_args=connect_args
        )
        try:
            self._migrate(parsed, schema)
        except (SQLAlchemyError, StoreError) as exc:
            self._engine.dispose()
            if isinstance(exc, SQLAlchemyError):
                raise self._store_error("open", exc) from exc
            raise

    def _migrate(self, url: URL, schema: str | None) -> None:
        # The schema must exist before the main engine's first connection,
        # which records the current schema; and concurrent openers must not
        # race to create it or its tables, hence the advisory lock.
        bootstrap = create_engine(
            url, poolclass=NullPool, connect_args={"connect_timeout": _CONNECT_TIMEOUT_S}
        )
        try:
            with bootstrap.connect() as lock_conn:
                lock_conn = lock_conn.execution_options(isolation_level="AUTOCOMMIT")
                lock = {"ns": _LOCK_NAMESPACE, "key": _MIGRATION_LOCK}
                lock_conn.execute(text("SELECT pg_advisory_lock(:ns, :key)"), lock)
                try:
                    if schema is not None:
                        lock_conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                    with self._engine.connect() as conn:
                        # A migration may take long: no timeout for it (session settings
                        # outlive the transaction that sets them).
                        conn.exec_driver_sql("SET statement_timeout = 0; SET lock_timeout = 0")
                        conn.commit()
                        upgrade(conn)
                        conn.exec_driver_sql("RESET statement_timeout; RESET lock_timeout")
                        conn.commit()
                finally:
                    lock_conn.execute(text("SELECT pg_advisory_unlock(:ns, :key)"), lock)
        finally:
            bootstrap.dispose()

    @contextmanager
    def _begin(self, *, write: bool) -> Iterator[Connection]:
        with self._engine.begin() as conn:
            yield conn

    def _serialize_outcomes(self, connection: Connection, task_type: str) -> None:
        # seq comes from a sequence, which hands out numbers at INSERT, not at
        # COMMIT.  Holding a per-task-type lock from before the INSERT until the
        # commit makes outcomes of a task type commit in seq order.
        key = zlib.crc32(task_type.encode()) - 2**31  # the lock key is a signed int4
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:ns, :key)"),
            {"ns": _LOCK_NAMESPACE + 1, "key": key},
        )

    def _release(self) -> None:
        self._engine.dispose()


def psycopg_url(url: str) -> URL:
    """``url`` parsed, with ``postgresql://`` read as ``postgresql+psycopg://``.

    Raises :class:`~paramloop.errors.ConfigError` (field ``database_url``) for
    anything that is not a PostgreSQL URL for the psycopg driver; the message
    never contains the password.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            "database_url", "is not a valid URL (expected postgresql://user@host:port/database)"
        ) from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername=DRIVER)
    if parsed.drivername != DRIVER:
        raise ConfigError(
            "database_url",
            f"unsupported PostgreSQL driver {parsed.drivername!r}; "
            f"use postgresql:// or {DRIVER}://",
        )
    return parsed
