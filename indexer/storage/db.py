"""SQL metadata (SQLAlchemy 2 typed ORM): videos, transcript segments, jobs and their items.

The database is the source of truth: index files and feature shards are derived from it and can be
rebuilt. SQLite (a file under SAVE_SEARCH_HOME) by default, PostgreSQL by URL. The schema is created
and upgraded by Alembic (``alembic/``); ``init_db`` runs the migrations.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    create_engine,
    event,
    false,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker, validates

from indexer.enums import JobStatus, Source, VideoStatus
from indexer.text import normalize


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


# Named constraints: Alembic's SQLite batch mode can only drop or alter a constraint that has a name, and
# PostgreSQL's generated names would otherwise differ from SQLite's (none). Index names match the default.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Video(Base):
    """One indexed video; identical files (same content hash) are one video."""

    __tablename__ = "videos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    filename: Mapped[str] = mapped_column(String(512))
    source_path: Mapped[str] = mapped_column(Text)  # where the media file lives (upload copy or bulk path)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    duration_s: Mapped[float] = mapped_column(Float)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    has_audio: Mapped[bool] = mapped_column(Boolean)
    thumbnail_path: Mapped[str | None] = mapped_column(Text)
    transcript: Mapped[str] = mapped_column(Text, default="")
    language: Mapped[str | None] = mapped_column(String(16))
    language_probability: Mapped[float | None] = mapped_column(Float)
    # How the transcript language was chosen (indexer.inference.asr): a method word and one readable line.
    language_method: Mapped[str | None] = mapped_column(String(16))
    language_decision: Mapped[str | None] = mapped_column(Text)
    # What made the visual embedding: None in speech mode (no visual features for this video).
    model_version: Mapped[str | None] = mapped_column(String(512), index=True)
    model_mode: Mapped[str] = mapped_column(String(32))  # save-fused | zero-shot-clip | speech
    feature_shard: Mapped[str | None] = mapped_column(String(255))
    feature_offset: Mapped[int | None] = mapped_column(BigInteger)
    pooled: Mapped[bytes | None] = mapped_column(LargeBinary)  # fp16 pooled vector, for index rebuilds
    # pending: an upload reserved this row and waits for the worker; failed: see ``error``.
    status: Mapped[str] = mapped_column(String(16), default=VideoStatus.INDEXED,
                                        server_default=VideoStatus.INDEXED.value, index=True)
    error: Mapped[str | None] = mapped_column(Text)
    # On-screen text (indexer.inference.ocr): read | failed (see ocr_error; the video is indexed without it) |
    # None (never read: ingested before OCR or with SAVE_SEARCH_OCR=0; `save-search reindex --ocr` reads it).
    ocr_status: Mapped[str | None] = mapped_column(String(16))
    ocr_error: Mapped[str | None] = mapped_column(Text)
    # How much of the speech made it into the transcript (indexer.inference.asr): VAD speech, the part words were
    # found in, stretches decoded again that gave words, and those that stayed empty. Null: indexed before these.
    speech_seconds: Mapped[float | None] = mapped_column(Float)
    transcribed_seconds: Mapped[float | None] = mapped_column(Float)
    redecoded_regions: Mapped[int | None] = mapped_column(Integer)
    empty_regions: Mapped[int | None] = mapped_column(Integer)
    # A random tag of the last write of the video's segments and passages (``indexer.storage.shards.write_tag``): the
    # search process's passage cache serves an entry only while it is unchanged (``indexer.search.passage_cache``).
    # Null (written before the tag existed): never cached.
    text_tag: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    segments: Mapped[list[Segment]] = relationship(back_populates="video", cascade="all, delete-orphan",
                                                   order_by="Segment.idx")
    passages: Mapped[list[Passage]] = relationship(back_populates="video", cascade="all, delete-orphan",
                                                   order_by="Passage.first_idx")


class Segment(Base):
    """A timestamped piece of text, searchable by words: full text runs on ``norm_text``
    (``indexer.text.normalize`` of ``text``), while ``text`` is what is shown. ``source`` says whether it was
    said (``speech``, idx 0..n-1) or shown on screen (``screen``, a span of visible text, idx n..n+m-1)."""

    __tablename__ = "segments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), index=True)
    idx: Mapped[int] = mapped_column(Integer)
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    text: Mapped[str] = mapped_column(Text)
    norm_text: Mapped[str] = mapped_column(Text, default="", server_default="")
    source: Mapped[str] = mapped_column(String(16), default=Source.SPEECH, server_default=Source.SPEECH.value)

    video: Mapped[Video] = relationship(back_populates="segments")

    @validates("text")
    def _normalize_text(self, _key: str, value: str) -> str:
        """``norm_text`` follows ``text`` whenever it is set, so full text can never index a stale form."""
        self.norm_text = normalize(value)
        return value


class Passage(Base):
    """Segments ``first_idx..last_idx`` of a video read as one text, searchable by meaning (a sentence
    embedding). A paraphrase often spans two or three Whisper segments, so passages are every single segment,
    every window of adjacent segments up to ``indexer.passages.MAX_WINDOW``, and the whole transcript; the
    segments of on-screen text (``source`` = ``screen``) get passages of their own the same way, never mixed
    with speech, so each scores its own search channel."""

    __tablename__ = "passages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), index=True)
    first_idx: Mapped[int] = mapped_column(Integer)
    last_idx: Mapped[int] = mapped_column(Integer)
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)  # fp16 sentence embedding
    source: Mapped[str] = mapped_column(String(16), default=Source.SPEECH, server_default=Source.SPEECH.value)

    video: Mapped[Video] = relationship(back_populates="passages")


class VideoFrames(Base):
    """The per-frame SAVE features of a video, what exact re-scoring reads (the Milvus backend's frame store,
    ``indexer.storage.sql_frames``; the FAISS backend keeps shard files). One row per video, of its current
    ``model_version``: a re-encode replaces it in the transaction that changes the version, so a read never mixes
    embedding spaces. No ORM relationship: the database's ``ON DELETE CASCADE`` removes it with the video."""

    __tablename__ = "video_frames"

    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), primary_key=True,
                                          autoincrement=False)
    frames: Mapped[bytes] = mapped_column(LargeBinary)  # fp16 [T, D], C order: T x D x 2 bytes
    mask: Mapped[bytes] = mapped_column(LargeBinary)  # uint8 [T]: which frames are real


class Job(Base):
    """An ingest request: one upload or a bulk job over many server-side files."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # JobKind
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED, index=True)  # JobStatus
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    items: Mapped[list[JobItem]] = relationship(back_populates="job", cascade="all, delete-orphan",
                                                order_by="JobItem.id")


class JobItem(Base):
    """One file of a job. Fails on its own, with a reason, without stopping the queue."""

    __tablename__ = "job_items"
    __table_args__ = (Index("ix_job_items_claim", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text)
    filename: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)  # JobStatus
    stage: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage_progress: Mapped[float | None] = mapped_column(Float)  # of the current stage (transcribe: of the audio)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    error_kind: Mapped[str | None] = mapped_column(String(64))
    video_id: Mapped[int | None] = mapped_column(ForeignKey("videos.id", ondelete="SET NULL"))
    content_hash: Mapped[str | None] = mapped_column(String(64))
    delete_after: Mapped[bool] = mapped_column(Boolean, default=False)  # uploaded temp copy
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    job: Mapped[Job] = relationship(back_populates="items")


class ApiKey(Base):
    """An API key, stored only as its SHA-256 (the key itself is shown once, at creation)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class AsrCheckpoint(Base):
    """A running item's transcription state after its last finished chunk (``indexer.inference.asr.AsrState``
    as JSON), for the file with ``content_hash``: a worker claiming the item again continues from it."""

    __tablename__ = "asr_checkpoints"

    item_id: Mapped[int] = mapped_column(ForeignKey("job_items.id", ondelete="CASCADE"), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


TEXT_REINDEX_NEEDED = "text_reindex_needed"  # Meta key: migration 0003 found transcripts made before passages


class Meta(Base):
    """Key/value facts about the collection (e.g. the model version the index was built with)."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
