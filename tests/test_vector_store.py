"""The index interface (``indexer.storage.catalog.VectorCatalog``) keeps one contract on both backends: FAISS snapshot
files and Milvus (a real Milvus Lite 2.5 server). The database is the source of truth: writes after a commit,
deletes, and the repair that finds what a crash left behind."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import delete

from indexer.services import make_catalog
from indexer.settings import Settings
from indexer.storage.catalog import VectorCatalog, to_blob
from indexer.storage.db import Passage, Video, make_engine, session_factory
from indexer.storage.faiss_catalog import FaissCatalog
from indexer.storage.migrate import init_db
from indexer.storage.shards import FeatureRef, FeatureStoreError

VIDEO_DIM, PASSAGE_DIM, FRAMES = 8, 4, 12


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x)).astype(np.float32)


def _video(i: int, rng: np.random.Generator, model_version: str = "v1", passages: int = 1) -> Video:
    video = Video(id=i, content_hash=f"{i:064x}", filename=f"{i}.mp4", source_path=f"/m/{i}.mp4", size_bytes=1,
                  duration_s=1.0, has_audio=True, model_mode="save-fused", status="indexed",
                  model_version=model_version, pooled=to_blob(unit(rng.standard_normal(VIDEO_DIM))))
    video.passages = [Passage(first_idx=j, last_idx=j, start_s=float(j), end_s=j + 1.0,
                              embedding=to_blob(unit(rng.standard_normal(PASSAGE_DIM)))) for j in range(passages)]
    return video


@pytest.fixture(params=["faiss", "milvus"])
def catalog(request: pytest.FixtureRequest, tmp_path) -> Iterator[VectorCatalog]:
    """An empty catalog over a fresh SQLite database holding 30 videos of model v1 (odd ids with one passage)
    and 10 of another model, on the backend of the parameter."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    init_db(url)
    sessions = session_factory(make_engine(url))
    rng = np.random.default_rng(5)
    with sessions.begin() as s:
        s.add_all(_video(i, rng, "v1" if i <= 30 else "old", passages=i % 2) for i in range(1, 41))
    if request.param == "faiss":
        out: VectorCatalog = FaissCatalog(tmp_path / "index", sessions, "v1", VIDEO_DIM, "minilm", PASSAGE_DIM)
        out.load()
        yield out
        return
    from pymilvus import MilvusClient

    from indexer.storage.milvus import MilvusCatalog

    client = MilvusClient(uri=request.getfixturevalue("milvus_uri"))
    prefix = f"t_{secrets.token_hex(6)}"
    out = MilvusCatalog(client, sessions, "v1", VIDEO_DIM, "minilm", PASSAGE_DIM, prefix=prefix, index_type="FLAT")
    out.load()
    try:
        yield out
    finally:
        for name in client.list_collections():
            if name.startswith(prefix):
                client.drop_collection(name)
        client.close()


def _pooled(catalog: VectorCatalog, video_id: int) -> np.ndarray:
    with catalog.sessions() as s:
        return np.frombuffer(s.get(Video, video_id).pooled, dtype=np.float16).astype(np.float32)


def _passages_of(catalog: VectorCatalog, video_id: int) -> dict[int, np.ndarray]:
    with catalog.sessions() as s:
        return {p.id: np.frombuffer(p.embedding, dtype=np.float16).astype(np.float32)
                for p in s.get(Video, video_id).passages}


def test_repair_indexes_what_the_database_has_and_drops_what_it_lost(catalog: VectorCatalog) -> None:
    reports = catalog.repair()
    assert (reports["videos"].added, reports["passages"].added) == (30, 20)  # the model's videos only
    assert {name: count for name, (_, count) in catalog.sizes().items()} == {"videos": 30, "passages": 20}
    assert catalog.search_videos(_pooled(catalog, 7), 3)[0] == 7
    (pid, embedding), = _passages_of(catalog, 7).items()
    hits = catalog.search_passages(embedding, 5)
    assert max(hits, key=hits.__getitem__) == pid and hits[pid] == pytest.approx(1.0, abs=1e-3)
    # What a crash leaves: a row deleted without its index entry, a row committed without one.
    with catalog.sessions.begin() as s:
        s.execute(delete(Video).where(Video.id == 7))
        s.add(_video(41, np.random.default_rng(1), passages=2))
    reports = catalog.repair()
    assert (reports["videos"].added, reports["videos"].removed) == (1, 1)
    assert (reports["passages"].added, reports["passages"].removed) == (2, 1)
    assert 7 not in catalog.search_videos(_pooled(catalog, 3), 40)
    assert catalog.search_videos(_pooled(catalog, 41), 1) == [41]
    assert {name: report.added + report.removed for name, report in catalog.repair().items()} == {
        "videos": 0, "passages": 0}  # nothing left to repair


def test_writes_after_the_commit_and_deletes_reach_the_index(catalog: VectorCatalog) -> None:
    catalog.repair()
    with catalog.sessions.begin() as s:
        s.add(_video(50, np.random.default_rng(2), passages=3))
    catalog.index_videos([50])
    assert catalog.search_videos(_pooled(catalog, 50), 1) == [50]
    old = _passages_of(catalog, 50)
    assert set(catalog.search_passages(next(iter(old.values())), 40)) >= set(old)
    # Re-indexing replaces the video's passages: the old ids leave the index with nothing else to call.
    with catalog.sessions.begin() as s:
        video = s.get(Video, 50)
        video.passages.clear()
        video.passages.append(Passage(first_idx=0, last_idx=0, start_s=0.0, end_s=1.0,
                                      embedding=to_blob(unit(np.ones(PASSAGE_DIM)))))
    catalog.index_videos([50])
    (new_pid, new_embedding), = _passages_of(catalog, 50).items()
    hits = catalog.search_passages(new_embedding, 40)
    assert new_pid in hits and not set(hits) & set(old)
    with catalog.sessions.begin() as s:
        s.execute(delete(Video).where(Video.id == 50))
    catalog.remove_videos([50])
    assert 50 not in catalog.search_videos(np.ones(VIDEO_DIM, np.float32), 40)
    assert new_pid not in catalog.search_passages(new_embedding, 40)
    assert {name: count for name, (_, count) in catalog.sizes().items()} == {"videos": 30, "passages": 20}


def test_frame_features_are_read_back_exactly_and_a_missing_record_is_an_error(catalog: VectorCatalog) -> None:
    rng = np.random.default_rng(3)
    writer = catalog.open_features(FRAMES, VIDEO_DIM, "w1")
    frames = rng.standard_normal((2, FRAMES, VIDEO_DIM)).astype(np.float16)
    masks = np.array([[1] * FRAMES, [1] * 5 + [0] * (FRAMES - 5)], dtype=np.uint8)
    refs = [writer.append(video_id, frames[i], masks[i]) for i, video_id in enumerate((3, 4))]
    reader = catalog.open_features(FRAMES, VIDEO_DIM, "reader")
    got_frames, got_masks = reader.read_many([FeatureRef(r.shard, r.offset, r.video_id) for r in reversed(refs)])
    np.testing.assert_array_equal(got_frames, frames[::-1])
    np.testing.assert_array_equal(got_masks, masks[::-1])
    with pytest.raises(FeatureStoreError):
        reader.read_many([FeatureRef(refs[0].shard, refs[0].offset, 99)])
    with pytest.raises(ValueError, match="frames must be"):
        writer.append(5, frames[0][:3], masks[0])


def test_settings_choose_the_backend(tmp_path) -> None:
    with pytest.raises(ValueError, match="needs SAVE_SEARCH_MILVUS_URI"):
        Settings(home=tmp_path, vector_store="milvus")
    with pytest.raises(ValueError, match="SAVE_SEARCH_VECTOR_STORE='vespa': Input should be 'faiss' or 'milvus'"):
        Settings(home=tmp_path, vector_store="vespa")
    settings = Settings(home=tmp_path)
    catalog = make_catalog(settings, session_factory(make_engine(f"sqlite:///{tmp_path / 'db'}")), None, None,
                           "minilm", PASSAGE_DIM)
    assert isinstance(catalog, FaissCatalog) and catalog.features_dir == settings.features_dir
