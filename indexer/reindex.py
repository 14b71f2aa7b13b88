"""Re-indexing: a model change never mixes embedding spaces. Videos encoded with another model version
(or none, from speech mode) are re-encoded from their media file with the current model; the indexes can always
be rebuilt from the vectors stored with each row, and checked against the database (``verify_indexes``)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from sqlalchemy import or_, select

from .catalog import SyncReport, to_blob
from .db import TEXT_REINDEX_NEEDED, Meta, Passage, Video
from .decode import decode, pcm_memmap
from .errors import IngestError
from .names import path_from_db
from .passages import embed_transcript
from .store import FeatureRef, FeatureStore, FeatureStoreError
from .text import normalize
from .worker import Services, Worker

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
        ids = list(s.scalars(select(Video.id).where(Video.status == "indexed", or_(
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
                    decoded = decode(path_from_db(v.source_path), work / str(v.id))
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
                    row = s.get(Video, v.id)
                    ref = worker.store.append(v.id, emb.frames[i].numpy().astype("float16"),
                                              emb.mask[i].numpy().astype("uint8"))
                    row.feature_shard, row.feature_offset = ref.shard, ref.offset
                    row.pooled = to_blob(emb.pooled[i].numpy())
                    row.model_version, row.model_mode = version, encoder.status().mode
            done += len(keep)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return done, failed


def copy_shard_features(services: Services, batch: int = 256) -> int:
    """Moving a collection to Milvus: copy the frame features of the current model's videos from the shard files
    under the home folder (run it where they are readable) into Milvus, and point the rows there. Rows already
    there, of another model, or without features are left alone. Returns the number of videos copied."""
    model = services.encoder.model
    version = services.encoder.status().model_version
    if services.settings.vector_store != "milvus" or model is None:
        return 0
    from .milvus_store import MILVUS_SHARD

    frames, dim = model.config.num_frames, model.config.embed_dim
    target = services.catalog.open_features(frames, dim, "copy")
    with services.sessions() as s:
        ids = list(s.scalars(select(Video.id).where(Video.model_version == version, Video.feature_shard.is_not(None),
                                                    Video.feature_shard != MILVUS_SHARD).order_by(Video.id)))
    if not ids:
        return 0
    shards = FeatureStore(services.settings.features_dir, frames, dim, owner="copy")
    copied = 0
    for start in range(0, len(ids), batch):
        with services.sessions.begin() as s:
            for video in s.scalars(select(Video).where(Video.id.in_(ids[start:start + batch]))):
                try:
                    f, m = shards.read(FeatureRef(video.feature_shard, video.feature_offset, video.id))
                except FeatureStoreError as exc:
                    log.warning("video %s: %s; `save-search reindex` after the switch re-encodes it", video.id, exc)
                    continue
                ref = target.append(video.id, f, m)
                video.feature_shard, video.feature_offset = ref.shard, ref.offset
                copied += 1
    return copied


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
        ids = list(s.scalars(select(Video.id).where(Video.status == "indexed").order_by(Video.id)))
    changed = 0
    for start in range(0, len(ids), batch):
        with services.sessions.begin() as s:
            for video in s.scalars(select(Video).where(Video.id.in_(ids[start:start + batch]))):
                segments = [(g.start_s, g.end_s, g.text) for g in video.segments]
                text = embed_transcript(services.sentences, segments, services.settings.normalize_sentence_input)
                for g in video.segments:
                    norm = normalize(g.text)
                    if g.norm_text != norm:
                        g.norm_text = norm
                s.execute(Passage.__table__.delete().where(Passage.video_id == video.id))
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
