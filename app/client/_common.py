"""What the sync and the async client share: configuration, the retry rules, the error mapping and the streamed
multipart body of an upload. No I/O happens here except reading the file being uploaded."""

from __future__ import annotations

import email.utils
import mimetypes
import os
import secrets
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from .errors import ClientTimeout, ConnectionFailed

ENV_SERVER = "SAVE_SEARCH_SERVER"
ENV_API_KEY = "SAVE_SEARCH_API_KEY"
DEFAULT_SERVER = "http://127.0.0.1:8000"  # where `save-search serve` listens by default
# A search answers in well under a second; 30 s covers a loaded server. Connecting should never take long.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# After the last byte of an upload the server probes the file before answering: allow it time.
UPLOAD_TIMEOUT = httpx.Timeout(60.0, connect=5.0, read=300.0)
CHUNK_BYTES = 1 << 20  # an upload is read and sent this much at a time: never the whole file in memory
FINISHED_JOB_STATUSES = frozenset({"done", "failed", "cancelled"})
# The server refused before doing anything and said when to come back.
RETRY_STATUSES = frozenset({429, 503})
# An upload is idempotent (the server deduplicates by content hash), so these are worth sending it again for.
UPLOAD_RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
USER_AGENT = "save-search-client/1"

ProgressCallback = Callable[[int, "int | None"], None]  # (bytes sent so far, total bytes or None when unknown)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard the client tries. ``retries`` more attempts after the first; a failed connection waits
    ``backoff_s``, doubling; a 429/503 waits what its ``Retry-After`` says (else the backoff), and a
    ``Retry-After`` longer than ``max_wait_s`` is raised at once rather than waited out."""

    retries: int = 3
    backoff_s: float = 0.5
    max_wait_s: float = 30.0

    def backoff(self, attempt: int) -> float:
        return min(self.backoff_s * 2**attempt, self.max_wait_s)


def resolve_server(base_url: str | None) -> str:
    url = (base_url or os.environ.get(ENV_SERVER) or DEFAULT_SERVER).strip()
    if "://" not in url:
        url = f"http://{url}"
    return url.rstrip("/")


def tls_verify(base_url: str) -> ssl.SSLContext | bool:
    """``verify`` for httpx: for an https server, True (httpx loads certifi's CA bundle and checks certificates).
    A plain-http server never needs TLS (the client follows no redirects), and loading the bundle is ~50 ms of CPU,
    an eighth of a command-line search: it gets a context that trusts no certificate authority at all, so that a
    TLS connection, were one ever made, would fail instead of being trusted."""
    if base_url.startswith("https://"):
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def resolve_api_key(api_key: str | None) -> str | None:
    return api_key if api_key is not None else (os.environ.get(ENV_API_KEY) or None)


def default_headers(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def retry_after_s(response: httpx.Response) -> float | None:
    """``Retry-After`` as seconds from now (delta-seconds or an HTTP date), None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def status_wait(response: httpx.Response, attempt: int, policy: RetryPolicy,
                statuses: frozenset[int] = RETRY_STATUSES) -> float | None:
    """Seconds to wait before sending again after this error response, or None: do not retry."""
    if response.status_code not in statuses or attempt >= policy.retries:
        return None
    asked = retry_after_s(response)
    if asked is None:
        return policy.backoff(attempt)
    return asked if asked <= policy.max_wait_s else None


def transport_wait(exc: httpx.TransportError, attempt: int, policy: RetryPolicy, idempotent: bool) -> float | None:
    """Seconds to wait before trying again after a failed exchange, or None: do not retry. A connection that was
    never made is always safe to retry; a dropped one only for idempotent requests; a timeout never (the server
    may still be working on it, and asking again adds load)."""
    if attempt >= policy.retries:
        return None
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return policy.backoff(attempt)
    if isinstance(exc, httpx.TimeoutException):
        return None
    if idempotent and isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        return policy.backoff(attempt)
    return None


def transport_error(url: str, exc: httpx.TransportError) -> Exception:
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return ClientTimeout(url, exc)
    return ConnectionFailed(url, exc)


def absolute_url(server: str, path_or_url: str) -> str:
    """A URL the API handed out (``/v1/videos/1/media?exp=..&sig=..``) made absolute on this server."""
    if "://" in path_or_url:
        return path_or_url
    return f"{server}/{path_or_url.lstrip('/')}"


def media_path(video: Any, kind: str) -> str:
    """The API's URL of a video's ``media`` or ``thumbnail``: as handed out in a result (signed when the server
    signs them) for a ``VideoOut``/``SearchResult``, else the plain path for a video id."""
    if isinstance(video, int):
        return f"/v1/videos/{video}/{kind}"
    return video.video_url if kind == "media" else video.thumbnail_url


# ------------------------------------------------------------------------------------------------- upload body
def _quote(name: str) -> bytes:
    """A file name for a multipart header as browsers and httpx write it (HTML5 form encoding), in UTF-8 (bytes
    that are not UTF-8 are sent as they are: the server answers 422 with the reason)."""
    escaped = name.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
    return escaped.encode("utf-8", "surrogateescape")


@dataclass
class UploadBody:
    """A ``multipart/form-data`` body with one ``file`` part, streamed from an open binary file from its current
    position. ``size`` (when the file's length is known) makes ``Content-Length`` exact, so the server can
    refuse a file that is too large before any of it is sent; ``rewind`` makes a retry send it again."""

    file: IO[bytes]
    filename: str
    size: int | None
    start: int | None  # position to rewind to; None when the file cannot seek (no retry then)
    boundary: str = ""

    def __post_init__(self) -> None:
        self.boundary = self.boundary or f"save-search-{secrets.token_hex(16)}"
        ctype = mimetypes.guess_type(self.filename)[0] or "application/octet-stream"
        self.head = (f"--{self.boundary}\r\n".encode() + b'Content-Disposition: form-data; name="file"; filename="'
                     + _quote(self.filename) + f'"\r\nContent-Type: {ctype}\r\n\r\n'.encode())
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()

    @property
    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": f"multipart/form-data; boundary={self.boundary}"}
        if self.size is not None:
            headers["Content-Length"] = str(len(self.head) + self.size + len(self.tail))
        return headers

    @property
    def can_retry(self) -> bool:
        return self.start is not None

    def rewind(self) -> None:
        if self.start is not None:
            self.file.seek(self.start)

    def chunks(self, progress: ProgressCallback | None) -> Iterator[bytes]:
        sent = 0
        if progress:
            progress(0, self.size)
        yield self.head
        while block := self.file.read(CHUNK_BYTES):
            yield block
            sent += len(block)
            if progress:
                progress(sent, self.size)
        yield self.tail


def open_upload(source: str | os.PathLike[str] | IO[bytes], filename: str | None) -> tuple[UploadBody, bool]:
    """The body for a path (opened here: the caller closes it, second value True) or an open binary file (from
    its current position; its name, size and seekability are used when it has them)."""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        f: IO[bytes] = path.open("rb")
        return UploadBody(f, filename or path.name, os.fstat(f.fileno()).st_size, 0), True
    f = source
    name = filename or Path(str(getattr(f, "name", "") or "upload")).name
    start = size = None
    try:
        if f.seekable():
            start = f.tell()
            size = f.seek(0, os.SEEK_END) - start
            f.seek(start)
    except (AttributeError, OSError, ValueError):
        start = size = None
    return UploadBody(f, name, size, start), False
