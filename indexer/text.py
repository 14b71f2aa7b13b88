"""One text normalisation for what is indexed and what is asked.

Whisper writes "K7", "1813", "10-15 minutes", "colour"; people type "k seven", "eighteen thirteen", "fifteen
minutes", "color" (and the other way round). Both sides go through Whisper's own ``EnglishTextNormalizer``
(the maintained copy in ``transformers``, with OpenAI's British -> American spelling table shipped in the
``whisper-normalizer`` package): spelled numbers become digits, letters and digits are split ("k 7"),
contractions are expanded, British spellings become American, fillers ("um", "hmm") and bracketed noise tags
are dropped, everything is lower case without punctuation or diacritics. Full text, lexical scoring and
highlighting use ``normalize``; ``terms``/``stem`` are their word-level view. The sentence encoder reads the
text as written (normalised input measured worse: BENCHMARKS.md), unless ``normalize_sentence_input`` is set.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from importlib.resources import files
from pathlib import Path

__all__ = ["MAX_QUERY_TERMS", "STOP_WORDS", "content_terms", "normalize", "stem", "terms", "word_spans", "words"]

MAX_QUERY_TERMS = 32  # longer queries are cut: each term is one OR branch of the full-text query
_WORD = re.compile(r"[^\W_]+")  # runs of letters/digits: what FTS5's unicode61 and PostgreSQL's parser see
# A word as people write it, for highlighting: letters/digits with inner apostrophes, dots or hyphens kept
# together ("don't", "3.5", "10-15"), so that the normaliser sees what it would see in a sentence.
_SURFACE_WORD = re.compile(r"[^\W_]+(?:['\u2019.,-][^\W_]+)*")
_DIGIT = re.compile(r"\d")
# PostgreSQL's `english` stop words (Snowball's list). PostgreSQL drops them from a tsquery; the SQLite query drops
# them too, so both backends match the same words and an OR query never ranks nearly every segment for "the".
_STOP_WORDS_TEXT = """
a about above after again against all am an and any are as at be because been before being below between both
but by can did do does doing don down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on
once only or other our ours ourselves out over own s same she should so some such t than that the their theirs
them themselves then there these they this those through to too under until up very was we were what when where
which while who whom why will with you your yours yourself yourselves
"""
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())


@functools.cache
def _normalizer():
    spellings = json.loads(files("whisper_normalizer").joinpath("normalizers/english.json").read_text("utf-8"))
    return _english_normalizer_module().EnglishTextNormalizer(spellings)


def _english_normalizer_module():
    """``transformers.models.whisper.english_normalizer``, loaded from its file on its own: the module needs only
    the standard library and ``regex``, while importing it through the ``transformers`` package first imports the
    package (about 1 s, in every command-line search)."""
    import importlib.util
    import sys

    name = "save_search_whisper_english_normalizer"
    if name in sys.modules:
        return sys.modules[name]
    package = importlib.util.find_spec("transformers")
    if package is None or not package.submodule_search_locations:
        raise ImportError("transformers is not installed")
    path = Path(next(iter(package.submodule_search_locations))) / "models" / "whisper" / "english_normalizer.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=65536)
def normalize(text: str) -> str:
    """``text`` as Whisper's English normaliser writes it: "It's 10-15 minutes, K7." -> "it is 10 15 minutes k 7".

    Deterministic and pure (cached: transcripts repeat words, queries repeat). Non-English text keeps its
    letters (diacritics are folded), so other languages still match themselves on both sides."""
    return _normalizer()(text)


def words(normalized: str) -> list[str]:
    """The words of already normalised text, as the full-text engines split it (runs of letters/digits)."""
    return _WORD.findall(normalized)


def terms(text: str) -> list[str]:
    """The words of ``normalize(text)``, deduplicated, in order."""
    return list(dict.fromkeys(words(normalize(text))))


def content_terms(query: str) -> list[str]:
    """The words lexical matching uses: ``terms`` without stop words, unless the query is nothing but stop
    words (then all of them, so "to be or not to be" still finds the line); at most ``MAX_QUERY_TERMS``."""
    words = terms(query)
    content = [t for t in words if t not in STOP_WORDS]
    return (content or words)[:MAX_QUERY_TERMS]


_SUFFIXES = ("ing", "es", "ed", "ly", "s")


@functools.lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A light English stem ("dogs" -> "dog", "running" -> "run", "stopped" -> "stop"): close to what the
    full-text engines' Porter/Snowball stemmers match, without their dependence on the backend."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            if suffix in ("ing", "ed") and word[-1] == word[-2] and word[-1] not in "aeiouls":
                word = word[:-1]  # running -> run, stopped -> stop (but falling -> fall)
            break
    return word


def stems(words: Iterable[str]) -> set[str]:
    return {stem(w) for w in words}


def word_spans(text: str, query: str) -> list[tuple[int, int]]:
    """Character spans of the words of ``text`` that say a content word of ``query``, after normalising both.

    Each written word is normalised on its own ("K7" -> "k 7", "colour" -> "color"); a run of words that
    carry numbers is also normalised as a whole, so "eighteen thirteen" is highlighted for "1813" and "1813"
    for "eighteen thirteen". Words match when their stems are equal ("dogs" / "dog")."""
    wanted = stems(content_terms(query))
    if not wanted:
        return []
    said = [(m.start(), m.end(), words(normalize(m.group()))) for m in _SURFACE_WORD.finditer(text)]
    hit = [bool(stems(w) & wanted) for _, _, w in said]
    i = 0
    while i < len(said):  # runs of number words: "eighteen thirteen" -> "1813"
        j = i
        while j < len(said) and any(_DIGIT.search(w) for w in said[j][2]):
            j += 1
        if j - i > 1 and stems(words(normalize(text[said[i][0]:said[j - 1][1]]))) & wanted:
            hit[i:j] = [True] * (j - i)
        i = max(j, i + 1)
    return [(a, b) for (a, b, _), h in zip(said, hit, strict=True) if h]
