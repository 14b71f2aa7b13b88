"""What every process loads, once: the database, the visual and sentence encoders, the vector catalog its
settings name (``make_catalog``) and the media store (``indexer.storage.media``: a folder or object storage). The
worker and the search service share one ``Services`` in a process; the models only ingest runs (ASR, OCR) are
``indexer.ingest.runtimes``.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import func, or_, select
from sqlalchemy.orm import sessionmaker

from indexer.enums import VectorStore, VideoStatus
from indexer.inference.sentences import SentenceEncoder
from indexer.inference.visual import VisualEncoder
from indexer.settings import Settings
from indexer.storage.catalog import VectorCatalog
from indexer.storage.db import Video, make_engine, session_factory
from indexer.storage.faiss_catalog import FaissCatalog
from indexer.storage.media import MediaStore, make_media_store
from indexer.storage.migrate import init_db

log = logging.getLogger(__name__)


SENTENCE_MODEL = "all-MiniLM-L6-v2"


def passage_space(settings: Settings) -> str:
    """The embedding space of the passage index: the sentence encoder and what it reads (a change rebuilds)."""
    return f"{SENTENCE_MODEL}/passages" + ("/normalized" if settings.search.normalize_sentence_input else "")


class Services:
    """Loaded once per process and shared by the worker and the search service."""

    def __init__(self, settings: Settings, encoder: VisualEncoder | None = None,
                 sentences: SentenceEncoder | None = None) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        init_db(settings.db_url)
        self.engine = make_engine(settings.db_url)
        self.sessions = session_factory(self.engine)
        self.encoder = encoder or VisualEncoder(settings)
        self.sentences = sentences or SentenceEncoder()
        self.index_lock = threading.RLock()  # the in-process catalog is shared by an embedded worker and the API
        self.media: MediaStore = make_media_store(settings)  # no connection is made before it is used
        status = self.encoder.status()
        dim = self.encoder.model.config.embed_dim if self.encoder.model is not None else None
        self.catalog = make_catalog(settings, self.sessions, status.model_version, dim, passage_space(settings),
                                    self.sentences.dim)
        self.catalog.load()

    def stale_videos(self) -> int:
        """Videos outside the current model's embedding space (they are never mixed into visual search)."""
        version = self.encoder.status().model_version
        if version is None:
            return 0
        with self.sessions() as s:
            stale = or_(Video.model_version.is_(None), Video.model_version != version)
            count = s.scalar(select(func.count()).select_from(Video).where(Video.status == VideoStatus.INDEXED, stale))
            return count or 0


def make_catalog(settings: Settings, sessions: sessionmaker, model_version: str | None, video_dim: int | None,
                 passage_space: str, passage_dim: int) -> VectorCatalog:
    """The catalog ``settings.index.vector_store`` names: ``faiss`` (files under the home folder) or ``milvus``."""
    if settings.index.vector_store == VectorStore.MILVUS:
        from indexer.storage.milvus import MilvusCatalog

        return MilvusCatalog.from_settings(settings, sessions, model_version, video_dim, passage_space, passage_dim)
    return FaissCatalog(settings.index_dir, sessions, model_version, video_dim, passage_space, passage_dim,
                        settings.index.index_type, settings.features_dir)
