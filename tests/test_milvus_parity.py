"""Search semantics do not depend on the backend: the same collection (one database) searched through FAISS and
through Milvus gives the same candidates, scores, rankings and pages. Both use exact (flat) indexes here, so
the results must agree exactly; with approximate indexes (IVF, HNSW) they differ only by ANN recall, which
``bench/backends_bench.py`` measures."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import closing

import numpy as np
import pytest
from pymilvus import MilvusClient
from sqlalchemy import delete, func, select
from sqlalchemy.engine import make_url

from indexer.ingest.reindex import copy_frame_features, rebuild_indexes
from indexer.passages import embed_transcript
from indexer.search.service import SearchService
from indexer.services import Services
from indexer.settings import Settings
from indexer.storage.catalog import to_blob
from indexer.storage.db import Passage, Video, VideoFrames
from indexer.storage.frame_cache import CachedFeatures
from indexer.storage.shards import FeatureRef, pool_frames
from tests.media_fixtures import MEDIA, ljspeech_transcripts

pytestmark = pytest.mark.skipif(not MEDIA.exists(), reason=f"no test media at {MEDIA}")

QUERIES = ["printing", "the invention of movable type", "books of the fifteenth century", "a roman letter",
           "the most beautiful type ever cut", "nothing in particular"]


@pytest.fixture(scope="module")
def backends(tmp_path_factory, tiny_weights, milvus_uri) -> Iterator[tuple[SearchService, SearchService]]:
    """One SQLite collection of every LJSpeech transcript (clauses as segments, real MiniLM passages, random
    frame features) indexed by FAISS and by Milvus: (faiss search, milvus search)."""
    root = tmp_path_factory.mktemp("parity")
    common = dict(database_url=f"sqlite:///{root / 'db.sqlite'}", model="tiny", clip_source=str(tiny_weights[0]),
                  audio_source=str(tiny_weights[1]))
    on_faiss = Services(Settings(home=root / "faiss", index_type="flat", **common))
    prefix = f"parity_{secrets.token_hex(4)}"
    on_milvus = Services(Settings(home=root / "milvus", vector_store="milvus", milvus_uri=milvus_uri,
                                  milvus_collection_prefix=prefix, milvus_index="FLAT", **common),
                         encoder=on_faiss.encoder, sentences=on_faiss.sentences)
    config = on_faiss.encoder.model.config
    shards = on_faiss.catalog.open_features(config.num_frames, config.embed_dim, "parity")
    in_milvus = on_milvus.catalog.open_features(config.num_frames, config.embed_dim, "parity")
    rng = np.random.default_rng(11)
    with on_faiss.sessions.begin() as s:
        for i, (key, text) in enumerate(sorted(ljspeech_transcripts().items()), start=1):
            clauses = [c.strip() for c in text.split(",") if c.strip()]
            embedded = embed_transcript(on_faiss.sentences, [(2.0 * j, 2.0 * j + 2, c) for j, c in enumerate(clauses)],
                                        False)
            frames = rng.standard_normal((config.num_frames, config.embed_dim)).astype(np.float16)
            mask = (np.arange(config.num_frames) < 4 + i % 8).astype(np.uint8)
            segments, passages = embedded.rows()
            video = Video(id=i, content_hash=f"{i:064x}", filename=f"{key}.mp4", source_path=f"/m/{key}.mp4",
                          size_bytes=1, duration_s=2.0 * len(clauses), has_audio=True, transcript=text,
                          language="en", model_mode=on_faiss.encoder.status().mode, status="indexed",
                          model_version=on_faiss.encoder.status().model_version,
                          pooled=to_blob(pool_frames(frames[None], mask[None])[0]), segments=segments,
                          passages=passages)
            ref = shards.append(i, frames, mask)
            video.feature_shard, video.feature_offset = ref.shard, ref.offset
            s.add(video)
            s.flush()
            in_milvus.append(i, frames, mask, session=s)  # the same features, found by video id (video_frames)
    for services in (on_faiss, on_milvus):
        services.catalog.repair()
    # Few candidates per source (k=3: 12), so candidate generation decides what is ranked, not the collection size.
    yield SearchService(on_faiss, ann_candidates=3), SearchService(on_milvus, ann_candidates=3)
    client = MilvusClient(uri=milvus_uri)
    for name in client.list_collections():
        if name.startswith(prefix):
            client.drop_collection(name)


@pytest.mark.parametrize("query", QUERIES)
def test_both_backends_rank_the_same_collection_identically(backends, query: str) -> None:
    on_faiss, on_milvus = backends
    for offset in (0, 3):  # the first page and the next one: the same pool, so the same pagination
        a, b = on_faiss.search(query, k=3, offset=offset), on_milvus.search(query, k=3, offset=offset)
        assert (a.total_candidates, a.as_of) == (b.total_candidates, b.as_of)
        assert [r.video_id for r in a.results] == [r.video_id for r in b.results]
        for x, y in zip(a.results, b.results, strict=True):
            assert x.score == pytest.approx(y.score, abs=1e-5) and x.visual_score is not None
            assert (x.segment, x.speech_score is None) == (y.segment, y.speech_score is None)


def test_moving_a_collection_to_milvus_copies_its_shard_features(backends, tmp_path, milvus_uri) -> None:
    """`save-search reindex --rebuild-only` after the switch: the frame features come from the shard files (no
    re-encoding), the vectors from the database, and search answers as before."""
    on_faiss, _ = backends
    before = on_faiss.services.settings
    database = tmp_path / "moved.sqlite"
    with closing(sqlite3.connect(make_url(before.db_url).database)) as source, \
            closing(sqlite3.connect(database)) as copy:
        source.backup(copy)  # the committed state, write-ahead log included
    prefix = f"moved_{secrets.token_hex(4)}"
    moved = Services(Settings(home=before.home, database_url=f"sqlite:///{database}", model="tiny",
                              clip_source=before.visual.clip_source, audio_source=before.visual.audio_source,
                              vector_store="milvus", milvus_uri=milvus_uri, milvus_collection_prefix=prefix,
                              milvus_index="FLAT"),
                     encoder=on_faiss.services.encoder, sentences=on_faiss.services.sentences)
    try:
        with moved.sessions() as s:
            total = s.scalar(select(func.count()).select_from(Video))
            passages = s.scalar(select(func.count()).select_from(Passage))
        assert total and copy_frame_features(moved) == total
        assert copy_frame_features(moved) == 0  # every row points to the database's video_frames now
        assert rebuild_indexes(moved) == {"videos": total, "passages": passages}
        a, b = on_faiss.search(QUERIES[1], k=3), SearchService(moved, ann_candidates=3).search(QUERIES[1], k=3)
        assert [(r.video_id, r.score) for r in a.results] == [(r.video_id, pytest.approx(r.score, abs=1e-5))
                                                               for r in b.results]
    finally:
        client = MilvusClient(uri=milvus_uri)
        for name in client.list_collections():
            if name.startswith(prefix):
                client.drop_collection(name)


def test_a_video_without_frame_features_in_milvus_is_ranked_without_its_visual_score(backends) -> None:
    """A lost frame-feature row (what `reindex --verify` counts as missing) costs that video its visual channel,
    never the search."""
    on_faiss, on_milvus = backends
    top = on_milvus.search(QUERIES[1], k=3).results[0]
    frames = on_milvus.store
    assert isinstance(frames, CachedFeatures)  # the per-process cache in front of video_frames
    with on_faiss.services.sessions() as s:
        video = s.get(Video, top.video_id)
        ref = FeatureRef(video.feature_shard, video.feature_offset, video.id)
    saved = on_faiss.store.read_many([ref])
    with on_milvus.services.sessions.begin() as s:
        s.execute(delete(VideoFrames).where(VideoFrames.video_id == top.video_id))
    frames.clear()
    try:
        results = {r.video_id: r for r in on_milvus.search(QUERIES[1], k=3).results}
        assert len(results) == 3
        assert all((r.visual_score is None) == (r.video_id == top.video_id) for r in results.values())
    finally:
        frames.append(top.video_id, saved[0][0], saved[1][0])
