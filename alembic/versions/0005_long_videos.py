"""Long videos: how much of a video's speech made it into the transcript, progress inside a stage, and the ASR
checkpoints a resumed item continues from.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

- ``videos.speech_seconds`` (what the VAD called speech), ``videos.transcribed_seconds`` (of which words were found
  in: the coverage), ``videos.redecoded_regions`` (stretches of speech a decode left without words and a second,
  separate decode filled) and ``videos.empty_regions`` (those that stayed without words). Null for videos indexed
  before this revision.
- ``job_items.stage_progress``: the fraction of the current stage done (while transcribing: of the audio).
- ``asr_checkpoints``: per running job item, the transcription state after its last finished chunk (JSON), for the
  content hash it was made from; a worker that claims the item again (after a crash) continues from there. Removed
  with the item, and when the item finishes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("videos", sa.Column("speech_seconds", sa.Float(), nullable=True))
    op.add_column("videos", sa.Column("transcribed_seconds", sa.Float(), nullable=True))
    op.add_column("videos", sa.Column("redecoded_regions", sa.Integer(), nullable=True))
    op.add_column("videos", sa.Column("empty_regions", sa.Integer(), nullable=True))
    op.add_column("job_items", sa.Column("stage_progress", sa.Float(), nullable=True))
    op.create_table(
        "asr_checkpoints",
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["item_id"], ["job_items.id"], name="fk_asr_checkpoints_item_id_job_items",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("item_id", name="pk_asr_checkpoints"),
    )


def downgrade() -> None:
    op.drop_table("asr_checkpoints")
    for table, column in (("job_items", "stage_progress"), ("videos", "empty_regions"),
                          ("videos", "redecoded_regions"), ("videos", "transcribed_seconds"),
                          ("videos", "speech_seconds")):
        op.drop_column(table, column)
