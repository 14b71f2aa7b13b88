"""Schema migrations at start-up: ``init_db(url)`` brings any database to the latest Alembic revision.

Every process (API, workers) calls ``init_db`` on start-up, possibly at the same moment, so the upgrade
runs under a lock, in one transaction:

- PostgreSQL: a session-level ``pg_advisory_lock`` around the upgrade (DDL is transactional there).
- SQLite: ``BEGIN IMMEDIATE`` takes the database's write lock before the version table is read; a second
  process waits on the busy timeout and then finds the schema at head. pysqlite's own transaction
  handling is switched off on this connection because it would run DDL outside any transaction.
  Foreign keys are off on this connection: batch migrations rebuild tables with DROP TABLE, which would
  otherwise cascade-delete child rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from indexer.storage.db import make_engine

if TYPE_CHECKING:
    from alembic.config import Config

ALEMBIC_DIR = Path(__file__).resolve().parents[2] / "alembic"
# The newest revision in alembic/versions (tests/test_db_transcripts.py checks it is Alembic's head): a database already
# there is not upgraded, so a process that only reads (a search from the command line) never imports Alembic, which
# with its script directory cost ~0.4 s of a cold `save-search search` (BENCHMARKS.md, "Cold command-line search").
HEAD_REVISION = "0007"
FTS_TABLE = "segments_fts"  # SQLite FTS5 index of segments.text (plus its shadow tables segments_fts_*)
PG_FTS_INDEX = "ix_segments_text_fts"  # PostgreSQL GIN index on to_tsvector('english', segments.text)
# Any fixed 64-bit key; advisory locks are per database, so one key serves every save-search database.
_PG_LOCK_KEY = 0x5A5E_5EA6_C400_0001


def include_object(obj, name: str | None, type_: str, reflected: bool, compare_to) -> bool:
    """Autogenerate/compare filter: skip the full-text objects the migrations manage by hand."""
    if type_ == "table" and name is not None and (name == FTS_TABLE or name.startswith(FTS_TABLE + "_")):
        return False
    return not (type_ == "index" and name == PG_FTS_INDEX)


def alembic_config(url: str) -> Config:
    """A file-less Alembic config for ``url`` (the repo's ``alembic.ini`` is only for the command line)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ConfigParser interpolation
    return cfg


def _migration_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = make_engine(url)  # WAL, busy timeout, creates the parent folder

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection, _record) -> None:  # runs after make_engine's pragmas
            dbapi_connection.execute("PRAGMA foreign_keys=OFF")
            dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (below)

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, poolclass=NullPool)


@contextmanager
def locked_connection(url: str) -> Iterator[Connection]:
    """A connection holding the migration lock, inside a transaction committed when the block succeeds."""
    engine = _migration_engine(url)
    pg = engine.dialect.name == "postgresql"
    try:
        with engine.connect() as conn:
            if pg:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
                conn.commit()
            try:
                with conn.begin():
                    yield conn
            finally:
                if pg:
                    conn.rollback()
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                    conn.commit()
    finally:
        engine.dispose()


def at_head(url: str) -> bool:
    """Whether the database at ``url`` is at ``HEAD_REVISION`` already (one plain read of Alembic's version table)."""
    engine = make_engine(url) if url.startswith("sqlite") else create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))] == [HEAD_REVISION]
    except SQLAlchemyError:  # no version table yet (a new database), or none we can read: let Alembic decide
        return False
    finally:
        engine.dispose()


def init_db(url: str) -> None:
    """Create or upgrade the schema at ``url`` to the latest revision. Idempotent and concurrency-safe."""
    if at_head(url):
        return
    import alembic.command as command

    cfg = alembic_config(url)
    with locked_connection(url) as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at; None for a database Alembic never touched."""
    engine = make_engine(url) if url.startswith("sqlite") else create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            from alembic.runtime.migration import MigrationContext

            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    """The newest revision shipped with this code."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
