"""Alembic's environment for Treadle's schema.

Treadle runs migrations itself (runner/storage/schema.py) on a connection it opened,
under its schema lock; that connection arrives in `config.attributes["connection"]`.
For writing a new revision from a change to runner/storage/models.py, see
docs/architecture.md ("Changing the schema").
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from runner.storage import models  # noqa: F401  (registers every table on SQLModel.metadata)

config = context.config
target_metadata = SQLModel.metadata


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # `alembic` on the command line: a URL from alembic.ini or -x url=...
        from sqlalchemy import create_engine

        url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
        with create_engine(url).connect() as conn:
            _run(conn)
        return
    _run(connection)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")  # SQLite cannot ALTER most things
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
