"""The search process's passage cache: served only while the video's text tag is unchanged, bounded in bytes, and
scoring from it equals scoring from the database."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select, update

from indexer.enums import Source
from indexer.ingest.reindex import reindex_text
from indexer.passages import embed_transcript
from indexer.search.passage_cache import POSTINGS_FROM, PassageCache, VideoText, load_texts
from indexer.search.service import SearchService
from indexer.services import Services
from indexer.settings import Settings
from indexer.storage.db import Passage, Video
from indexer.storage.shards import write_tag
from indexer.text import normalize, stem

DIM = 384
WORDS = ("printing press", "movable metal type", "the fifteenth century", "woodblock impressions in china",
         "the art of typefaces", "ink and paper", "a printer's workshop", "letters cast in lead")


def _speech(n: int, offset: int = 0) -> list[tuple[float, float, str]]:
    return [(3.0 * i, 3.0 * i + 3.0, f"{WORDS[(i + offset) % len(WORDS)]} number {i}") for i in range(n)]


@pytest.fixture()
def services(tmp_path) -> Services:
    return Services(Settings(home=tmp_path / "home", model=str(tmp_path / "no-visual-model")))


def _add(services: Services, name: str, speech, screen=(), tag: int | None = None) -> int:
    text = embed_transcript(services.sentences, speech, services.settings.search.normalize_sentence_input, screen)
    segments, passages = text.rows()
    with services.sessions.begin() as s:
        video = Video(content_hash=name.ljust(64, "0"), filename=name, source_path=name, size_bytes=1,
                      duration_s=3.0 * len(speech), has_audio=True, transcript=" ".join(t for _, _, t in speech),
                      model_mode="speech", text_tag=tag)
        video.segments.extend(segments)
        video.passages.extend(passages)
        s.add(video)
        s.flush()
        return video.id


def test_an_entry_is_served_only_while_its_tag_holds(services) -> None:
    a = _add(services, "a.mp4", _speech(3), tag=write_tag())
    b = _add(services, "b.mp4", _speech(2), tag=None)  # written before tags existed: never kept
    cache = PassageCache(2**20)
    with services.sessions() as s:
        tags = dict(s.execute(select(Video.id, Video.text_tag)).all())
        first = cache.read(s, list(tags.items()), DIM)
        assert (cache.hits, cache.misses) == (0, 2) and len(cache) == 1
        again = cache.read(s, list(tags.items()), DIM)
        assert (cache.hits, cache.misses) == (1, 3)
        assert again[a] is first[a] and again[b] is not first[b]
        assert len(first[a].meta) == 3 + 2 + 1 and first[a].embedding.dtype == np.float32
    with services.sessions.begin() as s:  # the video's text written again (another process): a new tag
        s.execute(update(Video).where(Video.id == a).values(text_tag=write_tag()))
    with services.sessions() as s:
        tags = dict(s.execute(select(Video.id, Video.text_tag)).all())
        assert cache.read(s, [(a, tags[a])], DIM)[a] is not first[a] and cache.misses == 4


def test_the_cache_is_bounded_and_drops_the_least_recently_used(services) -> None:
    ids = [_add(services, f"{i}.mp4", _speech(3, i), tag=write_tag()) for i in range(4)]
    with services.sessions() as s:
        tags = dict(s.execute(select(Video.id, Video.text_tag)).all())
        size = load_texts(s, {ids[0]: tags[ids[0]]}, DIM)[ids[0]].nbytes
        cache = PassageCache(int(2.5 * size))  # room for two
        for vid in ids[:3]:
            cache.read(s, [(vid, tags[vid])], DIM)
        assert len(cache) == 2 and cache.nbytes <= cache.max_bytes
        cache.read(s, [(ids[1], tags[ids[1]])], DIM)  # a hit: most recent again
        cache.read(s, [(ids[3], tags[ids[3]])], DIM)  # evicts ids[2], the least recently used
        hits = cache.hits
        cache.read(s, [(ids[1], tags[ids[1]]), (ids[3], tags[ids[3]])], DIM)
        assert cache.hits == hits + 2
        off = PassageCache(0)
        off.read(s, [(ids[0], tags[ids[0]])], DIM)
        assert len(off) == 0


def test_long_and_short_videos_find_the_same_words() -> None:
    """A long video's words come from an inverted index, a short one's from scanning: the same bits."""
    norms = [normalize(t) for _, _, t in _speech(POSTINGS_FROM + 8)]
    wanted = [stem(w) for w in ("printing", "type", "century", "lead", "nothing")]
    empty = np.zeros((0, 6)), np.zeros((0, DIM), np.float32)
    long = VideoText(1, *empty, norms)
    assert long.postings is not None
    bits = long.word_bits(wanted)
    scanned = np.concatenate([VideoText(1, *empty, norms[i:i + 8]).word_bits(wanted)
                              for i in range(0, len(norms), 8)])
    np.testing.assert_array_equal(bits, scanned)
    assert bits[:8].tolist() == [0b1, 0b10, 0b100, 0, 0, 0, 0, 0b1000] and not (bits & 0b10000).any()


def test_scores_from_the_cache_equal_scores_from_the_database(services) -> None:
    long = _add(services, "long.mp4", _speech(POSTINGS_FROM + 10), screen=[(1.0, 4.0, "Movable type, 1450")],
                tag=write_tag())
    short = _add(services, "short.mp4", _speech(4, 3), tag=write_tag())
    search = SearchService(services)
    query = "when was movable metal type cast in lead"
    q = services.sentences.encode([query])[0]
    with services.sessions() as s:
        tags = dict(s.execute(select(Video.id, Video.text_tag)).all())
        cold, cold_local = search._text_scores(s, [long, short], query, q, {}, tags)
        assert search.passages.misses == 2 and len(search.passages) == 2
        warm, warm_local = search._text_scores(s, [long, short], query, q, {}, tags)
        assert search.passages.hits == 2
        uncached, _ = search._text_scores(s, [long, short], query, q, {})  # no tags: read from the database
    assert cold == warm == uncached
    assert set(cold[Source.SPEECH]) == {long, short} and set(cold[Source.SCREEN]) == {long}
    np.testing.assert_array_equal(cold_local.raw, warm_local.raw)
    np.testing.assert_array_equal(cold_local.passage_id, warm_local.passage_id)
    # The lexical term counts: the best speech passage of the long video says "movable metal type" and "lead".
    score, moment = cold[Source.SPEECH][long]
    with services.sessions() as s:
        p = s.get(Passage, moment)
        assert p.video_id == long and p.source == Source.SPEECH
    assert score > cold[Source.SPEECH][short][0]


def test_reindex_text_gives_a_new_tag_and_search_reads_the_new_passages(services) -> None:
    """SQLite gives the rewritten passages the same ids (the deleted rows were the highest): only the tag tells the
    cache that their embeddings changed."""
    vid = _add(services, "v.mp4", _speech(3), tag=write_tag())
    search = SearchService(services)
    with services.index_lock:
        services.catalog.sync_and_publish()
    assert search.search("movable metal type", k=3).results[0].video_id == vid  # cached now
    with services.sessions.begin() as s:
        video = s.get(Video, vid)
        before = video.text_tag
        old = dict(s.execute(select(Passage.id, Passage.embedding).where(Passage.video_id == vid)).all())
        next(g for g in video.segments if g.idx == 0).text = "whales sing to each other across the ocean"
    assert reindex_text(services) == 1
    with services.sessions() as s:
        after = s.get(Video, vid).text_tag
        new = dict(s.execute(select(Passage.id, Passage.embedding).where(Passage.video_id == vid)).all())
    assert after is not None and after != before
    assert set(new) == set(old) and new != old  # same ids, other embeddings
    with services.index_lock:
        services.catalog.sync_and_publish()
    top = search.search("whales singing in the sea", k=3).results[0]
    assert top.video_id == vid and top.segment is not None and top.segment.start == 0.0
    with services.sessions() as s:
        cached = search.passages.read(s, [(vid, after)], DIM)[vid]
    stored = np.stack([np.frombuffer(new[int(p)], np.float16) for p in cached.meta[:, 0]]).astype(np.float32)
    np.testing.assert_array_equal(cached.embedding, stored)


def test_the_app_freezes_its_start_up_objects_out_of_the_gc_and_lets_them_go_at_shutdown(services) -> None:
    import gc

    from fastapi.testclient import TestClient

    from app.main import create_app

    gc.unfreeze()
    with TestClient(create_app(services.settings, embedded_worker=False, services=services)):
        assert gc.get_freeze_count() > 0  # models, tokenizers, metadata: never scanned by a full collection
    assert gc.get_freeze_count() == 0
