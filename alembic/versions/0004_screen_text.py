"""On-screen text: segments and passages say where their text comes from; videos say whether OCR ran.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

- ``segments.source`` / ``passages.source``: ``speech`` (the transcript; every existing row) or ``screen``
  (text read from the frames, ``indexer.inference.ocr``). Screen segments follow a video's speech segments (``idx``
  n..n+m-1) and have passages of their own: never windowed together with speech.
- ``videos.ocr_status`` (``read`` | ``failed`` | null: never read, e.g. ingested before this revision or with
  ``SAVE_SEARCH_OCR=0``) and ``videos.ocr_error``: a failed OCR never fails the video, it leaves this note.
  ``save-search reindex --ocr`` reads the videos whose status is not ``read``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN on both databases (no table rebuild): SQLite's FTS triggers on segments stay as they are.
    for table in ("segments", "passages"):
        op.add_column(table, sa.Column("source", sa.String(length=16), nullable=False, server_default="speech"))
    op.add_column("videos", sa.Column("ocr_status", sa.String(length=16), nullable=True))
    op.add_column("videos", sa.Column("ocr_error", sa.Text(), nullable=True))


def downgrade() -> None:
    # The older schema cannot tell screen text from speech: it goes, rather than becoming part of the transcript.
    op.execute("DELETE FROM passages WHERE source = 'screen'")
    op.execute("DELETE FROM segments WHERE source = 'screen'")
    # SQLite >= 3.35 drops a column in place; no trigger or index names these columns.
    for table, column in (("videos", "ocr_error"), ("videos", "ocr_status"), ("passages", "source"),
                          ("segments", "source")):
        op.drop_column(table, column)
