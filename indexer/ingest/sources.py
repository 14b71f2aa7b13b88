"""Where an item's video comes from, and what its committed row refers to.

An item's ``path`` is a path on the worker's machine (bulk jobs over folders, uploads kept in a local media
folder), an object (``s3://bucket/key``: uploads kept in object storage, or bulk jobs over a bucket) or an
http(s) URL (bulk jobs). The stages read local files, so ``local_copy`` turns each into one: a local path is
used where it is (after the access check), an object or a URL is streamed into the item's scratch folder, with
the upload limits (the copy is bounded by ``SAVE_SEARCH_MAX_SIZE_BYTES``) and removed with that folder.

At the commit ``keep_source`` says what the video row refers to: the path or object it came from (users' files
and objects are theirs: the service never deletes them), or, for a URL, a copy kept in the media store under its
content hash (the service owns it and deletes it with the video): a URL can change or expire, a video stays
playable.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from indexer.ingest.access import check_access
from indexer.ingest.remote import fetch_url
from indexer.ingest.uploads import safe_suffix
from indexer.names import is_s3, is_url, path_from_db, path_to_db, source_name
from indexer.settings import Settings
from indexer.storage.media import UPLOADS, MediaStore


def local_copy(stored: str, work: Path, settings: Settings, media: MediaStore) -> Path:
    """A local file with the item's video: the path itself, or a copy of the object or URL in ``work``."""
    if not is_s3(stored) and not is_url(stored):
        return check_access(path_from_db(stored), None)
    work.mkdir(parents=True, exist_ok=True)
    dest = work / f"source{safe_suffix(source_name(stored))}"
    limits = settings.ingest
    if is_s3(stored):
        media.s3().download(stored, dest, limits.max_size_bytes)
    else:
        fetch_url(stored, dest, max_bytes=limits.max_size_bytes, allowed=limits.url_allowed_networks,
                  timeout_s=limits.url_timeout_s, body_timeout_s=settings.api.upload_body_timeout_s)
    return dest


def keep_source(stored: str, local: Path, content_hash: str, media: MediaStore) -> str:
    """The reference a committed video keeps to its media (see the module docstring). A URL's copy is put into
    the media store here; one left by a commit that never happened is swept like a thumbnail."""
    if is_url(stored):
        ref = media.ref(UPLOADS, f"{content_hash}{safe_suffix(local.name)}")
        media.put(local, ref, media_type(local.name))
        return ref
    if is_s3(stored):
        return stored
    return path_to_db(local)


def media_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"
