"""Settings of every process (API, worker, CLI), from ``SAVE_SEARCH_*`` environment variables (pydantic-settings).

Code reads them in groups (``settings.asr.beam_size``, ``settings.milvus.uri``); people set them by their flat
names, as environment variables (``SAVE_SEARCH_WHISPER_BEAM_SIZE=3``) or as keyword arguments without the prefix
(``Settings(whisper_beam_size=3)``): each group field's ``alias`` is that name. Lists are comma- (or
semicolon-) separated. A wrong value raises ``SettingsError`` naming the variable and what it accepts, and
``save-search config`` prints what is in effect (secrets masked).

Embedded defaults need no server: a SQLite file and local index files under ``SAVE_SEARCH_HOME``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from indexer.enums import FrameStore, IndexType, MediaDelivery, VectorStore
from indexer.names import is_s3, s3_problem
from models.bundled import WHISPER_BASE_NAME, data_home

ENV_PREFIX = "SAVE_SEARCH_"


def _split(value: Any) -> Any:
    """A comma- or semicolon-separated string as a list (what an environment variable can hold)."""
    if isinstance(value, str):
        return [x.strip() for x in value.replace(";", ",").split(",") if x.strip()]
    return value


StrList = Annotated[list[str], BeforeValidator(_split)]
PathList = Annotated[list[Path], BeforeValidator(_split)]
# (a, b) of p = sigmoid(a * raw + b)
Calibration = Annotated[tuple[float, float], BeforeValidator(_split)]


def _device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise ValueError("should be 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return value


Device = Annotated[str, AfterValidator(_device)]
WhisperComputeType = Literal["default", "auto", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16",
                             "float16", "bfloat16", "float32"]


class Group(BaseModel):
    """A group of settings; each field's alias is its flat name (environment variable without the prefix)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", validate_assignment=True)


class VisualSettings(Group):
    """The SAVE model: a config name (``save-b32``), our checkpoint folder or the authors' ``.bin``."""

    model: str = Field("save-b32", alias="model")
    clip_source: str | None = Field(None, alias="clip_source")
    audio_source: str | None = Field(None, alias="audio_source")
    encode_batch_size: int = Field(8, ge=1, alias="encode_batch_size")


class AsrSettings(Group):
    model: str = Field(WHISPER_BASE_NAME, alias="whisper_model")
    # "auto": int8 on CPU, float16 on CUDA (measured: BENCHMARKS.md, "Long videos"); "default": the model's own type
    compute_type: WhisperComputeType = Field("auto", alias="whisper_compute_type")
    beam_size: int = Field(5, ge=1, le=20, alias="whisper_beam_size")
    expected_languages: StrList = Field(default_factory=list, alias="expected_languages")  # e.g. ["en"]; empty: any
    # below it a detection is uncertain and the candidate languages' decodes are compared (no expected languages
    # set); = indexer.inference.language.DEFAULT_MIN_LANGUAGE_PROBABILITY, measured in docs/asr-language.md
    language_min_probability: float = Field(0.9, ge=0.0, le=1.0, alias="language_min_probability")
    chunk_seconds: float = Field(600.0, gt=0, alias="asr_chunk_seconds")  # long audio is transcribed in chunks
    split_clauses: bool = Field(True, alias="asr_split_clauses")  # word timestamps cut segments at clause punctuation
    batch_size: int = Field(8, ge=1, le=64, alias="asr_batch_size")  # speech clips (<= 30 s) decoded together


class OcrSettings(Group):
    """On-screen text (``indexer.inference.ocr``): read text shown in the frames and search it as its own channel;
    its cost per video is in BENCHMARKS.md, "On-screen text"."""

    enabled: bool = Field(True, alias="ocr")


class IngestSettings(Group):
    """Limits of one video, where bulk jobs may read (folders, buckets, URLs), and how failed items are retried."""

    max_duration_s: float = Field(4 * 3600.0, gt=0, alias="max_duration_s")
    max_size_bytes: int = Field(20 * 1024**3, gt=0, alias="max_size_bytes")
    allowed_roots: PathList = Field(default_factory=list, alias="allowed_roots")  # bulk jobs read only below these
    # s3://bucket[/prefix] that bulk jobs may list and read (the API refuses s3:// sources while it is empty)
    allowed_buckets: StrList = Field(default_factory=list, alias="allowed_buckets")
    # Networks (CIDR) of non-public addresses that URL ingest may reach; loopback, private, link-local, metadata
    # and other non-public addresses are refused unless listed here (e.g. 10.2.0.0/16 for an internal server)
    url_allowed_networks: StrList = Field(default_factory=list, alias="url_allowed_networks")
    url_timeout_s: float = Field(30.0, gt=0, alias="url_timeout_s")  # connect, and silence while downloading
    max_attempts: int = Field(3, ge=1, alias="max_attempts")
    lease_seconds: float = Field(600.0, gt=0, alias="lease_seconds")
    retry_backoff_s: float = Field(5.0, ge=0, alias="retry_backoff_s")

    @field_validator("allowed_roots")
    @classmethod
    def _resolve_roots(cls, roots: list[Path]) -> list[Path]:
        return [Path(p).expanduser().resolve() for p in roots]

    @field_validator("allowed_buckets")
    @classmethod
    def _check_buckets(cls, buckets: list[str]) -> list[str]:
        for uri in buckets:
            problem = s3_problem(uri) if is_s3(uri) else "should be s3://bucket or s3://bucket/prefix"
            if problem:
                raise ValueError(f"{uri!r}: {problem}")
        return [uri.rstrip("/") for uri in buckets]

    @field_validator("url_allowed_networks")
    @classmethod
    def _check_networks(cls, networks: list[str]) -> list[str]:
        for net in networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{net!r} is not a network (e.g. 10.0.0.0/8, 127.0.0.1/32, fd00::/8)") from None
        return networks


class MediaSettings(Group):
    """Where uploaded videos, copies of fetched URLs and thumbnails live: a local folder, or object storage
    (``s3://bucket/prefix`` on AWS, MinIO, Ceph...; endpoint and credentials come the standard AWS way: AWS_*
    variables, ~/.aws files, an instance role)."""

    uri: str | None = Field(None, alias="media_uri")  # a folder or s3://bucket/prefix; default: {home}/media
    delivery: MediaDelivery = Field(MediaDelivery.PRESIGN, alias="media_delivery")  # objects: presign | proxy
    public_endpoint: str | None = Field(None, alias="media_public_endpoint")  # presign for clients with this host
    create_bucket: bool = Field(False, alias="media_create_bucket")  # create the bucket when it does not exist

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, uri: str | None) -> str | None:
        if not uri:
            return None
        if is_s3(uri):
            if problem := s3_problem(uri):
                raise ValueError(problem)
            return uri.rstrip("/")
        if "://" in uri:
            raise ValueError("should be a folder or s3://bucket/prefix")
        return str(Path(uri).expanduser().absolute())

    @field_validator("public_endpoint")
    @classmethod
    def _check_endpoint(cls, url: str | None) -> str | None:
        if url and not re.fullmatch(r"https?://[^/\s]+/?", url):
            raise ValueError("should be a scheme and host, e.g. https://media.example.com")
        return url.rstrip("/") if url else None


class IndexSettings(Group):
    """Where the indexes and frame features live: ``faiss`` (files under the home folder) or ``milvus``."""

    vector_store: VectorStore = Field(VectorStore.FAISS, alias="vector_store")
    index_type: IndexType = Field(IndexType.AUTO, alias="index_type")


class MilvusSettings(Group):
    uri: str | None = Field(None, alias="milvus_uri")  # e.g. http://milvus:19530
    token: str | None = Field(None, alias="milvus_token")  # "user:password" or an API key
    db: str | None = Field(None, alias="milvus_db")  # default: the server's default database
    collection_prefix: str = Field("save_search", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,150}$",
                                   alias="milvus_collection_prefix")  # deployments can share one Milvus
    index: str = Field("AUTOINDEX", alias="milvus_index")  # AUTOINDEX, FLAT, IVF_FLAT, HNSW, ...
    nprobe: int = Field(32, ge=1, alias="milvus_nprobe")  # IVF lists searched per query (IVF_* index types)
    # frame features: the database's video_frames table, or the older Milvus `frames` collection (BENCHMARKS.md,
    # "Frames read for re-scoring on Milvus"); `save-search reindex --rebuild-only` moves them into the table
    frame_store: FrameStore = Field(FrameStore.DATABASE, alias="frame_store")


class SearchSettings(Group):
    """Ranking (``indexer.search``; each measured in BENCHMARKS.md, "Retrieval quality on real speech") and the
    limits of one query."""

    lexical_weight: float = Field(0.1, ge=0, alias="lexical_weight")  # bonus for the share of query words said
    # MiniLM reads normalised text: measured worse (BENCHMARKS.md)
    normalize_sentence_input: bool = Field(False, alias="normalize_sentence_input")
    speech_calibration: Calibration = Field((13.9, -9.5), alias="speech_calibration")
    visual_calibration: Calibration = Field((50.0, -12.5), alias="visual_calibration")
    # fitted by bench.retrieval_bench --screen (BENCHMARKS.md, "Retrieval of on-screen text")
    screen_calibration: Calibration = Field((13.1, -7.7), alias="screen_calibration")
    max_query_chars: int = Field(500, ge=1, alias="max_query_chars")
    max_k: int = Field(100, ge=1, alias="max_k")
    # searches running at once; 0: half the cores (the rest is left to ingest)
    concurrency: int = Field(0, ge=0, alias="search_concurrency")
    queue: int = Field(16, ge=0, alias="search_queue")  # searches waiting for a slot; more get 503 + Retry-After
    queue_timeout_s: float = Field(0.5, ge=0, alias="search_queue_timeout_s")  # the longest wait for a slot
    # per-process LRU cache of frame features read over the network (Milvus backend: the database table or the
    # Milvus collection), in MiB; ~12.7 kB per video (12 x 512 fp16); 0: off. FAISS's memory-mapped shards: unused.
    frame_cache_mb: int = Field(256, ge=0, alias="frame_cache_mb")
    # per-process LRU cache of the candidates' passages and words (indexer.search.passage_cache), in MiB; a video of
    # 5 segments ~20 kB, a 30-minute talk ~2.6 MB (fp32 embeddings); 0: off (every query reads them from the database)
    passage_cache_mb: int = Field(256, ge=0, alias="passage_cache_mb")


class ApiSettings(Group):
    api_keys: StrList = Field(default_factory=list, alias="api_keys")  # plain keys (or hashed in the database)
    read_requires_key: bool = Field(False, alias="read_requires_key")  # once keys exist, writes always need one
    media_url_ttl_s: int = Field(3600, ge=1, alias="media_url_ttl_s")  # how long a signed media URL stays valid
    upload_idle_timeout_s: float = Field(30.0, gt=0, alias="upload_idle_timeout_s")  # silent this long: 408
    upload_body_timeout_s: float = Field(3600.0, gt=0, alias="upload_body_timeout_s")  # and at most this long


GROUPS: dict[str, type[Group]] = {"visual": VisualSettings, "asr": AsrSettings, "ocr": OcrSettings,
                                  "ingest": IngestSettings, "media": MediaSettings, "index": IndexSettings,
                                  "milvus": MilvusSettings, "search": SearchSettings, "api": ApiSettings}
SECRETS = frozenset({"milvus_token", "api_keys", "database_url"})  # masked by ``Settings.effective``


def _flat_names() -> dict[str, tuple[str, str]]:
    """Flat name (alias) -> (group, field)."""
    out = {}
    for group, cls in GROUPS.items():
        for name, info in cls.model_fields.items():
            out[info.alias or name] = (group, name)
    return out


FLAT_NAMES = _flat_names()
TOP_LEVEL = ("home", "database_url", "device")


class SettingsError(ValueError):
    """A setting has a value it cannot take: the message names the environment variable and what it accepts."""


class _FlatEnvironment(PydanticBaseSettingsSource):
    """Every setting from its ``SAVE_SEARCH_<FLAT NAME>`` variable, as the raw string (pydantic converts it).
    Replaces pydantic-settings' own environment source, which would read a group as JSON from e.g.
    ``SAVE_SEARCH_OCR``: that name is the OCR switch."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        env = {k.upper(): v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)}
        names = [*TOP_LEVEL, *FLAT_NAMES]
        return {name: env[ENV_PREFIX + name.upper()] for name in names if ENV_PREFIX + name.upper() in env}


class Settings(BaseSettings):
    """Every setting of the service, grouped; see the module docstring for how they are set."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_assignment=True,
                                      env_ignore_empty=False)

    home: Path = Field(default_factory=data_home)
    database_url: str | None = None  # default: sqlite:///{home}/save_search.db
    device: Device = "auto"
    visual: VisualSettings = Field(default_factory=VisualSettings)
    asr: AsrSettings = Field(default_factory=AsrSettings)
    ocr: OcrSettings = Field(default_factory=OcrSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    media: MediaSettings = Field(default_factory=MediaSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    milvus: MilvusSettings = Field(default_factory=MilvusSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(_explain(exc)) from None

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _FlatEnvironment(settings_cls)

    @model_validator(mode="before")
    @classmethod
    def _route_flat_names(cls, data: Any) -> Any:
        """Flat names (keyword arguments, environment variables) go into their groups; explicit groups win."""
        if not isinstance(data, dict):
            return data
        out: dict[str, Any] = {}
        groups: dict[str, dict[str, Any]] = {}
        for key, value in data.items():
            if key in GROUPS and isinstance(value, Group):
                value = value.model_dump(by_alias=True)
            if key in GROUPS and isinstance(value, dict):
                groups.setdefault(key, {}).update(value)
            elif key in FLAT_NAMES and key not in GROUPS:
                group, _ = FLAT_NAMES[key]
                groups.setdefault(group, {}).setdefault(key, value)
            elif key in FLAT_NAMES and not isinstance(value, dict | Group):  # "ocr" names a group and a setting
                groups.setdefault(key, {}).setdefault(key, value)
            else:
                out[key] = value
        out.update(groups)
        return out

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.index.vector_store == VectorStore.MILVUS and not self.milvus.uri:
            raise ValueError("SAVE_SEARCH_VECTOR_STORE=milvus needs SAVE_SEARCH_MILVUS_URI (e.g. http://host:19530)")
        return self

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Settings from the environment; keyword arguments (flat names) that are not None win."""
        return cls(**{k: v for k, v in overrides.items() if v is not None})

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
        """The local media folder: uploaded files and thumbnails live here unless ``SAVE_SEARCH_MEDIA_URI`` names
        object storage (then see ``indexer.storage.media``)."""
        uri = self.media.uri
        return Path(uri) if uri and not is_s3(uri) else self.home / "media"

    @property
    def staging_dir(self) -> Path:
        """Where the API writes an upload while it arrives, before it is checked and kept in the media store."""
        return self.home / "staging"

    def effective(self) -> list[tuple[str, str, str]]:
        """(environment variable, group.field, value) of every setting, secrets masked: ``save-search config``."""
        rows = []
        for name in TOP_LEVEL:
            rows.append((ENV_PREFIX + name.upper(), name, _shown(name, getattr(self, name))))
        for flat, (group, field) in FLAT_NAMES.items():
            rows.append((ENV_PREFIX + flat.upper(), f"{group}.{field}",
                         _shown(flat, getattr(getattr(self, group), field))))
        return rows


def _shown(flat: str, value: Any) -> str:
    if value is None:
        return ""
    if flat == "database_url":
        return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", str(value))
    if flat in SECRETS:
        return ",".join("***" for _ in value) if isinstance(value, list) else "***"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value.value if hasattr(value, "value") else value)


def _explain(exc: ValidationError) -> str:
    """One line per wrong setting: its environment variable, the value given, and what it accepts."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = [str(x) for x in err.get("loc", ())]
        if len(loc) >= 2 and loc[0] in GROUPS:
            cls = GROUPS[loc[0]]
            info = cls.model_fields.get(loc[1])
            flat = (info.alias if info is not None and info.alias else loc[1])
        else:
            flat = loc[0] if loc else ""
        message = str(err.get("msg", "")).removeprefix("Value error, ")
        if not flat:
            lines.append(message)
            continue
        shown = "***" if flat in SECRETS else repr(err.get("input"))
        lines.append(f"{ENV_PREFIX}{flat.upper()}={shown}: {message}")
    return "invalid settings: " + "; ".join(lines)
