"""Run the store's Alembic migrations on an open connection.

Stores call :func:`upgrade` when they open, so a database is always at the
schema this version of paramloop expects; upgrading a database that is
already there does nothing.  The migration scripts ship inside the package
(``migrations/``), so this works from an installed wheel.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError
from sqlalchemy.engine import Connection

from paramloop.errors import StoreError

#: Where the Alembic environment and revisions live.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: The revision this version of paramloop writes and reads.
HEAD = "0004"


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Migrate the database behind ``connection`` up to ``revision``.

    ``connection`` must not be inside a transaction: each revision runs in a
    transaction of its own.  Raises :class:`~paramloop.errors.StoreError` when
    the database is at a revision this version of paramloop does not know
    (written by a newer version).
    """
    try:
        command.upgrade(_config(connection), revision)
    except CommandError as exc:
        raise StoreError(f"cannot migrate the store to revision {revision!r}: {exc}") from exc
    _end_transaction(connection)


def downgrade(connection: Connection, revision: str) -> None:
    """Migrate the database behind ``connection`` down to ``revision`` (``base``: empty)."""
    try:
        command.downgrade(_config(connection), revision)
    except CommandError as exc:
        raise StoreError(f"cannot migrate the store to revision {revision!r}: {exc}") from exc
    _end_transaction(connection)


def _end_transaction(connection: Connection) -> None:
    # When there is nothing to migrate, Alembic leaves the transaction in which
    # it read the current revision open; the caller gets the connection back
    # as it gave it, outside any transaction.
    if connection.in_transaction():
        connection.commit()


def _config(connection: Connection) -> Config:
    config = Config()
    # The option goes through configparser interpolation, which reads "%" as
    # the start of a reference.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config
