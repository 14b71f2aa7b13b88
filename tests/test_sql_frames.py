"""Frame features in the database (``video_frames``, ``indexer.storage.sql_frames.SqlFrames``), on SQLite and
PostgreSQL: read back in the order asked (psycopg's binary protocol on PostgreSQL), written in the video's own
transaction (a re-encode replaces the row or nothing), gone with the video (ON DELETE CASCADE), migration 0006 up
and down; and the Milvus backend end to end on the table: ingest, search, the move of an older deployment's
``frames`` collection into the table, the per-process cache in front of it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete, func, inspect, select, text
from sqlalchemy.orm import sessionmaker

from indexer.settings import Settings
from indexer.storage.catalog import store_embedding, to_blob
from indexer.storage.db import Video, VideoFrames, make_engine, session_factory
from indexer.storage.frame_cache import CachedFeatures, with_cache
from indexer.storage.migrate import current_revision, head_revision
from indexer.storage.shards import FeatureRef, FeatureStore, FeatureStoreError
from indexer.storage.sql_frames import DB_SHARD, SqlFrames
from tests.helpers import Silent, migrate_to
from tests.media_fixtures import MEDIA

FRAMES, DIM = 12, 16


def _video(i: int, version: str = "v1") -> Video:
    return Video(id=i, content_hash=f"{i:064x}", filename=f"{i}.mp4", source_path=f"/m/{i}.mp4", size_bytes=1,
                 duration_s=1.0, has_audio=False, model_mode="save-fused", status="indexed", model_version=version,
                 pooled=to_blob(np.ones(DIM, np.float32)))


def _features(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    frames = rng.standard_normal((n, FRAMES, DIM)).astype(np.float16)
    masks = (np.arange(FRAMES)[None] < rng.integers(1, FRAMES + 1, (n, 1))).astype(np.uint8)
    return frames, masks


def _rows(sessions: sessionmaker) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(VideoFrames)) or 0)


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker]:
    engine = make_engine(db_url)
    try:
        yield session_factory(engine)
    finally:
        engine.dispose()


def test_frames_come_back_in_the_order_asked_and_a_missing_row_is_an_error(sessions, db_url) -> None:
    store = SqlFrames(sessions, FRAMES, DIM)
    assert store.binary == db_url.startswith("postgresql")  # psycopg's binary protocol on PostgreSQL
    frames, masks = _features(np.random.default_rng(1), 5)
    with sessions.begin() as s:
        s.add_all(_video(i) for i in range(1, 6))
        s.flush()
        refs = [store.append(i, frames[i - 1], masks[i - 1], session=s) for i in range(1, 5)]
    assert (refs[0].shard, refs[0].video_id) == (DB_SHARD, 1)
    assert len({r.offset for r in refs}) == len(refs)  # a tag per write: a cache tells writes of one id apart
    store.append(5, frames[4], masks[4])  # no session: a transaction of its own
    order = [4, 1, 5, 1, 3]
    got_frames, got_masks = store.read_many([FeatureRef(DB_SHARD, 0, v) for v in order])
    np.testing.assert_array_equal(got_frames, frames[np.array(order) - 1])
    np.testing.assert_array_equal(got_masks, masks[np.array(order) - 1])
    assert got_frames.dtype == np.float16 and got_masks.dtype == np.uint8
    assert store.read_many([])[0].shape == (0, FRAMES, DIM)
    with pytest.raises(FeatureStoreError, match="video 9"):
        store.read_many([FeatureRef(DB_SHARD, 0, 2), FeatureRef(DB_SHARD, 0, 9)])
    with pytest.raises(FeatureStoreError, match="not \\[12, 8\\]"):  # a row of another shape (another model)
        SqlFrames(sessions, FRAMES, DIM // 2).read_many([FeatureRef(DB_SHARD, 0, 2)])
    with pytest.raises(ValueError, match="frames must be"):
        store.append(2, frames[0][:3], masks[0])


def test_a_re_encode_replaces_the_row_in_the_transaction_that_changes_the_model(sessions) -> None:
    store = SqlFrames(sessions, FRAMES, DIM)
    (old, new), (old_mask, new_mask) = _features(np.random.default_rng(2), 2)
    pooled = np.ones(DIM, np.float32)
    with sessions.begin() as s:
        s.add(_video(1, version=None))  # type: ignore[arg-type]
        s.flush()
        store_embedding(s.get(Video, 1), store, old, old_mask, pooled, "v1")
    with pytest.raises(RuntimeError), sessions.begin() as s:  # the re-encode's transaction fails: nothing changes
        store_embedding(s.get(Video, 1), store, new, new_mask, pooled, "v2")
        raise RuntimeError("killed before the commit")
    with sessions() as s:
        assert s.get(Video, 1).model_version == "v1"
    np.testing.assert_array_equal(store.read_many([FeatureRef(DB_SHARD, 0, 1)])[0][0], old)
    with sessions.begin() as s:
        store_embedding(s.get(Video, 1), store, new, new_mask, pooled, "v2")
    with sessions() as s:
        video = s.get(Video, 1)
        assert (video.model_version, video.feature_shard) == ("v2", DB_SHARD)
    got, got_mask = store.read_many([FeatureRef(DB_SHARD, 0, 1)])
    np.testing.assert_array_equal(got[0], new)
    np.testing.assert_array_equal(got_mask[0], new_mask)
    assert _rows(sessions) == 1


def test_deleting_a_video_deletes_its_frames(sessions) -> None:
    store = SqlFrames(sessions, FRAMES, DIM)
    frames, masks = _features(np.random.default_rng(3), 3)
    with sessions.begin() as s:
        s.add_all(_video(i) for i in (1, 2, 3))
        s.flush()
        for i in (1, 2, 3):
            store.append(i, frames[i - 1], masks[i - 1], session=s)
    with sessions.begin() as s:
        s.delete(s.get(Video, 1))  # the ORM's delete (what `delete_video` does)
    with sessions.begin() as s:
        s.execute(delete(Video).where(Video.id == 2))  # a bulk delete
    with sessions() as s:
        assert list(s.scalars(select(VideoFrames.video_id))) == [3]


def test_migration_0006_up_and_down(fresh_db_url: str) -> None:
    migrate_to(fresh_db_url, "0005")
    engine = make_engine(fresh_db_url)
    try:
        assert "video_frames" not in inspect(engine).get_table_names()
        migrate_to(fresh_db_url, "head")
        assert current_revision(fresh_db_url) == head_revision()
        assert "video_frames" in inspect(engine).get_table_names()
        if engine.dialect.name == "postgresql":  # out of line, no compression attempt: fp16 does not compress
            with engine.connect() as conn:
                storage = conn.scalar(text("SELECT attstorage FROM pg_attribute WHERE attrelid = "
                                           "'video_frames'::regclass AND attname = 'frames'"))
            assert storage == "e"
        sessions = session_factory(engine)
        with sessions.begin() as s:
            s.add(_video(1))
            s.flush()
            SqlFrames(sessions, FRAMES, DIM).append(1, *(x[0] for x in _features(np.random.default_rng(4), 1)),
                                                    session=s)
        migrate_to(fresh_db_url, "0005", down=True)
        engine.dispose()
        assert current_revision(fresh_db_url) == "0005"
        assert "video_frames" not in inspect(engine).get_table_names()
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM videos")) == 1
        migrate_to(fresh_db_url, "head")
        assert "video_frames" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_the_frame_cache_wraps_only_stores_across_the_network(sessions, tmp_path) -> None:
    table = SqlFrames(sessions, FRAMES, DIM)
    cached = with_cache(table, "v1", 8)
    assert isinstance(cached, CachedFeatures) and cached.max_bytes == 8 * 1024 * 1024
    assert with_cache(table, "v1", 0) is table  # SAVE_SEARCH_FRAME_CACHE_MB=0: off
    with FeatureStore(tmp_path / "features", FRAMES, DIM, owner="w") as shards:
        assert with_cache(shards, "v1", 8) is shards  # memory-mapped shards: the page cache is their cache
    settings = Settings(home=tmp_path)
    assert (settings.milvus.frame_store, settings.search.frame_cache_mb) == ("database", 256)
    shown = {name: value for name, _, value in settings.effective()}  # what `save-search config` prints
    assert shown["SAVE_SEARCH_FRAME_STORE"] == "database" and shown["SAVE_SEARCH_FRAME_CACHE_MB"] == "256"
    assert Settings(home=tmp_path, frame_store="milvus", frame_cache_mb=0).milvus.frame_store == "milvus"


def _frames_collections(client, prefix: str) -> list[str]:
    return [n for n in client.list_collections() if n.startswith(f"{prefix}_frames_")]


@pytest.mark.skipif(not MEDIA.exists(), reason=f"no test media at {MEDIA}")
def test_milvus_backend_end_to_end_on_the_table(fresh_db_url, tmp_path, tiny_weights, milvus_uri) -> None:
    """A deployment whose frames are in the Milvus ``frames`` collection (before 0006) switches to the table:
    ``reindex --rebuild-only``'s copy moves them and drops the collection; new videos go to the table only;
    search re-scores both through the cache; a delete takes the row with it."""
    from pymilvus import MilvusClient

    from indexer.ingest.jobs import FINISHED_STATUSES
    from indexer.ingest.reindex import copy_frame_features, verify_indexes
    from indexer.ingest.runtimes import IngestRuntimes
    from indexer.ingest.worker import Worker
    from indexer.search.service import SearchService
    from indexer.services import Services
    from indexer.videos import delete_video

    prefix = f"sqlf_{secrets.token_hex(4)}"
    common = dict(database_url=fresh_db_url, model="tiny", clip_source=str(tiny_weights[0]),
                  audio_source=str(tiny_weights[1]), ocr=False, vector_store="milvus", milvus_uri=milvus_uri,
                  milvus_collection_prefix=prefix, milvus_index="FLAT")
    client = MilvusClient(uri=milvus_uri)

    def ingest(services: Services, clip: Path) -> int:
        worker = Worker(services, owner=f"w{secrets.token_hex(3)}",
                        runtimes=IngestRuntimes(services.settings, transcriber=Silent()))
        job = worker.queue.enqueue("bulk", [clip])
        worker.startup()
        try:
            while worker.queue.summary(job).status not in FINISHED_STATUSES:
                assert worker.run_once() > 0 or worker.queue.pending() > 0
        finally:
            worker.shutdown()
        return int(worker.queue.summary(job).items[0].video_id)

    try:
        before = Services(Settings(home=tmp_path / "old", frame_store="milvus", **common))
        first = ingest(before, MEDIA / "video" / "dog_barking.mp4")
        [old_collection] = _frames_collections(client, prefix)
        assert client.query(old_collection, ids=[first], output_fields=["id"])
        assert _rows(before.sessions) == 0

        services = Services(Settings(home=tmp_path / "new", **common), encoder=before.encoder,
                            sentences=before.sentences)
        assert verify_indexes(services)["frames"].missing == 1  # outside the table until moved
        assert copy_frame_features(services) == 1  # `save-search reindex --rebuild-only`
        assert _frames_collections(client, prefix) == []  # moved, then dropped
        assert copy_frame_features(services) == 0
        report = verify_indexes(services)["frames"]
        assert (report.count, report.missing) == (1, 0)

        second = ingest(services, MEDIA / "video" / "silence_girl.mp4")
        assert _frames_collections(client, prefix) == []  # no `frames` collection written
        with services.sessions() as s:
            assert {v.id: v.feature_shard for v in s.scalars(select(Video))} == {first: DB_SHARD, second: DB_SHARD}
        assert _rows(services.sessions) == 2

        search = SearchService(services)
        assert isinstance(search.store, CachedFeatures) and isinstance(search.store.inner, SqlFrames)
        page = search.search("a dog barking", k=5)
        assert {r.video_id for r in page.results} == {first, second}
        assert all(r.visual_score is not None for r in page.results)
        misses = search.store.misses
        search.search("a girl in silence", k=5)
        assert search.store.hits >= 2 and search.store.misses == misses  # the second query read from memory

        assert delete_video(services, first)
        assert _rows(services.sessions) == 1
        assert [r.video_id for r in SearchService(services).search("a dog barking", k=5).results] == [second]
        assert not isinstance(SearchService(Services(Settings(home=tmp_path / "new", frame_cache_mb=0, **common),
                                                     encoder=before.encoder, sentences=before.sentences)).store,
                              CachedFeatures)
    finally:
        for name in client.list_collections():
            if name.startswith(prefix):
                client.drop_collection(name)
        client.close()
