"""Removing a video from the collection: one function for the API and the command line."""

from __future__ import annotations

import logging

from indexer.errors import IngestError
from indexer.ingest.jobs import JobQueue
from indexer.services import Services
from indexer.storage.db import Video

log = logging.getLogger(__name__)


def delete_video(services: Services, video_id: int) -> bool:
    """Remove the row (segments and passages cascade), cancel its pending work, drop it from the indexes and
    delete the files the service owns from the media store (thumbnail, uploaded copy, copy of a URL; a local folder
    or object storage). Source files of bulk jobs, local or in users' buckets, belong to the user and are left
    alone. Stored frame features stay in their append-only shard until a compaction (they are no longer
    referenced); in Milvus they go with the vectors. A crash before the index removal is repaired by the next
    start-up or ``save-search reindex --verify``; a file the store could not delete now is swept by a worker's
    start-up (no row refers to it any more). False if there is no such video."""
    media = services.media
    with services.sessions.begin() as s:
        video = s.get(Video, video_id)
        if video is None:
            return False
        owned = [video.thumbnail_path] if video.thumbnail_path else []
        if media.owns(video.source_path):
            owned.append(video.source_path)
        JobQueue.cancel_items_of(s, video_id)
        s.delete(video)
    try:
        with services.index_lock:
            services.catalog.remove_videos([video_id])
    except Exception:  # noqa: BLE001 - the row is gone, so search never shows it; the next repair drops the entries
        log.exception("video %s is deleted but its index entries remain until the next repair", video_id)
    for ref in owned:
        try:
            media.delete(ref)
        except (OSError, IngestError) as exc:
            log.warning("video %s is deleted but %s remains until a worker's start-up sweeps it: %s", video_id, ref,
                        exc)
    return True
