"""Re-indexing: a model change never mixes embedding spaces. Videos encoded with another model version
(or none, from speech mode) are re-encoded from their media file with the current model; the indexes can always
be rebuilt from the vectors stored with each row, and checked against the database (``verify_indexes``).
``reindex_ocr`` reads the on-screen text of videos indexed before OCR (or whose OCR failed)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, or_, select

from indexer.enums import OcrStatus, Source, VectorStore, VideoStatus
from indexer.errors import IngestError
from indexer.ingest.decode import decode, pcm_memmap
from indexer.ingest.runtimes import IngestRuntimes, ScreenText
from indexer.ingest.sources import local_copy
from indexer.ingest.worker import Worker
from indexer.passages import embed_transcript
from indexer.services import Services
from indexer.storage.catalog import FeatureStorage, SyncReport, store_embedding
from indexer.storage.db import TEXT_REINDEX_NEEDED, Meta, Passage, Segment, Video
from indexer.storage.shards import FeatureRef, FeatureStore, FeatureStoreError, write_tag
from indexer.text import normalize

log = logging.getLogger(__name__)


def reencode_stale(services: Services, batch: int = 8, worker_id: str = "reindex") -> tuple[int, int]:
    """Re-encode every stale video (transcripts are kept). Returns (re-encoded, failed)."""
    encoder = services.encoder
    version = encoder.status().model_version
    if version is None:
        log.warning("no visual model loaded: nothing to re-encode (%s)", encoder.reason)
        return 0, 0
    worker = Worker(services, owner=worker_id)
    assert worker.store is not None
    with services.sessions() as s:
        ids = list(s.scalars(select(Video.id).where(Video.status == VideoStatus.INDEXED, or_(
            Video.model_version.is_(None), Video.model_version != version)).order_by(Video.id)))
    done = failed = 0
    for start in range(0, len(ids), batch):
        with services.sessions() as s:
            videos = list(s.scalars(select(Video).where(Video.id.in_(ids[start:start + batch]))))
        inputs, keep = [], []
        work = Path(tempfile.mkdtemp(prefix="save-reindex-"))
        try:
            for v in videos:
                try:
                    source = local_copy(v.source_path, work / str(v.id), services.settings, services.media)
                    decoded = decode(source, work / str(v.id))
                    pcm = pcm_memmap(decoded.audio_path) if decoded.audio_path is not None else None
                    inputs.append(worker._model_inputs(decoded, pcm, v.transcript))
                    keep.append(v)
                except (IngestError, OSError) as exc:
                    failed += 1
                    log.warning("video %s (%s) cannot be re-encoded: %s", v.id, v.source_path, exc)
            if not keep:
                continue
            emb = encoder.encode_videos(inputs)
            with services.sessions.begin() as s:
                for i, v in enumerate(keep):
                    store_embedding(s.get(Video, v.id), worker.store, emb.frames[i].numpy(), emb.mask[i].numpy(),
                                    emb.pooled[i].numpy(), version, encoder.status().mode)
            done += len(keep)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return done, failed


def copy_frame_features(services: Services, batch: int = 200) -> int:
    """Moving frame features to where the Milvus backend reads them (``SAVE_SEARCH_FRAME_STORE``), once: from the
    shard files under the home folder (a FAISS collection moving to Milvus: run it where they are readable) or
    from another frame store (the Milvus ``frames`` collection into the database table, or back), and point the
    rows there, ``batch`` videos per transaction (writes to the table are in it). Rows already there, of another
    model, or without features are left alone; a video whose features cannot be read is left for ``reindex``
    to re-encode. Once every video of the model is in the table, the ``frames`` collection is dropped. Returns
    the number of videos copied."""
    model = services.encoder.model
    version = services.encoder.status().model_version
    if services.settings.index.vector_store != VectorStore.MILVUS or model is None:
        return 0
    from indexer.storage.milvus import MILVUS_SHARD, MilvusCatalog
    from indexer.storage.sql_frames import DB_SHARD, SqlFrames

    catalog = services.catalog
    assert isinstance(catalog, MilvusCatalog)
    frames, dim = model.config.num_frames, model.config.embed_dim
    target = catalog.open_features(frames, dim, "copy")
    with services.sessions() as s:
        ids = list(s.scalars(select(Video.id).where(Video.model_version == version, Video.feature_shard.is_not(None),
                                                    Video.feature_shard != target.shard).order_by(Video.id)))
    sources: dict[str, FeatureStorage | None] = {
        MILVUS_SHARD: catalog.milvus_frames(frames, dim) if target.shard != MILVUS_SHARD else None,
        DB_SHARD: SqlFrames(services.sessions, frames, dim) if target.shard != DB_SHARD else None}
    shards: FeatureStore | None = None
    copied = 0
    for start in range(0, len(ids), batch):
        with services.sessions.begin() as s:
            videos = list(s.scalars(select(Video).where(Video.id.in_(ids[start:start + batch]))))
            groups: dict[str, list[Video]] = {}
            for video in videos:
                groups.setdefault(video.feature_shard if video.feature_shard in sources else "", []).append(video)
            for kind, group in groups.items():
                if kind:
                    source = sources[kind]
                else:
                    source = shards = shards or FeatureStore(services.settings.features_dir, frames, dim, owner="copy")
                for video, (f, m) in _read_each(source, group):
                    ref = target.append(video.id, f, m, session=s)
                    video.feature_shard, video.feature_offset = ref.shard, ref.offset
                    copied += 1
    if target.shard == DB_SHARD and sources[MILVUS_SHARD] is not None:
        with services.sessions() as s:
            left = s.scalar(select(func.count()).select_from(Video).where(Video.feature_shard == MILVUS_SHARD))
        if left:
            log.warning("%d video(s) still refer to the Milvus frames collection (unreadable there): it is kept; "
                        "`save-search reindex` re-encodes them", left)
        else:
            catalog.drop_milvus_frames(frames, dim)
            log.info("frame features moved into the database; the Milvus frames collection is dropped")
    return copied


def _read_each(source: FeatureStorage | None, videos: list[Video]) -> list[tuple[Video, tuple[np.ndarray, np.ndarray]]]:
    """The features of ``videos`` from ``source``: one read for all, or one per video when some are unreadable
    (those are logged and skipped)."""
    refs = [FeatureRef(v.feature_shard or "", v.feature_offset or 0, v.id) for v in videos]
    if source is not None:
        try:
            f, m = source.read_many(refs)
            return [(v, (f[i], m[i])) for i, v in enumerate(videos)]
        except FeatureStoreError:
            pass
    out: list[tuple[Video, tuple[np.ndarray, np.ndarray]]] = []
    for video, ref in zip(videos, refs, strict=True):
        try:
            if source is None:
                raise FeatureStoreError(f"{ref.shard} is not readable from here")
            f, m = source.read_many([ref])
            out.append((video, (f[0], m[0])))
        except FeatureStoreError as exc:
            log.warning("video %s: %s; `save-search reindex` after the switch re-encodes it", video.id, exc)
    return out


def rebuild_indexes(services: Services) -> dict[str, int]:
    """Drop the index entries (snapshot files, or Milvus collections) and rebuild them from the database."""
    with services.index_lock:
        return services.catalog.rebuild()


def verify_indexes(services: Services) -> dict[str, SyncReport]:
    """Compare the database with the indexes (ids per embedding space, each way) and repair the differences:
    what a worker killed between its commit and its index write, or a delete cut short, leaves behind."""
    model = services.encoder.model
    if model is not None:  # opens the frame features too, so that they are checked
        services.catalog.open_features(model.config.num_frames, model.config.embed_dim, "verify")
    services.catalog.prepare()
    with services.index_lock:
        return services.catalog.repair()


def reindex_text(services: Services, batch: int = 64) -> int:
    """Recompute what search derives from each stored transcript: the normalised full text and the passages
    with their sentence embeddings (after an upgrade that changed either, or ``normalize_sentence_input``).
    No audio is decoded again. Returns the number of videos processed."""
    with services.sessions() as s:
        ids = list(s.scalars(select(Video.id).where(Video.status == VideoStatus.INDEXED).order_by(Video.id)))
    changed = 0
    for start in range(0, len(ids), batch):
        with services.sessions.begin() as s:
            for video in s.scalars(select(Video).where(Video.id.in_(ids[start:start + batch]))):
                text = embed_transcript(services.sentences, _texts(video, Source.SPEECH),
                                        services.settings.search.normalize_sentence_input, _texts(video, Source.SCREEN))
                for g in video.segments:
                    norm = normalize(g.text)
                    if g.norm_text != norm:
                        g.norm_text = norm
                s.execute(delete(Passage).where(Passage.video_id == video.id))
                video.text_tag = write_tag()
                _, passages = text.rows()
                for p in passages:
                    p.video_id = video.id
                s.add_all(passages)
                changed += 1
    with services.sessions.begin() as s:
        flag = s.get(Meta, TEXT_REINDEX_NEEDED)
        if flag is not None:
            s.delete(flag)
    return changed


def _texts(video: Video, source: str) -> list[tuple[float, float, str]]:
    """A video's stored (start, end, text) segments of one source, in index order."""
    return [(g.start_s, g.end_s, g.text) for g in video.segments if g.source == source]


def reindex_ocr(services: Services, progress: Callable[[int, int, Video], None] | None = None,
                runtimes: IngestRuntimes | None = None) -> tuple[int, int]:
    """Read the on-screen text of the videos that have none yet (indexed before OCR, with ``SAVE_SEARCH_OCR=0``,
    or whose OCR failed) from their media files, and store it as segments and passages of source ``screen``.
    One video per transaction, so an interrupted run keeps what it did. ``progress(done, total, video)`` after
    each; ``runtimes`` holds the OCR reader (built from the settings when not given). Returns (read, failed)."""
    with services.sessions() as s:
        unread = or_(Video.ocr_status.is_(None), Video.ocr_status != OcrStatus.READ)
        ids = list(s.scalars(select(Video.id).where(Video.status == VideoStatus.INDEXED, unread).order_by(Video.id)))
    runtimes = runtimes or IngestRuntimes(services.settings)
    read = failed = 0
    for n, video_id in enumerate(ids, 1):
        with services.sessions() as s:
            video = s.get(Video, video_id)
            if video is None:  # deleted meanwhile
                continue
            stored, duration = video.source_path, video.duration_s
        work = Path(tempfile.mkdtemp(prefix="save-reindex-ocr-"))
        try:
            screen = runtimes.read_screen(local_copy(stored, work, services.settings, services.media), duration,
                                          force=True)
        except IngestError as exc:  # the media could not be read (gone, or its store down): OCR failed
            screen = ScreenText([], OcrStatus.FAILED, f"the media could not be read: {exc.reason}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        with services.sessions.begin() as s:
            video = s.get(Video, video_id)
            if video is None:
                continue
            speech = _texts(video, Source.SPEECH)
            text = embed_transcript(services.sentences, speech, services.settings.search.normalize_sentence_input,
                                    screen.spans)
            s.execute(delete(Passage).where(Passage.video_id == video_id, Passage.source == Source.SCREEN))
            video.text_tag = write_tag()
            s.execute(delete(Segment).where(Segment.video_id == video_id, Segment.source == Source.SCREEN))
            segments, passages = text.rows()
            screen_rows = [g for g in segments if g.source == Source.SCREEN] + [p for p in passages
                                                                                if p.source == Source.SCREEN]
            for row in screen_rows:
                row.video_id = video_id
                s.add(row)
            video.ocr_status, video.ocr_error = screen.status, screen.error
            if screen.status == OcrStatus.READ:
                read += 1
            else:
                failed += 1
        if progress is not None:
            progress(n, len(ids), video)
    return read, failed
