"""Paths and file names from clients and from disk: checked, stored and shown without surprises.

Clients send text (JSON, multipart), so a path or name can hold NUL, lone surrogates or be longer than the
file system allows; each of these is refused with a reason (``name_problem``/``path_problem``) before it
reaches ``os`` or the database. Names read from disk are bytes on Linux and need not be UTF-8; Python shows
such bytes as lone surrogates, which neither SQLite nor PostgreSQL can store. ``path_to_db`` and
``path_from_db`` keep them exactly (the real file stays reachable), and ``display_name`` shows them with the
undecodable bytes as ``\\xNN``.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

MAX_NAME_BYTES = 255  # one path component (NAME_MAX on Linux file systems)
MAX_PATH_BYTES = 4095  # a whole path (PATH_MAX less the terminating NUL)
MAX_SUFFIX_CHARS = 16  # longer "extensions" are not kept when a name is shortened
_RAW_PREFIX = "fs-bytes:"  # stored paths are absolute; this prefix cannot start one
S3_SCHEME = "s3://"
URL_SCHEMES = ("http://", "https://")
MAX_URL_CHARS = 8192
MAX_S3_KEY_BYTES = 1024
# S3 bucket names (the rules AWS, MinIO and Ceph share): 3-63 lower-case letters, digits, dots and hyphens
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def text_problem(text: str, what: str) -> str | None:
    """Why ``text`` cannot be a file name or path at all (NUL, lone surrogates), else ``None``."""
    if "\x00" in text:
        return f"{what} contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"{what} is not valid Unicode (a lone surrogate at position {exc.start})"
    return None


def path_problem(path: str) -> str | None:
    """Why a client-given server path is unusable before any file system call, else ``None``.

    Relative paths are refused: they would be resolved against the server's working directory, which the
    client neither knows nor should learn."""
    problem = text_problem(path, "the path")
    if problem:
        return problem
    encoded = path.encode("utf-8")
    if len(encoded) > MAX_PATH_BYTES:
        return f"the path is longer than {MAX_PATH_BYTES} bytes"
    if any(len(part.encode("utf-8")) > MAX_NAME_BYTES for part in PurePosixPath(path).parts):
        return f"a part of the path is longer than {MAX_NAME_BYTES} bytes"
    if not path.startswith(("/", "~")):
        return "the path must be absolute"
    return None


def is_s3(text: str | Path) -> bool:
    """Whether a source or stored reference names an object (``s3://bucket/key``) rather than a local path."""
    return isinstance(text, str) and text.startswith(S3_SCHEME)


def is_url(text: str | Path) -> bool:
    return isinstance(text, str) and text.lower().startswith(URL_SCHEMES)


def is_remote(text: str | Path) -> bool:
    """An object in a bucket or an http(s) URL: anything that is not a path on this machine."""
    return is_s3(text) or is_url(text)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> (``bucket``, ``some/key``); the key may be empty (a whole bucket)."""
    bucket, _, key = uri[len(S3_SCHEME):].partition("/")
    return bucket, key


def s3_problem(uri: str) -> str | None:
    """Why ``uri`` is not a usable ``s3://bucket[/prefix]``, else ``None``."""
    problem = text_problem(uri, "the object URI")
    if problem:
        return problem
    bucket, key = split_s3(uri)
    if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        return f"{bucket!r} is not a valid bucket name (s3://bucket/prefix)"
    if len(key.encode("utf-8")) > MAX_S3_KEY_BYTES:
        return f"the object key is longer than {MAX_S3_KEY_BYTES} bytes"
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        return "the object key contains a control character"
    return None


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be fetched at all (scheme, host, characters), else ``None``. Where it leads is checked
    when it is fetched (``indexer.ingest.remote``)."""
    problem = text_problem(url, "the URL")
    if problem:
        return problem
    if len(url) > MAX_URL_CHARS:
        return f"the URL is longer than {MAX_URL_CHARS} characters"
    if any(ord(c) <= 32 or ord(c) == 127 for c in url):
        return "the URL contains a space or a control character (percent-encode it)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"the URL is malformed: {exc}"
    if parts.scheme.lower() not in ("http", "https"):
        return "only http:// and https:// URLs can be fetched"
    if not parts.hostname:
        return "the URL has no host"
    if port == 0:
        return "the URL's port is 0"
    return None


def source_problem(text: str) -> str | None:
    """Why a bulk-job source cannot be used, before any network or file system call: an ``s3://`` object or
    prefix, an http(s) URL, or an absolute server path."""
    if is_s3(text):
        return s3_problem(text)
    if _SCHEME_RE.match(text):  # http(s), or a scheme we do not fetch (said by url_problem)
        return url_problem(text)
    return path_problem(text)


def source_name(text: str) -> str:
    """The file name a source shows: a path's last part, an object key's, or a URL path's (decoded), else its
    host."""
    if is_s3(text):
        bucket, key = split_s3(text)
        return key.rstrip("/").rsplit("/", 1)[-1] or bucket
    if is_url(text):
        parts = urlsplit(text)
        name = unquote(parts.path.rstrip("/").rsplit("/", 1)[-1], errors="replace")
        return name or parts.hostname or "download"
    return Path(text).name


def name_problem(name: str) -> str | None:
    """Why an uploaded file name cannot be accepted, else ``None`` (over-long names are shortened instead)."""
    return text_problem(name, "the file name")


def shorten_name(name: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """``name`` cut to ``max_bytes`` of UTF-8, keeping its extension (``.mp4`` says what the file is)."""
    if len(name.encode("utf-8")) <= max_bytes:
        return name
    suffix = PurePosixPath(name).suffix
    if len(suffix) > MAX_SUFFIX_CHARS:
        suffix = ""
    stem = name[: len(name) - len(suffix)] if suffix else name
    budget = max_bytes - len(suffix.encode("utf-8"))
    stem = stem.encode("utf-8")[:budget].decode("utf-8", "ignore")  # never half a character
    return stem + suffix


def display_name(text: str) -> str:
    """A name or path as valid text: bytes that are not UTF-8 (lone surrogates in Python) become ``\\xNN``."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def path_to_db(path: str | Path) -> str:
    """The text stored for a path: itself when it is UTF-8, else its exact bytes (base64) behind a prefix."""
    text = str(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _RAW_PREFIX + base64.b64encode(os.fsencode(text)).decode("ascii")


def path_from_db(stored: str) -> Path:
    """The path that ``path_to_db`` stored (never call it on a remote reference: see ``is_remote``)."""
    if stored.startswith(_RAW_PREFIX):
        return Path(os.fsdecode(base64.b64decode(stored[len(_RAW_PREFIX):])))
    return Path(stored)


def display_stored_path(stored: str) -> str:
    """A stored path (or object URI, or URL, shown as it is) as people should see it (see ``display_name``)."""
    if is_remote(stored):
        return stored
    return display_name(str(path_from_db(stored)))
