"""The closed sets of words the service stores and answers with. Each is a ``StrEnum``: its members are the strings
in the database and the API (``VideoStatus.INDEXED == "indexed"``), so rows written before these types existed
read back unchanged, and a typo is a name error instead of a silent mismatch."""

from __future__ import annotations

from enum import StrEnum

from models.config import ModelMode

__all__ = ["IndexType", "JobKind", "JobStatus", "MediaDelivery", "ModelMode", "OcrStatus", "Source", "Stage",
           "VectorStore", "VideoStatus"]


class VideoStatus(StrEnum):
    """``pending``: an upload reserved the row and waits for the worker; ``failed``: see ``Video.error``."""

    PENDING = "pending"
    INDEXED = "indexed"
    FAILED = "failed"


class JobStatus(StrEnum):
    """The status of a job and of each of its items. A job is finished once none of its items can still run."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def finished(cls) -> tuple[JobStatus, ...]:
        return (cls.DONE, cls.FAILED, cls.CANCELLED)


class JobKind(StrEnum):
    UPLOAD = "upload"  # one file received by the API
    BULK = "bulk"  # server-side paths, objects in buckets (s3://) and URLs


class Stage(StrEnum):
    """Where a running job item is (``JobItem.stage``), in pipeline order."""

    CLAIMED = "claimed"
    PROBE = "probe"
    DECODE = "decode"
    TRANSCRIBE = "transcribe"
    OCR = "ocr"
    PREPARE = "prepare"
    ENCODE = "encode"
    DONE = "done"
    CANCELLED = "cancelled"  # the video was deleted before its item ran


class Source(StrEnum):
    """Where a segment's or passage's text comes from: said (the transcript) or shown (read from the frames)."""

    SPEECH = "speech"
    SCREEN = "screen"


class OcrStatus(StrEnum):
    """``Video.ocr_status``: ``read``, or ``failed`` (the video is indexed without it); None: never read."""

    READ = "read"
    FAILED = "failed"


class VectorStore(StrEnum):
    FAISS = "faiss"  # files under the home folder
    MILVUS = "milvus"  # no shared disk needed


class FrameStore(StrEnum):
    """Where the Milvus backend keeps each video's frame features (the FAISS backend keeps its shard files)."""

    DATABASE = "database"  # the ``video_frames`` table: one indexed read per query, in the video's transaction
    MILVUS = "milvus"  # the ``frames`` collection (before 0006; 4-5x slower to read, BENCHMARKS.md)


class IndexType(StrEnum):
    """FAISS index type; ``auto`` picks by collection size (``indexer.storage.faiss_index.choose_index_type``)."""

    AUTO = "auto"
    FLAT = "flat"
    HNSW = "hnsw"
    IVFPQ = "ivfpq"


class MediaDelivery(StrEnum):
    """How clients get media and thumbnails kept in object storage (``SAVE_SEARCH_MEDIA_DELIVERY``); files in a local
    media folder are always served by the API."""

    PRESIGN = "presign"  # short-lived presigned URLs of the store: clients fetch from it directly
    PROXY = "proxy"  # the API streams the objects, HTTP ranges included (clients that cannot reach the store)
