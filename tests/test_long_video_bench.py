"""The long-video benchmark's pure parts: the composition's ground-truth bookkeeping (a 60-second mini version
built with the same code), the rendered track, and the scoring helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import long_video_bench as lvb
from indexer.inference.asr_quality import normalize_text

pytestmark = pytest.mark.skipif(not (lvb.MEDIA / "speech" / "jfk.flac").exists(), reason="media folder missing")

MINI = lvb.Design(
    said_once=(lvb.SaidOnce("lj:LJ001-0003", 0.05, "wooden blocks in China"),
               lvb.SaidOnce("jfk", 0.3, "what you can do for your country", after_switch=True)),
    said_several=(lvb.SaidSeveral("librivox:0870", (0.2, 0.5), "John Dashwood"),),
    captions=(lvb.CaptionSpec(0.4, "QUARTERLY BUDGET REVIEW 2027", "tight", "budget review", seconds=5.0),),
    nonspeech_every_s=20.0, nonspeech_s=(4.0, 6.0), switch_every_s=1000.0, clear_s=1.0,
)


@pytest.fixture(scope="module")
def sources():
    return lvb.load_sources()


@pytest.fixture(scope="module")
def mini(sources):
    return lvb.plan_composition(150.0, sources, MINI)


def test_sources_have_references_and_voice(sources):
    for key, src in sources.items():
        if src.speech:
            assert src.voiced and 0 <= src.voiced[0][0] < src.voiced[-1][1] <= src.duration + 1e-6, key
            assert src.text or key == "multilingual", key
    assert sources["multilingual"].duration > 50  # English then German
    assert "ask not what your country" in sources["jfk"].text


def test_placements_never_overlap_and_fit(mini):
    ps = mini.placements
    assert ps[0].start >= 0 and ps[-1].end <= mini.duration_s
    for a, b in zip(ps, ps[1:], strict=False):
        assert a.end <= b.start, (a, b)
    for p in ps:
        assert all(p.start - 1e-6 <= s < e <= p.end + 1e-6 for s, e in p.voiced), p
    roles = {p.role for p in ps}
    assert {"said-once", "said-several", "switch", "nonspeech", "filler"} <= roles


def test_durations_add_up(mini, sources):
    for p in mini.placements:
        expected = sources[p.source].duration if p.speech else p.end - p.start
        assert p.end - p.start == pytest.approx(expected, abs=2e-3)
    placed = sum(p.end - p.start for p in mini.placements)
    gaps = sum(b.start - a.end for a, b in zip(mini.placements, mini.placements[1:], strict=False))
    assert mini.placements[0].start + placed + gaps + (mini.duration_s - mini.placements[-1].end) == \
        pytest.approx(mini.duration_s)


def test_query_sentences_are_where_the_queries_say(mini):
    by_source: dict[str, list] = {}
    for p in mini.placements:
        by_source.setdefault(p.source, []).append(p)
    for q in mini.queries:
        if q.kind == "caption":
            assert [c.start for c in mini.captions if c.text == q.source] == q.starts
            continue
        starts = [p.start for p in by_source[q.source]]
        assert starts == q.starts
        assert len(starts) == (2 if q.kind == "said-several" else 1)  # said-once: unique in the track
    jfk = by_source["jfk"][0]
    switch = max((p for p in mini.placements if p.role == "switch" and p.end <= jfk.start), key=lambda p: p.end)
    assert jfk.start - switch.end == pytest.approx(lvb.SWITCH_GAP_S, abs=2e-3)  # right after the German passage


def test_full_designs_plan_and_scale(sources):
    """The real designs: every said-once sentence once, the said-several ones five times, same fractions."""
    plans = {length: lvb.plan_composition(seconds, sources) for length, seconds in lvb.LENGTHS.items()
             if length != "10m"}
    for plan in plans.values():
        counts: dict[str, int] = {}
        for p in plan.placements:
            counts[p.source] = counts.get(p.source, 0) + 1
        assert all(counts[s.source] == 1 for s in lvb.DESIGN.said_once)
        assert all(counts[s.source] == 5 for s in lvb.DESIGN.said_several)
        speech = sum(p.end - p.start for p in plan.placements if p.speech)
        assert 0.7 < speech / plan.duration_s < 0.9
        assert any(p.role == "nonspeech" for p in plan.placements)
    short, long = plans["30m"], plans["2h"]
    for a, b in zip(short.queries, long.queries, strict=True):
        assert a.qid == b.qid and a.text == b.text
        assert a.starts[0] / short.duration_s == pytest.approx(b.starts[0] / long.duration_s, abs=0.01)


def test_rendered_audio_is_window_invariant_and_has_the_speech(mini, sources):
    r = lvb.AudioRenderer(mini, sources)
    n = int(mini.duration_s * lvb.SR)
    whole = r.render(0, n)
    pieces = np.concatenate([r.render(i, min(n, i + 7919)) for i in range(0, n, 7919)])
    assert len(whole) == n and np.array_equal(whole, pieces)
    jfk = next(p for p in mini.placements if p.source == "jfk")
    a = round(jfk.start * lvb.SR)
    clip = sources["jfk"].audio
    assert np.corrcoef(whole[a + 1000: a + len(clip) - 1000], clip[1000:-1000])[0, 1] > 0.99


def test_ground_truth_is_json(mini, sources):
    truth = json.loads(json.dumps(mini.ground_truth(sources)))
    assert truth["duration_s"] == 150.0 and len(truth["placements"]) == len(mini.placements)
    assert truth["placements"][0]["file"]


def test_coverage_finds_the_lost_sentence(mini, sources):
    truth = json.loads(json.dumps(mini.ground_truth(sources)))
    speech = [p for p in truth["placements"] if p["role"] != "nonspeech"]
    segments = [(p["start"], p["end"], p["text"] or "") for p in speech if p["source"] != "jfk"]
    cov = lvb.coverage(truth, segments)
    assert [x["source"] for x in cov["lost"]] == ["jfk"]
    jfk = next(p for p in speech if p["source"] == "jfk")
    voiced = sum(e - s for p in speech for s, e in p["voiced"])
    jfk_voiced = sum(e - s for s, e in jfk["voiced"])
    assert cov["coverage"] == pytest.approx(1 - jfk_voiced / voiced, abs=0.01)
    # Whisper's timestamps drift over a skipped sentence: the next segment starts early, over it; its words do not
    after = next(p for p in speech if p["start"] > jfk["end"])
    drifted = [(jfk["start"] + 3.0, s[1], s[2]) if s[0] == after["start"] else s for s in segments]
    assert [x["source"] for x in lvb.coverage(truth, drifted)["lost"]] == ["jfk"]
    assert lvb.content_tokens("Five, five.") == lvb.content_tokens("5, 5") == ["5", "5"]
    perfect = lvb.wer(truth, [(p["start"], p["end"], p["text"] or "") for p in speech if p["role"] != "switch"])
    assert perfect["plain"] == 0.0 and perfect["whisper"] == 0.0
    dropped = lvb.wer(truth, segments)
    jfk_words = len(normalize_text(jfk["text"]).split())
    assert dropped["plain"] == pytest.approx(jfk_words / dropped["plain_words"], abs=1e-9)


def test_moments_work_before_and_after_the_moments_list():
    assert lvb.moments_of({"segment": {"start": 1.0}}) == [{"start": 1.0}]
    assert lvb.moments_of({"segment": {"start": 1.0}, "moments": [{"start": 2.0}, {"start": 1.0}]}) == \
        [{"start": 2.0}, {"start": 1.0}]
    assert lvb.moments_of({"segment": None}) == []


def test_wer_keeps_a_segment_stretched_over_music_with_its_speech(mini, sources):
    truth = json.loads(json.dumps(mini.ground_truth(sources)))
    ps = truth["placements"]
    i = next(i for i, p in enumerate(ps) if p["role"] == "nonspeech" and ps[i - 1]["text"] and ps[i + 1]["text"])
    before, after = ps[i - 1], ps[i + 1]
    segments = [(p["start"], p["end"], p["text"]) for p in ps
                if p["role"] not in ("nonspeech", "switch") and p is not before and p is not after]
    segments.append((before["start"], after["end"], f"{before['text']} {after['text']}"))  # mostly over the music
    segments.sort()
    scored = lvb.wer(truth, segments)
    assert scored["plain"] == 0.0 and scored["words_in_nonspeech"] == 0
    hallucinated = [*segments, (ps[i]["start"] + 1.0, ps[i]["start"] + 2.0, "thank you")]
    assert lvb.wer(truth, sorted(hallucinated))["words_in_nonspeech"] == 2
