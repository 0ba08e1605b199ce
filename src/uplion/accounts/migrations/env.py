"""Alembic's environment: run the revisions on the connection ``db.migrate`` opened.

``migrate`` hands over a synchronous facade of an async connection, already in a transaction
(``AsyncConnection.run_sync``); there is no ``alembic.ini``, no URL here and no offline mode.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("apply migrations with uplion.accounts.db.migrate(url)")
context.configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
