"""Where media files live: uploaded videos, copies of videos fetched from URLs, and thumbnails.

``SAVE_SEARCH_MEDIA_URI`` is a local folder (default ``{home}/media``, as before) or ``s3://bucket/prefix`` on any
S3-compatible store (AWS, MinIO, Ceph). Both keep ``uploads/<content hash><suffix>`` and
``thumbnails/<content hash>.jpg`` below it. The database stores a *reference* in ``videos.source_path``,
``videos.thumbnail_path`` and ``job_items.path``: an absolute path, as before, or ``s3://bucket/key``; every
function here dispatches on the reference, not on the configured store, so rows written under another setting (and
objects of users' own buckets, ingested by bulk jobs) stay readable.

S3 is reached through one boto3 client configured the standard AWS way (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``~/.aws/config``, an instance or pod role). Failures are
``indexer.errors`` words: a store that does not answer (or answers 5xx, or throttles) is
``StoreUnavailableError`` (transient: retry, nothing was lost), a missing or forbidden object an ``AccessError``.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from indexer.errors import AccessError, BadInputError, IngestError, StoreUnavailableError
from indexer.names import S3_SCHEME, is_s3, path_from_db, split_s3

if TYPE_CHECKING:
    from indexer.settings import Settings

log = logging.getLogger(__name__)

UPLOADS, THUMBNAILS = "uploads", "thumbnails"
KINDS = (UPLOADS, THUMBNAILS)
CHUNK = 1 << 20  # bytes per read of a download or a proxied range
MULTIPART_THRESHOLD = 16 * 1024**2  # larger files go up as a multipart upload of parts this size
MAX_PRESIGN_S = 7 * 24 * 3600  # the longest SigV4 allows
NOT_FOUND = frozenset({"NoSuchKey", "NotFound", "404", "NoSuchBucket"})
FORBIDDEN = frozenset({"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
                       "InvalidObjectState"})
RETRYABLE = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                       "ServiceUnavailable", "InternalError", "500", "502", "503", "504"})


@dataclass(frozen=True)
class ObjectInfo:
    ref: str
    size: int
    etag: str
    modified: float  # unix time
    content_type: str | None = None


def store_error(exc: BaseException, ref: str) -> IngestError:
    """A boto3/botocore failure as the service's words (see the module docstring)."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(exc, IngestError):
        return exc
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return StoreUnavailableError(f"no credentials for {ref}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                                     f"an AWS profile or an instance role ({exc})")
    cause = exc.__cause__ if not isinstance(exc, ClientError) and isinstance(exc.__cause__, ClientError) else exc
    if isinstance(cause, ClientError):
        error = cause.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in NOT_FOUND or status == 404:
            what = "bucket" if code == "NoSuchBucket" else "object"
            return AccessError(f"{ref}: no such {what}", kind="not_found")
        if code in FORBIDDEN or status == 403:
            return AccessError(f"{ref}: access denied by the object store ({code or status})", kind="unreadable")
        if code in RETRYABLE or status >= 500 or status == 429:
            return StoreUnavailableError(f"the object store failed on {ref}: {code or status} "
                                         f"{error.get('Message', '')}".rstrip())
        return AccessError(f"{ref}: the object store refused the request ({code or status}: "
                           f"{error.get('Message', '')})", kind="store_refused")
    return StoreUnavailableError(f"the object store did not answer for {ref}: {type(exc).__name__}: {exc}")


class S3Objects:
    """Objects in any bucket through one boto3 client (thread-safe; created on first use by ``MediaStore.s3``).
    ``public_endpoint``: presigned URLs name this host instead of the one the service talks to."""

    def __init__(self, public_endpoint: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        config = Config(signature_version="s3v4", retries={"max_attempts": 3, "mode": "standard"},
                        connect_timeout=10, read_timeout=60, max_pool_connections=32)
        session = boto3.session.Session()
        self.client = session.client("s3", config=config)
        self.endpoint = self.client.meta.endpoint_url
        self.signer = (session.client("s3", config=config, endpoint_url=public_endpoint) if public_endpoint
                       else self.client)
        self._checked: set[str] = set()
        self._lock = threading.Lock()

    def _call(self, ref: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a service word (store_error)
            raise store_error(exc, ref) from exc

    def head(self, ref: str) -> ObjectInfo:
        bucket, key = split_s3(ref)
        r = self._call(ref, self.client.head_object, Bucket=bucket, Key=key)
        return ObjectInfo(ref, int(r["ContentLength"]), str(r.get("ETag", "")), r["LastModified"].timestamp(),
                          r.get("ContentType"))

    def download(self, ref: str, dest: Path, limit: int) -> int:
        """Stream an object into ``dest`` (a bounded local copy); larger than ``limit`` is ``too_large`` before a
        byte is written. Returns its size."""
        bucket, key = split_s3(ref)
        r = self._call(ref, self.client.get_object, Bucket=bucket, Key=key)
        body = r["Body"]
        try:
            if int(r["ContentLength"]) > limit:
                raise BadInputError(f"{ref} is {r['ContentLength']} bytes, over the maximum of {limit}",
                                    kind="too_large")
            size = 0
            with dest.open("wb") as out:
                for block in body.iter_chunks(CHUNK):
                    size += len(block)
                    if size > limit:
                        raise BadInputError(f"{ref} is over the maximum of {limit} bytes", kind="too_large")
                    out.write(block)
            return size
        except IngestError:
            raise
        except Exception as exc:  # noqa: BLE001 - a connection dropped mid-way
            raise store_error(exc, ref) from exc
        finally:
            body.close()

    def read_range(self, ref: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start..end`` (inclusive) of an object, in blocks; the request is made before the first block."""
        bucket, key = split_s3(ref)
        r = self._call(ref, self.client.get_object, Bucket=bucket, Key=key, Range=f"bytes={start}-{end}")
        body = r["Body"]

        def blocks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(CHUNK)
            finally:
                body.close()

        return blocks()

    def upload(self, local: Path, ref: str, content_type: str | None = None) -> None:
        """A local file into an object, as a multipart upload above ``MULTIPART_THRESHOLD`` (a failed one is aborted:
        no parts are left behind)."""
        from boto3.s3.transfer import TransferConfig

        bucket, key = split_s3(ref)
        extra = {"ContentType": content_type} if content_type else {}
        config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD,
                                max_concurrency=4)
        self._call(ref, self.client.upload_file, Filename=str(local), Bucket=bucket, Key=key, ExtraArgs=extra,
                   Config=config)

    def delete(self, ref: str) -> None:
        bucket, key = split_s3(ref)
        self._call(ref, self.client.delete_object, Bucket=bucket, Key=key)

    def presign(self, ref: str, ttl_s: int, content_type: str | None = None) -> str:
        bucket, key = split_s3(ref)
        params = {"Bucket": bucket, "Key": key, **({"ResponseContentType": content_type} if content_type else {})}
        return self.signer.generate_presigned_url("get_object", Params=params,
                                                  ExpiresIn=max(1, min(ttl_s, MAX_PRESIGN_S)))

    def listing(self, uri: str, recursive: bool = True, page_size: int = 1000) -> Iterator[ObjectInfo]:
        """Every object below ``s3://bucket/prefix`` (read as a folder: ``prefix/``; the whole bucket without one),
        page by page; without ``recursive`` only the objects directly in it."""
        bucket, prefix = split_s3(uri)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix,
                                  "PaginationConfig": {"PageSize": page_size}}
        if not recursive:
            kwargs["Delimiter"] = "/"
        pages = self.client.get_paginator("list_objects_v2").paginate(**kwargs)
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    if not obj["Key"].endswith("/"):  # "folder" markers some tools create
                        yield ObjectInfo(f"{S3_SCHEME}{bucket}/{obj['Key']}", int(obj["Size"]),
                                         str(obj.get("ETag", "")), obj["LastModified"].timestamp())
        except Exception as exc:  # noqa: BLE001
            raise store_error(exc, uri) from exc

    def ensure_bucket(self, bucket: str, create: bool) -> None:
        """Once per process: the bucket exists (created when ``create`` and it does not)."""
        with self._lock:
            if bucket in self._checked:
                return
        ref = f"{S3_SCHEME}{bucket}"
        try:
            self._call(ref, self.client.head_bucket, Bucket=bucket)
        except AccessError as exc:
            if exc.kind != "not_found" or not create:
                raise
            try:
                self._call(ref, self.client.create_bucket, Bucket=bucket)
            except AccessError:  # created by another process at the same moment: fine if it exists now
                self._call(ref, self.client.head_bucket, Bucket=bucket)
            log.info("created the media bucket %s", bucket)
        with self._lock:
            self._checked.add(bucket)


class MediaStore(ABC):
    """The service's own media: one interface, a local folder (``LocalMediaStore``) or a bucket prefix
    (``S3MediaStore``). Reads, deletes and presigning take any reference (a local path or ``s3://``)."""

    uri: str

    def __init__(self, public_endpoint: str | None = None) -> None:
        self._public_endpoint = public_endpoint
        self._s3: S3Objects | None = None
        self._s3_lock = threading.Lock()

    def s3(self) -> S3Objects:
        """The S3 client (boto3 is imported on first use: a local store that never meets an ``s3://`` reference
        never loads it)."""
        with self._s3_lock:
            if self._s3 is None:
                self._s3 = S3Objects(self._public_endpoint)
            return self._s3

    @property
    def remote(self) -> bool:
        return is_s3(self.uri)

    @abstractmethod
    def ref(self, kind: str, name: str) -> str:
        """Where a file of ``kind`` (``uploads``/``thumbnails``) named ``name`` is kept in this store."""

    @abstractmethod
    def put(self, local: Path, ref: str, content_type: str | None = None) -> None:
        """Keep ``local`` at ``ref`` (one of this store's). The local file may be moved away; it is complete at
        ``ref`` when this returns."""

    @abstractmethod
    def _listing(self, kind: str) -> Iterator[tuple[str, float]]:
        """(reference, time it was put there) of every file of ``kind`` in this store."""

    def owns(self, ref: str | None) -> bool:
        """Whether ``ref`` is a file this store keeps (uploads, thumbnails), which the service deletes with its
        video; bulk-job sources (paths, users' objects) are not."""
        return bool(ref) and any(self._within(ref, kind) for kind in KINDS)  # type: ignore[arg-type]

    @abstractmethod
    def _within(self, ref: str, kind: str) -> bool: ...

    def delete(self, ref: str) -> None:
        """Remove the file at ``ref`` (missing already: fine)."""
        if is_s3(ref):
            self.s3().delete(ref)
        else:
            path_from_db(ref).unlink(missing_ok=True)

    def exists(self, ref: str) -> bool:
        if not is_s3(ref):
            return path_from_db(ref).is_file()
        try:
            self.s3().head(ref)
            return True
        except AccessError as exc:
            if exc.kind == "not_found":
                return False
            raise

    def sweep(self, kind: str, content_hashes: Iterable[str], grace_s: float) -> int:
        """Delete the files of ``kind`` that belong to no video and were put there more than ``grace_s`` ago (one
        moved into place by a worker killed before its commit). Every file here is named by the content hash of its
        video (``<hash>.jpg``, ``<hash>.mp4``), so a file is kept when a row has that hash: whatever path or URI
        spelling a row holds (a home reached through another link, a renamed folder), nothing a row needs goes.
        Returns how many were deleted."""
        keep = set(content_hashes)
        cutoff = time.time() - grace_s
        deleted = 0
        for ref, put_at in self._listing(kind):
            stem = ref.rsplit("/", 1)[-1].split(".", 1)[0]
            if put_at > cutoff or stem in keep:
                continue
            try:
                self.delete(ref)
                deleted += 1
            except (OSError, IngestError) as exc:
                log.warning("could not remove the unreferenced %s: %s", ref, exc)
        return deleted


class LocalMediaStore(MediaStore):
    """A folder on this machine (the default, ``{home}/media``): what every version before object storage did."""

    def __init__(self, folder: Path, public_endpoint: str | None = None) -> None:
        super().__init__(public_endpoint)
        self.folder = folder
        self.uri = str(folder)

    def ref(self, kind: str, name: str) -> str:
        return str(self.folder / kind / name)

    def put(self, local: Path, ref: str, content_type: str | None = None) -> None:
        final = Path(ref)
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(local, final)

    def _within(self, ref: str, kind: str) -> bool:
        if is_s3(ref):
            return False
        return Path(os.path.realpath(path_from_db(ref))).parent == Path(os.path.realpath(self.folder / kind))

    def _listing(self, kind: str) -> Iterator[tuple[str, float]]:
        folder = self.folder / kind
        for path in folder.iterdir() if folder.is_dir() else ():
            try:
                # files being received are named .tmp-*; the change time is when a file was moved into place
                if path.name.startswith(".") or not path.is_file():
                    continue
                yield str(path), path.stat().st_ctime
            except FileNotFoundError:
                continue


class S3MediaStore(MediaStore):
    """``s3://bucket/prefix`` on an S3-compatible store."""

    def __init__(self, uri: str, public_endpoint: str | None = None, create_bucket: bool = False) -> None:
        super().__init__(public_endpoint)
        self.uri = uri.rstrip("/")
        self.bucket, prefix = split_s3(self.uri)
        self.prefix = prefix.strip("/")
        self.create_bucket = create_bucket

    def _key(self, kind: str, name: str = "") -> str:
        return "/".join(p for p in (self.prefix, kind, name) if p)

    def ref(self, kind: str, name: str) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self._key(kind, name)}"

    def put(self, local: Path, ref: str, content_type: str | None = None) -> None:
        """A failing write is never the file's fault: every failure here is ``StoreUnavailableError`` (a missing
        bucket or denied write included: the deployment must fix it, and the item or upload can be retried)."""
        s3 = self.s3()
        try:
            s3.ensure_bucket(self.bucket, self.create_bucket)
            s3.upload(local, ref, content_type)
        except AccessError as exc:
            raise StoreUnavailableError(f"the media store refused a write: {exc.reason}") from exc

    def _within(self, ref: str, kind: str) -> bool:
        return ref.startswith(f"{S3_SCHEME}{self.bucket}/{self._key(kind)}/")

    def _listing(self, kind: str) -> Iterator[tuple[str, float]]:
        for info in self.s3().listing(f"{S3_SCHEME}{self.bucket}/{self._key(kind)}", recursive=False):
            yield info.ref, info.modified


def make_media_store(settings: Settings) -> MediaStore:
    """The store ``SAVE_SEARCH_MEDIA_URI`` names (a folder by default)."""
    media = settings.media
    if media.uri and is_s3(media.uri):
        return S3MediaStore(media.uri, media.public_endpoint, media.create_bucket)
    return LocalMediaStore(settings.media_dir, media.public_endpoint)

