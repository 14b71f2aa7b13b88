"""Settings of the ingest worker and search service, from environment variables (``SAVE_SEARCH_*``).

Embedded defaults need no server: a SQLite file and local index files under ``SAVE_SEARCH_HOME``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from models.bundled import WHISPER_BASE_NAME, data_home


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"SAVE_SEARCH_{name}", default)


def _env_list(name: str) -> list[str]:
    raw = _env(name, "") or ""
    return [x.strip() for x in raw.replace(";", ",").split(",") if x.strip()]


@dataclass
class Settings:
    home: Path = field(default_factory=data_home)
    database_url: str | None = None  # default: sqlite:///{home}/save_search.db
    # model: a config name (save-b32), our checkpoint folder or the authors' .bin
    model: str = "save-b32"
    clip_source: str | None = None
    audio_source: str | None = None
    device: str = "auto"  # auto | cpu | cuda
    # speech
    whisper_model: str = WHISPER_BASE_NAME
    whisper_compute_type: str = "default"  # the model's type; "auto": int8 on CPU, float16 on CUDA (faster)
    whisper_beam_size: int = 5
    expected_languages: list[str] = field(default_factory=list)  # e.g. ["en"]; empty = any
    # below it a detection is uncertain and the candidate languages' decodes are compared (no expected
    # languages set); = indexer.asr.DEFAULT_MIN_LANGUAGE_PROBABILITY, measured in docs/asr-language.md
    language_min_probability: float = 0.9
    asr_chunk_seconds: float = 600.0  # long audio is transcribed in chunks of this length
    asr_split_clauses: bool = True  # word timestamps cut segments at clause punctuation (finer moments)
    # limits
    max_duration_s: float = 4 * 3600.0
    max_size_bytes: int = 20 * 1024**3
    allowed_roots: list[Path] = field(default_factory=list)  # bulk jobs may only read below these
    # index
    index_type: str = "auto"  # auto | flat | ivfpq | hnsw (FAISS)
    # where the indexes and frame features live: faiss (files under home) | milvus (no shared disk needed)
    vector_store: str = "faiss"
    milvus_uri: str | None = None  # e.g. http://milvus:19530
    milvus_token: str | None = None  # "user:password" or an API key
    milvus_db: str | None = None  # Milvus database; default: the server's default one
    milvus_collection_prefix: str = "save_search"  # several collections (deployments) can share one Milvus
    milvus_index: str = "AUTOINDEX"  # Milvus index type of the vector collections: AUTOINDEX, FLAT, IVF_FLAT, HNSW, ...
    milvus_nprobe: int = 32  # IVF lists searched per query (IVF_* index types)
    encode_batch_size: int = 8
    # search service
    # ranking (indexer/search.py; each measured in BENCHMARKS.md, "Retrieval quality on real speech")
    lexical_weight: float = 0.1  # bonus for the IDF-weighted share of the query's words a passage says
    normalize_sentence_input: bool = False  # MiniLM reads normalised text: measured worse (BENCHMARKS.md)
    # logit = a * raw + b: maps a channel's raw score to the probability that the video is the one asked for
    speech_calibration: list[float] = field(default_factory=lambda: [13.9, -9.5])
    visual_calibration: list[float] = field(default_factory=lambda: [50.0, -12.5])
    api_keys: list[str] = field(default_factory=list)  # plain keys from the environment (or hashed in the DB)
    read_requires_key: bool = False  # once keys exist, writes always need one; reads only if this is set
    media_url_ttl_s: int = 3600  # with read_requires_key: how long a signed thumbnail/media URL stays valid
    upload_idle_timeout_s: float = 30.0  # an upload that sends nothing for this long is cut off (408)
    upload_body_timeout_s: float = 3600.0  # and one that takes longer than this in all
    max_query_chars: int = 500
    search_concurrency: int = 0  # searches running at once; 0: half the cores (the rest is left to ingest)
    search_queue: int = 16  # searches waiting for a slot; more get a 503 with Retry-After
    search_queue_timeout_s: float = 0.5  # the longest a search waits for a slot before its 503
    max_k: int = 100
    # jobs
    max_attempts: int = 3
    lease_seconds: float = 600.0
    retry_backoff_s: float = 5.0

    def __post_init__(self) -> None:
        self.home = Path(self.home).expanduser()
        self.vector_store = self.vector_store.strip().lower()
        if self.vector_store not in ("faiss", "milvus"):
            raise ValueError(f"SAVE_SEARCH_VECTOR_STORE must be faiss or milvus, not {self.vector_store!r}")
        if self.vector_store == "milvus" and not self.milvus_uri:
            raise ValueError("SAVE_SEARCH_VECTOR_STORE=milvus needs SAVE_SEARCH_MILVUS_URI (e.g. http://host:19530)")
        self.allowed_roots = [Path(p).expanduser().resolve() for p in self.allowed_roots]

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'save_search.db'}"

    @property
    def index_dir(self) -> Path:
        return self.home / "index"

    @property
    def features_dir(self) -> Path:
        return self.home / "features"

    @property
    def media_dir(self) -> Path:
        """Uploaded files and thumbnails live here."""
        return self.home / "media"

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        """Settings from ``SAVE_SEARCH_*`` environment variables; keyword arguments win."""
        values: dict = {}
        for f in fields(cls):
            raw = _env(f.name.upper())
            if raw is None:
                continue
            if f.name in ("expected_languages", "api_keys"):
                values[f.name] = _env_list(f.name.upper())
            elif f.name.endswith("_calibration"):
                values[f.name] = [float(x) for x in _env_list(f.name.upper())]
            elif f.type in ("bool",):
                values[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
            elif f.name == "allowed_roots":
                values[f.name] = [Path(p) for p in _env_list(f.name.upper())]
            elif f.type in ("int",):
                values[f.name] = int(raw)
            elif f.type in ("float",):
                values[f.name] = float(raw)
            elif f.name == "home":
                values[f.name] = Path(raw)
            else:
                values[f.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
