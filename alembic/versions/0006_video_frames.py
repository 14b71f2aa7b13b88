"""Frame features in the database: the Milvus backend's re-scoring reads them with one indexed query.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

- ``video_frames``: per video (primary key, foreign key to ``videos`` with ``ON DELETE CASCADE``), its per-frame
  SAVE features as fp16 bytes [T, D] and its frame mask (uint8 [T]). On PostgreSQL ``frames`` is stored
  ``EXTERNAL``: out of line (TOAST) without a compression attempt, since fp16 features do not compress.
  Reading 400 candidates' rows took 22-36 ms at 100k videos against 139-181 ms from the Milvus ``frames``
  collection (BENCHMARKS.md, "Frames read for re-scoring on Milvus"). Empty after the upgrade:
  ``save-search reindex --rebuild-only`` copies an existing deployment's frames into it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "video_frames",
        sa.Column("video_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("frames", sa.LargeBinary(), nullable=False),
        sa.Column("mask", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["video_id"], ["videos.id"], name="fk_video_frames_video_id_videos",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("video_id", name="pk_video_frames"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE video_frames ALTER COLUMN frames SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.drop_table("video_frames")
