"""Search quality: normalised full text, passages of adjacent segments, how the language was decided.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

- ``segments.norm_text`` = ``indexer.text.normalize(text)`` (numbers as digits, British -> American spellings,
  contractions expanded), filled here for existing rows; full text now indexes it instead of ``text``
  (SQLite FTS5 external content on ``norm_text``; PostgreSQL GIN on ``to_tsvector('english', norm_text)``).
- ``passages``: sentence embeddings of segment spans. Existing segment embeddings become one-segment passages
  (so an old collection stays searchable by meaning); ``save-search reindex --text`` adds the windows and the
  whole-transcript passage. ``segments.embedding`` is dropped.
- ``videos.language_method`` / ``language_decision``: how the transcript language was chosen.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _fts(column: str) -> list[str]:
    return [
        "CREATE VIRTUAL TABLE segments_fts USING fts5("
        f"{column}, content='segments', content_rowid='id', tokenize='porter unicode61')",
        # External-content FTS5 tables must be told the old text to delete it, hence the 'delete' commands.
        f"""CREATE TRIGGER segments_fts_ai AFTER INSERT ON segments BEGIN
            INSERT INTO segments_fts(rowid, {column}) VALUES (new.id, new.{column});
        END""",
        f"""CREATE TRIGGER segments_fts_ad AFTER DELETE ON segments BEGIN
            INSERT INTO segments_fts(segments_fts, rowid, {column}) VALUES ('delete', old.id, old.{column});
        END""",
        f"""CREATE TRIGGER segments_fts_au AFTER UPDATE OF id, {column} ON segments BEGIN
            INSERT INTO segments_fts(segments_fts, rowid, {column}) VALUES ('delete', old.id, old.{column});
            INSERT INTO segments_fts(rowid, {column}) VALUES (new.id, new.{column});
        END""",
        "INSERT INTO segments_fts(segments_fts) VALUES ('rebuild')",
    ]


FTS_DROP = [
    "DROP TRIGGER IF EXISTS segments_fts_au",
    "DROP TRIGGER IF EXISTS segments_fts_ad",
    "DROP TRIGGER IF EXISTS segments_fts_ai",
    "DROP TABLE IF EXISTS segments_fts",
]


def _swap_fulltext(dialect: str, column: str) -> None:
    if dialect == "sqlite":
        for statement in FTS_DROP + _fts(column):
            op.execute(statement)
    elif dialect == "postgresql":
        op.drop_index("ix_segments_text_fts", table_name="segments")
        op.create_index("ix_segments_text_fts", "segments", [sa.text(f"to_tsvector('english', {column})")],
                        postgresql_using="gin")


def upgrade() -> None:
    from indexer.text import normalize

    dialect = op.get_context().dialect.name
    with op.batch_alter_table("videos") as batch:
        batch.add_column(sa.Column("language_method", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("language_decision", sa.Text(), nullable=True))
    op.create_table(
        "passages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("video_id", sa.Integer(), nullable=False),
        sa.Column("first_idx", sa.Integer(), nullable=False),
        sa.Column("last_idx", sa.Integer(), nullable=False),
        sa.Column("start_s", sa.Float(), nullable=False),
        sa.Column("end_s", sa.Float(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["video_id"], ["videos.id"], name=op.f("fk_passages_video_id_videos"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_passages")),
    )
    op.create_index(op.f("ix_passages_video_id"), "passages", ["video_id"], unique=False)
    op.execute("INSERT INTO meta (key, value) SELECT 'text_reindex_needed', 'migration 0003' "
               "WHERE EXISTS (SELECT 1 FROM segments)")  # the worker says: run `save-search reindex --text`
    op.execute("INSERT INTO passages (video_id, first_idx, last_idx, start_s, end_s, embedding) "
               "SELECT video_id, idx, idx, start_s, end_s, embedding FROM segments "
               "WHERE embedding IS NOT NULL ORDER BY video_id, idx")

    if dialect == "sqlite":  # the FTS triggers name segments' columns: drop them before the table is rebuilt
        for statement in FTS_DROP:
            op.execute(statement)
    with op.batch_alter_table("segments") as batch:
        batch.add_column(sa.Column("norm_text", sa.Text(), nullable=False, server_default=""))
        batch.drop_column("embedding")
    conn = op.get_bind()
    segments = sa.table("segments", sa.column("id", sa.Integer), sa.column("text", sa.Text),
                        sa.column("norm_text", sa.Text))
    rows = conn.execute(sa.select(segments.c.id, segments.c.text)).all()
    for start in range(0, len(rows), 1000):
        conn.execute(segments.update().where(segments.c.id == sa.bindparam("sid"))
                     .values(norm_text=sa.bindparam("nt")),
                     [{"sid": i, "nt": normalize(t)} for i, t in rows[start:start + 1000]])
    if dialect == "sqlite":
        for statement in _fts("norm_text"):
            op.execute(statement)
    else:
        _swap_fulltext(dialect, "norm_text")


def downgrade() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        for statement in FTS_DROP:
            op.execute(statement)
    with op.batch_alter_table("segments") as batch:
        batch.add_column(sa.Column("embedding", sa.LargeBinary(), nullable=True))
    op.execute("UPDATE segments SET embedding = (SELECT p.embedding FROM passages AS p WHERE "
               "p.video_id = segments.video_id AND p.first_idx = segments.idx AND p.last_idx = segments.idx)")
    if dialect == "sqlite":
        with op.batch_alter_table("segments") as batch:
            batch.drop_column("norm_text")
        for statement in _fts("text"):
            op.execute(statement)
    else:
        _swap_fulltext(dialect, "text")
        op.drop_column("segments", "norm_text")
    op.execute("DELETE FROM meta WHERE key = 'text_reindex_needed'")
    op.drop_index(op.f("ix_passages_video_id"), table_name="passages")
    op.drop_table("passages")
    with op.batch_alter_table("videos") as batch:
        batch.drop_column("language_decision")
        batch.drop_column("language_method")
