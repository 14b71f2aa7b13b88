"""A tag per write of a video's passages and segments, so a search process can cache them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08

- ``videos.text_tag``: a random 62-bit integer that every write of a video's segments or passages replaces (the
  worker, ``reindex --text``, ``reindex --ocr``). The search process keeps the candidates' passages and words in
  memory (``indexer.search.passage_cache``) and serves an entry only while the row's tag is the entry's; NULL (rows
  written before this revision) is never cached. At 100k videos with long ones mixed in, reading and scoring the
  candidates' passages from the database was most of ``/search`` (BENCHMARKS.md, "Search latency end to end").
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("videos", sa.Column("text_tag", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("videos", "text_tag")
