"""Alembic environment of paramloop's store migrations.

paramloop runs its migrations itself when a store is opened
(:func:`paramloop.store.migrate.upgrade`): it hands Alembic the open
connection in ``config.attributes["connection"]``, so there is no
``alembic.ini`` and no URL to configure here.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from paramloop.errors import StoreError


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise StoreError(
            "paramloop migrations run on the connection of the store being opened; "
            "open the store with paramloop.store.open_store(url) to migrate it"
        )
    # One transaction per revision: a failing revision leaves the database at
    # the last revision that completed, never half-way through one.
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


# Alembic executes this file with its context installed.  Anything that merely
# imports it (pytest's doctest collection) must not try to migrate.
if getattr(context, "config", None) is not None:
    run_migrations()
