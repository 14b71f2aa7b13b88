"""Alembic environment: one migration stream for SQLite and PostgreSQL.

The URL is the config's ``sqlalchemy.url`` (set programmatically by ``indexer.storage.migrate``) or, for people
running ``alembic`` by hand, ``SAVE_SEARCH_DATABASE_URL``. ``indexer.storage.migrate.init_db`` passes an open
connection (``config.attributes["connection"]``) that already holds the migration lock and a transaction,
so concurrent start-ups never migrate twice; the command-line path takes the same lock.

This folder must stay without ``__init__.py``: as a namespace directory it cannot shadow the installed
``alembic`` package when the repository root is on ``sys.path``.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from indexer.storage.db import Base
from indexer.storage.migrate import include_object, locked_connection

config = context.config
if config.config_file_name is not None:  # the CLI; init_db passes no file and leaves logging alone
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("SAVE_SEARCH_DATABASE_URL")
    if not url:
        raise RuntimeError("No database URL: set sqlalchemy.url in the Alembic config or SAVE_SEARCH_DATABASE_URL")
    return url


def _configure(**kwargs) -> None:
    dialect = kwargs["connection"].dialect.name if "connection" in kwargs else kwargs["url"].split(":", 1)[0]
    context.configure(
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=dialect.startswith("sqlite"),
        include_object=include_object,  # the FTS table and expression index are managed by hand
        compare_type=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """``alembic upgrade head --sql``: emit the SQL instead of running it."""
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    with locked_connection(_url()) as connection:
        _run(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
